"""A lean asyncio load generator: raw HTTP/1.1 keep-alive, closed loop or fixed arrival rate.

It runs in its own process and measures its own CPU time, so the report can show what
the generator took from the cores it shares with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from loadtest.texts import json_string_body


@dataclass(frozen=True)
class LoadSpec:
    """One load level; picklable, because it runs in a fresh process."""

    host: str
    port: int
    texts: list[str]  # fresh texts, each sent once (until the pool runs out)
    texts_per_request: int
    duration_s: float
    clients: int | None = None  # closed loop: this many clients, one request in flight each
    rate: float | None = None  # open loop: requests/s, evenly spaced
    max_connections: int = 512  # open loop: beyond this, requests wait for a free connection
    grace_s: float = 5.0  # open loop: how long to wait for answers after the last send
    path: str = "/encode"
    input_field: str = "inputs"  # the body's field for the texts ("input" for OpenAI's shape)
    model: str | None = None  # named in the body when set (OpenAI's shape needs it)


@dataclass(frozen=True)
class LoadOutcome:
    requests: int
    answered: int
    errors: int
    window_s: float  # the measuring window that throughput divides by
    wall_s: float  # the generator's whole run, which its CPU share divides by
    cpu_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    dispatch_lag_p99_ms: float | None
    pool_wraps: int


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


class RequestFeed:
    """Ready-to-send request bytes, each with texts never sent before."""

    def __init__(self, spec: LoadSpec) -> None:
        self._spec = spec
        self._texts = [json_string_body(text) for text in spec.texts]
        self._next = 0
        self.wraps = 0
        named = f'"model":{json.dumps(spec.model)},' if spec.model else ""
        self._body_head = f'{{{named}"{spec.input_field}":'
        self._head = (
            f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()

    def _text(self) -> str:
        if self._next == len(self._texts):
            # Pool exhausted: reuse it with a round marker so every text stays unique.
            self._next, self.wraps = 0, self.wraps + 1
        text = self._texts[self._next]
        self._next += 1
        return f"round {self.wraps} {text}" if self.wraps else text

    def next_request(self) -> bytes:
        count = self._spec.texts_per_request
        if count == 1:
            body = f'{self._body_head}"{self._text()}"}}'.encode()
        else:
            texts = '","'.join(self._text() for _ in range(count))
            body = f'{self._body_head}["{texts}"]}}'.encode()
        return self._head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        """Send a request, read the whole response, return its status code."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        start = lowered.find(b"content-length:")
        if start < 0:
            raise ConnectionError("response without Content-Length")
        end = lowered.index(b"\r\n", start)
        await self._reader.readexactly(int(head[start + 15 : end]))
        return status

    def close(self) -> None:
        self._writer.close()


@dataclass
class Tally:
    """What came back: latencies of 200s, and the counts the report needs."""

    latencies: list[float]
    answered: int = 0
    errors: int = 0

    def record(self, status: int, seconds: float) -> None:
        if status == 200:
            self.answered += 1
            self.latencies.append(seconds)
        else:
            self.errors += 1


async def closed_loop(spec: LoadSpec, feed: RequestFeed, tally: Tally) -> int:
    """`spec.clients` clients, each sending its next request when the last one answers."""
    deadline = time.perf_counter() + spec.duration_s
    sent = 0

    async def client() -> None:
        nonlocal sent
        connection = await Connection.open(spec.host, spec.port)
        try:
            while True:
                request = feed.next_request()
                started = time.perf_counter()
                status = await connection.send(request)
                finished = time.perf_counter()
                if finished > deadline:
                    return  # answered after the window closed: not part of this run
                sent += 1
                tally.record(status, finished - started)
        finally:
            connection.close()

    clients = [asyncio.create_task(client()) for _ in range(spec.clients or 1)]
    done, pending = await asyncio.wait(clients, timeout=spec.duration_s + 1)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    tally.errors += sum(1 for task in done if not task.cancelled() and task.exception())
    return sent


async def open_loop(spec: LoadSpec, feed: RequestFeed, tally: Tally, lags: list[float]) -> int:
    """Requests leave at fixed intervals whether or not earlier ones were answered.

    Latency counts from the scheduled send time, so a server that falls behind shows
    its queue in the latency instead of slowing the generator down.
    """
    rate = spec.rate or 1.0
    count = int(rate * spec.duration_s)
    idle: list[Connection] = []
    slots = asyncio.Semaphore(spec.max_connections)

    async def send(request: bytes, scheduled: float) -> None:
        async with slots:
            connection = idle.pop() if idle else await Connection.open(spec.host, spec.port)
            try:
                status = await connection.send(request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                connection.close()
                tally.errors += 1
                return
            tally.record(status, time.perf_counter() - scheduled)
            idle.append(connection)

    start = time.perf_counter() + 0.05
    tasks: list[asyncio.Task[None]] = []
    for index in range(count):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(send(feed.next_request(), scheduled)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=spec.grace_s)
        for task in pending:
            task.cancel()  # not answered within the grace period: counts as unanswered
        await asyncio.gather(*pending, return_exceptions=True)
    for connection in idle:
        connection.close()
    return count


async def _run(spec: LoadSpec) -> LoadOutcome:
    feed = RequestFeed(spec)
    tally = Tally([])
    lags: list[float] = []
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    if spec.rate is not None:
        requests = await open_loop(spec, feed, tally, lags)
    else:
        requests = await closed_loop(spec, feed, tally)
    wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    latencies = sorted(tally.latencies)
    lag = percentile(sorted(lags), 0.99) * 1000 if lags else None
    return LoadOutcome(
        requests=requests,
        answered=tally.answered,
        errors=tally.errors,
        window_s=spec.duration_s,
        wall_s=wall,
        cpu_s=cpu,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p90_ms=percentile(latencies, 0.9) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        dispatch_lag_p99_ms=lag,
        pool_wraps=feed.wraps,
    )


def run_load(spec: LoadSpec) -> LoadOutcome:
    """Entry point in the generator process: uvloop where installed (less CPU per request)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(_run(spec))
    return asyncio.run(_run(spec))
