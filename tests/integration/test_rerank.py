"""POST /rerank (TEI's shape) and POST /v1/rerank (Cohere's, Jina's, infinity's) on a tiny
cross-encoder exported into a temporary model repository, against PyTorch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from tests.conftest import MODELS_DIR, LiveServer, metric_sum, start_server, wait_ready

pytestmark = pytest.mark.slow

QUERY = "what do cats like to do"
DOCUMENTS = [
    "Cats sleep for most of the day, often in a sunny spot.",
    "The stock market closed higher on Friday.",
    "A kitten chases a ball of wool across the floor.",
    "Rain is expected over the weekend in the north.",
]
LONG_DOCUMENT = " ".join(["the cat sat on the mat and looked out of the window"] * 40)


@pytest.fixture(scope="module")
def rerank_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the cross-encoder's source directory, a repository of it as `tinyrank` and minilm)."""
    from tests.tiny_models import export_tiny_reranker

    return export_tiny_reranker(tmp_path_factory.mktemp("rerank"), MODELS_DIR / "minilm")


@pytest.fixture(scope="module")
def client(rerank_repo: tuple[Path, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=rerank_repo[1], warmup=False))) as client:
        wait_ready(client.get)
        yield client


def torch_logits(source: Path, query: str, documents: list[str], max_length: int) -> np.ndarray:
    """The cross-encoder's logits in PyTorch, documents cut at their end (only_second)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    batch = tokenizer(
        [query] * len(documents),
        documents,
        truncation="only_second",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**batch).logits[:, 0].numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_export_recognises_a_cross_encoder(rerank_repo: tuple[Path, Path]) -> None:
    from app.engine.manifest import ModelManifest

    manifest = ModelManifest.read(rerank_repo[1] / "tinyrank")
    assert manifest.task == "rerank"
    assert len(manifest.labels) == 1
    assert manifest.parity["fp32"]["compared"] == "logits"
    assert manifest.parity["fp32"]["max_abs_diff"] < 1e-4


def test_models_and_info_report_the_rerank_task(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["tinyrank"]["task"] == "rerank"
    assert models["tinyrank"]["default"] is True  # the only rerank model
    assert client.get("/info").json()["default_models"]["rerank"] == "tinyrank"


def test_tei_rerank_scores_are_pytorch_sigmoids_best_first(
    client: TestClient, rerank_repo: tuple[Path, Path]
) -> None:
    logits = torch_logits(rerank_repo[0], QUERY, DOCUMENTS, 128)
    answer = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    ranks = answer.json()
    assert [r["index"] for r in ranks] == list(np.argsort(-logits, kind="stable"))
    for rank in ranks:
        assert set(rank) == {"index", "score"}
        assert rank["score"] == pytest.approx(sigmoid(logits[rank["index"]]), abs=1e-5)
    assert "x-truncated-documents" not in answer.headers

    raw = client.post(
        "/rerank",
        json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True},
    ).json()
    for rank in raw:
        assert rank["score"] == pytest.approx(logits[rank["index"]], abs=1e-4)
        assert rank["text"] == DOCUMENTS[rank["index"]]


def test_v1_rerank_top_n_documents_and_usage(client: TestClient) -> None:
    full = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    assert full["model"] == "tinyrank"
    assert [r["index"] for r in full["results"]] == [
        r["index"] for r in client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    ]
    assert all("document" not in r for r in full["results"])
    scores = [r["relevance_score"] for r in full["results"]]
    assert scores == sorted(scores, reverse=True)
    assert full["usage"]["total_tokens"] > 4 * len(QUERY.split())
    assert full["meta"] == {"warnings": []}

    top = client.post(
        "/v1/rerank",
        json={
            "model": "tinyrank",
            "query": QUERY,
            "documents": DOCUMENTS,
            "top_n": 2,
            "return_documents": True,
            "rank_fields": ["text"],  # Cohere's clients may send it: ignored
        },
    ).json()
    assert top["results"] == [
        {**r, "document": {"text": DOCUMENTS[r["index"]]}} for r in full["results"][:2]
    ]


def test_truncation_cuts_the_document_never_the_query_and_says_so(
    client: TestClient, rerank_repo: tuple[Path, Path]
) -> None:
    documents = [DOCUMENTS[0], LONG_DOCUMENT]
    # A query that alone fills a third of the 128 tokens: longest-first truncation would cut it.
    query = " ".join([QUERY] * 8)
    logits = torch_logits(rerank_repo[0], query, documents, 128)
    answer = client.post("/v1/rerank", json={"query": query, "documents": documents})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-truncated-documents"] == "1"
    assert "documents 1 were truncated" in answer.json()["meta"]["warnings"][0]
    by_index = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert by_index[1] == pytest.approx(sigmoid(logits[1]), abs=1e-5)
    assert by_index[0] == pytest.approx(sigmoid(logits[0]), abs=1e-5)

    tei = client.post("/rerank", json={"query": query, "texts": documents, "truncate": True})
    assert tei.headers["x-truncated-documents"] == "1"
    # TEI's default (truncate null) refuses the over-long pair, in TEI's error shape.
    refused = client.post("/rerank", json={"query": query, "texts": documents})
    assert refused.status_code == 413
    assert refused.json()["error_type"] == "validation"
    assert "documents[1]" in refused.json()["error"]
    # A query leaving no room for the document is refused, not cut (the contract's
    # input_too_long, as /encode's with truncate false).
    too_long = client.post("/v1/rerank", json={"query": LONG_DOCUMENT, "documents": ["a"]})
    assert too_long.status_code == 422
    assert "query" in too_long.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/rerank", {"query": QUERY, "texts": []}, 400, "texts must not be an empty list"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, 422, "must not be an empty list"),
        ("/v1/rerank", {"query": "", "documents": ["a"]}, 422, "empty string"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a", ""]}, 422, "documents[1]"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, 422, "top_n"),
        ("/v1/rerank", {"query": QUERY, "documents": "a"}, 422, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "model": "nope"}, 404, "nope"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "model": "minilm"}, 422, "rerank"),
    ],
)
def test_bad_input(client: TestClient, path: str, body: dict, status: int, needle: str) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert needle in answer.text


def test_a_rerank_model_elsewhere_says_where_it_serves(client: TestClient) -> None:
    answer = client.post("/classify", json={"inputs": "a", "model": "tinyrank"})
    assert answer.status_code == 422
    assert "is a rerank model: use POST /rerank or /v1/rerank" in answer.json()["error"]["message"]
    assert client.post("/encode", json={"inputs": "a", "model": "tinyrank"}).status_code == 422


def test_document_limits_are_settings(rerank_repo: tuple[Path, Path]) -> None:
    settings = Settings(
        models_dir=rerank_repo[1], warmup=False, max_rerank_documents=3, max_document_chars=40
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client.get)
        many = client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"] * 4})
        assert many.status_code == 413
        assert "4 documents in one request; the limit is 3" in many.json()["error"]["message"]
        long = client.post("/rerank", json={"query": QUERY, "texts": ["a", "b" * 41]})
        assert long.status_code == 413
        assert long.json() == {
            "error": "texts[1] has 41 characters; the limit is 40",
            "error_type": "validation",
        }
        assert client.post("/rerank", json={"query": QUERY, "texts": ["a"] * 3}).status_code == 200


@pytest.fixture(scope="module")
def server(
    rerank_repo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    # No result cache: the batching test sends each query alone first, then all at once,
    # and counts the passes the second round takes.
    env = {
        "ENCODER_MODELS_DIR": str(rerank_repo[1]),
        "ENCODER_MAX_WAIT_MS": "20",
        "ENCODER_CACHE_BYTES": "0",
    }
    live = start_server(tmp_path_factory.mktemp("rerank-server"), env)
    yield live
    live.stop()


async def test_concurrent_reranks_are_batched_and_each_answered_once(server: LiveServer) -> None:
    queries = [f"{QUERY} number {i}" for i in range(24)]
    with server.client() as client:
        expected = [
            client.post("/v1/rerank", json={"query": q, "documents": DOCUMENTS}).json()
            for q in queries
        ]
        before = client.get("/metrics").text
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/rerank", json={"query": q, "documents": DOCUMENTS}) for q in queries)
        )
    assert all(a.status_code == 200 for a in answers)
    for answer, alone in zip(answers, expected, strict=True):
        got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        want = {r["index"]: r["relevance_score"] for r in alone["results"]}
        assert got == pytest.approx(want, abs=1e-5)
    with server.client() as client:
        after = client.get("/metrics").text
    label = 'model="tinyrank"'
    batches = metric_sum(after, "encoder_batch_size_count", label) - metric_sum(
        before, "encoder_batch_size_count", label
    )
    pairs = metric_sum(after, "encoder_batch_size_sum", label) - metric_sum(
        before, "encoder_batch_size_sum", label
    )
    assert pairs == 24 * len(DOCUMENTS)  # every pair ran exactly once
    assert batches < 24, "24 concurrent reranks ran one by one"
    requests = 'code="200",endpoint="/v1/rerank",model="tinyrank"'
    answered = metric_sum(after, "encoder_requests_total", requests) - metric_sum(
        before, "encoder_requests_total", requests
    )
    assert answered == 24


async def test_the_client_reranks_sync_and_async(server: LiveServer) -> None:
    from encoder_serve_client import AsyncEncoderClient, EncoderClient, EncoderServeError

    with server.client() as raw:
        expected = raw.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    with EncoderClient(server.url) as client:
        sync = client.rerank(QUERY, DOCUMENTS, top_n=2, return_documents=True)
        with pytest.raises(EncoderServeError) as refused:
            client.rerank(QUERY, DOCUMENTS, model="nope")
    async with AsyncEncoderClient(server.url) as client:
        concurrent = await client.rerank(QUERY, DOCUMENTS)
    assert sync.model == concurrent.model == "tinyrank"
    assert [r.index for r in sync.results] == [r["index"] for r in expected["results"][:2]]
    assert [r.document for r in sync.results] == [DOCUMENTS[r.index] for r in sync.results]
    assert [(r.index, r.document) for r in concurrent.results] == [
        (r["index"], None) for r in expected["results"]
    ]
    assert concurrent.results[0].score == pytest.approx(expected["results"][0]["relevance_score"])
    assert concurrent.tokens == expected["usage"]["total_tokens"]
    assert concurrent.warnings == []
    assert (refused.value.status, refused.value.type) == (404, "model_not_found")


def test_a_hub_cross_encoder_exports_as_rerank_and_serves_both_routes(
    rerank_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """As a user brings a public cross-encoder (an MS MARCO one, say): a Hub id through the
    Hugging Face cache, offline, with no --task."""
    from tests.integration.test_export_sources import lay_out_hub_cache, offline, run_cli

    home, repo = tmp_path / "hf", tmp_path / "models"
    lay_out_hub_cache(home, "acme/tiny-ms-marco", rerank_repo[0], ["main"])
    result = run_cli(
        "export", "acme/tiny-ms-marco", "--name", "marco", "--models-dir", str(repo),
        env=offline(home),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with TestClient(create_app(Settings(models_dir=repo, warmup=False))) as client:
        wait_ready(client.get)
        tei = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS})
        cohere = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
        info = client.get("/info").json()  # TEI describes its one model, a reranker
    assert info["model_type"] == {
        "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    }
    assert tei.status_code == cohere.status_code == 200
    assert [r["index"] for r in tei.json()] == [r["index"] for r in cohere.json()["results"]]
    assert cohere.json()["model"] == "marco"


def test_the_task_follows_the_config(tmp_path: Path) -> None:
    """One output without a regression problem type is a cross-encoder, also when asked for
    classification (a softmax over one output is always 1); a regression head stays a
    classifier; a bare encoder is an embedding model."""
    from transformers import AutoConfig

    from app.export.exporter import served_task
    from tests.tiny_models import build_tiny_bert, build_tiny_classifier, build_tiny_cross_encoder

    unmarked = AutoConfig.from_pretrained(build_tiny_cross_encoder(tmp_path / "ce", marked=False))
    regression = AutoConfig.from_pretrained(
        build_tiny_classifier(tmp_path / "sts", ["similarity"], "regression")
    )
    pair = AutoConfig.from_pretrained(build_tiny_classifier(tmp_path / "cls", ["no", "yes"]))
    bare = AutoConfig.from_pretrained(build_tiny_bert(tmp_path / "bert"))
    assert served_task(unmarked, None) == served_task(unmarked, "classification") == "rerank"
    assert served_task(regression, None) == served_task(regression, "classification")
    assert served_task(regression, None) == "classification"
    assert served_task(pair, None) == "classification"
    assert served_task(bare, None) == "embedding"
    assert served_task(unmarked, "embedding") == "embedding"  # asked for: the encoder body


def test_cohere_s_official_client_reads_v1_rerank(server: LiveServer) -> None:
    import cohere

    client = cohere.Client(base_url=server.url, api_key="unused")
    documents = [*DOCUMENTS[:2], {"text": DOCUMENTS[2]}]  # Cohere's documents may be objects
    answer = client.rerank(
        model="tinyrank", query=QUERY, documents=documents, top_n=2, return_documents=True
    )
    with httpx.Client(base_url=server.url) as raw:
        alone = raw.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS[:3]}).json()
    assert [r.index for r in answer.results] == [r["index"] for r in alone["results"][:2]]
    for result, expected in zip(answer.results, alone["results"], strict=False):
        assert result.relevance_score == pytest.approx(expected["relevance_score"])
        assert result.document is not None
        assert result.document.text == DOCUMENTS[result.index]
    with pytest.raises(cohere.core.ApiError) as refused:
        client.rerank(model="nope", query=QUERY, documents=["a"])
    assert refused.value.status_code == 404


# A valid request per rerank operation, checked against the OpenAPI document here (the
# contract tests' default models hold no reranker; test_contract.py counts these).
RERANK_SUCCESSES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True}),
    ("POST", "/rerank", {"query": QUERY, "texts": [LONG_DOCUMENT], "truncate": True}),
    ("POST", "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}),
    ("POST", "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "return_documents": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), RERANK_SUCCESSES)
def test_success_bodies_match_the_openapi_document(
    server: LiveServer, method: str, path: str, body: dict[str, Any]
) -> None:
    from tests.integration.test_contract import CHECKS, SCHEMA

    case = SCHEMA[path][method].Case(body=body, media_type="application/json")
    response = case.call(base_url=server.url, timeout=60)
    assert response.status_code == 200, response.text[:500]
    case.validate_response(response, checks=CHECKS)
