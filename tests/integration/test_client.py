"""The Python client (encoder_serve_client): results against a real server, errors, 429
retries, and its former import path `app.client`."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import app.client
import encoder_serve_client
from encoder_serve_client import (
    AsyncEncoderClient,
    EncoderClient,
    EncoderServeError,
    LabelScore,
    RetryEvent,
    backoff_delay,
    parse_retry_after,
)
from tests.conftest import LiveServer, start_server

TEXT = "The movie was surprisingly good, although the ending felt rushed."
TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Stocks fell sharply today."]
LONG_TEXT = " ".join(f"word{i}" for i in range(200))  # truncated to the model's 256 tokens

Client = EncoderClient | AsyncEncoderClient


async def done(result: Any) -> Any:
    """The value of a sync client's call, or of an async client's awaited call."""
    return await result if inspect.isawaitable(result) else result


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, server: LiveServer) -> AsyncIterator[Client]:
    if request.param == "sync":
        with EncoderClient(server.url, timeout=60) as sync_client:
            yield sync_client
    else:
        async with AsyncEncoderClient(server.url, timeout=60) as async_client:
            yield async_client


def raw_post(server: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with server.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_same_vectors(left: list[list[float]], right: list[list[float]]) -> None:
    assert len(left) == len(right)
    for got, expected in zip(left, right, strict=True):
        assert got == pytest.approx(expected, abs=1e-5)


# -- against the shared server ---------------------------------------------------


async def test_encode_matches_the_raw_api(client: Client, server: LiveServer) -> None:
    one = await done(client.encode(TEXT))
    raw = raw_post(server, "/encode", {"inputs": TEXT})
    assert (one.model, one.dimensions, one.tokens) == (raw["model"], 384, raw["usage"]["tokens"])
    assert_same_vectors(one.embeddings, raw["embeddings"])

    cut = await done(client.encode(TEXTS, dimensions=8))
    raw = raw_post(server, "/encode", {"inputs": TEXTS, "dimensions": 8})
    assert cut.dimensions == 8 and len(cut.embeddings) == len(TEXTS)
    assert cut.tokens == raw["usage"]["tokens"]
    assert_same_vectors(cut.embeddings, raw["embeddings"])

    plain = await done(client.encode(TEXT, normalize=False))
    assert sum(value * value for value in plain.embeddings[0]) != pytest.approx(1.0, abs=1e-3)


async def test_zero_shot_classify(client: Client, server: LiveServer) -> None:
    labels = ["sports", "finance", "animals"]
    result = await done(client.classify(TEXTS, candidate_labels=labels, top_k=2))
    raw = raw_post(server, "/classify", {"inputs": TEXTS, "candidate_labels": labels, "top_k": 2})
    assert result.model == raw["model"] == "minilm"
    assert result.tokens == raw["usage"]["tokens"]
    assert [[score.label for score in scores] for scores in result.results] == [
        [item["label"] for item in scores] for scores in raw["results"]
    ]
    assert all(len(scores) == 2 for scores in result.results)
    assert result.results[0][0].label == "animals" and result.results[2][0].label == "finance"
    assert isinstance(result.results[0][0], LabelScore)
    assert result.results[0][0].score >= result.results[0][1].score

    cosines = await done(
        client.classify(
            TEXT,
            candidate_labels=["film", "cooking"],
            raw_scores=True,
            hypothesis_template="A review of a {}.",
        )
    )
    assert len(cosines.results) == 1 and -1 <= cosines.results[0][1].score <= 1


async def test_attention_shapes(client: Client) -> None:
    mean = await done(client.attention(TEXT))
    n = len(mean.tokens)
    assert (mean.num_layers, mean.num_heads, mean.token_count) == (6, 12, n)
    assert mean.layers == list(range(6)) and mean.heads == list(range(12))
    assert mean.special[0] and mean.special[-1] and not any(mean.special[1:-1])
    assert len(mean.attentions) == 6 and len(mean.attentions[0]) == n
    assert sum(mean.attentions[0][0]) == pytest.approx(1.0, abs=1e-3)

    picked = await done(client.attention(TEXT, layers=[5, 0], heads=[3], aggregate="none"))
    assert picked.layers == [5, 0] and picked.heads == [3]
    assert len(picked.attentions) == 2 and len(picked.attentions[0]) == 1
    assert len(picked.attentions[0][0]) == n and len(picked.attentions[0][0][0]) == n

    rollout = await done(client.attention(TEXT, aggregate="rollout"))
    assert len(rollout.attentions) == n and len(rollout.attentions[0]) == n


async def test_models_health_and_ready(client: Client) -> None:
    models = {model.name: model for model in await done(client.models())}
    minilm = models["minilm"]
    assert (minilm.task, minilm.dimensions, minilm.max_length) == ("embedding", 384, 256)
    assert minilm.backend and minilm.device and minilm.precision and minilm.pooling == "mean"
    assert {name for name, model in models.items() if model.default} == {"minilm", "sentiment"}
    assert await done(client.health()) is True
    assert await done(client.ready()) is True


async def test_unknown_model_raises_the_servers_error(client: Client) -> None:
    with pytest.raises(EncoderServeError) as raised:
        await done(client.encode(TEXT, model="no-such-model"))
    error = raised.value
    assert (error.status, error.type) == (404, "model_not_found")
    assert "no-such-model" in error.message
    assert error.request_id  # the server's x-request-id, for its logs

    with pytest.raises(EncoderServeError) as raised:
        await done(client.encode([]))
    assert (raised.value.status, raised.value.type) == (422, "validation_error")


async def test_unreachable_server_is_not_healthy() -> None:
    with EncoderClient("http://127.0.0.1:9", timeout=2) as dead:
        assert dead.health() is False and dead.ready() is False
    async with AsyncEncoderClient("http://127.0.0.1:9", timeout=2) as dead_async:
        assert await dead_async.health() is False


# -- against a server forced into 429 ---------------------------------------------


class Saturation:
    """Background threads that keep a one-slot queue full with long inputs."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stopping.is_set():
                http.post("/encode", json={"inputs": LONG_TEXT})

    def __enter__(self) -> Saturation:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while http.post("/encode", json={"inputs": TEXT}).status_code != 429:
                assert time.monotonic() < deadline, "the load never filled the queue"
        return self

    def stop(self) -> None:
        self.stopping.set()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        for thread in self.threads:
            thread.join(30)


