"""TEI's task routes: `POST /` (and SageMaker's `POST /invocations`), which answer what
the served model does (TEI's router mounts /embed there for an embedding model, /predict
for a classifier; Hugging Face's `InferenceClient("http://host:port")` posts there), and
`POST /similarity`.

Here several models are served: `POST /` answers as the model `GET /info` describes (the
default embedding model, else the first). A body whose `inputs` is an object
(`{"source_sentence", "sentences"}`, what `InferenceClient.sentence_similarity` sends)
is a similarity request on either route, as on TEI started with
`TASK=sentence-similarity`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import Response

from app.api import tei
from app.api.bodies import StrictJSONRoute
from app.api.errors import RequestRejected
from app.api.handling import engine, json_response, resolve_model, unless_disconnected
from app.api.schemas import (
    EXAMPLE_TEXT,
    PROMPT_NAME_DESCRIPTION,
    TEI_ERRORS,
    TruncationDirection,
    check_input_chars,
    check_input_count,
)
from app.engine.contract import TextOptions

Endpoint = Callable[..., Awaitable[Response]]

router = APIRouter(tags=["tei"], route_class=StrictJSONRoute)


class SimilarityInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_sentence: str = Field(
        description="The text the others are compared with.", examples=[EXAMPLE_TEXT]
    )
    sentences: Annotated[list[str], Field(fail_fast=True)] = Field(
        description="The texts compared with source_sentence (at least one).",
        examples=[["A feline rests on a rug.", "Stocks fell sharply today."]],
    )

    @field_validator("source_sentence")
    @classmethod
    def _source(cls, text: str) -> str:
        if not text:
            raise ValueError("must not be an empty string")
        check_input_chars(0, text)
        return text

    @field_validator("sentences", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        """TEI's rules: none is an `empty` 400; with the source, at most the request limit."""
        if isinstance(value, list):
            if not value:
                raise RequestRejected(400, "empty", "inputs.sentences must not be an empty list")
            check_input_count(len(value) + 1)
        return value

    @field_validator("sentences")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        for index, text in enumerate(texts):
            if not text:
                raise ValueError(f"item {index} is an empty string")
            check_input_chars(index + 1, text)
        return texts


class SimilarityParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    truncate: bool | None = Field(
        None, description="Cut inputs to the model's max length (TEI's default: 413)."
    )
    truncation_direction: TruncationDirection = "right"
    prompt_name: str | None = Field(None, description=PROMPT_NAME_DESCRIPTION, examples=[None])


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


def _validated(model: type[BaseModel], body: Any) -> Any:
    """`body` as `model`, its problems reported as every body's are (TEI's 422)."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from None


@router.post("/similarity", response_model=list[float], responses=TEI_ERRORS)
async def similarity(body: SimilarityRequest, request: Request) -> Response:
    """The cosine similarity of `source_sentence` to each of `sentences`, by the default
    embedding model (TEI's sentence-similarity task)."""
    parameters = body.parameters or SimilarityParameters()
    model = resolve_model(request, None, "embedding")
    texts = [body.inputs.source_sentence, *body.inputs.sentences]
    options = TextOptions(parameters.prompt_name, None, parameters.truncation_direction)
    work = engine(request).embed(
        model.name,
        texts,
        normalize=True,
        truncate=tei.truncation(parameters.truncate, request),
        text=options,
    )
    vectors = (await unless_disconnected(request, work)).vectors
    cosines = vectors[1:] @ vectors[0]  # unit vectors: the dot product is the cosine
    return json_response(np.asarray(cosines, dtype=np.float32))


ROOT_BODY = {
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/TeiEmbedRequest"},
                    {"$ref": "#/components/schemas/TeiPredictRequest"},
                    {"$ref": "#/components/schemas/SimilarityRequest"},
                ],
            },
            "example": {"inputs": "What is Deep Learning?"},
        }
    },
    "required": True,
}


# What POST / answers: /embed's, /predict's (one input, or several) or /similarity's.
ROOT_ANSWER = (
    list[list[float]] | list[tei.TeiLabelScore] | list[list[tei.TeiLabelScore]] | list[float]
)


def _root_route(path: str) -> Callable[[Endpoint], Endpoint]:
    return router.post(
        path,
        response_model=ROOT_ANSWER,
        responses=TEI_ERRORS,
        openapi_extra={"requestBody": ROOT_BODY},
    )


@_root_route("/invocations")  # the same route under TEI's other name for it
@_root_route("/")
async def root(body: Annotated[Any, Body()], request: Request) -> Response:
    """TEI's route for the served model's task: /embed's answer for an embedding model,
    /predict's for a classifier (the model GET /info describes), /similarity's for a body
    whose `inputs` is `{"source_sentence", "sentences"}`."""
    # `Any`, not `dict`, so that the document's body is ROOT_BODY's three shapes alone (a
    # `dict` adds `additionalProperties`, which Swagger UI's sample fills with a field that
    # is a 422); a body that is not an object is refused as a `dict` body would be (400).
    if not isinstance(body, dict):
        raise RequestValidationError(
            [{"type": "dict_type", "loc": ("body",), "msg": "not an object", "input": None}]
        )
    if isinstance(body.get("inputs"), dict):
        return await similarity(_validated(SimilarityRequest, body), request)
    if tei.served_model(request).task == "classification":
        return await tei.predict(_validated(tei.TeiPredictRequest, body), request)
    return await tei.embed(_validated(tei.TeiEmbedRequest, body), request)
