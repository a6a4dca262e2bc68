"""How many model instances (backend sessions running batches side by side) a model gets.

One ONNX Runtime session with N intra-op threads meets at a barrier in every operator:
whenever the event loop takes a core, the whole pass waits for the preempted thread.
Independent single-thread sessions do not wait for each other (Triton's instance groups).
"""

from __future__ import annotations

from typing import Literal

# `auto` on CPU: one instance with every core. Measured on the 2-core development machine
# (quick `make bench` runs alternating ENCODER_INSTANCES=1 and 2, packed rows, fp32):
#   1 client:            141 / 143 sequences/s with one instance, 98 / 96 with two (a lone
#                        request runs on one thread: 7 ms becomes 10 ms);
#   32 clients, 1 text:  218 / 210 against 203 / 161;
#   4 clients x 32 texts: 208 / 215 against 255 / 255 (two instances +20 %).
# Two single-thread instances win only when requests carry many texts; set
# ENCODER_INSTANCES=2 for such traffic. (README, "Model instances".)
CPU_INSTANCES = 1
# A GPU runs one batch at a time best: more sessions would only split its memory.
GPU_INSTANCES = 1


def instance_count(setting: int | Literal["auto"], override: int | None, device: str) -> int:
    """Instances for one model: the manifest's override, else the setting, else the rule."""
    if override is not None:
        return override
    if setting != "auto":
        return setting
    return CPU_INSTANCES if device == "cpu" else GPU_INSTANCES


def threads_per_instance(threads: int, instances: int) -> int:
    """The model's threads shared evenly among its instances (at least one each)."""
    return max(1, threads // instances)
