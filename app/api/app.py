"""The FastAPI application factory: `create_app(settings)` wires settings, state and routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api import explain, openai, rerank, routes, tei, tei_root
from app.api.errors import install_error_handlers
from app.api.guard import RequestGuardMiddleware
from app.api.hot_path import HotPathMiddleware, hot_routes
from app.api.lifecycle import ServerState
from app.api.observability import RequestObservabilityMiddleware
from app.api.web import install_docs, install_viewer
from app.config import Settings
from app.metrics import Metrics
from app.worker_board import WorkerBoard

# How long a front-end worker may wait to be ready before it accepts connections.
WORKER_READY_WAIT_S = 5.0


class EncoderServeApp(FastAPI):
    """FastAPI, entered through this server's edge: observability, CORS and the guard wrap
    the app from outside FastAPI's own middleware stack, so that the hot path (valid
    requests to the busiest routes) runs inside them without FastAPI's layers, and every
    other request goes on to FastAPI as before. Set up by `create_app`. A middleware meant
    for every request belongs in that edge: `add_middleware` puts it inside FastAPI's
    stack, which hot requests skip."""

    edge: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # as Starlette sets it: a Request's `.app` for the hot path too
        await self.edge(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    engine_socket: Path | None = None,
    metrics_dir: Path | None = None,
    hot_path: bool = True,
    board: WorkerBoard | None = None,
) -> FastAPI:
    """The app of one HTTP process. In a front-end worker (ENCODER_WORKERS > 1, see
    app/processes.py) the passes run in the engine process behind `engine_socket`,
    `/metrics` merges every process's samples from `metrics_dir`, and `/ready` reads every
    worker's state on `board`. `hot_path=False` answers every request through FastAPI
    alone (app/api/hot_path.py; the tests compare both)."""
    settings = settings or Settings()
    metrics = Metrics(multiprocess_dir=metrics_dir)
    state = ServerState(settings, metrics, engine_socket, board)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background so /health answers (and /ready says 503) meanwhile.
        loading = asyncio.create_task(state.load())
        if engine_socket is not None:
            # A front-end worker accepts connections (uvicorn starts listening after this)
            # once it can serve: after a restart, the kernel would otherwise hand it
            # requests to answer 503 while its siblings serve. Its own part loads in well
            # under a second; past the bound (the engine process still loading its
            # models, as at start-up) it accepts anyway, so /health answers.
            await asyncio.wait({loading}, timeout=WORKER_READY_WAIT_S)
            state.accepting()
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await state.close()

    app = EncoderServeApp(
        title="encoder-serve",
        version=__version__,
        description="High-throughput inference server for Transformer encoders.",
        lifespan=lifespan,
        # install_docs serves /docs and /redoc with local assets instead of FastAPI's CDN ones.
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = state
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(explain.router)
    app.include_router(openai.router)
    app.include_router(openai.unversioned)
    app.include_router(tei.router)
    app.include_router(tei_root.router)
    app.include_router(rerank.router)
    install_viewer(app)
    install_docs(app)
    framework: ASGIApp = functools.partial(FastAPI.__call__, app)
    if hot_path:
        # Valid requests to the busiest routes skip FastAPI's machinery (app/api/hot_path.py).
        hot = hot_routes([*routes.router.routes, *openai.router.routes, *tei.router.routes])
        framework = HotPathMiddleware(framework, hot, state)
    # Outermost last: observability sees every answer, the guard's 401 and 413 included.
    edge: ASGIApp = RequestGuardMiddleware(
        framework,
        keys=[key.get_secret_value() for key in settings.api_key],
        metrics_require_key=settings.metrics_require_key,
        max_body_bytes=settings.max_body_bytes,
    )
    if settings.cors_origins:
        edge = CORSMiddleware(
            edge,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=[
                "x-request-id",
                "x-queue-time",
                "x-inference-time",
                "x-total-time",
                "x-truncated-documents",
            ],
        )
    app.edge = RequestObservabilityMiddleware(edge, metrics=state.metrics)
    return app
