"""How many instances a model gets, and their threads."""

from __future__ import annotations

from app.engine.batching.instances import (
    CPU_INSTANCES,
    GPU_INSTANCES,
    instance_count,
    threads_per_instance,
)


def test_the_manifest_overrides_the_setting_which_overrides_the_rule() -> None:
    assert instance_count(3, 2, "cpu") == 2
    assert instance_count(3, None, "cpu") == 3
    assert instance_count("auto", None, "cpu") == CPU_INSTANCES
    assert instance_count("auto", None, "cuda") == GPU_INSTANCES


def test_threads_are_shared_evenly_and_never_zero() -> None:
    assert threads_per_instance(8, 2) == 4
    assert threads_per_instance(2, 2) == 1
    assert threads_per_instance(2, 4) == 1
