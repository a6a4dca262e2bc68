"""The engine as the HTTP edge sees it: calls and results of plain data, nothing more.

`app/api/` imports from the engine only this module and `app.engine.errors` (and, at
start-up, `app.engine.wiring`, which builds the implementation). Every type a call takes
or returns is defined here (or in `app.engine.timing`, which this module re-exports):
strings, numbers, numpy arrays and frozen dataclasses of them, so one interface serves
calls in this process and across the process boundary, and importing it loads no
implementation (no tokenizer, batcher or backend). The implementations import their
types from here; `tests/unit/test_import_rules.py` holds the rule.

Per-request accounting: each call adds its queue and inference time to the caller's
`current_timing` (a context variable the HTTP edge opens per request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from app.engine.timing import RequestTiming, current_timing

__all__ = [
    "DEFAULT_HYPOTHESIS_TEMPLATE",
    "DEFAULT_TEXT_OPTIONS",
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
    "Reranking",
    "Task",
    "TextInput",
    "TextOptions",
    "Token",
    "TokenEmbeddings",
    "TokenIds",
    "Tokenization",
    "TruncationDirection",
    "WordScore",
    "current_timing",
    "template_problem",
]

Task = Literal["embedding", "classification", "rerank"]
Pooling = Literal["mean", "cls"]
# One input: a text, or a sentence pair (text, text_pair) for a classifier (TEI's /predict).
TextInput = str | tuple[str, str]
# How attention maps are reduced: per layer and head, averaged, or rolled out.
Aggregate = Literal["none", "mean", "rollout"]
ExplainMethod = Literal["occlusion", "shap"]
# Which end of an over-long input truncation cuts: "right" keeps its start, "left" its end.
TruncationDirection = Literal["right", "left"]

DEFAULT_HYPOTHESIS_TEMPLATE = "This text is about {}."
PLACEHOLDER = "{}"


def template_problem(template: str) -> str | None:
    """Why `template` is not a hypothesis template, or None when it is one.

    Templates are data, never format strings (`str.format` would run format specs and
    attribute lookups a client wrote): exactly one `{}` where the label goes and no other
    brace. Linear in the template's length.
    """
    if template.count(PLACEHOLDER) != 1 or template.count("{") + template.count("}") != 2:
        return "must contain exactly one {} placeholder (where the label goes) and no other brace"
    return None


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str
    start: int
    stop: int
    special: bool


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class AttentionMap:
    tokens: list[Token]
    num_layers: int
    num_heads: int
    layers: list[int]
    heads: list[int]
    attentions: np.ndarray  # (L, H, n, n), (L, n, n) or (n, n) by aggregate


@dataclass(frozen=True)
class ExplainOptions:
    method: ExplainMethod = "occlusion"
    target: str | None = None  # a label; default: the text's top label
    samples: int = 256  # shap: word subsets scored (besides the whole text and no words)
    seed: int = 0  # shap: the draw of subsets
    truncate: bool = True  # cut the text to the model's max length (else InputTooLong)
    max_words: int = 128  # more words than this: PayloadTooLarge


@dataclass(frozen=True, slots=True)
class WordScore:
    text: str
    start: int
    stop: int
    score: float  # how much the word raised the target score (negative: lowered it)


@dataclass(frozen=True)
class Explanation:
    method: ExplainMethod
    target: str
    labels: list[str]  # every label the target could be
    score: float  # the target score of the whole text
    empty_score: float | None  # with no words (shap); None for occlusion
    words: list[WordScore]
    truncated: bool  # words past the model's max length were left out
    samples: int | None  # shap: subsets scored
    seed: int | None
    evaluations: int  # inputs run, the whole text included
    tokens: int  # tokens of those inputs


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
    backend: str  # "onnx", "torch" (or "benchmark-fixed"/"benchmark-sim", benchmarks only)
    device: str  # "cpu" or "cuda" ("sim": benchmark-sim)
    precision: str  # "fp32", "int8", "fp16"
    instances: int  # backend sessions running batches side by side
    max_batch_size: int
    max_batch_tokens: int
    max_queue: int
    tokenization_workers: int  # threads that tokenize large requests off the event loop
    attention: bool  # has an attention graph (POST /attention)
    default: bool = False  # the default model of its task (what a request without `model` gets)
    # sentence-transformers prompts by name, what `TextOptions.prompt_name` may name
    prompts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenIds:
    """Inputs given as token ids rather than text (special tokens included)."""

    ids: list[list[int]]


@dataclass(frozen=True, slots=True)
class TextOptions:
    """How a request's texts become token ids; each field changes the answer.

    A prompt is prepended to every text before it is tokenized (sentence-transformers'
    rule, and TEI's): `prompt_name` names one of the model's prompts (model.json `prompts`,
    recorded at export from `config_sentence_transformers.json`; an unknown name is
    InvalidInput naming the model's), `prompt` is the prefix itself; at most one of them.
    Truncation then cuts the prompted text at `truncation_direction`'s end (from the left,
    a prompt goes first, as in TEI).
    """

    prompt_name: str | None = None
    prompt: str | None = None
    truncation_direction: TruncationDirection = "right"


DEFAULT_TEXT_OPTIONS = TextOptions()


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
    truncation_direction: TruncationDirection = "right"  # the end truncation cuts


@dataclass(frozen=True)
class Classification:
    results: list[list[LabelScore]]  # per input, highest score first
    tokens: int


@dataclass(frozen=True)
class Reranking:
    """A cross-encoder's score of each document for one query, in document order."""

    scores: list[float]  # sigmoid of the logit (raw_scores: the logit itself)
    truncated: list[bool]  # per document: its end was cut to fit the model's max length
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
        text: TextOptions = DEFAULT_TEXT_OPTIONS,
    ) -> Embeddings:
        """Sentence embeddings; `text` applies to texts, not to token ids (InvalidInput)."""
        ...

    async def embed_tokens(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        truncate: bool = True,
        text: TextOptions = DEFAULT_TEXT_OPTIONS,
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

    async def rerank(
        self,
        model: str,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool = True,
        raw_scores: bool = False,
    ) -> Reranking:
        """A cross-encoder's score of each (query, document) pair; truncation cuts the
        document, never the query."""
        ...

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

    async def tokenize(
        self,
        model: str,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        add_special_tokens: bool = True,
    ) -> Tokenization:
        """Tokens of each text (after the named prompt, whose tokens are included)."""
        ...

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
