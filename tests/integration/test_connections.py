"""Connection hygiene on real servers: header size limit, read timeout, connection cap."""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from app.api import connections
from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 1.0
HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
# 256 inputs (the most one request takes) of some 45 tokens each: a second or more of
# inference on a small CPU machine.
LONG_TEXTS = [
    f"text {i}: " + "the quick brown fox jumps over the lazy dog " * 4 for i in range(256)
]


@pytest.fixture(scope="module")
def quick(default_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"ENCODER_MODELS": "minilm", "ENCODER_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    live = start_server(tmp_path_factory.mktemp("quick"), env)
    yield live
    live.stop()


def address(live: LiveServer) -> tuple[str, int]:
    parts = urlsplit(live.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def connect(live: LiveServer, timeout: float = 10) -> socket.socket:
    return socket.create_connection(address(live), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open at `timeout`."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, off a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (x.split(":", 1) for x in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed in the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def parse_closing(data: bytes) -> tuple[int, dict[str, str], dict]:
    """Status, headers and JSON body of the one response on a connection that then closed."""
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (x.split(":", 1) for x in lines)}
    assert len(body) == int(headers["content-length"]), data
    return int(status_line.split()[1]), headers, orjson.loads(body)


def health_ok(live: LiveServer) -> bool:
    return httpx.get(f"{live.url}/health", timeout=5).status_code == 200


def test_a_huge_header_is_refused_with_431_as_it_arrives(quick: LiveServer) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    errors: list[BaseException] = []
    with connect(quick) as sock:
        started = time.monotonic()

        def send() -> None:
            # In pieces, as a slow network delivers them: httptools would join each piece
            # to the partial value so far (quadratic) if it were fed them all.
            try:
                for offset in range(0, len(request), 4096):
                    sock.sendall(request[offset : offset + 4096])
            except OSError as error:  # the server may have stopped reading: fine
                errors.append(error)

        sender = threading.Thread(target=send)
        sender.start()
        data = read_until_closed(sock, timeout=5)
        elapsed = time.monotonic() - started
        sender.join(5)
    status, headers, body = parse_closing(data)
    assert status == 431, data[:300]
    assert body["error"]["type"] == "headers_too_large"
    assert "32768" in body["error"]["message"]
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert elapsed < 5
    assert health_ok(quick)


def test_a_silent_connection_is_closed_but_a_kept_alive_one_is_not(quick: LiveServer) -> None:
    with connect(quick) as silent, connect(quick) as kept:
        kept.sendall(HEALTH)
        assert read_response(kept)[0] == 200
        started = time.monotonic()
        # Nothing sent: closed without an answer once the read timeout has passed.
        assert read_until_closed(silent, timeout=READ_TIMEOUT_S + 3) == b""
        closed_after = time.monotonic() - started
        assert READ_TIMEOUT_S - 0.1 <= closed_after < READ_TIMEOUT_S + 3
        # Idle for longer than the read timeout, well within keep-alive (75 s): still served.
        time.sleep(max(0.0, READ_TIMEOUT_S * 1.5 - closed_after))
        kept.sendall(HEALTH)
        status, headers, _ = read_response(kept)
        assert status == 200
        assert headers.get("connection") != "close"


def test_a_slowloris_request_line_is_cut_at_the_read_timeout(quick: LiveServer) -> None:
    partial = b"GET /health HTTP/1.1\r\nHost: te"  # one byte every 0.5 s, never finished
    with connect(quick) as sock:
        sock.settimeout(0.5)
        started = time.monotonic()
        data = b""
        closed = False
        for byte in partial:
            try:
                sock.sendall(bytes([byte]))
                while chunk := sock.recv(65536):
                    data += chunk
                closed = True
                break
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, "the server kept a slowloris connection open"
    assert READ_TIMEOUT_S - 0.1 <= elapsed < READ_TIMEOUT_S + 3
    status, headers, body = parse_closing(data)
    assert status == 408
    assert body["error"]["type"] == "request_timeout"
    assert headers["connection"] == "close"


def test_a_body_that_stops_halfway_is_cut_at_the_read_timeout(quick: LiveServer) -> None:
    body = orjson.dumps({"inputs": ["a sentence to embed " * 40]})
    head = (
        b"POST /encode HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(quick) as sock:
        sock.sendall(head + body[: len(body) // 2])
        started = time.monotonic()
        data = read_until_closed(sock, timeout=READ_TIMEOUT_S + 3)
        elapsed = time.monotonic() - started
    assert READ_TIMEOUT_S - 0.1 <= elapsed < READ_TIMEOUT_S + 3
    status, _, error = parse_closing(data)
    assert status == 408
    assert error["error"]["type"] == "request_timeout"
    assert health_ok(quick)


def test_a_long_inference_outlives_the_read_timeout(quick: LiveServer, tmp_path: Path) -> None:
    # How long this machine takes for the request; the read timeout is a quarter of it.
    with quick.client() as client:
        started = time.monotonic()
        assert client.post("/encode", json={"inputs": LONG_TEXTS}).status_code == 200
        calibration = time.monotonic() - started
    read_timeout = max(round(calibration / 4, 2), 0.05)
    env = {"ENCODER_MODELS": "minilm", "ENCODER_READ_TIMEOUT_S": str(read_timeout)}
    live = start_server(tmp_path, env)
    try:
        with connect(live) as silent, live.client() as client:
            started = time.monotonic()
            response = client.post("/encode", json={"inputs": LONG_TEXTS})
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert len(response.json()["embeddings"]) == 256
            assert elapsed > read_timeout, (elapsed, read_timeout)
            # The timeout is in force on this server: a silent connection did not last.
            assert read_until_closed(silent, timeout=read_timeout + 3) == b""
    finally:
        live.stop()


@contextlib.contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE set to `soft` (children inherit it), then restored."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def test_2000_idle_connections_do_not_stop_health(default_models: Path, tmp_path: Path) -> None:
    idle = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = idle + 200
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this process may open at most {hard} files")
    # Start the server with the common default soft limit (1024, below 2,000 sockets): it
    # must raise its own to hold them.
    with open_files_limit(min(soft, 1024) if soft != resource.RLIM_INFINITY else 1024):
        live = start_server(tmp_path, {"ENCODER_MODELS": "minilm", "ENCODER_READ_TIMEOUT_S": "30"})
    sockets: list[socket.socket] = []
    try:
        with open_files_limit(max(needed, soft) if soft != resource.RLIM_INFINITY else soft):
            for _ in range(idle):
                sockets.append(connect(live))
            time.sleep(0.5)  # let the server accept them all
            for _ in range(10):
                started = time.monotonic()
                response = httpx.get(f"{live.url}/health", timeout=5)
                elapsed = time.monotonic() - started
                assert response.status_code == 200
                assert elapsed < 0.25, elapsed
            # They were all held (connected and idle, none refused or closed).
            assert sum(1 for sock in sockets if still_open(sock)) == idle
            for sock in sockets:
                sock.close()
            sockets.clear()
    finally:
        for sock in sockets:
            sock.close()
        live.stop()
    assert "raised the open files limit" in live.log()


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_the_connection_past_the_cap_is_refused_with_503(
    default_models: Path, tmp_path: Path
) -> None:
    cap = 50
    env = {"ENCODER_MODELS": "minilm", "ENCODER_MAX_CONNECTIONS": str(cap)}
    live = start_server(tmp_path, {**env, "ENCODER_READ_TIMEOUT_S": "30"})
    held: list[socket.socket] = []
    try:
        time.sleep(0.3)  # the readiness probes' connections are closed and gone
        held = [connect(live) for _ in range(cap)]
        held[0].sendall(HEALTH)  # the held ones are served
        assert read_response(held[0])[0] == 200
        with connect(live) as extra:
            extra.sendall(HEALTH)
            data = read_until_closed(extra, timeout=5)
        status, headers, body = parse_closing(data)
        assert status == 503, data
        assert body["error"]["type"] == "too_many_connections"
        assert headers["connection"] == "close"
        assert headers["retry-after"] == "1"
        for sock in held:
            sock.close()
        held = []
        # Once the server has seen them go, new connections are served again.
        deadline = time.monotonic() + 5
        while True:
            with connect(live) as sock:
                sock.sendall(HEALTH)
                if read_response(sock)[0] == 200:
                    break
            assert time.monotonic() < deadline, "still refusing after the others closed"
            time.sleep(0.1)
        assert health_ok(live)
    finally:
        for sock in held:
            sock.close()
        live.stop()


@pytest.mark.parametrize(
    ("limits", "expected", "warns"),
    [
        ((1024, 524288), 4096 + connections.FD_HEADROOM, False),  # raised to what is needed
        ((1024, 3000), 3000, True),  # only up to the hard limit: a warning
        ((65536, 65536), 65536, False),  # already enough: untouched
    ],
)
def test_the_open_files_limit_is_raised_for_the_cap(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    limits: tuple[int, int],
    expected: int,
    warns: bool,
) -> None:
    current = list(limits)
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _: tuple(current))

    def setrlimit(_: int, values: tuple[int, int]) -> None:
        current[:] = values

    monkeypatch.setattr(connections.resource, "setrlimit", setrlimit)
    with caplog.at_level(logging.INFO, logger="app.api.connections"):
        assert connections.raise_open_files_limit(4096) == expected
    assert current[0] == expected
    assert any(record.levelno == logging.WARNING for record in caplog.records) == warns


def test_the_open_files_limit_warns_when_it_cannot_be_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _: (1024, 524288))

    def refuse(_: int, __: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(connections.resource, "setrlimit", refuse)
    with caplog.at_level(logging.INFO, logger="app.api.connections"):
        assert connections.raise_open_files_limit(4096) == 1024
    assert "could not raise" in caplog.text
