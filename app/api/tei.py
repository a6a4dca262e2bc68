"""Routes of Hugging Face text-embeddings-inference (TEI), with its field names and defaults."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from app import __version__
from app.api.handling import checked_inputs, json_response, server, unless_disconnected, use_model
from app.api.schemas import check_texts
from app.engine.model import ClassifyOptions

router = APIRouter(tags=["tei"])


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


@router.post("/embed", response_model=list[list[float]])
async def embed(body: TeiEmbedRequest, request: Request) -> Response:
    """A bare list of vectors from the default embedding model."""
    texts = checked_inputs(request, body.inputs)
    model = use_model(request, server(request).registry.get(None, "embedding"))
    work = model.embed(
        texts, normalize=body.normalize, truncate=body.truncate, dimensions=body.dimensions
    )
    result = await unless_disconnected(request, work)
    return json_response(result.vectors)


@router.post("/predict", response_model=list[TeiLabelScore] | list[list[TeiLabelScore]])
async def predict(body: TeiPredictRequest, request: Request) -> Response:
    """Label scores from the default classification model: a list for one input, else lists."""
    texts = checked_inputs(request, body.inputs)
    model = use_model(request, server(request).registry.get(None, "classification"))
    options = ClassifyOptions(truncate=body.truncate, raw_scores=body.raw_scores)
    result = await unless_disconnected(request, model.classify(texts, options))
    answers = [[{"label": s.label, "score": s.score} for s in scores] for scores in result.results]
    return json_response(answers[0] if isinstance(body.inputs, str) else answers)


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """TEI's description of the served model (the default embedding model, else the first)."""
    state = server(request)
    registry = state.registry
    models = list(registry)
    model = next((m for m in models if m.task == "embedding"), models[0])
    manifest = model.manifest
    if manifest.task == "classification":
        labels = dict(enumerate(manifest.labels))
        model_type: dict[str, Any] = {
            "classifier": {
                "id2label": {str(i): label for i, label in labels.items()},
                "label2id": {label: i for i, label in labels.items()},
            }
        }
    else:
        model_type = {"embedding": {"pooling": manifest.pooling}}
    settings = state.settings
    limits = model.encoder.batcher.limits
    return {
        "model_id": manifest.source,
        "model_sha": None,
        "model_dtype": "float32",
        "model_type": model_type,
        "max_concurrent_requests": limits.max_queue,
        "max_input_length": manifest.max_length,
        "max_batch_tokens": limits.max_batch_tokens,
        "max_batch_requests": limits.max_batch_size,
        "max_client_batch_size": settings.max_inputs_per_request,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": __version__,
        "served_models": [m.name for m in models],
    }
