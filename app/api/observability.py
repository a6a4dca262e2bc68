"""Per-request metrics: count and time every API request by endpoint, model and status."""

from __future__ import annotations

import time

from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

# Operational routes are scraped or probed constantly; counting them would drown the traffic.
UNOBSERVED_PATHS = frozenset({"/metrics", "/health", "/ready"})


class RequestMetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNOBSERVED_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what the client sees if the app raises before responding

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = _endpoint(scope)
            model = scope.get("state", {}).get("model", "")
            self.metrics.requests.labels(endpoint, model, str(status)).inc()
            self.metrics.request_duration.labels(endpoint, model).observe(
                time.monotonic() - started
            )


def _endpoint(scope: Scope) -> str:
    """The matched route's path template; one label for all unmatched paths (bounded)."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"
