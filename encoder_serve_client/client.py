"""Python client for encoder-serve (sync and async), with 429 retries that honour Retry-After."""

# Self-contained on purpose: it needs only httpx and the standard library, and imports nothing
# from the server, so it installs without the server (encoder_serve_client/pyproject.toml) and
# can also be copied into any project as a single file.

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx

__all__ = [
    "AsyncEncoderClient",
    "Attention",
    "Classification",
    "Embeddings",
    "EncoderClient",
    "EncoderServeError",
    "Explanation",
    "LabelScore",
    "ModelInfo",
    "Rank",
    "Reranking",
    "RetryEvent",
    "WordScore",
    "backoff_delay",
    "parse_retry_after",
]

T = TypeVar("T")
Aggregate = Literal["none", "mean", "rollout"]
ExplainMethod = Literal["occlusion", "shap"]
BACKOFF_BASE_S = 0.5  # first backoff without Retry-After; doubles per attempt, with jitter


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Embeddings:
    """`POST /encode`: one vector per input, in input order."""

    model: str
    dimensions: int
    embeddings: list[list[float]]
    tokens: int  # tokens the server counted for the request


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Classification:
    """`POST /classify`: per input, its labels with scores, highest first."""

    model: str
    results: list[list[LabelScore]]
    tokens: int


@dataclass(frozen=True, slots=True)
class Rank:
    index: int  # the document's position in the request
    score: float  # relevance to the query (sigmoid of the cross-encoder's logit, or the logit)
    document: str | None  # its text, with return_documents


@dataclass(frozen=True, slots=True)
class Reranking:
    """`POST /v1/rerank`: the documents best first, cut to top_n."""

    model: str
    results: list[Rank]
    tokens: int
    warnings: list[str]  # e.g. which documents were truncated to the model's max length


@dataclass(frozen=True, slots=True)
class Attention:
    """`POST /attention`: `attentions` is `[layer][head][i][j]` for aggregate "none",
    `[layer][i][j]` for "mean" and `[i][j]` for "rollout"."""

    model: str
    tokens: list[str]
    special: list[bool]
    num_layers: int
    num_heads: int
    layers: list[int]
    heads: list[int]
    attentions: list[Any]
    token_count: int


@dataclass(frozen=True, slots=True)
class WordScore:
    """One word of an explained text: its characters `text[start:stop]` and how much it
    raised the target label's score (negative: lowered it)."""

    text: str
    start: int
    stop: int
    score: float


@dataclass(frozen=True, slots=True)
class Explanation:
    """`POST /explain`: per word, its share of the target label's score."""

    model: str
    method: str
    target: str
    labels: list[str]
    score: float  # the target score of the whole text
    empty_score: float | None  # with no words (shap)
    words: list[WordScore]
    truncated: bool
    parameters: dict[str, int | None]  # samples, seed, evaluations, max_words
    tokens: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of `GET /models`."""

    name: str
    task: str
    labels: list[str]
    dimensions: int
    max_length: int
    backend: str
    device: str
    precision: str
    pooling: str
    default: bool = False  # the default model of its task (older servers do not say)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to `on_retry` before the client waits `delay_s` and sends attempt `attempt + 1`."""

    attempt: int  # the attempt that failed, 1 for the first request
    status: int
    delay_s: float
    retry_after: str | None  # the server's Retry-After header, as sent
    request_id: str | None


