"""Overload and shutdown on a real server: every request answered once, nothing lost."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from pathlib import Path

import httpx

from tests.conftest import (
    start_server,
    wait_until_every_request_reached_the_batcher,
    wait_until_not_ready,
)

TEXT = "How quickly does the server answer one short sentence when it is idle?"


def idle_latency(url: str, when: str) -> float:
    with httpx.Client(base_url=url, timeout=30) as client:
        samples = []
        for n in range(7):
            started = time.perf_counter()
            # A new text each time: a repeat would be answered by the result cache,
            # without the queue whose emptiness this measures.
            body = {"inputs": f"{when} {n}: {TEXT}"}
            assert client.post("/encode", json=body).status_code == 200
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def test_overload_answers_200_or_429_and_recovers(tmp_path: Path) -> None:
    live = start_server(tmp_path, {"ENCODER_MODELS": "minilm", "ENCODER_MAX_QUEUE": "16"})
    try:
        before = idle_latency(live.url, "before")
        statuses: list[int] = []
        retry_after: list[str | None] = []
        stop_at = time.monotonic() + 6

        async def client_loop(client: httpx.AsyncClient, index: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                response = await client.post(
                    "/encode", json={"inputs": f"client {index} request {n}: {TEXT}"}
                )
                statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_after.append(response.headers.get("retry-after"))
                    assert response.json()["error"]["type"] == "overloaded"
                n += 1

        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=limits) as client:
            # A hung request would raise a timeout here and fail the test.
            await asyncio.gather(*(client_loop(client, i) for i in range(256)))

        counts = {code: statuses.count(code) for code in set(statuses)}
        assert set(counts) <= {200, 429}, counts
        assert counts.get(200, 0) > 0 and counts.get(429, 0) > 0, counts
        assert all(value is not None and int(value) >= 1 for value in retry_after)
        assert httpx.get(f"{live.url}/ready").status_code == 200
        after = idle_latency(live.url, "after")
        # Back to its idle figure: no queue left behind (generous bound for a shared machine).
        assert after <= 2 * before + 0.05, (before, after)
    finally:
        live.stop()


async def test_sigterm_drains_queued_requests_then_exits(tmp_path: Path) -> None:
    # One input per pass and long inputs: the queue outlasts the checks below even on a
    # fast machine.
    live = start_server(
        tmp_path,
        {"ENCODER_MODELS": "minilm", "ENCODER_DRAIN_S": "30", "ENCODER_MAX_BATCH_SIZE": "1"},
    )
    try:
        texts = [
            f"request {i}: " + "a sentence long enough to take a while " * 24 for i in range(64)
        ]
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=60) as client,
            httpx.AsyncClient(base_url=live.url, timeout=10) as monitor,
        ):
            pending = [
                asyncio.ensure_future(client.post("/encode", json={"inputs": text}))
                for text in texts
            ]
            await wait_until_every_request_reached_the_batcher(monitor, len(texts))
            signalled = time.monotonic()
            live.process.send_signal(signal.SIGTERM)
            # While draining: not ready, and new work is turned away.
            await wait_until_not_ready(monitor)
            assert not all(request.done() for request in pending), "drained before the checks"
            refused = await monitor.post("/encode", json={"inputs": "too late"})
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "not_ready"
            responses = await asyncio.gather(*pending)
        assert [r.status_code for r in responses] == [200] * len(texts)
        code = await asyncio.to_thread(live.process.wait, 40)
        assert time.monotonic() - signalled < 30 + 5
        # uvicorn re-raises SIGTERM after its graceful shutdown.
        assert code in (0, -signal.SIGTERM), live.log()[-2000:]
        assert '"drained"' in live.log()
    finally:
        live.stop()
