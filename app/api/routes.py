"""Routes of the v1 contract: /encode, /models and the operational endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app.api.errors import error_response
from app.api.lifecycle import ServerState
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
    as_list,
)
from app.engine.errors import ClientDisconnected, InvalidInput, PayloadTooLarge
from app.engine.model import ClassifyOptions, ServedModel

router = APIRouter()
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 429, 500, 503, 504)
}


def json_response(content: Any) -> Response:
    # orjson writes numpy float32 arrays directly: no per-float Python objects.
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


def server(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def checked_inputs(request: Request, inputs: str | list[str]) -> list[str]:
    """The request's texts, within the count and length limits (413 before tokenizing)."""
    texts = as_list(inputs)
    check_input_count(request, len(texts))
    settings = server(request).settings
    for index, text in enumerate(texts):
        if len(text) > settings.max_input_chars:
            raise PayloadTooLarge(
                f"inputs[{index}] has {len(text)} characters; the limit is "
                f"{settings.max_input_chars}"
            )
    return texts


def check_input_count(request: Request, count: int) -> None:
    limit = server(request).settings.max_inputs_per_request
    if count > limit:
        raise PayloadTooLarge(f"{count} inputs in one request; the limit is {limit}")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await engine work; if the client hangs up first, cancel it so its queued inputs are
    dropped before they cost a forward pass."""
    task = asyncio.ensure_future(work)
    # After the body is read, the next ASGI message is the client's disconnect.
    watcher = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    hung_up = not task.done() and watcher.done() and not watcher.cancelled()
    if hung_up and watcher.result().get("type") == "http.disconnect":
        task.cancel()
        raise ClientDisconnected("the client closed the connection before the answer")
    return await task


def use_model(request: Request, model: ServedModel) -> ServedModel:
    request.state.model = model.name  # the `model` label of this request's metrics
    return model


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
