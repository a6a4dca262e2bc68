"""The FastAPI application factory: `create_app(settings)` wires settings, state and routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api import explain, openai, rerank, routes, tei
from app.api.errors import install_error_handlers
from app.api.guard import RequestGuardMiddleware
from app.api.lifecycle import ServerState
from app.api.observability import RequestObservabilityMiddleware
from app.api.web import install_docs, install_viewer
from app.config import Settings
from app.metrics import Metrics

# How long a front-end worker may wait to be ready before it accepts connections.
WORKER_READY_WAIT_S = 5.0


def create_app(
    settings: Settings | None = None,
    *,
    engine_socket: Path | None = None,
    metrics_dir: Path | None = None,
) -> FastAPI:
    """The app of one HTTP process. In a front-end worker (ENCODER_WORKERS > 1, see
    app/processes.py) the passes run in the engine process behind `engine_socket`, and
    `/metrics` merges every process's samples from `metrics_dir`."""
    settings = settings or Settings()
    state = ServerState(settings, Metrics(multiprocess_dir=metrics_dir), engine_socket)

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
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await state.close()

    app = FastAPI(
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
    # Outermost last: observability sees every answer, the guard's 401 and 413 included.
    app.add_middleware(
        RequestGuardMiddleware,
        keys=[key.get_secret_value() for key in settings.api_key],
        metrics_require_key=settings.metrics_require_key,
        max_body_bytes=settings.max_body_bytes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
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
    app.add_middleware(RequestObservabilityMiddleware, metrics=state.metrics)
    app.include_router(routes.router)
    app.include_router(explain.router)
    app.include_router(openai.router)
    app.include_router(tei.router)
    app.include_router(rerank.router)
    install_viewer(app)
    install_docs(app)
    return app
