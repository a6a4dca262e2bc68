"""The CPUs and memory this process may really use: its affinity and its cgroup's limits.

A container limited to 2 CPUs on a 32-core node still sees 32 cores in `os.cpu_count()`
and, usually, in its CPU affinity: Docker's `--cpus` and Kubernetes' `limits.cpu` set a
CFS quota (cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, v2 `cpu.max`), not an
affinity. Sizing `auto` settings from the node's cores starts 8 HTTP workers and 32
intra-op threads in a pod that may run 2 cores' worth: throttled passes and a memory
footprint over the pod's limit (issue #32). So every `auto` that counts cores asks here.

The cgroup of this process is read from /proc/self/cgroup; each level from it up to the
mount's root that exists here is read and the tightest limit wins (a parent's limit binds
its children). Inside a container the mount's root *is* the container's cgroup, so the
host's path in /proc/self/cgroup does not exist there and the root is what is read.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number; anything near it
# is no limit at all.
_NO_MEMORY_LIMIT = 1 << 60


@dataclass(frozen=True)
class Limits:
    """What was found, and where: `cores` and `memory_bytes` are what sizing uses."""

    affinity: int  # CPUs in this process's affinity mask
    cpu_quota: float | None = None  # CPUs' worth of time the CFS quota allows (2.0); None: none
    cpu_source: str | None = None  # the file that set it
    memory_bytes: int | None = None  # the memory limit; None: none (or above the machine's)
    memory_source: str | None = None

    @property
    def cores(self) -> int:
        """Whole cores to size for: the affinity, capped by the quota rounded up (a quota of
        1.5 CPUs keeps two threads busy part of the time, which beats one all the time)."""
        if self.cpu_quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.cpu_quota - 1e-9)))

    def describe(self) -> str:
        """One line for the log: what was chosen and why."""
        if self.cpu_quota is None:
            cpu = f"{self.cores} cores (CPU affinity; no cgroup CPU quota)"
        else:
            cpu = (
                f"{self.cores} cores (cgroup CPU quota {self.cpu_quota:g} CPUs in "
                f"{self.cpu_source}; CPU affinity {self.affinity})"
            )
        if self.memory_bytes is None:
            memory = "no cgroup memory limit"
        else:
            memory = f"memory limit {self.memory_bytes / 2**20:.0f} MiB ({self.memory_source})"
        return f"{cpu}, {memory}"


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _own_cgroups(self_cgroup: Path) -> list[tuple[str, str]]:
    """(controllers, path) per line of /proc/self/cgroup; controllers is "" for v2."""
    try:
        text = self_cgroup.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            found.append((parts[1], parts[2]))
    return found


def _levels(bases: list[Path], path: str) -> Iterator[Path]:
    """Each existing directory from the cgroup's own up to the mount's root, per base."""
    relative = PurePosixPath(path.lstrip("/") or ".")
    for base in bases:
        if not base.is_dir():
            continue
        for level in (relative, *relative.parents):
            directory = base / str(level)
            if directory.is_dir():
                yield directory


def _directories(controller: str, root: Path, self_cgroup: Path) -> Iterator[Path]:
    """cgroup v2 (unified, or hybrid's `unified/`) and v1 directories of `controller`."""
    own = _own_cgroups(self_cgroup) or [("", "/")]
    for controllers, path in own:
        if controllers == "":
            yield from _levels([root, root / "unified"], path)
        elif controller in controllers.split(","):
            yield from _levels([root / controllers, root / controller], path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _cpu_quota(directory: Path) -> tuple[float, Path] | None:
    v2 = _read(directory / "cpu.max")  # "max 100000" or "200000 100000"
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            return int(quota) / int(period), directory / "cpu.max"
        return None
    quota_text = _read(directory / "cpu.cfs_quota_us")  # -1: no quota
    period_text = _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota_us, period_us = int(quota_text), int(period_text)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us, directory / "cpu.cfs_quota_us"


def _memory_limit(directory: Path) -> tuple[int, Path] | None:
    for name in ("memory.max", "memory.limit_in_bytes"):  # v2, v1
        text = _read(directory / name)
        if text is None:
            continue
        if text.isdigit() and int(text) < _NO_MEMORY_LIMIT:
            return int(text), directory / name
        return None
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return None


def read_limits(
    root: Path = CGROUP_ROOT,
    self_cgroup: Path = SELF_CGROUP,
    affinity: int | None = None,
    physical_memory: int | None = None,
) -> Limits:
    """The limits found under `root` for the cgroup named in `self_cgroup` (tests pass a
    fake tree); the tightest of each kind wins."""
    quotas = [q for d in _directories("cpu", root, self_cgroup) if (q := _cpu_quota(d))]
    memories = [m for d in _directories("memory", root, self_cgroup) if (m := _memory_limit(d))]
    quota = min(quotas, key=lambda found: found[0], default=None)
    memory = min(memories, key=lambda found: found[0], default=None)
    machine = physical_memory if physical_memory is not None else _physical_memory()
    if memory is not None and machine is not None and memory[0] >= machine:
        memory = None  # a limit above the machine's memory limits nothing
    return Limits(
        affinity=affinity if affinity is not None else _affinity(),
        cpu_quota=quota[0] if quota else None,
        cpu_source=str(quota[1]) if quota else None,
        memory_bytes=memory[0] if memory else None,
        memory_source=str(memory[1]) if memory else None,
    )


@functools.cache
def limits() -> Limits:
    """This process's limits, read once (they do not change under a running server)."""
    return read_limits()
