"""The benchmark's report writing and bookkeeping, on synthetic numbers (no timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.client import LoadSpec, RequestFeed, percentile
from loadtest.report import (
    BenchReport,
    EnginePoint,
    EngineResult,
    LoadPoint,
    PrecisionPoint,
    TorchResult,
    from_json,
    to_json,
    write_report,
)
from loadtest.server import parse_batch_counters
from loadtest.texts import MAX_WORDS, MIN_WORDS, TextSource


def load_point(
    label: str, clients: int | None, sequences_per_s: float, **extra: object
) -> LoadPoint:
    fields: dict[str, object] = {
        "label": label,
        "mode": "closed",
        "clients": clients,
        "target_rate": None,
        "texts_per_request": 1,
        "duration_s": 12.0,
        "requests": 1200,
        "answered": 1200,
        "errors": 0,
        "sequences_per_s": sequences_per_s,
        "p50_ms": 200.0,
        "p90_ms": 260.0,
        "p99_ms": 310.0,
        "generator": "wrk",
        "generator_cpu_cores": 0.03,
        "server_cpu_cores": 1.9,
        "mean_batch_size": 14.5,
        "padding_share": 0.21,
        **extra,
    }
    return LoadPoint(**fields)  # type: ignore[arg-type]


def synthetic_report() -> BenchReport:
    engine = EngineResult(
        threads=2,
        points=[
            EnginePoint(1, 95.0, 300),
            EnginePoint(1, 94.0, 300, "packed"),
            EnginePoint(32, 140.0, 512),
            EnginePoint(32, 150.0, 512, "packed"),
            EnginePoint(128, 140.0, 512),
        ],
        single_text_p50_ms=10.2,
        single_text_p99_ms=14.9,
    )
    return BenchReport(
        created="2025-01-02T03:04:05+00:00",
        host="testhost",
        quick=False,
        settings={"ENCODER_MAX_BATCH_SIZE": "64", "ENCODER_INTRA_OP_THREADS": "2"},
        machine={"cpu_model": "AMD EPYC", "onnxruntime": "1.20.0"},
        engine=engine,
        torch=TorchResult(2, 32, 80.0, 512, "sentence-transformers 3 / torch 2"),
        closed=[load_point("1 clients", 1, 90.0), load_point("32 clients", 32, 96.0)],
        open_loop=[
            load_point(
                "80 % of capacity",
                None,
                76.0,
                mode="open",
                target_rate=76.8,
                requests=922,
                answered=910,
                dispatch_lag_p99_ms=1.2,
                generator="asyncio",
            )
        ],
        batches=[load_point("4 clients × 32 texts", 4, 120.0, mode="batch", texts_per_request=32)],
        notes=["synthetic"],
        precisions=[
            PrecisionPoint("fp32", 1, 100.0),
            PrecisionPoint("int8", 1, 120.0),
            PrecisionPoint("fp32", 8, 160.0),
            PrecisionPoint("int8", 8, 240.0),
        ],
    )


def test_markdown_has_the_efficiency_ratio_on_its_first_line(tmp_path: Path) -> None:
    report = synthetic_report()
    markdown = write_report(report, tmp_path, "2025-01-02-testhost", "2025-01-02-testhost.png")
    first_line = markdown.read_text().splitlines()[0]
    assert "Efficiency ratio" in first_line
    assert "0.64" in first_line  # 96 / 150
    assert report.efficiency == pytest.approx(0.64)


def test_markdown_records_settings_and_every_load_point(tmp_path: Path) -> None:
    text = write_report(synthetic_report(), tmp_path, "r", None).read_text()
    for expected in ("ENCODER_MAX_BATCH_SIZE", "AMD EPYC", "80 % of capacity", "4 clients × 32"):
        assert expected in text
    assert "99 %" in text  # answered share of the open-loop point: 910 / 922


def test_json_twin_round_trips(tmp_path: Path) -> None:
    report = synthetic_report()
    write_report(report, tmp_path, "r", None)
    assert from_json((tmp_path / "r.json").read_text()) == report
    assert from_json(to_json(report)) == report


def test_precisions_side_by_side_give_per_batch_and_best_ratios(tmp_path: Path) -> None:
    text = write_report(synthetic_report(), tmp_path, "r", None).read_text()
    assert "| 1 | 100.0 | 120.0 | 1.20× |" in text
    assert "| 8 | 160.0 | 240.0 | 1.50× |" in text
    assert "int8 1.50× fp32" in text  # best against best: 240 / 160


def test_engine_limit_is_the_best_of_padded_and_packed_batches(tmp_path: Path) -> None:
    text = write_report(synthetic_report(), tmp_path, "r", None).read_text()
    assert "| 32 | 140.0 | 150.0 | 512 |" in text
    assert "| 128 | 140.0 | – | 512 |" in text  # a batching not measured at this size
    assert "at batch 32 (packed rows)" in text
    assert "batch 32, packed)" in text.splitlines()[0]


def test_old_reports_without_precisions_still_load() -> None:
    data = json.loads(to_json(synthetic_report()))
    del data["precisions"]
    assert from_json(json.dumps(data)).precisions == []


def test_report_without_a_32_client_point_says_so() -> None:
    report = synthetic_report()
    report.closed = report.closed[:1]
    report.torch = None
    assert report.efficiency is None
    assert from_json(to_json(report)) == report


def test_padding_share_from_metrics_deltas() -> None:
    exposition = """\
