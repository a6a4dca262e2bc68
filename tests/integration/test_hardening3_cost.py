"""What one request may cost: bounded by the limits, whatever the client sends.

The tokenizer's own truncation works on a whole text, and for a sentence pair builds every
combination of the two texts' overflowing windows: two 20,000-character texts cost the
server over 1 GiB and 6 s, two of 100,000 (a 200 KB body) more than 3 GiB before it was
stopped. Here every text route gets the largest request the default limits allow
(ENCODER_MAX_BODY_BYTES of text, ENCODER_MAX_INPUT_CHARS per input, in the text shapes
that cost a tokenizer most) and the peak RSS of the serving processes during it, above
what they held before, must stay under REQUEST_RSS_BOUND_BYTES (the README's figure),
with `/health` answering within 250 ms meanwhile. A watchdog kills the server long
before a runaway request could exhaust a shared machine's memory.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import LiveServer, start_server
from tests.error_shapes import error_message
from tests.integration.test_campaign import health_watched

# The README's bound on one request's memory, above the idle server ("What one request
# may cost"). Measured on the default models: at most ~200 MiB (256 pairs run through
# the classifier); the quadratic pair truncation this guards against took gigabytes.
REQUEST_RSS_BOUND_BYTES = 512 << 20
# The watchdog's line, above the idle server: far past the bound, far below the machine.
WATCHDOG_BYTES = 2 << 30
MAX_BODY = 4 * 1024 * 1024  # ENCODER_MAX_BODY_BYTES
MAX_CHARS = 100_000  # ENCODER_MAX_INPUT_CHARS
MAX_INPUTS = 256  # ENCODER_MAX_INPUTS_PER_REQUEST
# A generous bound on any of these requests (the pair above took 6 s, then minutes).
ANSWER_BOUND_S = 20.0
# The most model work the limits allow (256 inputs of 256 tokens) may take the request
# timeout on a busy machine; memory, not time, is what such a request is held to.
HEAVY_BOUND_S = 120.0


def dense(chars: int) -> str:
    """One token per 2 characters: the most word-piece tokens for English-like text."""
    return ("a " * chars)[:chars]


def punctuation(chars: int) -> str:
    """One token per character (BERT splits every punctuation mark)."""
    return "!" * chars


def sparse_then_dense(chars: int) -> str:
    """Few tokens up front, then many: a text whose cut point lies far in."""
    return " " * (chars // 2) + punctuation(chars - chars // 2)


SHAPES = [dense, punctuation, sparse_then_dense]


def texts(count: int, chars: int) -> list[str]:
    return [SHAPES[index % len(SHAPES)](chars) for index in range(count)]


# The most inputs of the most characters each the body limit allows (JSON adds ~4 bytes
# per input): 40 texts of ENCODER_MAX_INPUT_CHARS, or 256 texts of ~16,000.
LONGEST = texts(MAX_BODY // (MAX_CHARS + 8), MAX_CHARS)
MOST = texts(MAX_INPUTS, MAX_BODY // MAX_INPUTS - 16)
# 256 pairs of 8,000 characters, each pair of two different shapes.
PAIRS = [
    list(pair)
    for pair in zip(texts(MAX_INPUTS, 8000), texts(MAX_INPUTS + 1, 8000)[1:], strict=True)
]
LABELS = [f"{index} " + dense(250) for index in range(32)]  # the most, the longest
TEMPLATE = "x" * 1000 + " {}."  # the longest, with room for a label in 256 tokens

# Every route that reads text, with its largest bodies. `truncate: false` makes a route
# tokenize every input whole and refuse (413) before any model work: the whole cost of
# what comes before truncation, in a second.
LARGEST: list[tuple[str, dict[str, Any]]] = [
    ("/predict", {"inputs": [[dense(MAX_CHARS), dense(MAX_CHARS)]], "truncate": True}),
    ("/predict", {"inputs": PAIRS}),  # TEI's default: an over-long pair is a 413
    ("/predict", {"inputs": LONGEST, "truncate": True}),
    ("/encode", {"inputs": LONGEST}),
    ("/encode", {"inputs": MOST, "truncate": False}),
    ("/classify", {"inputs": LONGEST}),
    ("/classify", {"inputs": MOST, "truncate": False}),
    ("/classify", {"inputs": LONGEST[:8], "candidate_labels": LABELS}),
    (
        "/classify",
        {"inputs": LONGEST[:8], "candidate_labels": LABELS, "hypothesis_template": TEMPLATE},
    ),
    ("/tokenize", {"inputs": LONGEST}),
    ("/tokenize", {"inputs": MOST}),
    ("/attention", {"inputs": dense(MAX_CHARS)}),
    ("/attention", {"inputs": punctuation(MAX_CHARS)}),
    ("/explain", {"inputs": dense(MAX_CHARS)}),
    ("/explain", {"inputs": dense(MAX_CHARS), "truncate": False}),
    ("/v1/embeddings", {"input": LONGEST, "model": "text-embedding-3-small"}),
    ("/embed", {"inputs": LONGEST, "truncate": True}),
    ("/embed", {"inputs": MOST}),
    ("/embed_all", {"inputs": LONGEST}),  # answers need not be this big to be refused
    ("/embed_all", {"inputs": LONGEST[:2], "truncate": True}),
]


@pytest.fixture(scope="module")
def live(default_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # One worker: the process measured is the one that tokenizes and runs the model.
    server = start_server(
        tmp_path_factory.mktemp("cost"),
        {"ENCODER_WORKERS": "1", "ENCODER_REQUEST_TIMEOUT_S": "120"},
    )
    yield server
    server.stop()


def processes(server: LiveServer) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def resident(procs: list[psutil.Process]) -> int:
    return sum(process.memory_info().rss for process in procs)


def peak_resident(procs: list[psutil.Process]) -> int:
    """The sum of each process's peak RSS (VmHWM) since `reset_peaks`."""
    total = 0
    for process in procs:
        status = Path(f"/proc/{process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        total += int(line.split()[1]) * 1024
    return total


def reset_peaks(procs: list[psutil.Process]) -> None:
    for process in procs:  # "5": reset the peak RSS to the current RSS (proc(5))
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def watchdog(server: LiveServer, idle: int) -> Iterator[list[int]]:
    """Kill the server if its processes hold WATCHDOG_BYTES more than `idle`: a request
    that runs away fails its test instead of taking the machine's memory."""
    killed: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and server.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                now = resident(processes(server))
                if now - idle > WATCHDOG_BYTES:
                    killed.append(now)
                    server.process.kill()
                    return
            stop.wait(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join()


def cost_of(
    server: LiveServer, path: str, body: dict[str, Any], bound_s: float = ANSWER_BOUND_S
) -> tuple[httpx.Response, int]:
    """The answer to one request, and the peak RSS of the serving processes during it
    above what they held before."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    assert len(payload) <= MAX_BODY, len(payload)
    procs = processes(server)
    idle = resident(procs)
    reset_peaks(procs)
    started = time.monotonic()
    failed: httpx.TransportError | None = None
    with watchdog(server, idle) as killed, server.client() as client:
        try:
            response = client.post(
                path, content=payload, headers={"content-type": "application/json"}
            )
        except httpx.TransportError as error:
            failed = error
    if killed:
        pytest.fail(f"{path}: the server held {(killed[0] - idle) / 2**30:.1f} GiB more; killed")
    assert failed is None, f"{path}: {failed!r}"
    took = time.monotonic() - started
    assert took < bound_s, f"{path}: answered in {took:.1f} s"
    return response, peak_resident(procs) - idle


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    LARGEST,
    ids=[f"{path}-{index}" for index, (path, _) in enumerate(LARGEST)],
)
def test_the_largest_request_of_every_text_route_costs_a_bounded_amount(
    live: LiveServer, path: str, body: dict[str, Any]
) -> None:
    with health_watched(live.url):
        response, extra = cost_of(live, path, body)
    print(f"{path}: {response.status_code}, peak +{extra / 2**20:.0f} MiB")  # shown with -s
    # 413 or 422 (the contract's input_too_long): refused whole, once every input is measured.
    assert response.status_code in (200, 413, 422), response.text[:300]
    if response.status_code != 200:
        error_message(response.json(), path)
    assert extra < REQUEST_RSS_BOUND_BYTES, f"{path}: +{extra / 2**20:.0f} MiB"


@pytest.mark.slow
def test_a_pair_of_two_maximal_texts_is_cheap_and_truncated_as_the_tokenizer_does(
    live: LiveServer,
) -> None:
    """The payload that took the server to gigabytes: a 200 KB pair, answered at once, and
    the same scores as the pair cut short by hand (truncation keeps the head of each)."""
    long_pair = [dense(MAX_CHARS), dense(MAX_CHARS)]
    response, extra = cost_of(live, "/predict", {"inputs": [long_pair], "truncate": True})
    assert response.status_code == 200, response.text[:300]
    assert extra < 64 << 20, f"+{extra / 2**20:.0f} MiB"
    short_pair = [dense(1000), dense(1000)]  # still far past 256 tokens: the same cut
    with live.client() as client:
        expected = client.post("/predict", json={"inputs": [short_pair], "truncate": True})
        refused = client.post("/predict", json={"inputs": [long_pair]})
    assert response.json() == expected.json()
    assert refused.status_code == 413  # TEI's default still sees the pair as over-long


@pytest.mark.slow
def test_the_most_pairs_the_limits_allow_are_run_within_the_memory_bound(
    live: LiveServer,
) -> None:
    """256 over-long pairs (4 MB) truncated and run through the classifier: the most model
    work one request may ask for, still within the bound, and answered."""
    response, extra = cost_of(
        live, "/predict", {"inputs": PAIRS, "truncate": True}, bound_s=HEAVY_BOUND_S
    )
    print(f"256 pairs: {response.status_code}, peak +{extra / 2**20:.0f} MiB")
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()) == MAX_INPUTS
    assert extra < REQUEST_RSS_BOUND_BYTES, f"+{extra / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/decode", {"ids": [0] * 2_000_000}),
        ("/decode", {"ids": [[0] * 8_000] * 256}),
        ("/v1/embeddings", {"input": [[0] * 8_000] * 256, "model": "minilm"}),
        ("/v1/embeddings", {"input": [0] * 2_000_000, "model": "minilm"}),
    ],
    ids=["decode-flat", "decode-lists", "openai-lists", "openai-flat"],
)
def test_token_ids_past_the_limit_are_refused_by_count_before_any_work(
    live: LiveServer, path: str, body: dict[str, Any]
) -> None:
    """A body full of token ids (4 MB: 2 million) is counted, not validated id by id on
    the event loop: 413 at once, /health unaffected."""
    with health_watched(live.url):
        response, _ = cost_of(live, path, body, bound_s=2.0)
    assert response.status_code == 413, response.text[:300]
    assert "token ids in one request" in error_message(response.json(), path)


@pytest.mark.slow
def test_as_many_token_ids_as_the_limit_allows_are_decoded(live: LiveServer) -> None:
    ids = [[101, *([1037] * 390), 102]] * 256  # 100,352 ids: just past the limit
    with live.client() as client:
        refused = client.post("/decode", json={"ids": ids})
        answered = client.post("/decode", json={"ids": ids[:255]})
    assert refused.status_code == 413
    assert answered.status_code == 200 and len(answered.json()) == 255