class Attempts:
    """httpx event hooks: when each request left and each answer came back, with its status."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.answers: list[tuple[float, int, str | None]] = []

    def clear(self) -> None:
        self.sent.clear()
        self.answers.clear()

    def on_request(self, request: httpx.Request) -> None:
        self.sent.append(time.monotonic())

    def on_response(self, response: httpx.Response) -> None:
        self.answers.append(
            (time.monotonic(), response.status_code, response.headers.get("retry-after"))
        )

    async def on_request_async(self, request: httpx.Request) -> None:
        self.on_request(request)

    async def on_response_async(self, response: httpx.Response) -> None:
        self.on_response(response)

    def assert_waits_honoured(self) -> None:
        """Every retry left at least Retry-After seconds after the 429 it answers."""
        assert len(self.sent) == len(self.answers)
        for (answered, status, retry_after), next_sent in zip(
            self.answers, self.sent[1:], strict=False
        ):
            assert status == 429 and retry_after is not None
            assert next_sent - answered >= float(retry_after) - 0.01, next_sent - answered


@pytest.fixture(scope="module")
def one_slot_server(
    default_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One input running, one queued: a third concurrent input is answered 429."""
    live = start_server(
        tmp_path_factory.mktemp("one-slot"),
        {
            "ENCODER_MODELS": "minilm",
            "ENCODER_MAX_QUEUE": "1",
            "ENCODER_MAX_BATCH_SIZE": "1",
            # One core for inference leaves the other to the event loop and the load.
            "ENCODER_INTRA_OP_THREADS": "1",
            # The load repeats its texts, and the probe repeats TEXT: cached answers never
            # queue, so neither would ever meet the full queue these tests are about.
            "ENCODER_CACHE_BYTES": "0",
        },
    )
    yield live
    live.stop()


def test_retry_waits_retry_after_then_succeeds_once_the_load_stops(
    one_slot_server: LiveServer,
) -> None:
    attempts, retries = Attempts(), list[RetryEvent]()
    expected = raw_post(one_slot_server, "/encode", {"inputs": TEXT})["embeddings"]
    hooks = {"request": [attempts.on_request], "response": [attempts.on_response]}
    with EncoderClient(one_slot_server.url, max_retries=3, event_hooks=hooks) as client:
        # A first attempt can land in the instant the queue has room: then try again.
        for _ in range(5):
            attempts.clear()
            with Saturation(one_slot_server.url) as load:

                def stop_load_on_retry(event: RetryEvent, load: Saturation = load) -> None:
                    retries.append(event)
                    load.stop()

                client.on_retry = stop_load_on_retry
                result = client.encode(TEXT)
            if retries:
                break
        else:
            pytest.fail("five calls under load were all answered at once: nothing was retried")
    assert [status for _, status, _ in attempts.answers] == [429, 200]
    assert retries[0].attempt == 1 and retries[0].status == 429
    assert retries[0].retry_after == "1" and retries[0].delay_s == 1.0
    attempts.assert_waits_honoured()
    assert_same_vectors(result.embeddings, expected)


