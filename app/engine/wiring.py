"""Which engine a process runs, built from the implementations: the one module that
imports them all, imported by the application's start-up only (app/api/lifecycle.py).

The contract (app/engine/contract.py) stays free of implementations this way, and no
module below it imports one above it (tests/unit/test_import_rules.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.config import Settings
from app.engine.contract import Engine
from app.metrics import Metrics


def load_engine(
    settings: Settings,
    metrics: Metrics | None,
    *,
    warm_up: bool,
    engine_socket: Path | None = None,
    on_fatal: Callable[[Exception], None] | None = None,
) -> Engine:
    """Load (and warm) every model of the repository into this process; or, given the
    engine process's socket, wait for it and load only what requests need here
    (tokenizers, heads), with `on_fatal` called if the engine process is lost for good
    (replaced by one of another build). Blocking."""
    # Imported here, not at the top: a front-end worker never loads the in-process engine
    # (its sessions, ONNX Runtime), and the engine process never loads the link's client.
    if engine_socket is not None:
        from app.engine.transport.client import RemoteEngine

        return RemoteEngine.load(settings, metrics, engine_socket, on_fatal)
    from app.engine.in_process import InProcessEngine

    return InProcessEngine.load(settings, metrics, warm_up=warm_up)