class EncoderServeError(Exception):
    """An error answer (4xx/5xx) from the server, from its `{"error": {"type", "message"}}`."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        request_id: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after


# -- retry policy --------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date), or None when
    the header is absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" in the date: UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(attempt: int, max_wait_s: float) -> float:
    """Exponential backoff with jitter for retry `attempt` (0-based), at most `max_wait_s`."""
    ceiling = min(max_wait_s, BACKOFF_BASE_S * 2**attempt)
    return ceiling * (0.5 + random.random() / 2)


# -- requests and responses shared by both clients -----------------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    body: dict[str, Any] | None
    parse: Callable[[Any], T]


def _present(**fields: Any) -> dict[str, Any]:
    """The request body without the optional fields left unset (the server's defaults apply)."""
    return {key: value for key, value in fields.items() if value is not None}


def _encode_call(
    inputs: str | list[str],
    model: str | None,
    normalize: bool,
    truncate: bool,
    dimensions: int | None,
) -> _Call[Embeddings]:
    body = _present(
        inputs=inputs, model=model, normalize=normalize, truncate=truncate, dimensions=dimensions
    )

    def parse(data: Any) -> Embeddings:
        return Embeddings(
            data["model"], data["dimensions"], data["embeddings"], data["usage"]["tokens"]
        )

    return _Call("POST", "/encode", body, parse)


def _classify_call(
    inputs: str | list[str],
    *,
    model: str | None,
    top_k: int | None,
    raw_scores: bool,
    multi_label: bool,
    candidate_labels: list[str] | None,
    hypothesis_template: str | None,
    truncate: bool,
) -> _Call[Classification]:
    body = _present(
        inputs=inputs,
        model=model,
        top_k=top_k,
        raw_scores=raw_scores,
        multi_label=multi_label,
        truncate=truncate,
        candidate_labels=candidate_labels,
        hypothesis_template=hypothesis_template,
    )

    def parse(data: Any) -> Classification:
        results = [
            [LabelScore(item["label"], item["score"]) for item in scores]
            for scores in data["results"]
        ]
        return Classification(data["model"], results, data["usage"]["tokens"])

    return _Call("POST", "/classify", body, parse)


def _rerank_call(
    query: str,
    documents: list[str],
    *,
    model: str | None,
    top_n: int | None,
    return_documents: bool,
    raw_scores: bool,
    truncate: bool,
) -> _Call[Reranking]:
    body = _present(
        query=query,
        documents=documents,
        model=model,
        top_n=top_n,
        return_documents=return_documents,
        raw_scores=raw_scores,
        truncate=truncate,
    )

    def parse(data: Any) -> Reranking:
        results = [
            Rank(item["index"], item["relevance_score"], (item.get("document") or {}).get("text"))
            for item in data["results"]
        ]
        warnings = list(data.get("meta", {}).get("warnings", []))
        return Reranking(data["model"], results, data["usage"]["total_tokens"], warnings)

    return _Call("POST", "/v1/rerank", body, parse)


def _attention_call(
    text: str,
    model: str | None,
    layers: list[int] | None,
    heads: list[int] | None,
    aggregate: Aggregate,
    truncate: bool,
) -> _Call[Attention]:
    body = _present(
        inputs=text, model=model, layers=layers, heads=heads, aggregate=aggregate, truncate=truncate
    )

    def parse(data: Any) -> Attention:
        return Attention(
            model=data["model"],
            tokens=data["tokens"],
            special=data["special"],
            num_layers=data["num_layers"],
            num_heads=data["num_heads"],
            layers=data["layers"],
            heads=data["heads"],
            attentions=data["attentions"],
            token_count=data["usage"]["tokens"],
        )

    return _Call("POST", "/attention", body, parse)


def _explain_call(
    text: str,
    *,
    model: str | None,
    method: ExplainMethod,
    target: str | None,
    samples: int | None,
    seed: int | None,
    candidate_labels: list[str] | None,
    hypothesis_template: str | None,
    truncate: bool,
) -> _Call[Explanation]:
    body = _present(
        inputs=text,
        model=model,
        method=method,
        target=target,
        samples=samples,
        seed=seed,
        candidate_labels=candidate_labels,
        hypothesis_template=hypothesis_template,
        truncate=truncate,
    )

    def parse(data: Any) -> Explanation:
        return Explanation(
            model=data["model"],
            method=data["method"],
            target=data["target"],
            labels=data["labels"],
            score=data["score"],
            empty_score=data["empty_score"],
            words=[WordScore(w["text"], w["start"], w["stop"], w["score"]) for w in data["words"]],
            truncated=data["truncated"],
            parameters=data["parameters"],
            tokens=data["usage"]["tokens"],
        )

    return _Call("POST", "/explain", body, parse)


def _models_call() -> _Call[list[ModelInfo]]:
    def parse(data: Any) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=item["name"],
                task=item["task"],
                labels=item["labels"],
                dimensions=item["dimensions"],
                max_length=item["max_length"],
                backend=item["backend"],
                device=item["device"],
                precision=item["precision"],
                pooling=item["pooling"],
                default=item.get("default", False),
            )
            for item in data["models"]
        ]

    return _Call("GET", "/models", None, parse)


