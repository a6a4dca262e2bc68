"""Several front-end workers (ENCODER_WORKERS=2) answer as one server: new connections
during a SIGTERM drain get 503 until it ends, and `/ready` is 200 only when every worker
that accepts connections would answer."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from tests.conftest import start_server, wait_until_every_request_reached_the_batcher
from tests.integration.test_workers import WORKERS, log_records, pids_logging, wait_for

LONG_TEXT = "a sentence long enough to take the model a while to read " * 20
# Inputs of the one held request: enough passes (about 30 ms each) that the monitor sees
# work still queued before the request is answered, even when its first /metrics is slow
# (a CI run of 32 found the request answered before its first look).
HELD_INPUTS = 128
# One input per forward pass, so that work queued in the engine takes a while; deadlines
# and drain long enough for a shared, loaded machine.
ONE_INPUT_A_PASS = {
    "ENCODER_MAX_BATCH_SIZE": "1",
    "ENCODER_DRAIN_S": "120",
    "ENCODER_REQUEST_TIMEOUT_S": "120",
}


def _logged_at(record: dict[str, object]) -> float:
    """A JSON log line's time (milliseconds, UTC) as a Unix timestamp."""
    stamp = datetime.strptime(str(record["time"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=UTC).timestamp()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _poll_fresh_connections(url: str, until: threading.Event) -> list[tuple[float, object]]:
    """POST /encode on a new connection each time until `until` is set: (wall-clock time
    the outcome was seen, status code or the transport error's class name)."""
    seen: list[tuple[float, object]] = []
    while not until.is_set():
        try:
            response = httpx.post(f"{url}/encode", json={"inputs": "late"}, timeout=30)
            outcome: object = response.status_code
            if response.status_code == 503:
                error = response.json()["error"]
                assert error["type"] == "not_ready", error
                assert "shutting down" in error["message"], error
        except httpx.TransportError as error:
            outcome = type(error).__name__
        seen.append((time.time(), outcome))
        time.sleep(0.005)
    return seen


async def test_sigterm_with_two_workers_answers_503_until_the_drain_ends(tmp_path: Path) -> None:
    # One request of many inputs, one input per pass: one worker holds all the work and
    # drains for a while; its idle sibling drains at once and exits. New connections
    # must still reach a worker that answers 503, never a closed port, until the
    # accepted request is answered.
    env = {**WORKERS, **ONE_INPUT_A_PASS}
    live = start_server(tmp_path, env)
    stop_polling = threading.Event()
    try:
        wait_for(lambda: len(pids_logging(live, "ready: serving")) == 2, what="both workers")
        inputs = [f"input {i}: {LONG_TEXT}" for i in range(HELD_INPUTS)]
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=120) as client,
            httpx.AsyncClient(base_url=live.url, timeout=10) as monitor,
        ):
            accepted = asyncio.ensure_future(client.post("/encode", json={"inputs": inputs}))
            await wait_until_every_request_reached_the_batcher(monitor, len(inputs))
            live.process.send_signal(signal.SIGTERM)
            pollers = [
                asyncio.ensure_future(
                    asyncio.to_thread(_poll_fresh_connections, live.url, stop_polling)
                )
                for _ in range(3)
            ]
            response = await accepted
            await asyncio.to_thread(live.process.wait, 60)
            stop_polling.set()
            seen = sorted(
                (s for got in await asyncio.gather(*pollers) for s in got), key=lambda s: s[0]
            )
        assert response.status_code == 200, response.text
        assert len(response.json()["embeddings"]) == len(inputs)
        # The drain ends when the busy worker logs "drained" (then it stops listening);
        # the client's clock reads that moment later than the server's, never earlier.
        drained = [_logged_at(r) for r in log_records(live) if r["message"] == "drained"]
        assert len(drained) == 2, live.log()[-3000:]
        during = [outcome for at, outcome in seen if at < max(drained) - 0.001]
        assert during.count(503) >= 3, during  # the drain lasted: it was seen from outside
        assert set(during) <= {200, 503}, f"refused during the drain: {during}"
        assert live.process.returncode == 0, live.log()[-3000:]
    finally:
        stop_polling.set()
        live.stop()


def test_ready_is_never_200_while_a_worker_would_answer_503_from_the_start(
    tmp_path: Path,
) -> None:
    # From the first moment the port answers: whenever /ready says 200, a request on a
    # new connection (whichever worker accepts it) is answered.
    live = start_server(tmp_path, WORKERS, wait_ready=False)
    failures: list[str] = []
    ready_seen: list[float] = []
    deadline = time.monotonic() + 180

    def poll() -> None:
        while time.monotonic() < deadline and not (
            ready_seen and time.monotonic() - ready_seen[0] > 3
        ):
            try:
                if httpx.get(f"{live.url}/ready", timeout=10).status_code != 200:
                    continue
                ready_seen.append(time.monotonic())
                response = httpx.post(f"{live.url}/encode", json={"inputs": "now"}, timeout=30)
                if response.status_code != 200:
                    failures.append(f"/ready 200, then {response.status_code}: {response.text}")
            except httpx.TransportError:
                time.sleep(0.01)  # not listening yet

    try:
        threads = [threading.Thread(target=poll) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert ready_seen, "never ready"
        assert not failures, failures[:3]
    finally:
        live.stop()


async def test_a_draining_worker_holds_its_siblings_ready_back(tmp_path: Path) -> None:
    # SIGTERM to one worker alone (not the supervisor), the one holding a long request:
    # while it drains it answers new requests 503, so its idle sibling's /ready must not
    # say 200; once the supervisor has replaced it, /ready is 200 again, and the request
    # it held is answered.
    live = start_server(tmp_path, {**WORKERS, **ONE_INPUT_A_PASS})
    try:
        wait_for(lambda: len(pids_logging(live, "ready: serving")) == 2, what="both workers")
        inputs = [f"input {i}: {LONG_TEXT}" for i in range(HELD_INPUTS)]
        url = urlsplit(live.url)
        held = http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)
        held.connect()
        ours = held.sock.getsockname()[1]
        held.request(
            "POST", "/encode", json.dumps({"inputs": inputs}), {"content-type": "application/json"}
        )
        victim = next(
            psutil.Process(pid)
            for pid in pids_logging(live, "ready: serving")
            if any(c.raddr and c.raddr.port == ours for c in psutil.Process(pid).net_connections())
        )
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as monitor:
            await wait_until_every_request_reached_the_batcher(monitor, len(inputs))
        answer = asyncio.ensure_future(asyncio.to_thread(held.getresponse))
        os.kill(victim.pid, signal.SIGTERM)
        answers = []
        while True:
            fresh = await asyncio.to_thread(httpx.get, f"{live.url}/ready", timeout=10)
            if not _alive(victim):
                break  # gone, perhaps before this answer: the supervisor frees its place
            answers.append((fresh.status_code, fresh.json()))
            await asyncio.sleep(0.01)
        response = await answer
        assert response.status == 200
        assert len(json.loads(response.read())["embeddings"]) == len(inputs)
        held.close()
        assert len(answers) >= 3, answers  # it drained for a while
        assert {status for status, _ in answers} == {503}, answers
        # From the victim: draining; from its sibling: why it holds back.
        for _, body in answers:
            message = body["error"]["message"]
            assert message.startswith("draining") or "would answer 503" in message, message
        wait_for(lambda: len(pids_logging(live, "ready: serving")) == 3, what="a new worker")
        wait_for(
            lambda: all(httpx.get(f"{live.url}/ready").status_code == 200 for _ in range(6)),
            what="ready again",
        )
    finally:
        assert live.stop() == 0, live.log()[-3000:]
