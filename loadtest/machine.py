"""What the report records about the machine and the server's settings."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

from app.config import Settings

# CPU features that decide which ONNX Runtime kernels run (AVX-512 / VNNI for int8 and GEMM).
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def host_name() -> str:
    return socket.gethostname().split(".")[0] or "host"


def cpu_description() -> dict[str, str]:
    model, flags = "unknown", set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpu_model": model,
        "cpu_flags": " ".join(flag for flag in INTERESTING_FLAGS if flag in flags) or "–",
        "cores_online": str(os.cpu_count()),
        "cores_usable": str(len(os.sched_getaffinity(0))),
    }


def memory_gib() -> str:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return "unknown"
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f}"
    return "unknown"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def busy_notes(load_at_start: float) -> list[str]:
    """A warning when other work shared the cores: then compare figures within one run only."""
    cores = len(os.sched_getaffinity(0))
    if load_at_start <= 0.5 * cores:
        return []
    return [
        f"The machine was busy before the bench started (load average {load_at_start:.1f} on "
        f"{cores} cores). Absolute figures are noisy; compare ratios within this run."
    ]


def describe_machine() -> dict[str, str]:
    import numpy
    import onnxruntime

    return {
        **cpu_description(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": ", ".join(onnxruntime.get_available_providers()),
        "numpy": numpy.__version__,
        "gpu": gpu_names(),
        "load_average_at_start": load_average(),
    }


def gpu_names() -> str:
    """The GPUs nvidia-smi lists, or "none": says which machine a GPU report came from."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "none"
    return ", ".join(line.strip() for line in listed.splitlines() if line.strip()) or "none"


def describe_settings(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """Every effective ENCODER_* value, marking those the bench or the user set explicitly."""
    described: dict[str, str] = {}
    for key, value in settings.model_dump().items():
        name = f"ENCODER_{key.upper()}"
        # Secrets (API keys) print as asterisks: SecretStr's str() never shows the value.
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        source = " (set)" if name in env else ""
        described[name] = f"{shown}{source}"
    return described
