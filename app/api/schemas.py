"""Wire schemas of the v1 HTTP contract (requests validated here, nowhere below).

Every validator is linear in the body's size, checks a count limit before it looks at
the items, and stops at the first mistake: one request must never hold the event loop
(and every other request, /health included) for long. Lists are validated fail-fast,
since pydantic otherwise builds one error object per bad item (seconds for a 4 MB body).

Why one file (over 400 lines): it is the v1 contract's wire shapes, one job, and the
validators belong to the fields they check: split, a field's limit would live apart from
its field.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    StrictInt,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from app.config import Settings
from app.engine.contract import DEFAULT_HYPOTHESIS_TEMPLATE, TextOptions, template_problem
from app.engine.errors import PayloadTooLarge

# More unknown fields than this in one body are reported as one error, not one each.
MAX_REPORTED_UNKNOWN_FIELDS = 5
# No encoder has this many layers or heads: a longer index list necessarily repeats one.
MAX_INDICES = 1024
# The OpenAPI document's examples, which /docs' "Try it out" sends as they are: real values
# the default models answer with a 200 (tests/e2e/test_docs.py runs every one). A field whose
# example is None is sent as null, its default (the field is optional).
EXAMPLE_TEXT = "The cat sits on the mat."
EXAMPLE_REVIEW = "Dull plot, but wonderful acting."
EXAMPLE_EMBEDDING_MODEL = "minilm"
EXAMPLE_CLASSIFIER = "sentiment"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The settings request validators enforce (ENCODER_MAX_*)."""

    max_inputs_per_request: int
    max_input_chars: int
    max_candidate_labels: int
    max_label_chars: int
    max_template_chars: int
    max_explain_samples: int = Settings.model_fields["max_explain_samples"].default
    max_rerank_documents: int = Settings.model_fields["max_rerank_documents"].default
    max_document_chars: int = Settings.model_fields["max_document_chars"].default

    @classmethod
    def of(cls, settings: Settings) -> RequestLimits:
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})


DEFAULT_LIMITS = RequestLimits(
    **{field.name: Settings.model_fields[field.name].default for field in fields(RequestLimits)}
)
# Validators cannot be handed the app's settings: the route class (app/api/bodies.py) sets
# them here for the request being parsed. Outside a request, the defaults apply.
_limits: ContextVar[RequestLimits] = ContextVar("request_limits", default=DEFAULT_LIMITS)


def request_limits() -> RequestLimits:
    return _limits.get()


@contextmanager
def limits_for_request(limits: RequestLimits) -> Iterator[None]:
    token = _limits.set(limits)
    try:
        yield
    finally:
        _limits.reset(token)


class _Request(BaseModel):
    # Unknown fields are refused rather than silently ignored: a typo must not change results.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data: Any) -> Any:
        return few_unknown_fields(cls, data)


def few_unknown_fields(model: type[BaseModel], data: Any) -> Any:
    """Many unknown fields are one error (pydantic would build one per field)."""
    if isinstance(data, dict) and len(data) > len(model.model_fields):
        unknown = [key for key in data if key not in model.model_fields]
        if len(unknown) > MAX_REPORTED_UNKNOWN_FIELDS:
            shown = ", ".join(repr(str(key)[:64]) for key in unknown[:3])
            raise ValueError(
                f"{len(unknown)} unknown fields ({shown}, …); "
                f"accepted: {', '.join(model.model_fields)}"
            )
    return data


def quoted(items: list[str], limit: int = 5) -> str:
    """`'a'`, `'a' and 'b'`, `'a', 'b' and 'c'`: items for a sentence (the first `limit`,
    each cut to 64 characters), not a Python list."""
    shown = [repr(item[:64]) for item in items[:limit]]
    if len(items) > limit:
        shown[-1] = f"{shown[-1]} and {len(items) - limit} more"
        return ", ".join(shown)
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def as_list(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else inputs


def check_texts(value: Any, handler: ValidatorFunctionWrapHandler) -> str | list[str]:
    """One clear message per mistake, instead of one per branch of `str | list[str]`.

    The count and character limits are 413s (PayloadTooLarge, which pydantic lets
    through), checked here so that an oversized list costs no per-item work.
    """
    if value == "":
        raise ValueError("must not be an empty string")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"must be a string or a list of strings, not {type(value).__name__}")
    if not items:
        raise ValueError("must not be an empty list")
    check_input_count(len(items))
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"item {index} must be a string, not {type(item).__name__}")
        if not item:
            raise ValueError(f"item {index} is an empty string")
        check_input_chars(index, item)
    result: str | list[str] = handler(value)
    return result


