"""The profile summary's bookkeeping: py-spy stacks into categories, CPU onto categories."""

from __future__ import annotations

import pytest

from loadtest.profile_server import NATIVE, categorize, cpu_by_category, parse_raw

MAIN = "<module> (encoder-serve:6);Runner.run (asyncio/runners.py:118)"
WORKER = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"
RAW = f"""\
{MAIN};TextTokenizer.encode (app/engine/tokenization.py:44) 30
{MAIN};RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:524) 10
{MAIN} 60
{WORKER};Encoder.forward (app/engine/encoder.py:60);OnnxBackend.run (app/backends/onnx.py:57) 90
{WORKER};Pipeline.forward (app/engine/pipeline.py:104);pool (app/engine/pipeline.py:52) 10
"""


def test_innermost_recognised_frame_decides() -> None:
    frames = [MAIN, "json_response (app/api/routes.py:42)"]
    assert categorize(frames) == "response JSON (orjson)"
    assert categorize(["mystery (nowhere.py:1)"]) == "other"


def test_cpu_is_spread_over_each_thread_groups_samples() -> None:
    samples = parse_raw(RAW)
    assert sum(samples["main"].values()) == 100
    assert samples["workers"]["ONNX Runtime forward pass"] == 90
    # pid 1 is the main thread, 2 a Python worker, 3 a native (ONNX Runtime) thread.
    shares = cpu_by_category(samples, {1: 1.0, 2: 2.0, 3: 1.5}, {1: "MainThread", 2: "w"}, pid=1)
    assert shares["tokenization"] == pytest.approx(0.3)
    assert shares["ONNX Runtime forward pass"] == pytest.approx(1.8)
    assert shares[NATIVE] == pytest.approx(1.5)
    assert sum(shares.values()) == pytest.approx(4.5)
    assert next(iter(shares)) == "ONNX Runtime forward pass"  # largest first
