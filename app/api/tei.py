"""Routes of Hugging Face text-embeddings-inference (TEI), with its field names and defaults."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from app import __version__
from app.api.bodies import StrictJSONRoute
from app.api.handling import (
    engine,
    json_response,
    resolve_model,
    server_state,
    unless_disconnected,
)
from app.api.schemas import ERRORS, as_list, check_texts
from app.engine.interface import ClassifyOptions

router = APIRouter(tags=["tei"], route_class=StrictJSONRoute)

# TEI names dtypes as torch does; int8 has no such name and is reported as is.
MODEL_DTYPES = {"fp32": "float32", "fp16": "float16"}


class _TeiRequest(BaseModel):
    # TEI clients send fields this server has no use for (truncation_direction, prompt_name).
    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    truncate: bool = Field(False, description="TEI's default: an input over max length is 422.")

    _check_inputs = field_validator("inputs", mode="wrap")(check_texts)


class TeiEmbedRequest(_TeiRequest):
    normalize: bool = True
    dimensions: int | None = Field(None, ge=1)


class TeiPredictRequest(_TeiRequest):
    raw_scores: bool = False


class TeiLabelScore(BaseModel):
    label: str
    score: float


class TeiInfo(BaseModel):
    """TEI's `Info`: the fields its clients read, and the models this server serves."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    served_models: list[str]


@router.post("/embed", response_model=list[list[float]], responses=ERRORS)
async def embed(body: TeiEmbedRequest, request: Request) -> Response:
    """A bare list of vectors from the default embedding model."""
    texts = as_list(body.inputs)
    model = resolve_model(request, None, "embedding")
    work = engine(request).embed(
        model.name,
        texts,
        normalize=body.normalize,
        truncate=body.truncate,
        dimensions=body.dimensions,
    )
    result = await unless_disconnected(request, work)
    return json_response(result.vectors)


@router.post(
    "/predict",
    response_model=list[TeiLabelScore] | list[list[TeiLabelScore]],
    responses=ERRORS,
)
async def predict(body: TeiPredictRequest, request: Request) -> Response:
    """Label scores from the default classification model: a list for one input, else lists."""
    texts = as_list(body.inputs)
    model = resolve_model(request, None, "classification")
    options = ClassifyOptions(truncate=body.truncate, raw_scores=body.raw_scores)
    result = await unless_disconnected(
        request, engine(request).classify(model.name, texts, options)
    )
    answers = [[{"label": s.label, "score": s.score} for s in scores] for scores in result.results]
    return json_response(answers[0] if isinstance(body.inputs, str) else answers)


@router.get("/info", response_model=TeiInfo, responses=ERRORS)
async def info(request: Request) -> dict[str, Any]:
    """TEI's description of the served model (the default embedding model, else the first)."""
    models = engine(request).models()
    model = next((m for m in models if m.task == "embedding"), models[0])
    if model.task == "classification":
        labels = dict(enumerate(model.labels))
        model_type: dict[str, Any] = {
            "classifier": {
                "id2label": {str(i): label for i, label in labels.items()},
                "label2id": {label: i for i, label in labels.items()},
            }
        }
    else:
        model_type = {"embedding": {"pooling": model.pooling}}
    return {
        "model_id": model.source,
        "model_sha": None,
        "model_dtype": MODEL_DTYPES.get(model.precision, model.precision),
        "model_type": model_type,
        "max_concurrent_requests": model.max_queue,
        "max_input_length": model.max_length,
        "max_batch_tokens": model.max_batch_tokens,
        "max_batch_requests": model.max_batch_size,
        "max_client_batch_size": server_state(request).settings.max_inputs_per_request,
        "auto_truncate": False,
        "tokenization_workers": model.tokenization_workers,
        "version": __version__,
        "served_models": [m.name for m in models],
    }
