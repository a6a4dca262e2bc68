"""Reranking with a cross-encoder: `POST /rerank` in text-embeddings-inference's shape and
`POST /v1/rerank` in the shape Cohere's, Jina's and infinity's clients send.

Both score each (query, document) pair with the default `rerank` model (or the one named on
/v1/rerank) through its batcher, best first. Truncation cuts a document's end, never the
query; which documents were cut is said in the `X-Truncated-Documents` header (their
indices), and on /v1/rerank also in Cohere's `meta.warnings`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from starlette.responses import Response

from app.api.bodies import StrictJSONRoute
from app.api.errors import RequestRejected
from app.api.handling import engine, json_response, resolve_model, unless_disconnected
from app.api.schemas import OPENAI_ERRORS, TEI_ERRORS, request_limits
from app.engine.contract import Reranking
from app.engine.errors import PayloadTooLarge

router = APIRouter(tags=["rerank"], route_class=StrictJSONRoute)

EXAMPLE_QUERY = "What do cats like to do?"
EXAMPLE_DOCUMENTS = [
    "Cats sleep for most of the day, often in a sunny spot.",
    "The stock market closed higher on Friday.",
]
TRUNCATED_HEADER = "X-Truncated-Documents"


def check_query(query: str) -> str:
    """A non-empty query within ENCODER_MAX_INPUT_CHARS (413)."""
    if not query:
        raise ValueError("must not be an empty string")
    limit = request_limits().max_input_chars
    if len(query) > limit:
        raise PayloadTooLarge(f"the query has {len(query)} characters; the limit is {limit}")
    return query


def check_documents(field: str, documents: list[str]) -> list[str]:
    """ENCODER_MAX_RERANK_DOCUMENTS and ENCODER_MAX_DOCUMENT_CHARS (413), each document a
    non-empty text (422). The count first: an oversized list costs no per-item work."""
    limits = request_limits()
    if len(documents) > limits.max_rerank_documents:
        raise PayloadTooLarge(
            f"{len(documents)} {field} in one request; the limit is {limits.max_rerank_documents}"
        )
    for index, document in enumerate(documents):
        if not document:
            raise ValueError(f"{field}[{index}] is an empty string")
        if len(document) > limits.max_document_chars:
            raise PayloadTooLarge(
                f"{field}[{index}] has {len(document)} characters; the limit is "
                f"{limits.max_document_chars}"
            )
    return documents


def ranking(result: Reranking, top_n: int | None = None) -> list[int]:
    """Document indices, best score first (ties in document order), cut to `top_n`."""
    order = sorted(range(len(result.scores)), key=lambda index: -result.scores[index])
    return order[:top_n]


def with_truncation_header(response: Response, result: Reranking) -> Response:
    cut = [str(index) for index, truncated in enumerate(result.truncated) if truncated]
    if cut:
        response.headers[TRUNCATED_HEADER] = ",".join(cut)
    return response


# -- TEI: POST /rerank ---------------------------------------------------------------------


class TeiRerankRequest(BaseModel):
    # TEI's clients send fields this server has no use for (truncation_direction).
    model_config = ConfigDict(extra="ignore")

    query: str = Field(examples=[EXAMPLE_QUERY])
    texts: list[str] = Field(
        description="The documents to score against the query (a non-empty list).",
        examples=[EXAMPLE_DOCUMENTS],
    )
    truncate: bool | None = Field(
        None,
        description="Cut each document's end so that it fits the model's max length with "
        "the query; TEI's default (null, false) refuses an over-long pair with 413.",
    )
    raw_scores: bool = Field(False, description="The logit instead of its sigmoid.")
    return_text: bool = Field(False, description="Give each document's text with its score.")

    _check_query = field_validator("query")(check_query)

    @field_validator("texts", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        """TEI answers an empty list with 400 and `error_type` empty (not a 422)."""
        if isinstance(value, list) and not value:
            raise RequestRejected(400, "empty", "texts must not be an empty list")
        return value

    @field_validator("texts")
    @classmethod
    def _check_texts(cls, texts: list[str]) -> list[str]:
        return check_documents("texts", texts)


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = Field(None, description="With return_text only.")


@router.post("/rerank", response_model=list[TeiRank], responses=TEI_ERRORS)
async def tei_rerank(body: TeiRerankRequest, request: Request) -> Response:
    """Each text's relevance to the query by the default rerank model (a cross-encoder),
    best first. Documents cut to fit are listed in the X-Truncated-Documents header."""
    model = resolve_model(request, None, "rerank")
    work = engine(request).rerank(
        model.name,
        body.query,
        body.texts,
        truncate=bool(body.truncate),
        raw_scores=body.raw_scores,
    )
    result = await unless_disconnected(request, work)
    ranks = []
    for index in ranking(result):
        rank: dict[str, Any] = {"index": index, "score": result.scores[index]}
        if body.return_text:
            rank["text"] = body.texts[index]
        ranks.append(rank)
    return with_truncation_header(json_response(ranks), result)


# -- Cohere / Jina / infinity: POST /v1/rerank ---------------------------------------------


class RerankRequest(BaseModel):
    # Cohere's and Jina's clients send options this server does not use (rank_fields,
    # max_chunks_per_doc): accepted and ignored, as on /v1/embeddings.
    model_config = ConfigDict(extra="ignore")

    # Example null (sent as its default): /docs' "Try it out" asks for the default reranker.
    model: str | None = Field(
        None,
        description="A rerank model; defaults to the default rerank model.",
        examples=[None],
    )
    query: str = Field(examples=[EXAMPLE_QUERY])
    documents: list[str] = Field(
        description="The documents to score against the query: a non-empty list of texts "
        '(or of {"text": ...} objects, as Cohere\'s clients may send them).',
        examples=[EXAMPLE_DOCUMENTS],
    )
    top_n: StrictInt | None = Field(
        None, ge=1, description="Keep the N best documents (default: all).", examples=[1]
    )
    return_documents: bool = Field(False, description="Give each document's text.")
    raw_scores: bool = Field(False, description="The logit instead of its sigmoid (infinity).")
    truncate: bool = Field(
        True, description="Cut each document's end to fit with the query (else 413)."
    )

    _check_query = field_validator("query")(check_query)

    @field_validator("documents", mode="before")
    @classmethod
    def _texts_of_objects(cls, value: Any) -> Any:
        """Cohere's document objects ({"text": ...}) as their text."""
        if isinstance(value, list):
            return [
                item["text"] if isinstance(item, dict) and set(item) == {"text"} else item
                for item in value
            ]
        return value

    @field_validator("documents")
    @classmethod
    def _check_documents(cls, documents: list[str]) -> list[str]:
        if not documents:
            raise ValueError("must not be an empty list")
        return check_documents("documents", documents)


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = Field(None, description="With return_documents only.")


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankMeta(BaseModel):
    warnings: list[str] = Field(description="Which documents were truncated, if any.")


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


@router.post("/v1/rerank", response_model=RerankResponse, responses=OPENAI_ERRORS)
async def rerank(body: RerankRequest, request: Request) -> Response:
    """Each document's relevance to the query by a rerank model (a cross-encoder), best
    first, as Cohere's, Jina's and infinity's rerank clients read it."""
    model = resolve_model(request, body.model, "rerank")
    work = engine(request).rerank(
        model.name,
        body.query,
        body.documents,
        truncate=body.truncate,
        raw_scores=body.raw_scores,
    )
    result = await unless_disconnected(request, work)
    results = []
    for index in ranking(result, body.top_n):
        item: dict[str, Any] = {"index": index, "relevance_score": result.scores[index]}
        if body.return_documents:
            item["document"] = {"text": body.documents[index]}
        results.append(item)
    cut = [index for index, truncated in enumerate(result.truncated) if truncated]
    warnings = (
        [f"documents {', '.join(map(str, cut))} were truncated to the model's max length"]
        if cut
        else []
    )
    answer = {
        "model": model.name,
        "results": results,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        "meta": {"warnings": warnings},
    }
    return with_truncation_header(json_response(answer), result)
