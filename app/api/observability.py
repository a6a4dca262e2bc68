"""Per-request observability: metrics, TEI-style timing headers, a request id, one JSON log line."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from typing import Any

from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import internal_error_response
from app.engine.contract import RequestTiming, current_timing
from app.metrics import Metrics

log = logging.getLogger("encoder_serve.requests")

# Operational routes are scraped or probed constantly; counting them would drown the traffic.
UNOBSERVED_PATHS = frozenset({"/metrics", "/health", "/ready"})
# A client's request id is echoed only when it is short and printable (it lands in logs).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ids = random.Random()
# A forked worker process must not repeat its parent's (or a sibling's) ids.
os.register_at_fork(after_in_child=_ids.seed)


class RequestObservabilityMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Each (endpoint, model, status)'s metric children, looked up once: `labels()`
        # takes a lock and builds its key on every call. Bounded as the labels are (route
        # templates, served models, statuses).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = _request_id(scope)
        timing = RequestTiming()
        token = current_timing.set(timing)
        status = 500  # what the client sees if the app raises before responding
        started_response = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                # Appended as raw pairs (no answer of this app sets these names itself):
                # a MutableHeaders would search the list once per name.
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"x-queue-time", _ms(timing.queue_s)),
                    (b"x-inference-time", _ms(timing.inference_s)),
                    (b"x-total-time", _ms(time.monotonic() - started)),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as error:
            # A bug. Answered here rather than by Starlette's outer ServerErrorMiddleware, so
            # the 500 carries the request id and timing headers and is counted, and the
            # connection stays open (the exception does not reach uvicorn).
            log.error(
                "unhandled error on %s %s",
                scope["method"],
                scope["path"],
                exc_info=error,
                extra={"request_id": request_id},
            )
            if not started_response:
                await internal_error_response(scope["path"])(scope, receive, send_with_headers)
            # Otherwise part of an answer is out and nothing can be sent: returning with it
            # incomplete makes uvicorn close the connection.
        finally:
            current_timing.reset(token)
            if scope["path"] not in UNOBSERVED_PATHS:
                self._observe(scope, request_id, status, timing, time.monotonic() - started)

    def _observe(
        self, scope: Scope, request_id: str, status: int, timing: RequestTiming, total_s: float
    ) -> None:
        endpoint = _endpoint(scope)
        model = scope.get("state", {}).get("model", "")
        key = (endpoint, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.metrics.requests.labels(endpoint, model, str(status)),
                self.metrics.request_duration.labels(endpoint, model),
            )
        children[0].inc()
        children[1].observe(total_s)
        if not log.isEnabledFor(logging.INFO):
            return  # the line's fields are not even built
        log.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "request_id": request_id,
                "endpoint": endpoint,
                "model": model,
                "inputs": timing.inputs,
                "tokens": timing.tokens,
                "status": status,
                "queue_ms": round(timing.queue_s * 1000, 3),
                "inference_ms": round(timing.inference_s * 1000, 3),
                "total_ms": round(total_s * 1000, 3),
            },
        )


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_ID.match(candidate):
                return candidate
    # 128 random bits as 32 hex digits, as a uuid4's hex: from Python's generator (seeded
    # from the OS at start) rather than uuid4's per-request os.urandom system call. An id
    # names a request in logs; it is no secret.
    return f"{_ids.getrandbits(128):032x}"


def _ms(seconds: float) -> bytes:
    return b"%.3f" % (seconds * 1000)


def _endpoint(scope: Scope) -> str:
    """The matched route's path template; one label for all unmatched paths (bounded)."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"
