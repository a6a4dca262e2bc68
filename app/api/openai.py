"""OpenAI-compatible embeddings API: POST /v1/embeddings and GET /v1/models, in its shapes.

Clients hard-code OpenAI's model names (`text-embedding-3-small`), so a name this server
does not serve is not an error: it maps to a model of ENCODER_MODEL_ALIASES, else to the
default embedding model, and the answer's `model` names the model that served it.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from starlette.responses import Response

from app.api.bodies import StrictJSONRoute
from app.api.handling import (
    engine,
    json_response,
    resolve_model,
    server_state,
    unless_disconnected,
)
from app.api.schemas import (
    EXAMPLE_EMBEDDING_MODEL,
    EXAMPLE_TEXT,
    OPENAI_ERRORS,
    PROMPT_DESCRIPTION,
    PROMPT_NAME_DESCRIPTION,
    TruncationDirection,
    check_input_chars,
    check_input_count,
    check_prompt,
    check_token_ids,
    few_unknown_fields,
)
from app.engine.contract import ModelDescription, TextOptions, TokenIds
from app.engine.errors import ModelNotFound

router = APIRouter(prefix="/v1", tags=["openai"], route_class=StrictJSONRoute)
# The same embeddings without the version prefix, where TEI and infinity serve them.
unversioned = APIRouter(tags=["openai"], route_class=StrictJSONRoute)

# Fail-fast lists: one error for a bad list, not one per item and per branch of the union.
# Token ids are strict integers: JSON's true and false are not ids 1 and 0.
Texts = Annotated[list[str], Field(fail_fast=True)]
Ids = Annotated[list[StrictInt], Field(fail_fast=True)]
IdLists = Annotated[list[Ids], Field(fail_fast=True)]
INPUT_SHAPE = (
    "must be a string, a list of strings, a list of token ids or a list of such lists "
    "(token ids are integers; true and false are not)"
)


class OpenAIEmbeddingRequest(BaseModel):
    # OpenAI's API refuses a parameter it does not know, and so does this route: a field
    # ignored would answer 200 with vectors the client did not ask for (`input_type`, say).
    model_config = ConfigDict(extra="forbid")

    input: str | Texts | Ids | IdLists = Field(
        description="A text, a list of texts, or token ids (one list, or a list of lists).",
        examples=[EXAMPLE_TEXT],
    )
    model: str | None = Field(
        None,
        description="A served embedding model's name; another name (OpenAI's, say) maps to "
        "its ENCODER_MODEL_ALIASES entry, else to the default embedding model, as does none "
        "(TEI and infinity make it optional).",
        examples=[EXAMPLE_EMBEDDING_MODEL],
    )
    encoding_format: Literal["float", "base64"] = "float"
    # Strict, as OpenAI's API: 8.0, "8" and true are not dimensions (422).
    dimensions: StrictInt | None = Field(None, ge=1, examples=[8])
    user: str | None = Field(None, description="Ignored.", examples=[None])
    # Not OpenAI's: TEI's embedding options, for clients that send them (`extra_body`).
    normalize: bool = Field(True, description="Scale each vector to unit length (not OpenAI's).")
    prompt_name: str | None = Field(None, description=PROMPT_NAME_DESCRIPTION, examples=[None])
    prompt: str | None = Field(None, description=PROMPT_DESCRIPTION, examples=[None])
    truncation_direction: TruncationDirection = "right"
    # infinity's: its /embeddings serves images and audio too; this server, text only.
    modality: Literal["text"] = Field(
        "text", description="infinity's field; only text is served here (else 422)."
    )

    _check_prompt = field_validator("prompt")(check_prompt)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_fields(cls, data: Any) -> Any:
        return few_unknown_fields(cls, data)

    @field_validator("input", mode="wrap")
    @classmethod
    def _check_input(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """The input count before any per-item work (a flat list of ids is one input)."""
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be an empty list")
            if isinstance(value[0], int | list):  # token ids: counted before validation
                check_token_ids(value)
            else:
                check_input_count(len(value))
        try:
            checked = handler(value)
        except ValidationError:
            raise ValueError(INPUT_SHAPE) from None
        if checked == "" or (isinstance(checked, list) and "" in checked):
            raise ValueError("input must not contain empty strings")
        texts = [checked] if isinstance(checked, str) else checked
        for index, text in enumerate(texts):
            if isinstance(text, str):
                check_input_chars(index, text)
        return checked


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "encoder-serve"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


def _inputs(raw: str | list[str] | list[int] | list[list[int]]) -> list[str] | TokenIds:
    """Texts, or token ids: one list of ids is one input, a list of lists is several."""
    items: list[Any] = [raw] if isinstance(raw, str) else list(raw)
    if all(isinstance(item, str) for item in items):
        return items  # counted and measured by the request's validation
    return TokenIds([items] if all(isinstance(item, int) for item in items) else items)


def _served_model(request: Request, name: str | None) -> ModelDescription:
    """The model serving a request for `name`: the served model of that name, its alias
    (ENCODER_MODEL_ALIASES), else the default embedding model."""
    served = [model.name for model in engine(request).models()]
    if name is None:
        return resolve_model(request, None, "embedding")
    if name in served:
        return resolve_model(request, name, "embedding")
    target = server_state(request).settings.model_aliases.get(name)
    if target is None:
        return resolve_model(request, None, "embedding")
    if target not in served:
        raise ModelNotFound(
            f"model '{name}' is an alias of '{target}' (ENCODER_MODEL_ALIASES), which is not "
            f"loaded (loaded: {', '.join(served)})"
        )
    return resolve_model(request, target, "embedding")


def _as_base64(vector: np.ndarray) -> str:
    """OpenAI's base64 format: the little-endian float32 bytes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


@unversioned.post("/embeddings", response_model=OpenAIEmbeddingResponse, responses=OPENAI_ERRORS)
@router.post("/embeddings", response_model=OpenAIEmbeddingResponse, responses=OPENAI_ERRORS)
async def create_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> Response:
    """Embeddings exactly as OpenAI's API returns them."""
    model = _served_model(request, body.model)
    inputs = _inputs(body.input)
    text = TextOptions(body.prompt_name, body.prompt, body.truncation_direction)
    work = engine(request).embed(
        model.name, inputs, normalize=body.normalize, dimensions=body.dimensions, text=text
    )
    result = await unless_disconnected(request, work)
    encode = _as_base64 if body.encoding_format == "base64" else (lambda v: v)
    return json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": encode(vector), "index": index}
                for index, vector in enumerate(result.vectors)
            ],
            "model": model.name,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }
    )


@router.get("/models", response_model=OpenAIModelList, responses=OPENAI_ERRORS)
async def list_models(request: Request) -> OpenAIModelList:
    """The served models in OpenAI's list shape."""
    return OpenAIModelList(data=[OpenAIModel(id=model.name) for model in engine(request).models()])
