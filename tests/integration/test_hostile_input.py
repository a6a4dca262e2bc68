"""Hostile input against the real server: refused quickly, in the error shape, never a 5xx,
and the server stays responsive meanwhile (issue #15, hardening 2)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.error_shapes import error_message

JSON = {"content-type": "application/json"}

# Every POST route, with its text field and the fields a valid body also needs.
POST_ROUTES: dict[str, tuple[str, bytes]] = {
    "/encode": ("inputs", b""),
    "/classify": ("inputs", b', "candidate_labels": ["a", "b"]'),
    "/attention": ("inputs", b""),
    "/tokenize": ("inputs", b""),
    "/v1/embeddings": ("input", b""),
    "/embed": ("inputs", b""),
    "/predict": ("inputs", b""),
}


def assert_error(response: httpx.Response, status: int, path: str = "/encode") -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return error_message(response.json(), path)


def post_raw(server: LiveServer, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body, headers=JSON, timeout=60)


# -- bytes that are not Unicode ------------------------------------------------------


@pytest.mark.parametrize("path", list(POST_ROUTES))
def test_raw_invalid_utf8_is_a_400_on_every_route(server: LiveServer, path: str) -> None:
    field, rest = POST_ROUTES[path]
    body = b'{"' + field.encode() + b'": "\xff\xfe"' + rest + b"}"
    message = assert_error(post_raw(server, path, body), 400, path)
    assert message == "the request body is not valid UTF-8 JSON"


@pytest.mark.parametrize("path", list(POST_ROUTES))
def test_an_escaped_lone_surrogate_input_is_a_422_naming_it(server: LiveServer, path: str) -> None:
    field, rest = POST_ROUTES[path]
    body = b'{"' + field.encode() + b'": "\\ud800"' + rest + b"}"
    message = assert_error(post_raw(server, path, body), 422, path)
    assert message.startswith(f"{field} contains") and "surrogate" in message


@pytest.mark.parametrize("path", list(POST_ROUTES))
def test_a_lone_surrogate_in_the_model_name_is_a_422_naming_it(
    server: LiveServer, path: str
) -> None:
    field, rest = POST_ROUTES[path]
    body = b'{"' + field.encode() + b'": "ok", "model": "\\udfff"' + rest + b"}"
    message = assert_error(post_raw(server, path, body), 422, path)
    assert message.startswith("model contains") and "surrogate" in message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (b'"candidate_labels": ["fine", "\\udc00"]', "candidate_labels.1"),
        (b'"candidate_labels": ["a"], "hypothesis_template": "\\ud800 {}"', "hypothesis_template"),
        (b'"inputs": ["ok", "x\\ud800y"]', "inputs.1"),
    ],
)
def test_lone_surrogates_in_labels_templates_and_list_items(
    server: LiveServer, fields: bytes, named: str
) -> None:
    if not fields.startswith(b'"inputs"'):
        fields = b'"inputs": "ok", ' + fields
    message = assert_error(post_raw(server, "/classify", b"{" + fields + b"}"), 422)
    assert message.startswith(f"{named} contains")


def test_paired_escapes_are_fine(server: LiveServer) -> None:
    response = post_raw(server, "/tokenize", b'{"inputs": "smile \\ud83d\\ude00"}')
    assert response.status_code == 200, response.text


# -- zero-shot templates and labels ----------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["{:>999999999}", "{0.__class__}", "{}{}", "{{}}", "no placeholder", "{0} {x}", "x" * 2000],
)
def test_hostile_templates_are_a_quick_422(server: LiveServer, template: str) -> None:
    body = {"inputs": "x", "candidate_labels": ["a", "b"], "hypothesis_template": template}
    with server.client() as client:
        started = time.monotonic()
        response = client.post("/classify", json=body)
        took = time.monotonic() - started
    message = assert_error(response, 422)
    assert message.startswith("hypothesis_template ")
    assert took < 1.0


def test_over_long_templates_and_labels_are_refused_by_name(server: LiveServer) -> None:
    with server.client() as client:
        template = "x" * 1023 + "{}"
        body = {"inputs": "x", "candidate_labels": ["a"], "hypothesis_template": template}
        message = assert_error(client.post("/classify", json=body), 422)
        assert "hypothesis_template" in message and "limit is 1024" in message
        body = {"inputs": "x", "candidate_labels": ["a", "b" * 257]}
        message = assert_error(client.post("/classify", json=body), 422)
        assert "candidate_labels" in message and "limit is 256" in message


def test_a_label_that_truncation_would_cut_off_is_a_422_naming_it(server: LiveServer) -> None:
    # Each "?" is a token of its own: this hypothesis is longer than minilm's 256 tokens.
    long_label = "?" * 256
    body = {"inputs": "x", "candidate_labels": ["sports", long_label]}
    with server.client() as client:
        message = assert_error(client.post("/classify", json=body), 422)
        assert "candidate_labels[1]" in message and "256 tokens" in message
        # The same label with a shorter template that still fits is fine.
        short = {
            "inputs": "x",
            "candidate_labels": ["sports", "?" * 200],
            "hypothesis_template": "{}",
        }
        assert client.post("/classify", json=short).status_code == 200


def test_braces_in_labels_are_plain_text(server: LiveServer) -> None:
    body = {"inputs": "x", "candidate_labels": ["{0.__class__}", "{:>999999999}", "{}"]}
    with server.client() as client:
        response = client.post("/classify", json=body)
    assert response.status_code == 200, response.text
    labels = {entry["label"] for entry in response.json()["results"][0]}
    assert labels == set(body["candidate_labels"])


# -- big bodies must not stall the event loop --------------------------------------------


def refused_while_health_answers(
    server: LiveServer, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[float]]:
    """POST `body` from a thread; meanwhile probe /health from this one. The answer to
    the POST, and how long each probe took."""
    answers: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{server.url}{path}", json=body, timeout=120))
    )
    probes: list[float] = []
    with server.client() as client:
        client.get("/health")  # connected before the big request starts
        sender.start()
        while sender.is_alive() or len(probes) < 5:
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            probes.append(time.monotonic() - started)
            time.sleep(0.01)
    sender.join()
    return answers[0], probes


@pytest.mark.parametrize(
    "labels",
    [
        [f"label number {index:07d}" for index in range(45_000)],  # 1 MB, distinct labels
        ["x" * 32_768] * 32,  # 1 MB in 32 labels: within the count, over the length
    ],
    ids=["many-labels", "long-labels"],
)
def test_a_megabyte_of_labels_is_refused_while_health_answers(
    server: LiveServer, labels: list[str]
) -> None:
    body = {"inputs": "x", "candidate_labels": labels}
    assert len(httpx.Request("POST", "/", json=body).content) >= 1_000_000
    response, probes = refused_while_health_answers(server, "/classify", body)
    message = assert_error(response, 422)
    assert message.startswith("candidate_labels")
    assert max(probes) < 0.25, probes


def test_a_megabyte_of_inputs_is_refused_while_health_answers(server: LiveServer) -> None:
    body = {"inputs": ["x"] * 250_000}
    response, probes = refused_while_health_answers(server, "/encode", body)
    assert "limit is 256" in assert_error(response, 413)
    assert max(probes) < 0.25, probes


def test_a_megabyte_of_bad_token_ids_is_one_quick_error(server: LiveServer) -> None:
    body = {"input": [True] * 200_000, "model": "minilm"}
    response, probes = refused_while_health_answers(server, "/v1/embeddings", body)
    assert_error(response, 422, "/v1/embeddings")
    assert max(probes) < 0.25, probes


# -- token ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[True, False], [[101, True, 102]], [False]])
def test_booleans_are_not_token_ids(server: LiveServer, ids: list[Any]) -> None:
    with server.client() as client:
        response = client.post("/v1/embeddings", json={"input": ids, "model": "minilm"})
    message = assert_error(response, 422, "/v1/embeddings")
    assert message.startswith("input ") and "true and false" in message


def test_integer_token_ids_still_work(server: LiveServer) -> None:
    with server.client() as client:
        ids = [
            token["id"]
            for token in client.post("/tokenize", json={"inputs": "hi"}).json()["tokens"][0]
        ]
        response = client.post("/v1/embeddings", json={"input": [ids, ids], "model": "minilm"})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
