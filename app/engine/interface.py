"""The engine as the HTTP edge sees it: calls and results of plain data, nothing more.

`app/api/` imports from the engine only this module and `app.engine.errors`. Arguments
and results are strings, numbers, numpy arrays and frozen dataclasses of them, so one
interface serves calls in this process and, later, across a process boundary; the API
never holds a backend, a batcher or a tokenizer.

Per-request accounting: each call adds its queue and inference time to the caller's
`current_timing` (a context variable the HTTP edge opens per request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.engine.attention import Aggregate, AttentionMap
from app.engine.classification import DEFAULT_HYPOTHESIS_TEMPLATE, LabelScore, template_problem
from app.engine.explain import ExplainOptions, Explanation, WordScore
from app.engine.explain import Method as ExplainMethod
from app.engine.manifest import Pooling, Task
from app.engine.timing import RequestTiming, current_timing
from app.engine.tokenization import TextInput, Token

if TYPE_CHECKING:
    from app.config import Settings
    from app.metrics import Metrics

__all__ = [
    "DEFAULT_HYPOTHESIS_TEMPLATE",
    "Aggregate",
    "AttentionMap",
    "Classification",
    "ClassifyOptions",
    "Embeddings",
    "Engine",
    "ExplainMethod",
    "ExplainOptions",
    "Explanation",
    "LabelScore",
    "ModelDescription",
    "Pooling",
    "RequestTiming",
    "Task",
    "TextInput",
    "Token",
    "TokenEmbeddings",
    "TokenIds",
    "Tokenization",
    "WordScore",
    "current_timing",
    "load_engine",
    "template_problem",
]


@dataclass(frozen=True)
class ModelDescription:
    """A served model as clients are told about it (GET /models, TEI's /info)."""

    name: str
    task: Task
    source: str  # what it was exported from (a package, a directory, a hub id)
    labels: list[str]
    dimensions: int
    max_length: int
    pooling: Pooling
    backend: str  # "onnx", "torch" (or "benchmark-fixed", benchmarks only)
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32", "int8", "fp16"
    instances: int  # backend sessions running batches side by side
    max_batch_size: int
    max_batch_tokens: int
    max_queue: int
    tokenization_workers: int  # threads that tokenize large requests off the event loop
    attention: bool  # has an attention graph (POST /attention)


@dataclass(frozen=True)
class TokenIds:
    """Inputs given as token ids rather than text (special tokens included)."""

    ids: list[list[int]]


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 (inputs, dimensions)
    tokens: int


@dataclass(frozen=True)
class TokenEmbeddings:
    """Per input, the last hidden state of each token (special tokens included), unpooled."""

    states: list[np.ndarray]  # float32 (tokens, hidden) per input
    tokens: int


@dataclass(frozen=True)
class ClassifyOptions:
    truncate: bool = True
    top_k: int | None = None  # keep the K best labels per input
    raw_scores: bool = False  # logits (or cosines) instead of probabilities
    multi_label: bool = False  # each label on its own (sigmoid) instead of a softmax


@dataclass(frozen=True)
class Classification:
    results: list[list[LabelScore]]  # per input, highest score first
    tokens: int


@dataclass(frozen=True)
class Tokenization:
    tokens: list[list[Token]]  # per input, special tokens included
    truncated: list[bool]  # per input: it had more tokens than the model's max length


class Engine(Protocol):
    """Every model the server serves, and what a request can ask of them."""

    def models(self) -> list[ModelDescription]:
        """Every served model, the default of each task first."""
        ...

    def model(self, name: str | None, task: Task) -> ModelDescription:
        """The named model (of any task), or the default for `task`; ModelNotFound else."""
        ...

    async def embed(
        self,
        model: str,
        inputs: Sequence[str] | TokenIds,
        *,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings: ...

    async def embed_tokens(
        self, model: str, inputs: Sequence[str], *, truncate: bool = True
    ) -> TokenEmbeddings:
        """Every token's last hidden state, unpooled (an embedding model's)."""
        ...

    async def classify(
        self, model: str, inputs: Sequence[TextInput], options: ClassifyOptions
    ) -> Classification:
        """A classifier's label scores; an input may be a sentence pair (text, text_pair)."""
        ...

    async def zero_shot(
        self,
        model: str,
        inputs: Sequence[str],
        labels: list[str],
        template: str,
        options: ClassifyOptions,
    ) -> Classification: ...

    async def attention(
        self,
        model: str,
        text: str,
        *,
        layers: list[int] | None,
        heads: list[int] | None,
        how: Aggregate,
        truncate: bool,
    ) -> AttentionMap: ...

    async def explain(
        self,
        model: str,
        text: str,
        options: ExplainOptions,
        labels: list[str] | None = None,
        template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    ) -> Explanation:
        """How much each word of `text` moved a label's score: a classifier's label, or with
        `labels` a zero-shot label of an embedding model. Its inputs run at low priority."""
        ...

    async def tokenize(self, model: str, texts: Sequence[str]) -> Tokenization: ...

    async def decode(
        self, model: str, ids: list[list[int]], *, skip_special_tokens: bool = True
    ) -> list[str]:
        """The text of each list of token ids, by the model's tokenizer."""
        ...

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start serving on the running event loop: the batch workers, or the link to the
        engine process (waiting until it has described its models)."""
        ...

    def not_ready(self) -> str | None:
        """Why the engine cannot serve now (batch workers stopped, the engine process
        restarting), or None when it can."""
        ...

    async def drain(self, timeout_s: float) -> bool:
        """Wait, up to `timeout_s`, until every queued and running input is answered;
        False when the time ran out first."""
        ...

    async def close(self) -> None:
        """Stop the workers; what is still queued fails as NotReady."""
        ...


def load_engine(
    settings: Settings,
    metrics: Metrics | None,
    *,
    warm_up: bool,
    engine_socket: Path | None = None,
    on_fatal: Callable[[Exception], None] | None = None,
) -> Engine:
    """Load (and warm) every model of the repository into this process; or, given the
    engine process's socket, wait for it and load only what requests need here
    (tokenizers, heads), with `on_fatal` called if the engine process is lost for good
    (replaced by one of another build). Blocking."""
    # The implementations import this module.
    if engine_socket is not None:
        from app.engine.remote import RemoteEngine

        return RemoteEngine.load(settings, metrics, engine_socket, on_fatal)
    from app.engine.local import InProcessEngine

    return InProcessEngine.load(settings, metrics, warm_up=warm_up)
