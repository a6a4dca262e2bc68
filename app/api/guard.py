"""Request guard: API keys on the inference routes and the body-size limit, before any parsing."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body

# Routes anyone may call: probes, the viewer page (it asks for the key itself) and the docs.
OPEN_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/favicon.ico",
    }
)
OPEN_PREFIXES = ("/static/",)
# A body over the limit is read and discarded up to this multiple of it before the 413,
# so clients that send before they read see the answer instead of a reset connection.
DISCARD_FACTOR = 8


class KeyChecker:
    """Constant-time check of a bearer token against every accepted key."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def accepts(self, authorization: bytes | None) -> bool:
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return False
        offered = authorization[7:].strip()
        # Compare with every key (no early exit): timing says nothing about which matched.
        matches = [hmac.compare_digest(offered, key) for key in self._keys]
        return any(matches)


class RequestGuardMiddleware:
    def __init__(
        self, app: ASGIApp, keys: list[str], metrics_require_key: bool, max_body_bytes: int
    ) -> None:
        self.app = app
        self.keys = KeyChecker(keys)
        self.metrics_require_key = metrics_require_key
        self.max_body_bytes = max_body_bytes

    def _needs_key(self, path: str) -> bool:
        if not self.keys or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        return path != "/metrics" or self.metrics_require_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        problem = _malformed(scope)
        if problem is not None:
            # RFC 9112 3.2 (Host) and RFC 9110 5.3 (singleton fields): which of two
            # values would count is ambiguous, so neither does.
            await _reject(scope, send, 400, "bad_request", problem, [CLOSE])
            return
        # CORS preflights (OPTIONS) carry no credentials by design.
        needs_key = scope["method"] != "OPTIONS" and self._needs_key(scope["path"])
        if needs_key and not self.keys.accepts(headers.get(b"authorization")):
            await _reject(
                scope,
                send,
                401,
                "unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            message = self._too_large(int(length))
            if headers.get(b"expect", b"").lower() == b"100-continue":
                # The client waits for "100 Continue" before it sends the body; reading
                # would ask for it (uvicorn sends it on the first read). Refuse unread
                # and close, as RFC 9110 10.1.1 allows.
                await _reject(scope, send, 413, "payload_too_large", message, [CLOSE])
                return
            await _discard_body(receive, self.max_body_bytes * DISCARD_FACTOR)
            await _reject(scope, send, 413, "payload_too_large", message)
            return
        if length is None and scope["method"] in {"POST", "PUT", "PATCH"}:
            body = await _read_bounded(receive, self.max_body_bytes)
            if body is None:
                await _reject(scope, send, 413, "payload_too_large", self._too_large(None))
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _too_large(self, length: int | None) -> str:
        size = f"{length} bytes" if length is not None else "the body"
        return f"request body too large: {size}; the limit is {self.max_body_bytes} bytes"


CLOSE = (b"connection", b"close")
# Request headers that must appear at most once: with two, a proxy and this server could
# each take a different one.
SINGLETONS = (b"authorization", b"content-length", b"host")


def _malformed(scope: Scope) -> str | None:
    """Why a request's head is refused (400), or None: no Host in HTTP/1.1, or a header
    that may appear once appearing more than once."""
    counts: dict[bytes, int] = {}
    for name, _ in scope["headers"]:
        if name in SINGLETONS:
            counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if count > 1:
            return f"the request has {count} {name.decode().title()} headers; send one"
    if scope.get("http_version") == "1.1" and b"host" not in counts:
        return "an HTTP/1.1 request must carry a Host header"
    return None


async def _reject(
    scope: Scope,
    send: Send,
    status: int,
    kind: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = error_body(status, kind, message, scope["path"])
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _discard_body(receive: Receive, limit: int) -> None:
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _read_bounded(receive: Receive, limit: int) -> bytes | None:
    """A chunked body (no Content-Length), or None once it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the buffered body to the app, then the connection's own messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
