"""Per-request observability: metrics, TEI-style timing headers, a request id, one JSON log line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
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


class RequestObservabilityMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-queue-time"] = _ms(timing.queue_s)
                headers["x-inference-time"] = _ms(timing.inference_s)
                headers["x-total-time"] = _ms(time.monotonic() - started)
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
        self.metrics.requests.labels(endpoint, model, str(status)).inc()
        self.metrics.request_duration.labels(endpoint, model).observe(total_s)
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
    return uuid.uuid4().hex


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def _endpoint(scope: Scope) -> str:
    """The matched route's path template; one label for all unmatched paths (bounded)."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"
