"""The model registry: loads every model of the repository and resolves names and defaults."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.backends.base import Backend
from app.backends.onnx import OnnxBackend
from app.config import Settings
from app.engine.attention import AttentionEncoder
from app.engine.batcher import BatchLimits, DynamicBatcher
from app.engine.encoder import Encoder
from app.engine.errors import ModelLoadError, ModelNotFound
from app.engine.heads import ClassifierHead
from app.engine.manifest import MANIFEST_FILE, ModelManifest, Task
from app.engine.model import ServedModel
from app.engine.tokenization import TextTokenizer
from app.metrics import Metrics

log = logging.getLogger(__name__)

# Measured on 2 cores with all-MiniLM-L6-v2: length-sorted passes of 8 gave 152-172
# sequences/s from random batches of 32-64, passes of 4 or 12 a little less, unsplit ~105.
CPU_FORWARD_BATCH = 8
REBUILD = "run `make models` (or `encoder-serve export`) to build it"
WARMUP_TEXT = "Warm-up: the first forward pass allocates what later ones reuse."


def discover(models_dir: Path, selected: list[str]) -> list[Path]:
    """Model directories to serve: all with a manifest, or the `selected` names only."""
    found = {
        path.parent.name: path.parent for path in sorted(models_dir.glob(f"*/{MANIFEST_FILE}"))
    }
    missing = [name for name in selected if name not in found]
    if missing:
        raise ModelLoadError(
            f"models {missing} were selected but have no {MANIFEST_FILE} under {models_dir}"
            f" (found: {sorted(found) or 'none'})"
        )
    return [found[name] for name in selected] if selected else list(found.values())


def batch_limits(settings: Settings, manifest: ModelManifest) -> BatchLimits:
    """The server's batch limits, with the manifest's per-model overrides applied."""
    overrides = manifest.batching
    return BatchLimits(
        max_batch_size=int(overrides.get("max_batch_size", settings.max_batch_size)),
        max_batch_tokens=int(overrides.get("max_batch_tokens", settings.max_batch_tokens)),
        max_wait_s=float(overrides.get("max_wait_ms", settings.max_wait_ms)) / 1000,
        max_queue=int(overrides.get("max_queue", settings.max_queue)),
        max_queue_tokens=int(overrides.get("max_queue_tokens", settings.max_queue_tokens)),
    )


def load_encoder(directory: Path, settings: Settings, metrics: Metrics | None) -> Encoder:
    """Load the graph and tokenizer of one model directory; failures name the model and file."""
    manifest = read_manifest(directory)
    tokenizer_path = directory / manifest.tokenizer
    if not tokenizer_path.is_file():
        raise ModelLoadError(f"model '{manifest.name}': {tokenizer_path} is missing; {REBUILD}")
    try:
        tokenizer = TextTokenizer(tokenizer_path, manifest.max_length)
    except Exception as error:
        raise ModelLoadError(
            f"model '{manifest.name}': bad tokenizer {tokenizer_path}: {error}"
        ) from error
    precision = manifest.default_precision if settings.precision == "auto" else settings.precision
    backend = open_backend(directory, manifest, settings, precision)
    limits = batch_limits(settings, manifest)
    encoder = Encoder(
        manifest,
        tokenizer,
        backend,
        limits,
        settings.request_timeout_s,
        metrics,
        forward_batch_size(settings, backend),
    )
    encoder.precision = precision
    if "attention" in manifest.files:
        encoder.attention = AttentionEncoder(
            manifest.name,
            TextTokenizer(tokenizer_path, min(settings.max_attention_tokens, manifest.max_length)),
            open_backend(directory, manifest, settings, "attention"),
            manifest.num_layers,
            manifest.num_heads,
            settings.request_timeout_s,
        )
    return encoder


def open_backend(
    directory: Path, manifest: ModelManifest, settings: Settings, graph: str
) -> Backend:
    """The backend for one graph of a model: a precision ("fp32", "int8", …) or "attention"."""
    torch_backend = settings.backend == "torch"
    key = "torch" if torch_backend else graph
    if key not in manifest.files:
        raise ModelLoadError(
            f"model '{manifest.name}' has no {key} build ({directory / MANIFEST_FILE} lists "
            f"{sorted(manifest.files)}); re-export it with that precision"
        )
    path = directory / manifest.files[key]
    if not path.exists():
        raise ModelLoadError(f"model '{manifest.name}': {path} is missing; {REBUILD}")
    threads, device = settings.intra_op_threads, settings.device
    try:
        if torch_backend:
            from app.backends.torch import TorchBackend

            return TorchBackend(
                path,
                classifier=manifest.task == "classification",
                threads=threads,
                device=device,
                half=graph == "fp16",
                attention=graph == "attention",
            )
        # The attention graph returns per-row maps, which packed rows would mix.
        pack = settings.packing and graph != "attention"
        return OnnxBackend(path, threads=threads, device=device, pack=pack)
    except Exception as error:
        raise ModelLoadError(f"model '{manifest.name}': cannot load {path}: {error}") from error


def forward_batch_size(settings: Settings, backend: Backend) -> int:
    """Rows per forward pass: small passes on CPU, whole batches on GPU."""
    if settings.forward_batch_size:
        return settings.forward_batch_size
    return CPU_FORWARD_BATCH if backend.device == "cpu" else settings.max_batch_size


def read_manifest(directory: Path) -> ModelManifest:
    try:
        return ModelManifest.read(directory)
    except Exception as error:
        raise ModelLoadError(
            f"model '{directory.name}': cannot read {directory / MANIFEST_FILE}: {error}"
        ) from error


def load_head(directory: Path, manifest: ModelManifest, base: Encoder) -> ClassifierHead:
    path = directory / str(manifest.head)
    try:
        head = ClassifierHead.load(path)
    except Exception as error:
        raise ModelLoadError(
            f"model '{manifest.name}': cannot load head {path}: {error}"
        ) from error
    expected = (base.manifest.dimensions, len(manifest.labels))
    if (head.input_size, head.output_size) != expected:
        raise ModelLoadError(
            f"model '{manifest.name}': head {path} maps {head.input_size} -> {head.output_size}, "
            f"but base '{base.name}' gives {expected[0]} dims and there are {expected[1]} labels"
        )
    return head


class ModelRegistry:
    """The loaded models by name, and the default model of each task."""

    def __init__(self, models: list[ServedModel], default_order: list[str]) -> None:
        self._models = {model.name: model for model in models}
        # Defaults: the preferred names first, then the rest alphabetically.
        preferred = [name for name in default_order if name in self._models]
        self._order = preferred + sorted(set(self._models) - set(preferred))

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None) -> ModelRegistry:
        """Load every selected model; a head model shares its base model's encoder."""
        directories = discover(settings.models_dir, settings.models)
        if not directories:
            raise ModelLoadError(
                f"no models under {settings.models_dir}: run `make models` to build the defaults"
            )
        encoders: dict[str, Encoder] = {}

        def encoder_of(name: str) -> Encoder:
            if name not in encoders:
                directory = settings.models_dir / name
                if "/" in name or not (directory / MANIFEST_FILE).is_file():
                    raise ModelLoadError(
                        f"base model '{name}' has no {MANIFEST_FILE} in {settings.models_dir}"
                    )
                encoders[name] = load_encoder(directory, settings, metrics)
            return encoders[name]

        models = []
        for directory in directories:
            manifest = read_manifest(directory)
            if manifest.base is None:
                models.append(ServedModel(manifest, encoder_of(directory.name), None, metrics))
                continue
            base = encoder_of(manifest.base)
            head = load_head(directory, manifest, base) if manifest.head else None
            models.append(ServedModel(manifest, base, head, metrics))
        if metrics is not None:
            for model in models:
                encoder = model.encoder
                info = (model.name, model.task, encoder.backend.name, encoder.precision)
                metrics.model_info.labels(*info).set(1)
        return cls(models, settings.default_models)

    def __iter__(self) -> Iterator[ServedModel]:
        return (self._models[name] for name in self._order)

    def get(self, name: str | None, task: Task) -> ServedModel:
        """The named model (of any task), or the default model for `task` when no name is given."""
        if name is None:
            for candidate in self:
                if candidate.task == task:
                    return candidate
            raise ModelNotFound(f"no loaded model serves the task '{task}'")
        found = self._models.get(name)
        if found is None:
            raise ModelNotFound(f"model '{name}' is not loaded (loaded: {', '.join(self._order)})")
        return found

    @property
    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        """Every batcher of every encoder: the inference path and the attention path."""
        found: list[DynamicBatcher[Any, Any]] = []
        for encoder in self.encoders:
            found.append(encoder.batcher)
            if encoder.attention is not None:
                found.append(encoder.attention.batcher)
        return found

    @property
    def encoders(self) -> list[Encoder]:
        """Each encoder once, though several models may share it."""
        unique = {id(model.encoder): model.encoder for model in self}
        return list(unique.values())

    def warm_up(self) -> None:
        """One forward pass per graph, off the event loop, before the server reports ready."""
        for encoder in self.encoders:
            encoder.warm_up(WARMUP_TEXT)
            log.info("model %s warmed up", encoder.name)
