"""The Python client's explain(), sync and async, against the real server."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from encoder_serve_client.client import (
    AsyncEncoderClient,
    EncoderClient,
    EncoderServeError,
    Explanation,
    WordScore,
)
from tests.conftest import LiveServer

TEXT = "The movie was surprisingly good, although the ending felt rushed."
Client = EncoderClient | AsyncEncoderClient


async def done(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, server: LiveServer) -> AsyncIterator[Client]:
    if request.param == "sync":
        with EncoderClient(server.url, timeout=60) as sync_client:
            yield sync_client
    else:
        async with AsyncEncoderClient(server.url, timeout=60) as async_client:
            yield async_client


async def test_explain_matches_the_raw_api(client: Client, server: LiveServer) -> None:
    result = await done(client.explain(TEXT, method="shap", samples=32, target="positive"))
    assert isinstance(result, Explanation)
    with server.client() as http:
        raw = http.post(
            "/explain",
            json={"inputs": TEXT, "method": "shap", "samples": 32, "target": "positive"},
        ).json()
    assert result.words == [
        WordScore(w["text"], w["start"], w["stop"], w["score"]) for w in raw["words"]
    ]
    assert (result.model, result.target, result.score) == ("sentiment", "positive", raw["score"])
    assert result.parameters["samples"] == 32 and result.tokens == raw["usage"]["tokens"]
    zero_shot = await done(client.explain(TEXT, candidate_labels=["film", "food"]))
    assert zero_shot.model == "minilm" and zero_shot.labels == ["film", "food"]


async def test_explain_errors_raise_with_the_contracts_type(client: Client) -> None:
    with pytest.raises(EncoderServeError) as error:
        await done(client.explain(TEXT, target="neutral"))
    assert error.value.status == 422 and "target" in error.value.message
