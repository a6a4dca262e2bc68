"""Cores and memory from fake cgroup trees (v1, v2, hybrid, nested) and the `auto` choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.container_limits import Limits, read_limits
from app.sizing import WORKER_MEMORY_BYTES, sizing_line, worker_count

GIB = 2**30


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _self(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def test_v2_container_quota_and_memory(tmp_path: Path) -> None:
    # A container with its own cgroup namespace: its cgroup is the mount's root ("0::/").
    root = tmp_path / "cg"
    _write(root, "cpu.max", "200000 100000")
    _write(root, "memory.max", str(2 * GIB))
    found = read_limits(root, _self(tmp_path, "0::/\n"), affinity=32, physical_memory=64 * GIB)
    assert found.cpu_quota == 2.0
    assert found.cores == 2
    assert found.memory_bytes == 2 * GIB
    assert found.cpu_source == str(root / "cpu.max")


def test_v2_no_limits(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root, "cpu.max", "max 100000")
    _write(root, "memory.max", "max")
    found = read_limits(root, _self(tmp_path, "0::/\n"), affinity=8, physical_memory=64 * GIB)
    assert (found.cpu_quota, found.cores, found.memory_bytes) == (None, 8, None)


def test_v1_docker_container(tmp_path: Path) -> None:
    # cgroup v1 without a namespace: /proc/self/cgroup names the host's path, which does
    # not exist inside the container, whose mount's root is its own cgroup.
    root = tmp_path / "cg"
    _write(root, "cpu,cpuacct/cpu.cfs_quota_us", "150000")
    _write(root, "cpu,cpuacct/cpu.cfs_period_us", "100000")
    _write(root, "memory/memory.limit_in_bytes", str(GIB))
    own = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    found = read_limits(root, _self(tmp_path, own), affinity=32, physical_memory=64 * GIB)
    assert found.cpu_quota == 1.5
    assert found.cores == 2  # 1.5 CPUs keep two threads busy part of the time
    assert found.memory_bytes == GIB


def test_v1_unlimited_reads_as_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root, "cpu/cpu.cfs_quota_us", "-1")
    _write(root, "cpu/cpu.cfs_period_us", "100000")
    _write(root, "memory/memory.limit_in_bytes", "9223372036854771712")
    own = "3:cpu:/\n5:memory:/\n"
    found = read_limits(root, _self(tmp_path, own), affinity=4, physical_memory=64 * GIB)
    assert (found.cpu_quota, found.cores, found.memory_bytes) == (None, 4, None)


def test_the_tightest_level_wins_on_the_host(tmp_path: Path) -> None:
    # On a host (or a pod's nested cgroup), a parent's limit binds its children.
    root = tmp_path / "cg"
    _write(root, "kubepods/cpu.max", "100000 100000")
    _write(root, "kubepods/pod1/cpu.max", "400000 100000")
    _write(root, "kubepods/pod1/memory.max", str(3 * GIB))
    _write(root, "kubepods/memory.max", str(8 * GIB))
    own = "0::/kubepods/pod1\n"
    found = read_limits(root, _self(tmp_path, own), affinity=16, physical_memory=64 * GIB)
    assert found.cores == 1
    assert found.memory_bytes == 3 * GIB


def test_hybrid_layout_reads_v1_controllers(tmp_path: Path) -> None:
    # This development machine: v1 controllers and an empty v2 tree under unified/.
    root = tmp_path / "cg"
    (root / "unified").mkdir(parents=True)
    _write(root, "cpu/cpu.cfs_quota_us", "200000")
    _write(root, "cpu/cpu.cfs_period_us", "100000")
    own = "0::/\n3:cpu:/\n"
    found = read_limits(root, _self(tmp_path, own), affinity=2, physical_memory=64 * GIB)
    assert found.cores == 2
    assert found.cpu_source == str(root / "cpu" / "cpu.cfs_quota_us")


def test_the_affinity_caps_a_larger_quota(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root, "cpu.max", "800000 100000")
    found = read_limits(root, _self(tmp_path, "0::/\n"), affinity=2, physical_memory=64 * GIB)
    assert found.cores == 2


def test_a_memory_limit_above_the_machine_limits_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root, "memory.max", str(128 * GIB))
    found = read_limits(root, _self(tmp_path, "0::/\n"), affinity=2, physical_memory=24 * GIB)
    assert found.memory_bytes is None


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    found = read_limits(tmp_path / "none", tmp_path / "missing", affinity=3)
    assert (found.cores, found.memory_bytes) == (3, None)


def test_the_node_s_cores_no_longer_decide_in_a_2_cpu_pod() -> None:
    # Issue #32: 32 cores would give 8 workers; the pod's 2 CPUs give 1.
    assert worker_count("auto", Limits(affinity=32, cpu_quota=2.0).cores) == 1
    assert worker_count("auto", 32) == 8


@pytest.mark.parametrize(
    ("memory", "expected"),
    [(None, 8), (16 * GIB, 8), (2 * GIB, 2 * GIB // 2 // WORKER_MEMORY_BYTES), (256 * 2**20, 1)],
)
def test_a_memory_limit_caps_auto_workers(memory: int | None, expected: int) -> None:
    assert worker_count("auto", 64, memory) == min(8, expected)


def test_a_number_of_workers_ignores_the_limits() -> None:
    assert worker_count(6, 2, 256 * 2**20) == 6


def test_the_log_line_says_what_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "app.sizing.limits",
        lambda: Limits(2, 2.0, "/sys/fs/cgroup/cpu.max", 2 * GIB, "/sys/fs/cgroup/memory.max"),
    )
    monkeypatch.setenv("ENCODER_INTRA_OP_THREADS", "2")
    line = sizing_line(Settings(), 1)
    assert "2 cores (cgroup CPU quota 2 CPUs in /sys/fs/cgroup/cpu.max; CPU affinity 2)" in line
    assert "memory limit 2048 MiB (/sys/fs/cgroup/memory.max)" in line
    assert "1 HTTP worker(s) (ENCODER_WORKERS=auto)" in line
    assert "2 intra-op thread(s) per model" in line
