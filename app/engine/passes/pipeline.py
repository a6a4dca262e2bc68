"""The one inference pipeline: tokenize → pad or pack → run → pool → normalize.

The server's forward passes, the exporter's parity and precision checks, head-training
features and the benchmark's engine limit all run through `Pipeline`, and every graph is
opened through `open_pipeline`, so what a check or a benchmark measures is what is served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.backends.base import Backend
from app.backends.onnx import Device, OnnxBackend
from app.engine.errors import ModelLoadError
from app.engine.manifest import LOGIT_TASKS, MANIFEST_FILE, ModelManifest, Pooling
from app.engine.models.encoder import normalize
from app.engine.models.tokenization import REBUILD, TextTokenizer, TokenizedText, open_tokenizer
from app.engine.passes.busy import BusyClock
from app.engine.passes.packing import Span, packed_inputs, packed_passes, pool_spans

# Measured on 2 cores with all-MiniLM-L6-v2: length-sorted passes of 8 gave 152-172
# sequences/s from random batches of 32-64, passes of 4 or 12 a little less, unsplit ~105.
CPU_ROWS_PER_PASS = 8
# Offline work (export checks, features) takes inputs in length-sorted chunks of this many.
OFFLINE_BATCH = 64

# Called once per forward pass with (inputs in it, padded tokens it ran): batch metrics.
PassObserver = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class PassInputs:
    """One forward pass of a batch, prepared: the batch's inputs in it (row i is the i-th
    padded, or in span order packed), the graph inputs, and where packed, each input's span."""

    indices: list[int]
    inputs: dict[str, np.ndarray]
    spans: list[Span] | None = None
    # The inputs already in the device's memory (ONNX Runtime with IO binding: `upload`).
    feeds: dict[str, Any] | None = None


def pad_batch(items: Sequence[TokenizedText]) -> dict[str, np.ndarray]:
    """Right-pad a batch to its longest input: the three standard encoder inputs."""
    longest = max(item.tokens for item in items)
    input_ids = np.zeros((len(items), longest), dtype=np.int64)
    token_type_ids = np.zeros_like(input_ids)
    attention_mask = np.zeros_like(input_ids)
    for row, item in enumerate(items):
        n = item.tokens
        input_ids[row, :n] = item.ids
        token_type_ids[row, :n] = item.type_ids
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: Pooling) -> np.ndarray:
    """(batch, tokens, hidden) states -> (batch, hidden) vectors, ignoring padding."""
    if mode == "cls":
        return hidden[:, 0, :]
    mask = attention_mask.astype(hidden.dtype)
    # One contraction instead of a masked copy of the states: 4x faster at batch 64.
    summed = np.einsum("btd,bt->bd", hidden, mask)
    counts = np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    return summed / counts


