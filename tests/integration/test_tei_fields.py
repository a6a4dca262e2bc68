"""TEI's request fields and routes (#31 item 3), against TEI's documented shapes
(router/src/http/types.rs) and with Hugging Face's own InferenceClient at the base URL:
prompt_name and prompt, truncation_direction, normalize, TEI's /tokenize, POST /,
/similarity, and infinity's /embeddings and /classify `input`.

The models are the real ones of models/ (hard links), in a repository of the test's own:
`e5` is minilm with e5-style prompts in its model.json (as export records them from
config_sentence_transformers.json), `minilm` has none, `sentiment` is the classifier.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import MODELS_DIR, LiveServer, start_server, wait_ready
from tests.error_shapes import error_message

PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXT = "How tall is the Eiffel tower?"
# "word" is one token of minilm's vocabulary: the text's last 254 tokens (minilm keeps 256
# with [CLS] and [SEP]) are the tail below, exactly.
LONG = "It starts here. " + "word " * 400 + "and this is how it ends"
TAIL = "word " * 248 + "and this is how it ends"


def link_model(repo: Path, source: str, name: str, **manifest: Any) -> None:
    """models/<source> as repo/<name>: its fp32 graph and tokenizer hard-linked, its
    model.json with `manifest`'s keys set."""
    directory = repo / name
    directory.mkdir()
    for file in ("model.onnx", "tokenizer.json"):
        os.link(MODELS_DIR / source / file, directory / file)
    data = json.loads((MODELS_DIR / source / "model.json").read_text())
    data |= {"name": name, "files": {"fp32": "model.onnx"}, **manifest}
    (directory / "model.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODELS_DIR / "minilm" / "model.onnx").is_file():
        pytest.fail("models/ is not built: run `make models` (make test does it first)")
    repo = tmp_path_factory.mktemp("tei-fields")
    link_model(repo, "minilm", "e5", prompts=PROMPTS)
    link_model(repo, "minilm", "minilm")
    link_model(repo, "sentiment", "sentiment")
    return repo


@pytest.fixture(scope="module")
def client(repo: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=repo, default_models=["e5", "sentiment"], warmup=False)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client.get)
        yield test_client