async def test_retry_gives_up_after_max_retries_while_the_load_continues(
    one_slot_server: LiveServer,
) -> None:
    attempts, retries = Attempts(), list[RetryEvent]()
    hooks = {"request": [attempts.on_request_async], "response": [attempts.on_response_async]}
    async with AsyncEncoderClient(
        one_slot_server.url, max_retries=2, on_retry=retries.append, event_hooks=hooks
    ) as client:
        with Saturation(one_slot_server.url):
            # Each attempt has a small chance of finding the queue's slot free: try again then.
            for _ in range(4):
                attempts.clear()
                retries.clear()
                started = time.monotonic()
                try:
                    await client.encode(TEXT)
                except EncoderServeError as raised:
                    error, elapsed = raised, time.monotonic() - started
                    break
            else:
                pytest.fail("four calls under load all succeeded: the server was not saturated")
    assert (error.status, error.type, error.retry_after) == (429, "overloaded", "1")
    assert [status for _, status, _ in attempts.answers] == [429, 429, 429]
    assert [event.attempt for event in retries] == [1, 2]
    attempts.assert_waits_honoured()
    assert elapsed >= 2.0


# -- retry policy, without a server --------------------------------------------------


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:05 GMT", now) == 5.0
    later = format_datetime(datetime(2025, 1, 1, 12, 1, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now) == 60.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:59:00 GMT", now) == 0.0  # already passed
    for garbage in (None, "", "soon", "-1", "nan", "inf", "Wed, 99 Foo 2025"):
        assert parse_retry_after(garbage, now) is None, garbage


def test_backoff_grows_with_jitter_and_stays_under_the_cap() -> None:
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 4.0]):
        delays = {backoff_delay(attempt, 30.0) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(delays) > 1  # jittered
    assert all(backoff_delay(20, 3.0) <= 3.0 for _ in range(50))


def scripted(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    return httpx.MockTransport(handle)


OVERLOADED = {"error": {"type": "overloaded", "message": "queue full"}}
ENCODED = {"model": "m", "dimensions": 1, "embeddings": [[1.0]], "usage": {"tokens": 3}}


def test_waits_are_capped_and_fall_back_to_backoff_without_retry_after() -> None:
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(429, json=OVERLOADED, headers={"retry-after": "3600"}),
        httpx.Response(429, json=OVERLOADED, headers={"retry-after": "later"}),
        httpx.Response(503, json={"error": {"type": "not_ready", "message": "loading"}}),
        httpx.Response(200, json=ENCODED),
    ]
    retries: list[RetryEvent] = []
    with EncoderClient(
        "http://encoder.test",
        api_key="secret",
        max_retry_wait_s=0.05,
        on_retry=retries.append,
        transport=scripted(answers, seen),
    ) as client:
        assert client.encode("x", dimensions=1).embeddings == [[1.0]]
    assert [event.status for event in retries] == [429, 429, 503]
    assert retries[0].delay_s == 0.05  # 3600 s asked, capped
    assert all(0 < event.delay_s <= 0.05 for event in retries[1:])
    assert all(request.headers["authorization"] == "Bearer secret" for request in seen)
    assert seen[0].read() == b'{"inputs":"x","normalize":true,"truncate":true,"dimensions":1}'


async def test_errors_without_the_contracts_body_and_no_retry_on_client_errors() -> None:
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(502, text="<html>bad gateway</html>", headers={"x-request-id": "r1"}),
        httpx.Response(422, json={"error": {"type": "validation_error", "message": "no"}}),
    ]
    async with AsyncEncoderClient(
        "http://encoder.test", transport=scripted(answers, seen)
    ) as client:
        with pytest.raises(EncoderServeError) as raised:
            await client.models()
        assert (raised.value.status, raised.value.type) == (502, "http_error")
        assert raised.value.message == "<html>bad gateway</html>"
        assert raised.value.request_id == "r1"
        with pytest.raises(EncoderServeError) as raised:
            await client.encode("x")
        assert (raised.value.status, raised.value.type) == (422, "validation_error")
    assert len(seen) == 2


def test_the_former_import_path_re_exports_the_same_client() -> None:
    assert app.client.__all__ == encoder_serve_client.__all__
    for name in encoder_serve_client.__all__:
        assert getattr(app.client, name) is getattr(encoder_serve_client, name), name
