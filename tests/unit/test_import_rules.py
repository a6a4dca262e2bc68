"""The layout's import rules (pyproject.toml, [tool.importlinter]) hold, and a front-end
worker's engine loads neither ONNX Runtime nor torch.

The rules, checked by `lint-imports` over app/'s whole import graph: no import circle
anywhere; api and export over the engine over the backends; the engine's layers
(wiring > transport > in_process > passes > batching > models > model_checks > manifest >
contract > timing, errors); the contract imports no implementation; the HTTP edge imports
from the engine only the contract and errors (and the start-up, the wiring); a worker's
side (the link's client, the request-side models) imports no batcher, pass or backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_rules_hold() -> None:
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


# What an HTTP worker runs when ENCODER_WORKERS > 1: the app, and the engine behind the
# link to the engine process (tokenizers and heads; no session). Nothing listens on the
# socket: the engine connects in `start`, which this never calls.
WORKER = """
import sys
from pathlib import Path

from app.api.app import create_app
from app.config import Settings
from app.engine.wiring import load_engine

socket = Path("/nonexistent/engine.sock")
engine = load_engine(Settings(), None, warm_up=False, engine_socket=socket)
assert type(engine).__name__ == "RemoteEngine", type(engine)
assert sum(1 for _ in engine.registry) > 0  # tokenizers and heads loaded
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"onnxruntime", "torch", "onnx"})
print(",".join(loaded))
"""


def test_a_worker_engine_loads_no_onnx_runtime_nor_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"a worker imported {done.stdout.strip()}"
