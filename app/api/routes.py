"""Routes of the v1 contract: /encode, /classify, /attention, /tokenize, /models, operations."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from app.api.bodies import StrictJSONRoute
from app.api.compat_answers import infinity_classification, tei_tokens
from app.api.errors import error_response
from app.api.handling import (
    engine,
    json_response,
    resolve_model,
    server_state,
    unless_disconnected,
)
from app.api.schemas import (
    ERRORS,
    AttentionRequest,
    AttentionResponse,
    ClassifyRequest,
    ClassifyResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    InfinityClassifyResponse,
    ModelInfo,
    ModelsResponse,
    StatusResponse,
    TeiTokenOut,
    TokenizeRequest,
    TokenizeResponse,
    as_list,
)
from app.engine.contract import ClassifyOptions

router = APIRouter(route_class=StrictJSONRoute)


@router.post("/encode", response_model=EncodeResponse, responses=ERRORS, tags=["inference"])
async def encode(body: EncodeRequest, request: Request) -> Response:
    """Sentence embeddings, in input order."""
    texts = as_list(body.inputs)
    model = resolve_model(request, body.model, "embedding")
    work = engine(request).embed(
        model.name,
        texts,
        normalize=body.normalize,
        truncate=body.truncate,
        dimensions=body.dimensions,
        text=body.text_options(),
    )
    result = await unless_disconnected(request, work)
    return json_response(
        {
            "model": model.name,
            "dimensions": result.vectors.shape[1],
            "embeddings": result.vectors,
            "usage": {"tokens": result.tokens},
        }
    )


@router.post(
    "/classify",
    response_model=ClassifyResponse | InfinityClassifyResponse,
    responses=ERRORS,
    tags=["inference"],
)
async def classify(body: ClassifyRequest, request: Request) -> Response:
    """Label scores per input, highest first: a classifier's labels, or zero-shot candidates."""
    texts = as_list(body.inputs)
    labels = body.candidate_labels
    options = ClassifyOptions(
        body.truncate, body.top_k, body.raw_scores, body.multi_label, body.truncation_direction
    )
    if labels is None:
        model = resolve_model(request, body.model, "classification")
        work = engine(request).classify(model.name, texts, options)
    else:
        # The label count, label and template limits are checked as the body is parsed.
        model = resolve_model(request, body.model, "embedding")
        template = body.hypothesis_template
        work = engine(request).zero_shot(model.name, texts, labels, template, options)
    result = await unless_disconnected(request, work)
    results = [[{"label": s.label, "score": s.score} for s in scores] for scores in result.results]
    if body.infinity_shape:
        return json_response(infinity_classification(model.name, results, result.tokens))
    return json_response(
        {"model": model.name, "results": results, "usage": {"tokens": result.tokens}}
    )


@router.post("/attention", response_model=AttentionResponse, responses=ERRORS, tags=["inference"])
async def attention(body: AttentionRequest, request: Request) -> Response:
    """Attention probabilities of one input: per head, averaged over heads, or rolled out."""
    (text,) = as_list(body.inputs)
    model = resolve_model(request, body.model, "embedding")
    work = engine(request).attention(
        model.name,
        text,
        layers=body.layers,
        heads=body.heads,
        how=body.aggregate,
        truncate=body.truncate,
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


@router.post(
    "/tokenize",
    response_model=TokenizeResponse | list[list[TeiTokenOut]],
    responses=ERRORS,
    tags=["inference"],
)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """The model's tokens of each input, with character spans; special tokens marked. With
    TEI's fields (`add_special_tokens`, `prompt_name`), TEI's answer: a list of token lists."""
    texts = as_list(body.inputs)
    model = resolve_model(request, body.model, "embedding")
    work = engine(request).tokenize(
        model.name,
        texts,
        prompt_name=body.prompt_name,
        add_special_tokens=body.add_special_tokens is not False,
    )
    result = await unless_disconnected(request, work)
    if body.tei_shape:
        prompt = "" if body.prompt_name is None else model.prompts[body.prompt_name]
        return json_response(tei_tokens(texts, prompt, result.tokens))
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
                    for t in tokens
                ]
                for tokens in result.tokens
            ],
            "truncated": result.truncated,
        }
    )


@router.get("/models", response_model=ModelsResponse, responses=ERRORS, tags=["models"])
async def list_models(request: Request) -> ModelsResponse:
    """Every loaded model with its task, labels and serving configuration."""
    return ModelsResponse(
        models=[
            ModelInfo(
                name=model.name,
                task=model.task,
                labels=model.labels,
                dimensions=model.dimensions,
                max_length=model.max_length,
                backend=model.backend,
                device=model.device,
                precision=model.precision,
                pooling=model.pooling,
                instances=model.instances,
                default=model.default,
                prompts=model.prompts,
            )
            for model in engine(request).models()
        ]
    )


# Load balancers probe with HEAD too: the same answer, without its body (uvicorn drops it).
# Kept out of the OpenAPI document, which describes the GET probes.
@router.head("/health", include_in_schema=False)
@router.get("/health", response_model=StatusResponse, tags=["operations"])
async def health() -> StatusResponse:
    """200 while the process serves HTTP (liveness)."""
    return StatusResponse(status="ok")


@router.head("/ready", include_in_schema=False)
@router.get(
    "/ready", response_model=StatusResponse, responses={503: {"model": ErrorResponse}},
    tags=["operations"],
)  # fmt: skip
async def ready(request: Request) -> Response:
    """200 once every model is loaded and warmed; 503 otherwise (readiness)."""
    state = server_state(request)
    if not state.ready:
        return error_response(503, "not_ready", state.not_ready_reason())
    return json_response({"status": "ready"})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = server_state(request).metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
