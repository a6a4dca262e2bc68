"""ONNX Runtime backend: CPU by default, CUDA picked automatically where it is available."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from app.backends.packing import packed_graph

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


def choose_providers(device: Device) -> list[str]:
    """CUDA where asked for or (on `auto`) where onnxruntime-gpu sees a GPU; else CPU."""
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("device 'cuda' requested but onnxruntime has no CUDAExecutionProvider")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        load_cuda_libraries()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@functools.cache
def load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (`pip install onnxruntime-gpu[cuda,cudnn]`),
    which are not on the loader's path; a CUDA base image has them there already, and then
    this finds nothing to do. Without it the session quietly falls back to the CPU."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        try:
            preload()
        except Exception as error:  # the loader's own paths may still have them
            log.warning("onnxruntime.preload_dlls failed: %s", error)


class OnnxBackend:
    """One ONNX Runtime session over one graph file."""

    name = "onnx"

    def __init__(
        self,
        graph: Path,
        *,
        threads: int,
        device: Device = "auto",
        pack: bool = False,
        io_binding: bool | None = None,
    ) -> None:
        """`io_binding`: run passes with IO binding (`upload`, `run`); None: on CUDA only,
        where the inputs and outputs cross to and from device memory."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Batches run one at a time from a single worker thread, so every core goes
        # to intra-op parallelism; inter-op threads would only contend with it.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning intra-op threads burn the cores the event loop and tokenizer need while
        # a batch is being formed; profiled on 2 cores, it doubled the CPU per sequence at
        # batch 1 (33-35 ms vs 17-19 ms) without making passes faster.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = choose_providers(device)
        # Packing is measured and tested on the CPU provider only; CUDA runs padded batches
        # (and so does a session that asked for CUDA and fell back to the CPU).
        packed = None
        if pack and providers[0] == "CPUExecutionProvider":
            try:
                packed = packed_graph(graph)
            except Exception as error:  # padded batches still work
                log.warning("%s: cannot rewrite for packed rows (%s); running padded", graph, error)
        source = str(graph) if packed is None else packed
        self._session = ort.InferenceSession(source, options, providers=providers)
        self.packed = packed is not None
        self.device = (
            "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        )
        if io_binding is None:
            io_binding = self.device == "cuda"
        # Where bound outputs are allocated: the device's memory, copied back once per pass.
        self._bind_to: str | None = (
            ("cuda" if self.device == "cuda" else "cpu") if io_binding else None
        )
        self._input_names = [node.name for node in self._session.get_inputs()]
        self._output_names = [node.name for node in self._session.get_outputs()]
        log.info(
            "loaded %s on %s (%d threads%s)",
            graph,
            self.device,
            threads,
            ", packed rows" if self.packed else "",
        )

    @property
    def binds(self) -> bool:
        """Passes run with IO binding, so inputs may be `upload`ed ahead of them."""
        return self._bind_to is not None

    def upload(self, inputs: Mapping[str, np.ndarray]) -> dict[str, ort.OrtValue]:
        """A pass's graph inputs, copied to the device's memory ahead of the pass: the
        batcher's host thread does this while the device runs the pass before, so the
        copy leaves the device thread's path. For `run` of a backend that `binds`."""
        device = self._bind_to or "cpu"
        return {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[name]), device, 0)
            for name in self._input_names
        }

    def run(self, inputs: Mapping[str, np.ndarray | ort.OrtValue]) -> dict[str, np.ndarray]:
        """One pass. Inputs are arrays, or where the backend `binds`, arrays or values
        `upload` placed on the device already."""
        if self._bind_to is not None:
            return self._run_bound(inputs, self._bind_to)
        feeds = {name: inputs[name] for name in self._input_names}
        outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs, strict=True))

    def _run_bound(
        self, inputs: Mapping[str, np.ndarray | ort.OrtValue], device: str
    ) -> dict[str, np.ndarray]:
        """IO binding: inputs already on the device are bound where they are and the rest
        copied there once, outputs allocated there by ONNX Runtime and copied back once,
        with no intermediate host buffers."""
        binding = self._session.io_binding()
        for name in self._input_names:
            value = inputs[name]
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._output_names:
            binding.bind_output(name, device)
        self._session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, outputs, strict=True))
