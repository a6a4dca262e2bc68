"""Wire schemas of the v1 HTTP contract (requests validated here, nowhere below)."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    field_validator,
)


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


class Usage(BaseModel):
    tokens: int


class EncodeResponse(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]]
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


class StatusResponse(BaseModel):
    status: str
