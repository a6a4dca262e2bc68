"""JSON answers in slices (app/api/answers.py): the same bytes as one orjson call, each
slice bounded, and heavy answers streamed."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api.answers import OPTIONS, SEND_BYTES, SLICE_ITEMS, json_response, pieces, weight

RNG = np.random.default_rng(0)


def ragged_states(count: int) -> list[np.ndarray]:
    return [
        RNG.standard_normal((int(n), 384)).astype(np.float32) for n in RNG.integers(1, 300, count)
    ]


CASES: list[Any] = [
    {"model": "m", "embeddings": np.zeros((8, 384), np.float32), "usage": {"tokens": 5}},
    ragged_states(60),
    {"a": RNG.standard_normal((300, 384)).astype(np.float32), "b": [1, 2], "c": {}},
    RNG.standard_normal(100_000).astype(np.float32),
    RNG.standard_normal((2, 70_000)).astype(np.float32),
    RNG.standard_normal((3, 4, 5000, 3)).astype(np.float32),
    [[{"id": i, "text": "x" * i, "special": False} for i in range(n)] for n in range(0, 600, 3)],
    [{"label": f"l{j}", "score": 0.5} for j in range(50_000)],
    ["y" * 100_000] * 50,
    [],
    {},
    np.zeros((0, 384), np.float32),
]


@pytest.mark.parametrize("value", CASES, ids=range(len(CASES)))
def test_pieces_are_orjsons_bytes_in_bounded_slices(value: Any) -> None:
    parts = list(pieces(value))
    assert b"".join(parts) == orjson.dumps(value, option=OPTIONS)
    if weight(value) > SLICE_ITEMS:
        assert len(parts) > 1
    # No slice much beyond SLICE_ITEMS numbers (~11 bytes each) for arrays.
    if isinstance(value, np.ndarray) or (
        isinstance(value, list) and value and isinstance(value[0], np.ndarray)
    ):
        assert max(len(part) for part in parts) < SLICE_ITEMS * 16


def test_light_answers_keep_content_length_and_heavy_ones_stream() -> None:
    heavy = ragged_states(200)

    async def light(request: Request) -> Response:
        return json_response({"vectors": np.ones((4, 8), np.float32)})

    async def big(request: Request) -> Response:
        return json_response(heavy)

    app = Starlette(routes=[Route("/light", light), Route("/big", big)])
    with TestClient(app) as client:
        small = client.get("/light")
        assert small.headers["content-length"] == str(len(small.content))
        assert small.json() == {"vectors": [[1.0] * 8] * 4}
        streamed = client.get("/big")
        assert len(streamed.content) > SEND_BYTES
        assert "content-length" not in streamed.headers
        assert streamed.content == orjson.dumps(heavy, option=OPTIONS)
