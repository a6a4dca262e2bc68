"""How many HTTP workers `auto` starts, and the log line that says what was chosen and why."""

from __future__ import annotations

from app.config import Settings
from app.container_limits import limits

# Memory each HTTP worker is budgeted: measured 157 MiB RSS per worker beside an engine of
# 867 MiB with the three default models (ENCODER_WORKERS=3, after a few requests). `auto`
# keeps the workers within half a memory limit, the other half being the engine's (issue
# #32: 8 workers and the three default models held 2.03 GiB, at a 2 GiB pod's limit;
# under 2 GiB `auto` now allows at most 6: 867 + 6 x 157 = 1.8 GiB).
WORKER_MEMORY_BYTES = 160 * 2**20


def worker_count(
    setting: int | str, cores: int | None = None, memory_bytes: int | None = None
) -> int:
    """ENCODER_WORKERS: a number, or `auto` — one HTTP process per 4 cores the server
    may use, at least one (so 1 on the 2-core machine, where the passes need both cores:
    see README "Workers and instances" for the figures), at most 8, and no more than
    half of a memory limit holds at WORKER_MEMORY_BYTES each. Cores and the memory limit
    are the cgroup's (app/container_limits.py) unless given."""
    if setting != "auto":
        return int(setting)
    if cores is None:
        cores, memory_bytes = limits().cores, limits().memory_bytes
    count = max(1, min(8, cores // 4))
    if memory_bytes is not None:
        count = max(1, min(count, memory_bytes // 2 // WORKER_MEMORY_BYTES))
    return count


def sizing_line(settings: Settings, workers: int) -> str:
    """What `auto` sizing chose and from what, logged once at start."""
    chosen = "ENCODER_WORKERS=auto" if settings.workers == "auto" else "ENCODER_WORKERS"
    return (
        f"sizing: {limits().describe()}; {workers} HTTP worker(s) ({chosen}), "
        f"{settings.intra_op_threads} intra-op thread(s) per model, "
        f"instances {settings.instances}"
    )
