"""POST /explain on the real server: spans, targets, zero-shot, limits, reproducibility,
and a client that hangs up stops the work."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.conftest import LiveServer

REVIEW = "The plot was dull and predictable, but the acting was wonderful."


def explain(server: LiveServer, **body: object) -> httpx.Response:
    with server.client() as client:
        return client.post("/explain", json=body)


def test_occlusion_explains_the_top_label_word_by_word(server: LiveServer) -> None:
    body = explain(server, inputs=REVIEW).json()
    assert body["model"] == "sentiment" and body["method"] == "occlusion"
    assert body["target"] in body["labels"] and 0.0 <= body["score"] <= 1.0
    words = body["words"]
    assert [w["text"] for w in words][:4] == ["The", "plot", "was", "dull"]
    assert all(REVIEW[w["start"] : w["stop"]] == w["text"] for w in words)
    assert body["parameters"]["evaluations"] == len(words) + 1
    assert body["empty_score"] is None


def test_shap_is_reproducible_by_seed_and_adds_up(server: LiveServer) -> None:
    request = {"inputs": REVIEW, "method": "shap", "samples": 64, "target": "negative"}
    first, again = explain(server, **request).json(), explain(server, **request).json()
    other = explain(server, **request, seed=1).json()
    assert first["words"] == again["words"] and first["words"] != other["words"]
    total = sum(w["score"] for w in first["words"])
    assert abs(total - (first["score"] - first["empty_score"])) < 1e-4
    assert first["target"] == "negative" and first["parameters"]["seed"] == 0


def test_zero_shot_explains_a_candidate_label(server: LiveServer) -> None:
    body = explain(
        server, inputs="The striker scored twice in the final.",
        candidate_labels=["sports", "politics"], target="politics",
    ).json()  # fmt: skip
    assert body["model"] == "minilm" and body["target"] == "politics"
    assert body["labels"] == ["sports", "politics"]


def test_limits_and_mistakes_are_413_and_422(server: LiveServer) -> None:
    too_many = explain(server, inputs="word " * 200)
    assert too_many.status_code == 413
    assert "ENCODER_MAX_EXPLAIN_WORDS" in too_many.json()["error"]["message"]
    samples = explain(server, inputs=REVIEW, method="shap", samples=100_000)
    assert samples.status_code == 422 and "samples" in samples.json()["error"]["message"]
    target = explain(server, inputs=REVIEW, target="neutral")
    assert target.status_code == 422 and "target" in target.json()["error"]["message"]
    assert explain(server, inputs=["two", "texts"]).status_code == 422
    assert explain(server, inputs="   ").status_code == 422
    # Many tokens per word: past the max length, yet few words once cut.
    text = "antidisestablishmentarianism " * 100
    assert explain(server, inputs=text, truncate=False).status_code == 422
    cut = explain(server, inputs=text).json()
    assert cut["truncated"] and 10 < len(cut["words"]) < 100


def test_a_client_that_hangs_up_stops_the_explanation(server: LiveServer) -> None:
    def sample(series: str) -> float:
        """The sum over the series' labels (passes count under the model that runs them)."""
        text = httpx.get(f"{server.url}/metrics").text
        lines = [line for line in text.splitlines() if line.startswith(series)]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    passes = "encoder_batch_size_count{"
    before = sample(passes)
    text = " ".join(f"word{i} was rather good" for i in range(25))  # 100 words
    # 512 samples: seconds of passes, yet priced to finish well within the deadline
    # (2,048 of these long inputs would not, and admission refuses them at once: 429).
    body = json.dumps({"inputs": text, "method": "shap", "samples": 512}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /explain HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while sample(passes) < before + 3:  # the explanation is running
            assert time.monotonic() < deadline, "the explanation never ran"
            time.sleep(0.05)
    time.sleep(1.0)  # the hang-up is seen; its queued inputs are dropped
    stopped = sample(passes)
    time.sleep(1.5)
    # 512 samples would keep the model busy for seconds; at most a pass in flight.
    assert sample(passes) - stopped <= 1
    assert sample(passes) - before < 512 / 8
