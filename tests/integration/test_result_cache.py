"""The result cache on real servers: answers byte for byte those of a server without it on
every route that uses it, keyed by model and input, counted in /metrics, shared by two
workers, bounded in bytes, and never stale after a model is replaced."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODELS_DIR, LiveServer, metric_sum, start_server

pytestmark = pytest.mark.slow

A = "The cache answers a repeated sentence without a forward pass."
B = "A second sentence, about markets falling sharply on a Tuesday."
C = "Three short words."

# Every route whose answer is a function of (model, input, options), with the options that
# change it: each request is sent twice to the cached server (misses, then hits).
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/encode", {"inputs": [A, B]}),
    ("/encode", {"inputs": A, "normalize": False}),
    ("/encode", {"inputs": [C, A, B], "dimensions": 8}),
    ("/encode", {"inputs": [B, C], "normalize": False, "dimensions": 16, "truncate": True}),
    ("/v1/embeddings", {"input": [A, C], "model": "minilm"}),
    ("/v1/embeddings", {"input": B, "model": "minilm", "encoding_format": "base64"}),
    ("/v1/embeddings", {"input": [B, A], "model": "minilm", "dimensions": 32}),
    ("/embed", {"inputs": [A, B]}),
    ("/embed", {"inputs": C, "normalize": False}),
    ("/classify", {"inputs": [A, B], "model": "sentiment"}),
    ("/classify", {"inputs": [A, B], "model": "topic"}),
    ("/classify", {"inputs": A, "model": "topic", "raw_scores": True}),
    ("/classify", {"inputs": [C, A], "model": "sentiment", "multi_label": True, "top_k": 1}),
    ("/classify", {"inputs": [A, C], "candidate_labels": ["finance", "caching", "poetry"]}),
    ("/classify", {"inputs": A, "candidate_labels": ["caching"], "raw_scores": True}),
    ("/predict", {"inputs": A}),
    ("/predict", {"inputs": [[A, B]]}),
    ("/predict", {"inputs": [[B, A]], "raw_scores": True}),
]


@pytest.fixture(scope="module")
def servers(
    default_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """(cached at the default size, uncached), one process each."""
    cached = start_server(tmp_path_factory.mktemp("cached"))
    try:
        uncached = start_server(tmp_path_factory.mktemp("uncached"), {"ENCODER_CACHE_BYTES": "0"})
    except BaseException:
        cached.stop()
        raise
    yield cached, uncached
    cached.stop()
    uncached.stop()


def scrape(server: LiveServer) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=30).text


def hits(exposition: str, model: str) -> float:
    return metric_sum(exposition, "encoder_cache_hits_total", f'model="{model}"')


def misses(exposition: str, model: str) -> float:
    return metric_sum(exposition, "encoder_cache_misses_total", f'model="{model}"')


def fresh(body: Any, index: int) -> Any:
    """`body` with A, B and C made texts no earlier request sent (the same in both
    servers), so each request's first answer comes from a pass of its own inputs."""
    if isinstance(body, dict):
        return {key: fresh(value, index) for key, value in body.items()}
    if isinstance(body, list):
        return [fresh(value, index) for value in body]
    if body in (A, B, C):
        return f"{body} (request {index})"
    return body


def test_every_cached_route_answers_byte_for_byte_as_without_the_cache(
    servers: tuple[LiveServer, LiveServer],
) -> None:
    cached, uncached = servers
    with cached.client() as on, uncached.client() as off:
        for index, (path, template) in enumerate(REQUESTS):
            body = fresh(template, index)
            expected = off.post(path, json=body)
            assert expected.status_code == 200, (path, body, expected.text)
            # The first time through the batcher, then from the cache: the same bytes.
            for attempt in ("miss", "hit"):
                answer = on.post(path, json=body)
                assert answer.status_code == 200, (path, body, answer.text)
                assert answer.content == expected.content, (path, body, attempt)
    exposition = scrape(cached)
    for model in ("minilm", "sentiment", "topic"):
        assert hits(exposition, model) > 0, model
        assert misses(exposition, model) > 0, model
    # The server without a cache counts nothing (and never looked anything up).
    assert "encoder_cache_hits_total{" not in scrape(uncached)


