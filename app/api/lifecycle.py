"""Server lifecycle: load and warm models off the event loop, report readiness, shut down."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from app.config import Settings
from app.engine.errors import NotReady
from app.engine.registry import ModelRegistry
from app.metrics import Metrics

log = logging.getLogger(__name__)


class ServerState:
    """What the routes need to know about the server: its models and whether it is ready."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._registry: ModelRegistry | None = None
        self.draining = False
        self.fatal_error: Exception | None = None
        # Set by the command line: asks the HTTP server to exit (a model failed to load).
        self.request_shutdown: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        registry = self._registry
        if registry is None or self.draining:
            return False
        return all(batcher.alive for batcher in registry.batchers)

    @property
    def registry(self) -> ModelRegistry:
        """The loaded models; NotReady (503) while they are still loading or while draining."""
        if self.draining:
            raise NotReady("the server is shutting down; send new requests to another replica")
        if self._registry is None:
            raise NotReady("models are still loading; retry when GET /ready answers 200")
        return self._registry

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining: the server is shutting down"
        if self._registry is None:
            return "models are still loading"
        dead = [batcher.name for batcher in self._registry.batchers if not batcher.alive]
        return f"batch workers stopped for models: {', '.join(dead)}"

    async def load(self) -> None:
        """Load and warm every model; on failure record the error and stop the server."""
        try:
            registry = await asyncio.to_thread(ModelRegistry.load, self.settings, self.metrics)
            if self.settings.warmup:
                await asyncio.to_thread(registry.warm_up)
        except Exception as error:
            self.fatal_error = error
            log.error("start-up failed: %s", error)
            if self.request_shutdown is not None:
                self.request_shutdown()
            return
        # What is loaded now lives as long as the server: take it out of the collector's
        # sight. Otherwise each full collection walks every model and library object,
        # stalling the event loop and the batch worker ~100 ms (measured at 32 clients:
        # two such pauses in 15 s, which set the p99).
        gc.collect()
        gc.freeze()
        for batcher in registry.batchers:
            batcher.start()
        self._registry = registry
        log.info("ready: serving %s", ", ".join(model.name for model in registry))

    async def drain(self) -> None:
        """Refuse new work (503, /ready too) and wait up to `drain_s` for queued work to finish."""
        self.draining = True
        log.info("draining: waiting up to %g s for queued work", self.settings.drain_s)
        if self._registry is not None:
            deadline = time.monotonic() + self.settings.drain_s
            for batcher in self._registry.batchers:
                await batcher.drain(max(deadline - time.monotonic(), 0.0))
        log.info("drained")

    async def close(self) -> None:
        if self._registry is not None:
            for batcher in self._registry.batchers:
                await batcher.stop()