def ok(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def refused(client: TestClient, path: str, body: Any, status: int = 422) -> str:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    return error_message(response.json(), path)


def vectors(client: TestClient, text: str, **fields: Any) -> np.ndarray:
    body = ok(client, "/encode", {"inputs": text, "model": "e5", **fields})
    return np.asarray(body["embeddings"], dtype=np.float32)


# -- prompts -------------------------------------------------------------------------------


def test_models_lists_the_prompts_export_recorded(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["e5"]["prompts"] == PROMPTS
    assert models["minilm"]["prompts"] == {}


def test_prompt_name_prepends_the_models_prompt_on_every_embedding_route(
    client: TestClient,
) -> None:
    prompted = vectors(client, f"query: {TEXT}")
    plain = vectors(client, TEXT)
    assert float(prompted[0] @ plain[0]) < 0.999  # the prompt changes the answer
    np.testing.assert_allclose(vectors(client, TEXT, prompt_name="query"), prompted, atol=1e-6)
    np.testing.assert_allclose(vectors(client, TEXT, prompt="query: "), prompted, atol=1e-6)
    tei = ok(client, "/embed", {"inputs": [TEXT], "prompt_name": "query"})
    np.testing.assert_allclose(tei, prompted, atol=1e-6)
    openai = ok(client, "/v1/embeddings", {"input": TEXT, "model": "e5", "prompt_name": "query"})
    np.testing.assert_allclose([openai["data"][0]["embedding"]], prompted, atol=1e-6)
    # /embed_all: the prompt's tokens are part of the states ([CLS] query : ...).
    states = ok(client, "/embed_all", {"inputs": TEXT, "prompt_name": "query"})
    plain_states = ok(client, "/embed_all", {"inputs": TEXT})
    assert len(states[0]) == len(plain_states[0]) + 2


def test_an_unknown_prompt_name_is_a_422_naming_the_models_prompts(client: TestClient) -> None:
    message = refused(client, "/encode", {"inputs": TEXT, "model": "e5", "prompt_name": "qury"})
    assert "'qury'" in message and "'query', 'passage'" in message
    message = refused(
        client, "/encode", {"inputs": TEXT, "model": "minilm", "prompt_name": "query"}
    )
    assert "has none" in message
    # TEI's route, TEI's shape; and a prompt both named and given is ambiguous.
    assert "'query', 'passage'" in refused(client, "/embed", {"inputs": TEXT, "prompt_name": "x"})
    both = {"inputs": TEXT, "model": "e5", "prompt_name": "query", "prompt": "query: "}
    assert "not both" in refused(client, "/encode", both)
    # Token ids are never prompted nor truncated: the fields cannot apply.
    ids = {"input": [101, 7592, 102], "model": "e5", "prompt_name": "query"}
    assert "token ids" in refused(client, "/v1/embeddings", ids)


def test_a_prompt_longer_than_the_template_limit_is_refused(client: TestClient) -> None:
    message = refused(client, "/encode", {"inputs": TEXT, "prompt": "x" * 1025})
    assert "ENCODER_MAX_TEMPLATE_CHARS" in message


# -- truncation_direction ------------------------------------------------------------------


def test_truncating_from_the_left_keeps_the_end_of_the_text(client: TestClient) -> None:
    tail = vectors(client, TAIL)
    right = vectors(client, LONG)
    for spelling in ("left", "Left"):  # ours, and TEI's enum name
        left = vectors(client, LONG, truncation_direction=spelling)
        np.testing.assert_allclose(left, tail, atol=1e-5)
    assert float(right[0] @ tail[0]) < 0.999  # from the right, the start is kept instead
    tei = ok(client, "/embed", {"inputs": LONG, "truncate": True, "truncation_direction": "Left"})
    np.testing.assert_allclose(tei, tail, atol=1e-5)
    # Classifiers too: TEI's /predict and /classify score the kept end.
    predicted = ok(
        client, "/predict", {"inputs": LONG, "truncate": True, "truncation_direction": "Left"}
    )
    assert predicted == ok(client, "/predict", {"inputs": TAIL})
    classified = ok(client, "/classify", {"inputs": LONG, "truncation_direction": "left"})
    assert classified["results"] == ok(client, "/classify", {"inputs": TAIL})["results"]


def test_truncation_direction_outside_its_values_is_a_422(client: TestClient) -> None:
    message = refused(client, "/encode", {"inputs": TEXT, "truncation_direction": "middle"})
    assert "truncation_direction" in message


# -- normalize -----------------------------------------------------------------------------


def test_normalize_false_on_openai_route_answers_the_raw_pooled_vector(
    client: TestClient,
) -> None:
    raw = ok(client, "/v1/embeddings", {"input": TEXT, "model": "e5", "normalize": False})
    vector = np.asarray(raw["data"][0]["embedding"])
    assert abs(float(np.linalg.norm(vector)) - 1) > 0.01
    np.testing.assert_allclose(vector, vectors(client, TEXT, normalize=False)[0], atol=1e-6)


# -- TEI's /tokenize -----------------------------------------------------------------------


def test_tokenize_with_teis_fields_answers_teis_shape(client: TestClient) -> None:
    ours = ok(client, "/tokenize", {"inputs": "Héllo world"})
    assert set(ours) == {"model", "tokens", "truncated"}  # no TEI field: this server's shape
    tei = ok(client, "/tokenize", {"inputs": "Héllo world", "add_special_tokens": True})
    assert tei == [
        [
            {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
            # The input's own characters, and UTF-8 byte offsets, as TEI's router gives them.
            {"id": 7592, "text": "Héllo", "special": False, "start": 0, "stop": 6},
            {"id": 2088, "text": "world", "special": False, "start": 7, "stop": 12},
            {"id": 102, "text": "[SEP]", "special": True, "start": None, "stop": None},
        ]
    ]
    bare = ok(client, "/tokenize", {"inputs": ["Hello"], "add_special_tokens": False})
    assert [token["text"] for token in bare[0]] == ["Hello"]
    prompted = ok(
        client,
        "/tokenize",
        {"inputs": "Hello", "model": "e5", "prompt_name": "query", "add_special_tokens": False},
    )
    assert [(t["text"], t["start"], t["stop"]) for t in prompted[0]] == [
        ("query", 0, 5),
        (":", 5, 6),
        ("Hello", 7, 12),
    ]


# -- POST / and /similarity ----------------------------------------------------------------


def test_post_root_embeds_with_the_served_embedding_model(client: TestClient) -> None:
    root = ok(client, "/", {"inputs": [TEXT], "prompt_name": "query"})
    np.testing.assert_allclose(root, vectors(client, f"query: {TEXT}"), atol=1e-6)
    assert "tokenizer" not in refused(client, "/", {"inputs": []}, 400)  # TEI's `empty`
    assert client.post("/", json={"inputs": []}).json()["error_type"] == "empty"
    assert "JSON object" in refused(client, "/", [TEXT], 400)
    assert client.get("/").headers["content-type"].startswith("text/html")  # the viewer stays


def test_similarity_answers_the_cosines_to_the_source_sentence(client: TestClient) -> None:
    sentences = ["A feline rests on a rug.", "Stocks fell sharply on Monday."]
    body = {"inputs": {"source_sentence": "The cat sits on the mat.", "sentences": sentences}}
    scores = ok(client, "/similarity", body)
    embedded = np.asarray(
        ok(client, "/embed", {"inputs": ["The cat sits on the mat.", *sentences]})
    )
    np.testing.assert_allclose(scores, embedded[1:] @ embedded[0], atol=1e-5)
    assert scores[0] > scores[1]
    assert ok(client, "/", body) == scores  # what InferenceClient.sentence_similarity sends
    prompted = {**body, "parameters": {"prompt_name": "query", "truncation_direction": "Left"}}
    assert ok(client, "/similarity", prompted) != scores
    empty = {"inputs": {"source_sentence": "a", "sentences": []}}
    assert client.post("/similarity", json=empty).json()["error_type"] == "empty"
    assert refused(client, "/similarity", {"inputs": {"source_sentence": "a"}})


# -- infinity ------------------------------------------------------------------------------


def test_infinity_embeddings_and_classify_input(client: TestClient) -> None:
    unversioned = ok(client, "/embeddings", {"input": [TEXT], "model": "e5"})
    assert unversioned == ok(client, "/v1/embeddings", {"input": [TEXT], "model": "e5"})
    assert "modality" in refused(client, "/embeddings", {"input": TEXT, "modality": "image"})
    answer = ok(client, "/classify", {"input": ["I loved it.", "Awful."], "model": "sentiment"})
    assert answer["object"] == "classify" and answer["model"] == "sentiment"
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0
    ours = ok(client, "/classify", {"inputs": ["I loved it.", "Awful."], "model": "sentiment"})
    assert answer["data"] == ours["results"]
    unnamed = {"input": ["I loved it."], "model": "default/not-specified"}  # infinity's default
    assert ok(client, "/classify", unnamed)["model"] == "sentiment"
    both = {"input": ["a"], "inputs": ["a"]}
    assert "input" in refused(client, "/classify", both)


# -- what cannot be honoured is said -------------------------------------------------------


def test_tei_routes_refuse_fields_and_parameters_they_do_not_know(client: TestClient) -> None:
    assert "normalise" in refused(client, "/embed", {"inputs": TEXT, "normalise": False})
    message = refused(client, "/embed", {"inputs": TEXT, "parameters": {"encoding_format": "x"}})
    assert "encoding_format" in message
    # Known options in `parameters` (Hugging Face's clients put them there) are honoured.
    prompted = ok(client, "/embed", {"inputs": TEXT, "parameters": {"prompt_name": "query"}})
    np.testing.assert_allclose(prompted, vectors(client, f"query: {TEXT}"), atol=1e-6)
    top = ok(client, "/predict", {"inputs": "Great.", "parameters": {"top_k": 1}})
    assert len(top) == 1
    # OpenAI's route refuses what OpenAI's API refuses: a parameter it does not know.
    message = refused(client, "/v1/embeddings", {"input": TEXT, "input_type": "query"})
    assert "input_type is not a field" in message


# -- Hugging Face's InferenceClient at the base URL (real HTTP) ----------------------------


@pytest.fixture(scope="module")
def live(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Two front-end workers: the fields are applied where texts are tokenized (the
    workers), the prompts reach them in the engine process's model descriptions."""
    env = {
        "ENCODER_MODELS_DIR": str(repo),
        "ENCODER_DEFAULT_MODELS": "e5,sentiment",
        "ENCODER_WORKERS": "2",
    }
    server = start_server(tmp_path_factory.mktemp("tei-live"), env)
    yield server
    server.stop()


def test_inference_client_at_the_base_url(live: LiveServer, client: TestClient) -> None:
    hub = InferenceClient(model=live.url, timeout=60)
    vector = hub.feature_extraction(TEXT, prompt_name="query")
    np.testing.assert_allclose(vector, vectors(client, f"query: {TEXT}"), atol=1e-5)
    left = hub.feature_extraction(LONG, truncate=True, truncation_direction="left")
    np.testing.assert_allclose(left, vectors(client, TAIL), atol=1e-5)
    raw = hub.feature_extraction(TEXT, normalize=False)
    np.testing.assert_allclose(raw, vectors(client, TEXT, normalize=False), atol=1e-5)
    similar = hub.sentence_similarity("The cat sits.", other_sentences=["A cat sits.", "Taxes."])
    assert len(similar) == 2 and similar[0] > similar[1]
    models = httpx.get(f"{live.url}/models", timeout=10).json()["models"]
    assert {m["name"]: m["prompts"] for m in models}["e5"] == PROMPTS


def test_inference_client_classifies_at_the_base_url_of_a_classifier(
    repo: Path, tmp_path: Path
) -> None:
    only = tmp_path / "repo"
    only.mkdir()
    link_model(only, "sentiment", "sentiment")
    server = start_server(tmp_path, {"ENCODER_MODELS_DIR": str(only)})
    try:
        hub = InferenceClient(model=server.url, timeout=60)
        # TEI's answer for one text is its ranked labels: the client keeps the top one.
        best = hub.text_classification("What a wonderful, joyful film.")
        assert best.label == "positive" and best.score > 0.9
        worst = hub.text_classification("A dull, joyless, awful film.")
        assert worst.label == "negative"
        # Its parameters arrive in `parameters`: honoured (sigmoid scores stand alone).
        sigmoid = hub.text_classification("A wonderful film.", function_to_apply="sigmoid")
        softmax = hub.text_classification("A wonderful film.")
        assert sigmoid.label == "positive" and sigmoid.score != pytest.approx(softmax.score)
    finally:
        server.stop()