def check_input_count(count: int) -> None:
    """ENCODER_MAX_INPUTS_PER_REQUEST, a 413 (PayloadTooLarge, which pydantic lets through)."""
    limit = request_limits().max_inputs_per_request
    if count > limit:
        raise PayloadTooLarge(f"{count} inputs in one request; the limit is {limit}")


def check_input_chars(index: int, text: str) -> None:
    """ENCODER_MAX_INPUT_CHARS for one input, a 413."""
    limit = request_limits().max_input_chars
    if len(text) > limit:
        raise PayloadTooLarge(f"inputs[{index}] has {len(text)} characters; the limit is {limit}")


def check_token_ids(value: list[Any]) -> None:
    """Token ids (one list, or a list of lists) count as characters: at most
    ENCODER_MAX_INPUT_CHARS ids in one request, a 413. Measured by lengths alone, before
    pydantic or the tokenizer look at any id, so a huge list costs no per-id work."""
    limit = request_limits().max_input_chars
    if value and isinstance(value[0], bool):
        return  # not an id: validation refuses the list at its first item (422)
    if value and isinstance(value[0], list):
        check_input_count(len(value))
        total = sum(len(ids) if isinstance(ids, list) else 1 for ids in value)
    else:
        total = len(value)
    if total > limit:
        raise PayloadTooLarge(
            f"{total} token ids in one request; the limit is {limit} (ENCODER_MAX_INPUT_CHARS)"
        )


def check_labels(value: Any, handler: ValidatorFunctionWrapHandler) -> list[str] | None:
    """Zero-shot labels: the count limit before anything else, then each label once."""
    limits = request_limits()
    if isinstance(value, list) and len(value) > limits.max_candidate_labels:
        raise ValueError(
            f"has {len(value)} labels; the limit is {limits.max_candidate_labels} "
            "(ENCODER_MAX_CANDIDATE_LABELS)"
        )
    labels: list[str] | None = handler(value)
    if labels is None:
        return None
    if not labels:
        raise ValueError("must not be empty; omit it to use the model's own labels")
    seen: set[str] = set()
    repeated: list[str] = []
    for index, label in enumerate(labels):
        if len(label) > limits.max_label_chars:
            raise ValueError(
                f"item {index} has {len(label)} characters; the limit is "
                f"{limits.max_label_chars} (ENCODER_MAX_LABEL_CHARS)"
            )
        if not label.strip():
            raise ValueError(f"must not hold empty strings (item {index})")
        if label in seen:
            repeated.append(label)
        seen.add(label)
    if repeated:
        repeats = sorted(set(repeated))
        verb = "is" if len(repeats) == 1 else "are"
        raise ValueError(f"must be distinct; {quoted(repeats)} {verb} repeated")
    return labels


def check_template(template: str) -> str:
    """Data, not a format string: one `{}` and no other brace, within the length limit."""
    limit = request_limits().max_template_chars
    if len(template) > limit:
        raise ValueError(
            f"has {len(template)} characters; the limit is {limit} (ENCODER_MAX_TEMPLATE_CHARS)"
        )
    problem = template_problem(template)
    if problem is not None:
        raise ValueError(problem)
    return template


def check_indices(value: Any) -> Any:
    """Layer or head indices: the count before pydantic looks at each item."""
    if isinstance(value, list) and len(value) > MAX_INDICES:
        raise ValueError(f"has {len(value)} indices; the limit is {MAX_INDICES}")
    return value


Indices = Annotated[list[int], Field(max_length=MAX_INDICES, fail_fast=True)]


def _direction(value: Any) -> Any:
    """TEI's spellings ("Left", "Right") as the engine's ("left", "right")."""
    return value.lower() if value in ("Left", "Right") else value


TruncationDirection = Annotated[
    Literal["left", "right"],
    BeforeValidator(_direction),
    Field(
        description='Which end truncation cuts: "right" keeps the start of an over-long '
        'input, "left" its end (TEI\'s "Left" and "Right" are accepted too).'
    ),
]
PROMPT_NAME_DESCRIPTION = (
    "The name of one of the model's prompts (GET /models lists them; recorded from its "
    "config_sentence_transformers.json at export), prepended to every input; a name the "
    "model has no prompt of is a 422 naming those it has."
)
PROMPT_DESCRIPTION = (
    "A prefix prepended to every input (instead of prompt_name), at most "
    "ENCODER_MAX_TEMPLATE_CHARS characters."
)