def _error_from(response: httpx.Response) -> EncoderServeError:
    kind, message = "http_error", response.reason_phrase or f"HTTP {response.status_code}"
    try:
        detail = response.json()["error"]
        # The OpenAI shape of /v1/ routes (/v1/rerank) carries the server's kind in `code`.
        kind, message = str(detail.get("code") or detail["type"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        # Not the server's error shape (a proxy's page, say): keep the start of the body.
        message = response.text[:200] or message
    return EncoderServeError(
        response.status_code,
        kind,
        message,
        response.headers.get("x-request-id"),
        response.headers.get("retry-after"),
    )


class _ClientBase:
    """Settings, request building, the retry decision and response parsing; the two clients
    differ only in how they send a request and how they wait."""

    def __init__(
        self,
        max_retries: int,
        max_retry_wait_s: float,
        retry_statuses: Collection[int],
        on_retry: Callable[[RetryEvent], None] | None,
    ) -> None:
        if max_retries < 0 or max_retry_wait_s < 0:
            raise ValueError("max_retries and max_retry_wait_s must not be negative")
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.retry_statuses = frozenset(retry_statuses)
        self.on_retry = on_retry

    @staticmethod
    def _http_options(
        base_url: str, api_key: str | None, timeout: float, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        headers = {"user-agent": "encoder-serve-client", **dict(options.get("headers") or {})}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return {**options, "base_url": base_url, "timeout": timeout, "headers": headers}

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """How long to wait before sending attempt `attempt + 1`, or None to stop here."""
        if response.status_code not in self.retry_statuses or attempt > self.max_retries:
            return None
        retry_after = response.headers.get("retry-after")
        wait = parse_retry_after(retry_after)
        if wait is None:
            delay = backoff_delay(attempt - 1, self.max_retry_wait_s)
        else:
            delay = min(wait, self.max_retry_wait_s)
        if self.on_retry is not None:
            request_id = response.headers.get("x-request-id")
            self.on_retry(RetryEvent(attempt, response.status_code, delay, retry_after, request_id))
        return delay

    @staticmethod
    def _result(call: _Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise _error_from(response)
        return call.parse(response.json())


class EncoderClient(_ClientBase):
    """Blocking client. Use as a context manager, or call `close()`.

    A 429 (and a 503) is retried up to `max_retries` times, waiting the server's Retry-After
    (capped at `max_retry_wait_s`) or, without one, an exponential backoff with jitter; then
    the error is raised as `EncoderServeError`. Transport failures raise httpx's exceptions.
    Extra keyword arguments (`headers`, `transport`, `event_hooks`, …) go to `httpx.Client`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        *,
        retry_statuses: Collection[int] = (429, 503),
        on_retry: Callable[[RetryEvent], None] | None = None,
        **httpx_options: Any,
    ) -> None:
        super().__init__(max_retries, max_retry_wait_s, retry_statuses, on_retry)
        self._http = httpx.Client(**self._http_options(base_url, api_key, timeout, httpx_options))

    def _run(self, call: _Call[T]) -> T:
        attempt = 1
        while True:
            response = self._http.request(call.method, call.path, json=call.body)
            delay = self._retry_delay(response, attempt)
            if delay is None:
                return self._result(call, response)
            time.sleep(delay)
            attempt += 1

    def encode(
        self,
        inputs: str | list[str],
        *,
        model: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Sentence embeddings of a text or a list of texts, in input order."""
        return self._run(_encode_call(inputs, model, normalize, truncate, dimensions))

    def classify(
        self,
        inputs: str | list[str],
        *,
        model: str | None = None,
        top_k: int | None = None,
        raw_scores: bool = False,
        multi_label: bool = False,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str | None = None,
        truncate: bool = True,
    ) -> Classification:
        """Label scores per input, highest first (zero-shot with `candidate_labels`)."""
        return self._run(
            _classify_call(
                inputs,
                model=model,
                top_k=top_k,
                raw_scores=raw_scores,
                multi_label=multi_label,
                candidate_labels=candidate_labels,
                hypothesis_template=hypothesis_template,
                truncate=truncate,
            )
        )

    def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncate: bool = True,
    ) -> Reranking:
        """The documents by relevance to the query (a rerank model), best first."""
        return self._run(
            _rerank_call(
                query,
                documents,
                model=model,
                top_n=top_n,
                return_documents=return_documents,
                raw_scores=raw_scores,
                truncate=truncate,
            )
        )

    def attention(
        self,
        text: str,
        *,
        model: str | None = None,
        layers: list[int] | None = None,
        heads: list[int] | None = None,
        aggregate: Aggregate = "mean",
        truncate: bool = True,
    ) -> Attention:
        """Attention probabilities of one text."""
        return self._run(_attention_call(text, model, layers, heads, aggregate, truncate))

    def explain(
        self,
        text: str,
        *,
        model: str | None = None,
        method: ExplainMethod = "occlusion",
        target: str | None = None,
        samples: int | None = None,
        seed: int | None = None,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str | None = None,
        truncate: bool = True,
    ) -> Explanation:
        """How much each word of `text` moved the `target` label's score (default: the top
        label): `occlusion`, or `shap` with `samples` and `seed`; with `candidate_labels`,
        a zero-shot label of an embedding model."""
        call = _explain_call(
            text,
            model=model,
            method=method,
            target=target,
            samples=samples,
            seed=seed,
            candidate_labels=candidate_labels,
            hypothesis_template=hypothesis_template,
            truncate=truncate,
        )
        return self._run(call)

    def models(self) -> list[ModelInfo]:
        """Every model the server has loaded."""
        return self._run(_models_call())

    def health(self) -> bool:
        """True while the server process answers (liveness)."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """True once every model is loaded and warmed, and the server is not draining."""
        try:
            return self._http.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncEncoderClient(_ClientBase):
    """The asyncio twin of `EncoderClient`: the same methods and retries, awaited.
    Use as an async context manager, or await `aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        *,
        retry_statuses: Collection[int] = (429, 503),
        on_retry: Callable[[RetryEvent], None] | None = None,
        **httpx_options: Any,
    ) -> None:
        super().__init__(max_retries, max_retry_wait_s, retry_statuses, on_retry)
        options = self._http_options(base_url, api_key, timeout, httpx_options)
        self._http = httpx.AsyncClient(**options)

    async def _run(self, call: _Call[T]) -> T:
        attempt = 1
        while True:
            response = await self._http.request(call.method, call.path, json=call.body)
            delay = self._retry_delay(response, attempt)
            if delay is None:
                return self._result(call, response)
            await asyncio.sleep(delay)
            attempt += 1

    async def encode(
        self,
        inputs: str | list[str],
        *,
        model: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Sentence embeddings of a text or a list of texts, in input order."""
        return await self._run(_encode_call(inputs, model, normalize, truncate, dimensions))

    async def classify(
        self,
        inputs: str | list[str],
        *,
        model: str | None = None,
        top_k: int | None = None,
        raw_scores: bool = False,
        multi_label: bool = False,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str | None = None,
        truncate: bool = True,
    ) -> Classification:
        """Label scores per input, highest first (zero-shot with `candidate_labels`)."""
        return await self._run(
            _classify_call(
                inputs,
                model=model,
                top_k=top_k,
                raw_scores=raw_scores,
                multi_label=multi_label,
                candidate_labels=candidate_labels,
                hypothesis_template=hypothesis_template,
                truncate=truncate,
            )
        )

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncate: bool = True,
    ) -> Reranking:
        """The documents by relevance to the query (a rerank model), best first."""
        return await self._run(
            _rerank_call(
                query,
                documents,
                model=model,
                top_n=top_n,
                return_documents=return_documents,
                raw_scores=raw_scores,
                truncate=truncate,
            )
        )

    async def attention(
        self,
        text: str,
        *,
        model: str | None = None,
        layers: list[int] | None = None,
        heads: list[int] | None = None,
        aggregate: Aggregate = "mean",
        truncate: bool = True,
    ) -> Attention:
        """Attention probabilities of one text."""
        return await self._run(_attention_call(text, model, layers, heads, aggregate, truncate))

    async def explain(
        self,
        text: str,
        *,
        model: str | None = None,
        method: ExplainMethod = "occlusion",
        target: str | None = None,
        samples: int | None = None,
        seed: int | None = None,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str | None = None,
        truncate: bool = True,
    ) -> Explanation:
        """How much each word of `text` moved the `target` label's score (default: the top
        label): `occlusion`, or `shap` with `samples` and `seed`; with `candidate_labels`,
        a zero-shot label of an embedding model."""
        call = _explain_call(
            text,
            model=model,
            method=method,
            target=target,
            samples=samples,
            seed=seed,
            candidate_labels=candidate_labels,
            hypothesis_template=hypothesis_template,
            truncate=truncate,
        )
        return await self._run(call)

    async def models(self) -> list[ModelInfo]:
        """Every model the server has loaded."""
        return await self._run(_models_call())

    async def health(self) -> bool:
        """True while the server process answers (liveness)."""
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        """True once every model is loaded and warmed, and the server is not draining."""
        try:
            return (await self._http.get("/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
