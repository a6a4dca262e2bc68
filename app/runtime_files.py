"""The files through which the server's processes say why the engine is down, in the
supervisor's private runtime directory: the engine process writes its start-up error, the
supervisor (app/processes.py) what it concluded, each worker's /ready reads that.

Apart from app/processes.py so the engine process and the workers reach them without
importing the supervisor (which imports both: an import circle).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ENGINE_ERROR_FILE = "engine-error"  # the engine's own start-up error line, for its supervisor
ENGINE_DOWN_FILE = "engine-down"  # why the engine is not running, for the workers' /ready


def engine_down_reason(runtime: Path) -> str | None:
    """What the supervisor wrote about the engine's last failure (read by each worker's
    /ready while the engine is down); None while there is none."""
    try:
        return (runtime / ENGINE_DOWN_FILE).read_text().strip() or None
    except OSError:
        return None


def write_engine_error(runtime: Path, error: BaseException) -> None:
    """In the engine process: leave its start-up error's first line for the supervisor."""
    line = (str(error).strip().splitlines() or [""])[0][:500]
    with contextlib.suppress(OSError):
        write_atomically(runtime / ENGINE_ERROR_FILE, f"{type(error).__name__}: {line}")


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)  # a reader sees the old text or the new, never half