def test_a_request_partly_cached_answers_each_input_as_its_first_pass_did(
    servers: tuple[LiveServer, LiveServer],
) -> None:
    """Hits are the bytes of the input's first pass; the misses run in a pass of their own.
    An input's output moves in the last bits with the other inputs of its pass (packing),
    with or without the cache, so against a server without it they agree to float noise."""
    cached, uncached = servers
    known, new = f"{A} (partly)", f"{B} (partly)"
    with cached.client() as on, uncached.client() as off:
        first = on.post("/encode", json={"inputs": known, "normalize": False}).json()
        mixed = on.post("/encode", json={"inputs": [new, known], "normalize": False}).json()
        plain = off.post("/encode", json={"inputs": [new, known], "normalize": False}).json()
    assert mixed["embeddings"][1] == first["embeddings"][0]
    assert mixed["usage"] == plain["usage"]
    for ours, theirs in zip(mixed["embeddings"], plain["embeddings"], strict=True):
        assert max(abs(x - y) for x, y in zip(ours, theirs, strict=True)) < 1e-5
    # A text twice in one request: two inputs of one pass (as without the cache), whose
    # outputs may differ in the last bits; a repeat answers both with the one kept.
    twice = {"inputs": [new, f"{C} (twice)", f"{C} (twice)"], "normalize": False}
    with cached.client() as on:
        on.post("/encode", json=twice)
        again = on.post("/encode", json=twice).json()["embeddings"]
    assert again[1] == again[2]


def test_keyed_by_model_and_by_what_the_model_sees(servers: tuple[LiveServer, LiveServer]) -> None:
    cached, _ = servers
    text = f"A text no other test sends ({time.time_ns()})."
    with cached.client() as client:
        before = scrape(cached)
        first = client.post("/encode", json={"inputs": text, "normalize": False})
        hit = client.post("/encode", json={"inputs": text})
        raw, unit = first.json(), hit.json()
        middle = scrape(cached)
        # A request answered wholly from the cache spent no time in a queue or a pass.
        assert float(first.headers["x-inference-time"]) > 0
        assert float(hit.headers["x-inference-time"]) == 0
        assert float(hit.headers["x-queue-time"]) == 0
        # normalize is applied after the cache: one pass, then a hit, different answers.
        assert (misses(middle, "minilm") - misses(before, "minilm")) == 1
        assert (hits(middle, "minilm") - hits(before, "minilm")) == 1
        assert raw["embeddings"] != unit["embeddings"]
        # The same text to two classifiers: each model's own pass and answer.
        sentiment = client.post("/classify", json={"inputs": text, "model": "sentiment"}).json()
        topic = client.post("/classify", json={"inputs": text, "model": "topic"}).json()
        after = scrape(cached)
        for model in ("sentiment", "topic"):
            assert misses(after, model) - misses(middle, model) == 1, model
            assert hits(after, model) == hits(middle, model), model
        labels = {score["label"] for score in sentiment["results"][0]}
        assert labels != {score["label"] for score in topic["results"][0]}
        # A sentence pair is another input than either text alone, and than the reverse pair.
        pair = client.post("/predict", json={"inputs": [[text, C]]}).json()
        reverse = client.post("/predict", json={"inputs": [[C, text]]}).json()
        alone = client.post("/predict", json={"inputs": text}).json()
        last = scrape(cached)
        model = "sentiment"  # the default classification model, which has seen `text`
        assert misses(last, model) - misses(after, model) == 2
        assert hits(last, model) - hits(after, model) == 1
        assert len({json.dumps(pair), json.dumps(reverse), json.dumps(alone)}) == 3


# -- two workers: one cache in the engine process, model replacement, the byte bound -------

