"""Wire schemas of the v1 HTTP contract (requests validated here, nowhere below)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from app.engine.interface import DEFAULT_HYPOTHESIS_TEMPLATE


class _Request(BaseModel):
    # Unknown fields are refused rather than silently ignored: a typo must not change results.
    model_config = ConfigDict(extra="forbid")


def as_list(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else inputs


def check_texts(value: Any, handler: ValidatorFunctionWrapHandler) -> str | list[str]:
    """One clear message per mistake, instead of one per branch of `str | list[str]`."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"must be a string or a list of strings, not {type(value).__name__}")
    if not items:
        raise ValueError("must not be an empty list")
    for index, item in enumerate(items):
        where = "the input" if isinstance(value, str) else f"item {index}"
        if not isinstance(item, str):
            raise ValueError(f"{where} must be a string, not {type(item).__name__}")
        if not item:
            raise ValueError(f"{where} is an empty string")
    result: str | list[str] = handler(value)
    return result


class EncodeRequest(_Request):
    inputs: str | list[str] = Field(description="A text or a non-empty list of texts.")
    model: str | None = Field(
        None, description="Model name; defaults to the first embedding model."
    )
    normalize: bool = Field(True, description="Scale each vector to unit length.")
    truncate: bool = Field(True, description="Cut inputs to the model's max length (else 422).")
    dimensions: int | None = Field(
        None, description="Keep the first N dimensions (Matryoshka), then normalize."
    )

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)

    @field_validator("dimensions")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("dimensions must be at least 1")
        return value


class ClassifyRequest(_Request):
    inputs: str | list[str] = Field(description="A text or a non-empty list of texts.")
    model: str | None = Field(
        None,
        description="Model name; defaults to the first classification model, or with "
        "candidate_labels to the first embedding model.",
    )
    top_k: int | None = Field(None, ge=1, description="Keep the K best labels per input.")
    raw_scores: bool = Field(False, description="Logits (or cosines) instead of probabilities.")
    multi_label: bool = Field(False, description="Score each label on its own (sigmoid).")
    truncate: bool = Field(True, description="Cut inputs to the model's max length (else 422).")
    candidate_labels: list[str] | None = Field(
        None, description="Zero-shot: score these labels with an embedding model."
    )
    hypothesis_template: str = Field(
        DEFAULT_HYPOTHESIS_TEMPLATE,
        description="Zero-shot: each label is embedded as this template with {} filled in.",
    )

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)

    @field_validator("candidate_labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        if not labels:
            raise ValueError("must not be empty; omit it to use the model's own labels")
        if any(not label.strip() for label in labels):
            raise ValueError("labels must not be empty strings")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"labels must be distinct; repeated: {duplicates}")
        return labels

    @field_validator("hypothesis_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        try:
            filled = template.format("label")
        except (IndexError, KeyError, ValueError):
            filled = None
        if template.count("{}") != 1 or filled is None:
            raise ValueError("must contain exactly one {} placeholder and no other braces")
        return template


class AttentionRequest(_Request):
    inputs: str = Field(description="One text (attention maps are per input).")
    model: str | None = Field(
        None, description="Model name; defaults to the first embedding model."
    )
    layers: list[int] | None = Field(None, description="Layer indices (0-based); default all.")
    heads: list[int] | None = Field(None, description="Head indices (0-based); default all.")
    aggregate: Literal["none", "mean", "rollout"] = Field(
        "mean",
        description="none: [layer][head][i][j]; mean over heads: [layer][i][j]; "
        "rollout through the layers: [i][j].",
    )
    truncate: bool = Field(
        True, description="Cut inputs past the attention token limit (else 413)."
    )

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("must be one string: attention maps are computed per input")
        if value == "":
            raise ValueError("the input is an empty string")
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
    inputs: str | list[str] = Field(description="A text or a non-empty list of texts.")
    model: str | None = Field(None, description="Model name; default: first embedding model.")

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)


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


# What an inference route may answer besides 200: documented, so clients and the
# contract tests know every status and its body.
ERROR_STATUSES = (400, 401, 404, 413, 422, 429, 500, 503, 504)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in ERROR_STATUSES
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in ERROR_STATUSES
}


class StatusResponse(BaseModel):
    status: str