# TYPE encoder_batch_size histogram
encoder_batch_size_count{model="minilm"} %d
encoder_batch_size_sum{model="minilm"} %d
# TYPE encoder_batch_tokens histogram
encoder_batch_tokens_count{model="minilm"} %d
encoder_batch_tokens_sum{model="minilm"} %d
# TYPE encoder_tokens counter
encoder_tokens_total{model="minilm"} %d
encoder_tokens_total{model="other"} 999
# TYPE encoder_requests counter
encoder_requests_total{endpoint="/encode",model="minilm",code="200"} %d
encoder_requests_total{endpoint="/encode",model="minilm",code="422"} 7
"""
    before = parse_batch_counters(exposition % (10, 40, 10, 1000, 800, 40), "minilm")
    # 100 inputs ran in 10 batches (4000 padded tokens); 100 answered with 3000 real tokens.
    after = parse_batch_counters(exposition % (20, 140, 20, 5000, 3800, 140), "minilm")
    delta = after - before
    assert delta.mean_batch_size == pytest.approx(10.0)
    assert delta.padding_share(1) == pytest.approx(0.25)
    # Only half the inputs that ran were answered (callers left mid-batch): their tokens
    # are estimated from the answered ones, so the share stays what the batches padded.
    half = parse_batch_counters(exposition % (20, 140, 20, 5000, 2300, 90), "minilm") - before
    assert half.padding_share(1) == pytest.approx(0.25)


def test_texts_are_fresh_and_of_the_promised_length() -> None:
    texts = TextSource(seed=1).take(2000)
    assert len(set(texts)) == len(texts)
    assert all(MIN_WORDS <= len(text.split()) <= MAX_WORDS for text in texts)
    assert TextSource(seed=1).take(5) == texts[:5]


def test_request_feed_builds_valid_bodies_and_never_repeats_a_text() -> None:
    spec = LoadSpec("127.0.0.1", 1, ['say "hi"', "b", "c"], texts_per_request=2, duration_s=1)
    feed = RequestFeed(spec)
    bodies = []
    for _ in range(3):  # six texts from a pool of three: one wrap
        head, body = feed.next_request().split(b"\r\n\r\n", 1)
        assert f"Content-Length: {len(body)}".encode() in head
        bodies.append(json.loads(body)["inputs"])
    sent = [text for inputs in bodies for text in inputs]
    assert sent[0] == 'say "hi"'
    assert len(set(sent)) == 6
    assert feed.wraps == 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