def check_prompt(prompt: str | None) -> str | None:
    """A prompt is copied before every input: as long as a template at most."""
    limit = request_limits().max_template_chars
    if prompt is not None and len(prompt) > limit:
        raise ValueError(
            f"has {len(prompt)} characters; the limit is {limit} (ENCODER_MAX_TEMPLATE_CHARS)"
        )
    return prompt


class EncodeRequest(_Request):
    inputs: str | list[str] = Field(
        description="A text or a non-empty list of texts.",
        examples=[[EXAMPLE_TEXT, "A feline rests on a rug."]],
    )
    model: str | None = Field(
        None,
        description="Model name; defaults to the default embedding model.",
        examples=[EXAMPLE_EMBEDDING_MODEL],
    )
    normalize: bool = Field(True, description="Scale each vector to unit length.")
    truncate: bool = Field(True, description="Cut inputs to the model's max length (else 422).")
    # Strict: 8.0, "8" and true are not dimensions.
    dimensions: StrictInt | None = Field(
        None,
        description="Keep the first N dimensions (Matryoshka), then normalize.",
        examples=[8],
    )
    prompt_name: str | None = Field(None, description=PROMPT_NAME_DESCRIPTION, examples=[None])
    prompt: str | None = Field(None, description=PROMPT_DESCRIPTION, examples=[None])
    truncation_direction: TruncationDirection = "right"

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)
    _check_prompt = field_validator("prompt")(check_prompt)

    def text_options(self) -> TextOptions:
        return TextOptions(self.prompt_name, self.prompt, self.truncation_direction)

    @field_validator("dimensions")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1")
        return value


# What infinity's clients send as `model` when none was chosen.
INFINITY_NO_MODEL = "default/not-specified"


class ClassifyRequest(_Request):
    inputs: str | list[str] = Field(
        description="A text or a non-empty list of texts. Sent as `input` (infinity's name), "
        "the answer takes infinity's shape: {object, data, model, usage: {prompt_tokens, "
        "total_tokens}}.",
        validation_alias=AliasChoices("inputs", "input"),
        examples=[[EXAMPLE_REVIEW]],
    )
    model: str | None = Field(
        None,
        description="Model name; defaults to the default classification model, or with "
        "candidate_labels to the default embedding model.",
        examples=[EXAMPLE_CLASSIFIER],
    )
    top_k: int | None = Field(
        None, ge=1, description="Keep the K best labels per input.", examples=[2]
    )
    raw_scores: bool = Field(False, description="Logits (or cosines) instead of probabilities.")
    multi_label: bool = Field(False, description="Score each label on its own (sigmoid).")
    truncate: bool = Field(True, description="Cut inputs to the model's max length (else 422).")
    truncation_direction: TruncationDirection = "right"
    candidate_labels: Annotated[list[str], Field(fail_fast=True)] | None = Field(
        None,
        description="Zero-shot: score these labels with an embedding model (e.g. "
        '["praise", "complaint"] with "model": "minilm").',
        examples=[None],
    )
    hypothesis_template: str = Field(
        DEFAULT_HYPOTHESIS_TEMPLATE,
        description="Zero-shot: each label is embedded as this template with its one {} "
        "replaced by the label (no other brace; not a format string).",
    )

    # Whether the texts came as infinity's `input`: the answer is then infinity's shape.
    _infinity: bool = PrivateAttr(False)

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)
    _check_labels = field_validator("candidate_labels", mode="wrap")(check_labels)
    _check_template = field_validator("hypothesis_template")(check_template)

    @model_validator(mode="wrap")
    @classmethod
    def _infinity_shape(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        request = handler(data)
        request._infinity = isinstance(data, dict) and "input" in data
        if request._infinity and request.model == INFINITY_NO_MODEL:
            request.model = None  # infinity's clients send its default: this server's default
        return request

    @property
    def infinity_shape(self) -> bool:
        return self._infinity


class AttentionRequest(_Request):
    inputs: str = Field(
        description="One text (attention maps are per input).", examples=[EXAMPLE_TEXT]
    )
    model: str | None = Field(
        None,
        description="Model name; defaults to the default embedding model.",
        examples=[EXAMPLE_EMBEDDING_MODEL],
    )
    layers: Indices | None = Field(
        None, description="Layer indices (0-based); default all.", examples=[[5]]
    )
    heads: Indices | None = Field(
        None, description="Head indices (0-based); default all.", examples=[None]
    )
    aggregate: Literal["none", "mean", "rollout"] = Field(
        "mean",
        description="none: [layer][head][i][j]; mean over heads: [layer][i][j]; "
        "rollout through the layers: [i][j].",
    )
    truncate: bool = Field(
        True, description="Cut inputs past the attention token limit (else 413)."
    )

    _check_indices = field_validator("layers", "heads", mode="before")(check_indices)

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("must be one string: attention maps are computed per input")
        if value == "":
            raise ValueError("must not be an empty string")
        if isinstance(value, str):
            check_input_chars(0, value)
        return value


class AttentionResponse(BaseModel):
    model: str
    tokens: list[str]
    special: list[bool]
    num_layers: int
    num_heads: int
    layers: list[int]
    heads: list[int]
    attentions: list[Any]
    usage: Usage


class TokenizeRequest(_Request):
    inputs: str | list[str] = Field(
        description="A text or a non-empty list of texts.", examples=[EXAMPLE_TEXT]
    )
    model: str | None = Field(
        None,
        description="Model name; default: the default embedding model.",
        examples=[EXAMPLE_EMBEDDING_MODEL],
    )
    # TEI's fields: either one sent makes the answer TEI's shape (a list of token lists).
    add_special_tokens: bool | None = Field(
        None,
        description="TEI's field (default true): include the special tokens; sent, the "
        "answer is TEI's shape, a list of lists of {id, text, special, start, stop}.",
        examples=[None],
    )
    prompt_name: str | None = Field(
        None,
        description=PROMPT_NAME_DESCRIPTION + " TEI's field: sent, the answer is TEI's shape.",
        examples=[None],
    )

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)

    @property
    def tei_shape(self) -> bool:
        return self.add_special_tokens is not None or self.prompt_name is not None


