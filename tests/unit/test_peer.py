"""`make bench-peer`'s pure parts: infinity's model directory and command, the order of the
turns, the request body, the report (no install, no server, no timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.client import LoadSpec, RequestFeed
from loadtest.infinity import (
    PeerModel,
    infinity_command,
    infinity_env,
    install_commands,
    lay_out_model,
)
from loadtest.peer import QUICK, parse_args, plan_from, turn_order
from loadtest.peer_report import (
    ENCODER_SERVE,
    INFINITY,
    PeerPoint,
    PeerReport,
    from_json,
    headline,
    table,
    to_json,
    write_report,
)
from loadtest.report import LoadPoint


def model_dir(root: Path, pooling: str = "mean") -> Path:
    """A model repository entry shaped like `make models` leaves it (contents are dummies)."""
    directory = root / "minilm"
    (directory / "torch").mkdir(parents=True)
    manifest = {
        "name": "minilm",
        "pooling": pooling,
        "tokenizer": "tokenizer.json",
        "files": {
            "fp32": "model.onnx",
            "int8": "model.int8.onnx",
            "attention": "attention.onnx",
            "torch": "torch",
        },
    }
    (directory / "model.json").write_text(json.dumps(manifest))
    for name in (
        "model.onnx", "model.int8.onnx", "attention.onnx", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json", "torch/config.json",
    ):  # fmt: skip
        (directory / name).write_text(name)
    return directory


def test_the_layout_links_one_graph_its_config_and_tokenizer(tmp_path: Path) -> None:
    source = model_dir(tmp_path)
    model = lay_out_model(source, tmp_path / "peer")
    names = sorted(path.name for path in model.directory.iterdir())
    # One ONNX file only: infinity would otherwise pick the int8 graph on CPU.
    assert names == [
        "config.json", "model.onnx", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json",
    ]  # fmt: skip
    assert all((model.directory / name).is_symlink() for name in names)
    assert (model.directory / "config.json").read_text() == "torch/config.json"
    assert (model.directory / "model.onnx").resolve() == (source / "model.onnx").resolve()
    assert model.graph == source / "model.onnx"
    assert model.pooling == "mean"


def test_the_layout_is_rebuilt_in_place_and_keeps_external_weights(tmp_path: Path) -> None:
    source = model_dir(tmp_path, pooling="cls")
    (source / "model.onnx.data").write_text("weights")
    lay_out_model(source, tmp_path / "peer")
    model = lay_out_model(source, tmp_path / "peer")  # a second run replaces the links
    assert (model.directory / "model.onnx.data").read_text() == "weights"
    assert model.pooling == "cls"


def test_the_layout_says_what_is_missing(tmp_path: Path) -> None:
    source = model_dir(tmp_path)
    (source / "torch" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        lay_out_model(source, tmp_path / "peer")
    with pytest.raises(ValueError, match="fp16"):
        lay_out_model(model_dir(tmp_path / "other"), tmp_path / "peer2", precision="fp16")


def test_a_pooling_infinity_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max"):
        lay_out_model(model_dir(tmp_path, pooling="max"), tmp_path / "peer")


def test_infinity_serves_our_graph_unchanged_under_our_route(tmp_path: Path) -> None:
    model = PeerModel(tmp_path, tmp_path / "model.onnx", "mean")
    command = infinity_command(tmp_path / "venv", model, 8123, "minilm")
    assert command[:2] == [str(tmp_path / "venv" / "bin" / "infinity_emb"), "v2"]
    pairs = {option: command[index + 1] for index, option in enumerate(command[:-1])}
    assert pairs["--model-id"] == "."
    assert pairs["--engine"] == "optimum"
    assert pairs["--pooling-method"] == "mean"
    assert pairs["--url-prefix"] == "/v1"
    assert pairs["--served-model-name"] == "minilm"
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--port"] == "8123"
    assert "--onnx-disable-optimize" in command


def test_infinity_runs_offline_with_its_own_defaults(tmp_path: Path) -> None:
    env = infinity_env(tmp_path, {"PATH": "/bin", "INFINITY_BATCH_SIZE": "8"})
    assert env["PATH"] == "/bin"
    assert "INFINITY_BATCH_SIZE" not in env
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["INFINITY_ANONYMOUS_USAGE_STATS"] == "0"
    assert env["HF_HOME"].startswith(str(tmp_path))


def test_the_peer_installs_into_its_own_venv(tmp_path: Path) -> None:
    venv = tmp_path / ".venv-peer"
    create, install = install_commands(venv, "python3")
    assert create == ["python3", "-m", "venv", str(venv)]
    assert install[0] == str(venv / "bin" / "python")
    assert install[-2] == "-r"
    assert install[-1].endswith("peer-requirements.txt")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    assert install_commands(venv, "python3") == [install]  # no second venv over the first
    pins = Path(install[-1]).read_text()
    assert "infinity-emb[optimum,server]==0.0.78" in pins


def test_rounds_alternate_who_goes_first() -> None:
    assert turn_order(2) == [
        (1, ENCODER_SERVE), (1, INFINITY), (2, INFINITY), (2, ENCODER_SERVE),
    ]  # fmt: skip
    turns = turn_order(3)
    assert len(turns) == 6
    # Both servers in every round, and each round's pair next to each other.
    for number in (1, 2, 3):
        assert {server for round_number, server in turns if round_number == number} == {
            ENCODER_SERVE,
            INFINITY,
        }


def test_the_plan_needs_two_rounds() -> None:
    assert plan_from(parse_args(["--quick"])) == QUICK
    assert plan_from(parse_args(["--rounds", "4", "--duration", "7"])).rounds == 4
    with pytest.raises(SystemExit):
        plan_from(parse_args(["--rounds", "1"]))


def test_requests_in_openai_shape_name_the_model() -> None:
    spec = LoadSpec(
        "127.0.0.1", 1, ['He said "hi"'], 1, 1.0, clients=1,
        path="/v1/embeddings", input_field="input", model="minilm",
    )  # fmt: skip
    request = RequestFeed(spec).next_request()
    head, body = request.split(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/embeddings HTTP/1.1")
    assert json.loads(body) == {"model": "minilm", "input": 'He said "hi"'}
    default = RequestFeed(LoadSpec("127.0.0.1", 1, ["a", "b"], 2, 1.0, clients=1))
    assert json.loads(default.next_request().split(b"\r\n\r\n")[1]) == {"inputs": ["a", "b"]}


def point(server: str, number: int, slot: int, clients: int, rate: float) -> PeerPoint:
    load = LoadPoint(
        label=f"{clients} clients", mode="closed", clients=clients, target_rate=None,
        texts_per_request=1, duration_s=10.0, requests=int(rate * 10), answered=int(rate * 10),
        errors=0, sequences_per_s=rate, p50_ms=1000 * clients / rate, p90_ms=1.0, p99_ms=2.0,
        generator="wrk", generator_cpu_cores=0.05, server_cpu_cores=1.9,
    )  # fmt: skip
    return PeerPoint(server, number, slot, load)


def synthetic_report() -> PeerReport:
    points = [
        point(ENCODER_SERVE, 1, 1, 1, 60.0), point(ENCODER_SERVE, 1, 1, 32, 100.0),
        point(INFINITY, 1, 2, 1, 50.0), point(INFINITY, 1, 2, 32, 80.0),
        point(INFINITY, 2, 1, 1, 40.0), point(INFINITY, 2, 1, 32, 50.0),
        point(ENCODER_SERVE, 2, 2, 1, 60.0), point(ENCODER_SERVE, 2, 2, 32, 100.0),
    ]  # fmt: skip
    return PeerReport(
        created="2026-12-01T10:00:00+00:00",
        host="vm",
        quick=True,
        rounds=2,
        point_s=10.0,
        warmup_s=2.0,
        request="`POST /v1/embeddings`",
        isolation="one at a time",
        commands={ENCODER_SERVE: ".venv/bin/encoder-serve serve", INFINITY: "infinity_emb v2"},
        environments={ENCODER_SERVE: "defaults"},
        versions={ENCODER_SERVE: {"onnxruntime": "1.32.0"}, INFINITY: {"onnxruntime": "1.32.0"}},
        settings={"ENCODER_PRECISION": "fp32 (set)"},
        machine={"cores_usable": "2"},
        parity={"cosine": 1.0, "max_abs_diff": 2e-8},
        points=points,
    )


def test_ratios_pair_the_servers_of_each_round() -> None:
    report = synthetic_report()
    assert report.clients == [1, 32]
    assert report.ratios(32) == [(1, 1.25), (2, 2.0)]
    assert report.ratios(1) == [(1, 1.2), (2, 1.5)]
    lines = headline(report)
    assert "**1.62×**" in lines[1] and "1.25×, 2.00×" in lines[1]


def test_one_table_row_per_round_and_client_count() -> None:
    rows = table(synthetic_report())
    assert len(rows) == 2 + 4
    assert rows[2].startswith("| 1 | 1 | encoder-serve | 60.0 |")
    assert rows[5].startswith("| 2 | 32 | infinity-emb | 100.0 |")  # infinity went first
    assert rows[5].endswith("| 50.0 | 640.0 | 2.0 | 1.90 | **2.00×** |")
    assert all(row.count("|") == rows[0].count("|") for row in rows)


def test_report_round_trips_through_json_and_markdown(tmp_path: Path) -> None:
    report = synthetic_report()
    assert from_json(to_json(report)) == report
    path = write_report(report, tmp_path, "peer", "peer.png")
    text = path.read_text()
    assert "| round | clients | first |" in text
    assert "![throughput, latency and ratio per round](peer.png)" in text
    assert "cosine 1.0000000" in text
    assert "shared the cores" not in text
    report.points[0].other_cpu_cores = 0.8
    assert (
        "round 1 encoder-serve at 1 (0.80)" in write_report(report, tmp_path, "p", None).read_text()
    )
    assert (tmp_path / "peer.json").is_file()
