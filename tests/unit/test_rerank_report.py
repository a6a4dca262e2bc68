"""loadtest.rerank's report: the fp32 latency, the int8 line only where an int8 figure
was measured, and the throughput ratio."""

from __future__ import annotations

from loadtest.rerank import report

RESULTS = {
    "documents": 20,
    "document_words": 60,
    "tokens_per_pair": 73.2,
    "idle": {"rounds": 30, "p50_ms": 189.4, "p90_ms": 198.0},
    "rerank": {"inputs_per_s": 102.8, "errors": 0},
    "classify": {"inputs_per_s": 95.8, "errors": 0},
    "ratio": 1.073,
}
MACHINE = {"cpu_model": "AMD EPYC", "cores_usable": "2"}


def test_the_int8_line_is_written_when_measured() -> None:
    text = report({**RESULTS, "idle_int8": {"p50_ms": 121.2, "p90_ms": 130.9}}, 15, MACHINE)
    assert "p50 **189 ms**, p90 198 ms" in text
    assert "int8 graph (`ENCODER_PRECISION=int8`, a second server): p50 **121 ms**" in text
    assert "Pairs per s ÷ sequences per s: **1.07**" in text


def test_without_an_int8_graph_the_report_says_so() -> None:
    text = report(RESULTS, 15, MACHINE)
    assert "did not pass its gate" in text and "**121 ms**" not in text