class Pipeline:
    """One graph with its tokenizer: texts or tokenized inputs in, vectors out.

    A vector is the pooled last hidden state, or a classifier graph's logits. Passes hold
    at most `rows_per_pass` rows: packed rows where the backend takes them (short inputs
    share a row), else one right-padded input per row, in the order given.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        backend: Backend,
        pooling: Pooling,
        rows_per_pass: int,
        observe: PassObserver | None = None,
        busy: BusyClock | None = None,
    ) -> None:
        """`busy`: the model's clock of passes in flight (the device duty cycle metric)."""
        self.tokenizer = tokenizer
        self.backend = backend
        self.pooling = pooling
        self.rows_per_pass = rows_per_pass
        self._observe = observe
        self._busy = busy
        # A backend that takes its inputs in device memory gets them copied there as
        # passes are prepared, beside the pass before (ONNX Runtime on CUDA).
        self._uploads = backend if isinstance(backend, OnnxBackend) and backend.binds else None

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self.tokenizer.encode(list(texts))

    def forward(self, items: Sequence[TokenizedText]) -> list[np.ndarray]:
        """A vector per input, in order: `prepare`, `run` and `finish` in one go (the
        server's batcher runs the three in two threads; see `prepare`)."""
        passes = self.prepare(items)
        return self.finish(passes, self.run(passes))

    def prepare(self, items: Sequence[TokenizedText]) -> list[PassInputs]:
        """The graph inputs of a batch's forward passes, in the order they run (the host
        thread, while the device runs the batch before).

        On CPU, padding and attention's quadratic cost weigh more than batching gains, so
        small passes with little padding are fastest (measured on 2 cores: random batches
        of 32 ran at 101 sequences/s in one pass, 160 in length-sorted passes of 8, 200
        packed). The batcher sorts by length, so neighbours in length share a pass.
        """
        passes = []
        if self.backend.packed:
            lengths = [item.tokens for item in items]
            for rows in packed_passes(lengths, self.rows_per_pass):
                inputs, spans = packed_inputs(items, rows)
                passes.append(PassInputs([i for row in rows for i in row], inputs, spans))
        else:
            for start in range(0, len(items), self.rows_per_pass):
                indices = list(range(start, min(start + self.rows_per_pass, len(items))))
                passes.append(PassInputs(indices, pad_batch([items[i] for i in indices])))
        if self._uploads is not None:
            uploads = self._uploads
            passes = [replace(batch, feeds=uploads.upload(batch.inputs)) for batch in passes]
        return passes

    def run(self, passes: Sequence[PassInputs]) -> list[dict[str, np.ndarray]]:
        """The forward passes alone, back to back: each one's outputs (the device thread)."""
        outputs = []
        for batch in passes:
            self._count_pass(len(batch.indices), batch.inputs["input_ids"].size)
            with self._in_flight():
                if batch.feeds is not None and self._uploads is not None:
                    outputs.append(self._uploads.run(batch.feeds))
                else:
                    outputs.append(self.backend.run(batch.inputs))
        return outputs

    def finish(
        self, passes: Sequence[PassInputs], outputs: Sequence[dict[str, np.ndarray]]
    ) -> list[np.ndarray]:
        """Each input's vector, in input order, from its pass's outputs: pooled last
        hidden states, or a classifier graph's logits (the host thread)."""
        count = sum(len(batch.indices) for batch in passes)
        vectors: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * count
        for batch, output in zip(passes, outputs, strict=True):
            if batch.spans is not None:
                hidden = output["last_hidden_state"]
                pooled = pool_spans(hidden, batch.spans, self.pooling)
            elif "logits" in output:  # a sequence-classification graph pools and classifies
                pooled = output["logits"]
            else:
                mask = batch.inputs["attention_mask"]
                pooled = pool(output["last_hidden_state"], mask, self.pooling)
            for index, vector in zip(
                batch.indices, pooled.astype(np.float32, copy=False), strict=True
            ):
                vectors[index] = vector
        return vectors

    def embed(
        self,
        texts: Sequence[str],
        *,
        normalized: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """(texts, width) vectors of many texts at once (offline work: checks, features).

        Chunks of neighbours in length (a pass's rows, at least `OFFLINE_BATCH`), so little
        is padding; rows come back in input order. `progress(done, total)` follows each.
        """
        items = self.tokenize(texts)
        order = sorted(range(len(items)), key=lambda index: items[index].tokens)
        vectors: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(items)
        size = max(self.rows_per_pass, OFFLINE_BATCH)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for index, vector in zip(chunk, self.forward([items[i] for i in chunk]), strict=True):
                vectors[index] = vector
            if progress is not None:
                progress(start + len(chunk), len(order))
        stacked = np.stack(vectors)
        return normalize(stacked) if normalized else stacked

    def token_states(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's (tokens, hidden) last states without padding, from one padded pass:
        what parity compares token by token. Classifier graphs give (labels,) logits."""
        items = self.tokenize(texts)
        inputs = pad_batch(items)
        outputs = self.backend.run(inputs)
        if "logits" in outputs:
            return list(outputs["logits"].astype(np.float32, copy=False))
        hidden = outputs["last_hidden_state"].astype(np.float32, copy=False)
        return [hidden[row, : item.tokens] for row, item in enumerate(items)]

    def token_vectors(self, items: Sequence[TokenizedText]) -> list[np.ndarray]:
        """Each input's (tokens, hidden) last hidden states, unpooled (TEI's /embed_all), in
        the passes `forward` would run: packed rows where the backend takes them."""
        states: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(items)
        passes = self.prepare(items)
        for batch, outputs in zip(passes, self.run(passes), strict=True):
            hidden = outputs["last_hidden_state"]
            if batch.spans is not None:
                for index, span in zip(batch.indices, batch.spans, strict=True):
                    states[index] = hidden[span.row, span.start : span.start + span.tokens]
            else:
                for row, index in enumerate(batch.indices):
                    states[index] = hidden[row, : items[index].tokens]
        return [np.array(state, dtype=np.float32) for state in states]  # own copies

    def attention_maps(self, items: Sequence[TokenizedText]) -> list[np.ndarray]:
        """(layers, heads, n, n) attention probabilities per input, cut to its own tokens
        (an attention graph: one padded pass, whose rows must not mix inputs)."""
        inputs = pad_batch(items)
        with self._in_flight():
            maps = self.backend.run(inputs)["attentions"]  # (batch, layers, heads, T, T)
        return [maps[row, :, :, : item.tokens, : item.tokens] for row, item in enumerate(items)]

    def warm_up(self, text: str) -> None:
        """One pass (allocations, kernel choices) that no metric sees."""
        self.forward_unobserved(self.tokenize([text]))

    def forward_unobserved(self, items: Sequence[TokenizedText]) -> list[np.ndarray]:
        """`forward` that no metric sees: passes of the server's own (warm-up, load checks)."""
        with self.unobserved():
            return self.forward(items)

    @contextlib.contextmanager
    def unobserved(self) -> Iterator[None]:
        """No metric sees the passes run inside (warm-up, load checks): neither the batch
        metrics nor the device duty cycle."""
        observe, self._observe = self._observe, None
        busy, self._busy = self._busy, None
        try:
            yield
        finally:
            self._observe = observe
            self._busy = busy

    def _in_flight(self) -> contextlib.AbstractContextManager[None]:
        """Around a `backend.run`: the device is busy for the duty cycle metric."""
        return self._busy if self._busy is not None else contextlib.nullcontext()

    def _count_pass(self, inputs: int, padded_tokens: int) -> None:
        if self._observe is not None:
            self._observe(inputs, padded_tokens)


def resolve_precision(manifest: ModelManifest, requested: str) -> str:
    """The graph a precision setting selects: `auto` takes the manifest's default."""
    return manifest.default_precision if requested == "auto" else requested


def open_backend(
    directory: Path,
    manifest: ModelManifest,
    graph: str,
    *,
    engine: str = "onnx",
    threads: int,
    device: Device = "auto",
    pack: bool = False,
    sim_us: tuple[float, float] = (0.0, 0.0),
) -> Backend:
    """The backend for one graph of a model: a precision ("fp32", "int8", …) or "attention".

    `engine` "torch" runs the exported PyTorch weights instead of an ONNX graph, and
    "benchmark-fixed" no model at all (app/backends/fixed.py: benchmarks only), and
    "benchmark-sim" none either, each pass waiting `sim_us` = (per pass, per padded token)
    microseconds like an accelerator.
    """
    if engine in ("benchmark-fixed", "benchmark-sim"):
        return fixed_backend(manifest, graph, sim_us if engine == "benchmark-sim" else None)
    torch_engine = engine == "torch"
    key = "torch" if torch_engine else graph
    if key not in manifest.files:
        raise ModelLoadError(
            f"model '{manifest.name}' has no {key} build ({directory / MANIFEST_FILE} lists "
            f"{sorted(manifest.files)}); re-export it with that precision"
        )
    path = directory / manifest.files[key]
    if not path.exists():
        raise ModelLoadError(f"model '{manifest.name}': {path} is missing; {REBUILD}")
    try:
        if torch_engine:
            from app.backends.torch import TorchBackend

            return TorchBackend.load(
                path,
                classifier=manifest.task in LOGIT_TASKS,
                threads=threads,
                device=device,
                half=graph == "fp16",
                attention=graph == "attention",
            )
        # The attention graph returns per-row maps, which packed rows would mix.
        return OnnxBackend(path, threads=threads, device=device, pack=pack and graph != "attention")
    except Exception as error:
        raise ModelLoadError(f"model '{manifest.name}': cannot load {path}: {error}") from error


def fixed_backend(
    manifest: ModelManifest, graph: str, sim_us: tuple[float, float] | None = None
) -> Backend:
    """The benchmark-only backend, shaped like the graph it stands in for; with `sim_us`
    (microseconds per pass, per padded token) the simulated accelerator."""
    from app.backends.fixed import FixedBackend, SimulatedBackend

    if graph == "attention":
        shape: tuple[str, int, int, int] = (
            "attentions",
            0,
            manifest.num_layers,
            manifest.num_heads,
        )
    elif manifest.task in LOGIT_TASKS:
        shape = ("logits", len(manifest.labels), 1, 1)
    else:
        shape = ("last_hidden_state", manifest.dimensions, 1, 1)
    if sim_us is None:
        return FixedBackend(*shape)
    return SimulatedBackend(*shape, pass_us=sim_us[0], token_us=sim_us[1])


def open_pipeline(
    directory: Path,
    manifest: ModelManifest,
    graph: str = "auto",
    *,
    engine: str = "onnx",
    threads: int,
    device: Device = "auto",
    pack: bool = False,
    rows_per_pass: int = 0,
    unsplit_rows: int = OFFLINE_BATCH,
    max_length: int | None = None,
    observe: PassObserver | None = None,
    busy: BusyClock | None = None,
    sim_us: tuple[float, float] = (0.0, 0.0),
) -> Pipeline:
    """The pipeline of one graph of a model directory, as the server opens it.

    `graph`: a precision setting ("auto", "fp32", "int8", "fp16") or "attention".
    `rows_per_pass` 0: small passes on CPU, `unsplit_rows` (a whole batch) on a GPU.
    `max_length` cuts the tokenizer shorter than the model's (the attention limit).
    `busy` times its passes (the device duty cycle); `sim_us`: see `open_backend`.
    """
    chosen = graph if graph == "attention" else resolve_precision(manifest, graph)
    length = min(max_length or manifest.max_length, manifest.max_length)
    tokenizer = open_tokenizer(directory, manifest, length)
    backend = open_backend(
        directory,
        manifest,
        chosen,
        engine=engine,
        threads=threads,
        device=device,
        pack=pack,
        sim_us=sim_us,
    )
    rows = rows_per_pass or (CPU_ROWS_PER_PASS if backend.device == "cpu" else unsplit_rows)
    return Pipeline(tokenizer, backend, manifest.pooling, rows, observe, busy)