class TeiTokenOut(BaseModel):
    """TEI's token: `text` is the input's own characters (the token itself for a special
    token, which has no span); `start` and `stop` are UTF-8 byte offsets, as TEI's."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TokenOut(BaseModel):
    id: int
    text: str
    start: int
    stop: int
    special: bool


class TokenizeResponse(BaseModel):
    model: str
    tokens: list[list[TokenOut]]
    truncated: list[bool] = Field(
        description="Per input: it had more tokens than the model's max length and was cut."
    )


class LabelScoreOut(BaseModel):
    label: str
    score: float


class Usage(BaseModel):
    tokens: int


class EncodeResponse(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]]
    usage: Usage


class ClassifyResponse(BaseModel):
    model: str
    results: list[list[LabelScoreOut]]
    usage: Usage


class ModelInfo(BaseModel):
    name: str
    task: str
    labels: list[str]
    dimensions: int
    max_length: int
    backend: str
    device: str
    precision: str
    pooling: str
    instances: int = Field(description="Backend sessions running batches side by side.")
    default: bool = Field(
        description="The default model of its task: what a request without `model` gets."
    )
    prompts: dict[str, str] = Field(
        description="Its prompts by name (from config_sentence_transformers.json): what "
        "prompt_name may name."
    )


class InfinityClassifyResponse(BaseModel):
    """infinity's /classify answer, when the texts came as its `input`."""

    object: Literal["classify"] = "classify"
    data: list[list[LabelScoreOut]]
    model: str
    usage: dict[str, int] = Field(description="prompt_tokens and total_tokens")
    id: str
    created: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape, which its client libraries parse (routes under /v1/)."""

    error: OpenAIErrorDetail


class TeiErrorResponse(BaseModel):
    """TEI's error shape (the routes of app/api/tei.py), with TEI's `error_type`: `empty`
    (400), `validation` (413; also 415 and 422 for a body that is not a valid request),
    `tokenizer` (422), `backend` (424), `overloaded` (429), `unhealthy` (503)."""

    error: str
    error_type: Literal["empty", "validation", "tokenizer", "backend", "overloaded", "unhealthy"]


# What an inference route may answer besides 200: documented, so clients and the
# contract tests know every status and its body.
ERROR_STATUSES = (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in ERROR_STATUSES
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in ERROR_STATUSES
}
# TEI's routes name no model (no 404); a model that cannot answer the route is TEI's 424.
TEI_ERROR_STATUSES = (400, 401, 413, 415, 422, 424, 429, 500, 503, 504)
TEI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": TeiErrorResponse} for code in TEI_ERROR_STATUSES
}


class StatusResponse(BaseModel):
    status: str
