"""Which ONNX Runtime providers the backend asks for, on machines with and without CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.backends import onnx


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """onnxruntime-gpu's view of a GPU machine; records calls to preload_dlls."""
    preloads: list[str] = []
    monkeypatch.setattr(
        onnx.ort,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnx.ort, "preload_dlls", lambda: preloads.append("loaded"), raising=False)
    onnx.load_cuda_libraries.cache_clear()
    yield preloads
    onnx.load_cuda_libraries.cache_clear()


def test_auto_picks_cuda_and_loads_its_libraries_once(with_cuda: list[str]) -> None:
    assert onnx.choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx.choose_providers("cuda")[0] == "CUDAExecutionProvider"
    assert with_cuda == ["loaded"]


def test_cpu_stays_on_cpu_even_with_a_gpu(with_cuda: list[str]) -> None:
    assert onnx.choose_providers("cpu") == ["CPUExecutionProvider"]
    assert with_cuda == []


def test_cuda_without_onnxruntime_gpu_is_refused() -> None:
    if "CUDAExecutionProvider" in onnx.ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    assert onnx.choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider"):
        onnx.choose_providers("cuda")
