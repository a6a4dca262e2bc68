"""Worker ↔ engine transports compared: round trips per second and CPU per round trip.

`python -m loadtest.transport [--seconds S] [--out DIR]` runs an echo engine in a second
process that decodes each request and answers zero vectors of the real width (no model),
and drives it from this process with 1 and 32 concurrent requesters, for each transport:

- `framed-unix`: app/engine/transport/wire.py's frames (raw int32 ids in, raw float32 out) over a
  Unix socket — what the server uses;
- `framed-tcp`: the same frames over TCP loopback;
- `pickle-unix`: the ids as Python lists and the result array pickled (protocol 5), over
  a Unix socket — what multiprocessing's pipes and queues do;
- `json-unix`: JSON both ways (ids and float lists) — what an HTTP hop would carry.

Each request is one text of 24 tokens answered with 384 floats (the bench's single-text
load), or 32 such texts. Writes transport.md and transport.json into DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import pickle
import struct
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from app.engine.models.tokenization import TokenizedText
from app.engine.transport import wire
from loadtest.machine import describe_machine
from loadtest.server import process_tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 384
TOKENS = 24
TRANSPORTS = ("framed-unix", "framed-tcp", "pickle-unix", "json-unix")
LENGTH = struct.Struct("<I")


def _tokenized(count: int) -> list[TokenizedText]:
    ids = np.arange(101, 101 + TOKENS, dtype=np.int64)
    return [TokenizedText(ids, np.zeros_like(ids), truncated=False) for _ in range(count)]


# -- the echo engine (second process) ------------------------------------------


async def _read(reader: asyncio.StreamReader) -> bytes:
    (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    return await reader.readexactly(length)


def _answer(transport: str, body: bytes) -> bytes:
    if transport.startswith("framed"):
        _, request_id = wire._HEAD.unpack_from(body)
        request = wire.decode_run(memoryview(body)[wire._HEAD.size :])
        vectors = np.zeros((len(request.items), WIDTH), dtype=np.float32)
        return wire.encode_result(request_id, vectors, 0.0, 0.0)
    message = pickle.loads(body) if transport == "pickle-unix" else json.loads(body)
    # What the engine needs either way: each input as int64 arrays for the batcher.
    items = [TokenizedText(np.asarray(ids), np.zeros(len(ids)), False) for ids in message["ids"]]
    if transport == "pickle-unix":
        vectors = np.zeros((len(items), WIDTH), dtype=np.float32)
        reply = pickle.dumps({"id": message["id"], "values": vectors}, protocol=5)
    else:
        reply = json.dumps({"id": message["id"], "values": [[0.0] * WIDTH for _ in items]}).encode()
    return LENGTH.pack(len(reply)) + reply


def _echo_engine(transport: str, address: str, ready: multiprocessing.synchronize.Event) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(_answer(transport, await _read(reader)))
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        if transport == "framed-tcp":
            server = await asyncio.start_server(handle, "127.0.0.1", int(address))
        else:
            server = await asyncio.start_unix_server(handle, address)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the worker side (this process) ----------------------------------------------


def _request(transport: str, request_id: int, items: list[TokenizedText]) -> bytes:
    if transport.startswith("framed"):
        return wire.encode_run(request_id, "minilm", items, 30.0)
    ids = [item.ids.tolist() for item in items]
    message = {"id": request_id, "service": "minilm", "ids": ids, "timeout": 30.0}
    body = (
        pickle.dumps(message, protocol=5)
        if transport == "pickle-unix"
        else json.dumps(message).encode()
    )
    return LENGTH.pack(len(body)) + body


def _decode(transport: str, body: bytes) -> tuple[int, np.ndarray]:
    """(request id, vectors) of an answer."""
    if transport.startswith("framed"):
        _, request_id = wire._HEAD.unpack_from(body)
        return request_id, wire.decode_result(memoryview(body)[wire._HEAD.size :]).values
    if transport == "pickle-unix":
        message = pickle.loads(body)
        return message["id"], message["values"]
    message = json.loads(body)
    return message["id"], np.asarray(message["values"], dtype=np.float32)


async def _drive(transport: str, address: str, clients: int, texts: int, seconds: float) -> int:
    """Round trips done by `clients` concurrent requesters over one connection."""
    if transport == "framed-tcp":
        reader, writer = await asyncio.open_connection("127.0.0.1", int(address))
    else:
        reader, writer = await asyncio.open_unix_connection(address)
    waiting: dict[int, asyncio.Future[np.ndarray]] = {}
    items = _tokenized(texts)

    async def read_loop() -> None:
        while True:
            request_id, values = _decode(transport, await _read(reader))
            waiting.pop(request_id).set_result(values)

    reading = asyncio.create_task(read_loop())
    counter = iter(range(1, 1 << 31))
    done = 0
    stop_at = time.monotonic() + seconds

    async def requester() -> None:
        nonlocal done
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop_at:
            request_id = next(counter)
            future: asyncio.Future[np.ndarray] = loop.create_future()
            waiting[request_id] = future
            writer.write(_request(transport, request_id, items))
            values = await future
            assert values.shape == (texts, WIDTH)
            done += 1

    await asyncio.gather(*(requester() for _ in range(clients)))
    reading.cancel()
    writer.close()
    return done


def measure(seconds: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        for transport in TRANSPORTS:
            address = "47321" if transport == "framed-tcp" else f"{scratch}/{transport}.sock"
            ready = context.Event()
            engine = context.Process(target=_echo_engine, args=(transport, address, ready))
            engine.start()
            ready.wait(30)
            assert engine.pid is not None
            try:
                for clients, texts in ((1, 1), (32, 1), (4, 32)):
                    own, theirs = time.process_time(), process_tree_cpu_seconds(engine.pid)
                    done = asyncio.run(_drive(transport, address, clients, texts, seconds))
                    own = time.process_time() - own
                    theirs = process_tree_cpu_seconds(engine.pid) - theirs
                    rows.append(
                        {
                            "transport": transport,
                            "clients": clients,
                            "texts_per_request": texts,
                            "round_trips_per_s": round(done / seconds, 1),
                            "cpu_us_per_round_trip": round((own + theirs) / done * 1e6, 1),
                        }
                    )
                    print(rows[-1], flush=True)
            finally:
                engine.kill()
                engine.join()
    return rows


def run(arguments: argparse.Namespace) -> None:
    rows = measure(arguments.seconds)
    report = {"date": date.today().isoformat(), "machine": describe_machine(), "rows": rows}
    out: Path = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.json").write_text(json.dumps(report, indent=2) + "\n")
    table = "\n".join(
        f"| {r['transport']} | {r['clients']} | {r['texts_per_request']} | "
        f"{r['round_trips_per_s']} | {r['cpu_us_per_round_trip']} |"
        for r in rows
    )
    (out / "transport.md").write_text(
        f"# Worker ↔ engine transports ({report['date']})\n\n"
        "`python -m loadtest.transport`: an echo engine in a second process (decodes each "
        "request, answers zero vectors of 384 floats), driven over one connection by 1 or 32 "
        "concurrent requesters (one text of 24 tokens per request), or 4 requesters of 32 "
        f"texts; {arguments.seconds:g} s each. CPU is both processes' user + system time "
        "per round trip.\n\n"
        "| transport | requesters | texts per request | round trips/s | CPU µs per round trip |\n"
        "|---|---:|---:|---:|---:|\n"
        f"{table}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.transport", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