BOUND = 200_000


def replaceable_models(directory: Path) -> Path:
    """A model repository of `minilm` alone, its files linked to the built ones, so its
    graph can be swapped without touching the shared files."""
    (directory / "minilm").mkdir(parents=True)
    for source in (MODELS_DIR / "minilm").iterdir():
        (directory / "minilm" / source.name).symlink_to(source)
    return directory


def swap_graph(models: Path) -> None:
    """Replace `minilm`'s fp32 graph by its int8 one: another model with the same name."""
    link = models / "minilm" / "model.onnx"
    staged = link.with_name("model.onnx.new")
    staged.symlink_to(MODELS_DIR / "minilm" / "model.int8.onnx")
    os.replace(staged, link)


def records(live: LiveServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in live.log().splitlines() if line.startswith("{")]


def engine_pids(live: LiveServer) -> list[int]:
    return [
        int(r["pid"])
        for r in records(live)
        if str(r.get("message", "")).startswith("engine process ready")
    ]


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def encode_fresh(url: str, body: dict[str, Any]) -> httpx.Response:
    """On a connection of its own, so either worker may take it."""
    return httpx.post(f"{url}/encode", json=body, timeout=60)


def test_two_workers_share_one_cache_which_a_replaced_model_does_not_reuse(
    default_models: Path, tmp_path: Path
) -> None:
    models = replaceable_models(tmp_path / "models")
    env = {
        "ENCODER_WORKERS": "2",
        "ENCODER_LOG_FORMAT": "json",
        "ENCODER_MODELS_DIR": str(models),
        "ENCODER_CACHE_BYTES": str(BOUND),
    }
    live = start_server(tmp_path, env)
    try:
        body = {"inputs": A}
        first = encode_fresh(live.url, body)
        assert first.status_code == 200
        sent = 1
        # Until both workers have answered it (the kernel picks one per connection).
        while len({r["pid"] for r in records(live) if r.get("endpoint") == "/encode"}) < 2:
            again = encode_fresh(live.url, body)
            assert again.content == first.content
            sent += 1
            assert sent < 200, "one worker took every connection"
        exposition = scrape(live)
        # One pass for all of them, whichever worker asked: each hit counted once.
        assert misses(exposition, "minilm") == 1
        assert hits(exposition, "minilm") == sent - 1

        # The model replaced on disk, then its engine process restarted (as an operator
        # would after `encoder-serve export --force`): no answer of the old graph remains.
        swap_graph(models)
        (engine,) = engine_pids(live)
        os.kill(engine, signal.SIGKILL)
        wait_for(lambda: len(engine_pids(live)) == 2, "a new engine process")
        wait_for(
            lambda: all(httpx.get(f"{live.url}/ready").status_code == 200 for _ in range(4)),
            "ready again",
        )
        replaced = encode_fresh(live.url, body)
        assert replaced.status_code == 200
        old = first.json()["embeddings"][0]
        new = replaced.json()["embeddings"][0]
        assert new != old  # the int8 graph's answer, not the cached fp32 one
        assert sum(x * y for x, y in zip(old, new, strict=True)) > 0.9  # the same kind of model
        assert encode_fresh(live.url, body).content == replaced.content  # now cached itself
        exposition = scrape(live)
        assert misses(exposition, "minilm") == 2  # the dead engine's count is kept
        assert hits(exposition, "minilm") == sent

        # Bounded in bytes under a stream of unique texts (~75 answers fit in BOUND).
        for start in range(0, 400, 40):
            texts = [f"unique text number {n} for the byte bound" for n in range(start, start + 40)]
            assert encode_fresh(live.url, {"inputs": texts}).status_code == 200
            held = metric_sum(scrape(live), "encoder_cache_bytes")
            assert 0 < held <= BOUND
        assert held > BOUND * 0.8  # full, not emptied
    finally:
        assert live.stop() == 0, live.log()[-3000:]
