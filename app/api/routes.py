"""Routes of the v1 contract: /encode, /classify, /attention, /tokenize, /models, operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app.api.errors import error_response
from app.api.handling import checked_inputs, json_response, server, unless_disconnected, use_model
from app.api.schemas import (
    AttentionRequest,
    AttentionResponse,
    ClassifyRequest,
    ClassifyResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    ModelInfo,
    ModelsResponse,
    StatusResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.engine.errors import InvalidInput
from app.engine.model import ClassifyOptions

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 429, 500, 503, 504)
}


@router.post("/encode", response_model=EncodeResponse, responses=ERRORS, tags=["inference"])
async def encode(body: EncodeRequest, request: Request) -> Response:
    """Sentence embeddings, in input order."""
    texts = checked_inputs(request, body.inputs)
    model = use_model(request, server(request).registry.get(body.model, "embedding"))
    result = await unless_disconnected(
        request,
        model.embed(
            texts, normalize=body.normalize, truncate=body.truncate, dimensions=body.dimensions
        ),
    )
    return json_response(
        {
            "model": model.name,
            "dimensions": result.vectors.shape[1],
            "embeddings": result.vectors,
            "usage": {"tokens": result.tokens},
        }
    )


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["inference"])
async def classify(body: ClassifyRequest, request: Request) -> Response:
    """Label scores per input, highest first: a classifier's labels, or zero-shot candidates."""
    texts = checked_inputs(request, body.inputs)
    state = server(request)
    labels = body.candidate_labels
    options = ClassifyOptions(body.truncate, body.top_k, body.raw_scores, body.multi_label)
    if labels is None:
        model = use_model(request, state.registry.get(body.model, "classification"))
        result = await unless_disconnected(request, model.classify(texts, options))
    else:
        limit = state.settings.max_candidate_labels
        if len(labels) > limit:
            raise InvalidInput(f"{len(labels)} candidate_labels; the limit is {limit}")
        model = use_model(request, state.registry.get(body.model, "embedding"))
        work = model.zero_shot(texts, labels, body.hypothesis_template, options)
        result = await unless_disconnected(request, work)
    return json_response(
        {
            "model": model.name,
            "results": [
                [{"label": s.label, "score": s.score} for s in scores] for scores in result.results
            ],
            "usage": {"tokens": result.tokens},
        }
    )


@router.post("/attention", response_model=AttentionResponse, responses=ERRORS, tags=["inference"])
async def attention(body: AttentionRequest, request: Request) -> Response:
    """Attention probabilities of one input: per head, averaged over heads, or rolled out."""
    (text,) = checked_inputs(request, body.inputs)
    model = use_model(request, server(request).registry.get(body.model, "embedding"))
    work = model.attention(
        text, layers=body.layers, heads=body.heads, how=body.aggregate, truncate=body.truncate
    )
    result = await unless_disconnected(request, work)
    return json_response(
        {
            "model": model.name,
            "tokens": [token.text for token in result.tokens],
            "special": [token.special for token in result.tokens],
            "num_layers": result.num_layers,
            "num_heads": result.num_heads,
            "layers": result.layers,
            "heads": result.heads,
            "attentions": result.attentions,
            "usage": {"tokens": len(result.tokens)},
        }
    )


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS, tags=["inference"])
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """The model's tokens of each input, with character spans; special tokens marked."""
    texts = checked_inputs(request, body.inputs)
    model = use_model(request, server(request).registry.get(body.model, "embedding"))
    tokenizer = model.encoder.tokenizer
    return json_response(
        {
            "model": model.name,
            "tokens": [
                [
                    {
                        "id": t.id,
                        "text": t.text,
                        "start": t.start,
                        "stop": t.stop,
                        "special": t.special,
                    }
                    for t in tokenizer.tokens(text)[0]
                ]
                for text in texts
            ],
        }
    )


@router.get("/models", response_model=ModelsResponse, responses=ERRORS, tags=["models"])
async def list_models(request: Request) -> ModelsResponse:
    """Every loaded model with its task, labels and serving configuration."""
    return ModelsResponse(
        models=[
            ModelInfo(
                name=model.name,
                task=model.manifest.task,
                labels=model.manifest.labels,
                dimensions=model.manifest.dimensions,
                max_length=model.manifest.max_length,
                backend=model.encoder.backend.name,
                device=model.encoder.backend.device,
                precision=model.encoder.precision,
                pooling=model.manifest.pooling,
            )
            for model in server(request).registry
        ]
    )


@router.get("/health", response_model=StatusResponse, tags=["operations"])
async def health() -> StatusResponse:
    """200 while the process serves HTTP (liveness)."""
    return StatusResponse(status="ok")


@router.get(
    "/ready", response_model=StatusResponse, responses={503: {"model": ErrorResponse}},
    tags=["operations"],
)  # fmt: skip
async def ready(request: Request) -> Response:
    """200 once every model is loaded and warmed; 503 otherwise (readiness)."""
    state = server(request)
    if not state.ready:
        return error_response(503, "not_ready", state.not_ready_reason())
    return json_response({"status": "ready"})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = generate_latest(server(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
