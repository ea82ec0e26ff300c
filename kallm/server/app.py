"""The aiohttp application: what it holds (Runtime), how it starts and how it stops.

Start-up opens the upstream client, picks the embedder, loads the cache file
and starts periodic snapshots; shutdown (after in-flight requests finish)
writes a last snapshot. Everything a handler needs hangs off ``app[RUNTIME]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from kallm.accounts.pricing import PriceTable
from kallm.cache.guard import hit_guard
from kallm.cache.persistence import SnapshotKeeper
from kallm.cache.semantic import HitGuard, SemanticCache
from kallm.cache.store import MemoryBackend
from kallm.config import Settings
from kallm.embed import Embedder, create_embedder
from kallm.metrics import Metrics
from kallm.providers.router import Router
from kallm.server.accounts import Accounts
from kallm.server.loop import new_instance_id

log = logging.getLogger("kallm.server")


class Runtime:
    """The live parts of one server; filled in at start-up."""

    cache: SemanticCache
    keeper: SnapshotKeeper | None = None

    def __init__(
        self, settings: Settings, embedder: Embedder | None = None, guard: HitGuard | None = None
    ):
        self.settings = settings
        self.instance_id = new_instance_id()
        self.router = Router(settings, via=self.instance_id)
        self.prices = PriceTable(overrides=dict(settings.prices))
        self.accounts = Accounts(settings, self.prices)
        self.metrics = Metrics(self)
        self.started_at = time.time()
        self._embedder = embedder
        self._guard = guard or hit_guard

    async def start(self) -> None:
        settings = self.settings
        await self.accounts.start()  # first: it can refuse to start, before sessions exist
        await self.router.start()
        default = self.router.default
        assert default.session is not None
        embedder = self._embedder or create_embedder(
            settings.embedding_model, default.session, default.base_url, default.config.api_key
        )
        backend = MemoryBackend(settings.max_cache_size)
        threshold = settings.similarity_threshold
        self.cache = SemanticCache(
            backend,
            embedder,
            threshold=embedder.default_threshold if threshold is None else threshold,
            ttl=settings.cache_ttl,
            guard=self._guard,
        )
        if settings.cache_file is not None:
            self.keeper = SnapshotKeeper(backend, settings.cache_file, embedder.name)
            loaded = self.keeper.load()
            log.info("cache: %d entries loaded from %s", loaded, settings.cache_file)
        log.info(
            "cache: embedder %s, threshold %.3f, ttl %ss, max %d entries",
            embedder.name,
            self.cache.threshold,
            int(settings.cache_ttl),
            settings.max_cache_size,
        )

    async def stop(self) -> None:
        if self.keeper is not None:
            try:
                saved = await self.keeper.save()
                if saved:
                    log.info("cache: %d entries saved to %s", saved, self.keeper.path)
            except OSError as exc:
                log.error("cache: final snapshot to %s failed: %s", self.keeper.path, exc)
        await self.router.close()
        await self.accounts.stop()


RUNTIME = web.AppKey("kallm.runtime", Runtime)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.start()
    snapshots = None
    if runtime.keeper is not None and runtime.settings.snapshot_interval > 0:
        snapshots = asyncio.create_task(
            runtime.keeper.run_periodically(runtime.settings.snapshot_interval)
        )
    yield
    if snapshots is not None:
        snapshots.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await snapshots
    await runtime.stop()


def create_app(
    settings: Settings, *, embedder: Embedder | None = None, guard: HitGuard | None = None
) -> web.Application:
    """The whole server as an aiohttp app; usable as a library and in tests."""
    from kallm.server.admin import add_routes as add_admin_routes
    from kallm.server.chat import chat_completions
    from kallm.server.middleware import request_context
    from kallm.server.ops import health, metrics, stats
    from kallm.server.passthrough import embeddings, models, passthrough

    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[request_context])
    app[RUNTIME] = Runtime(settings, embedder, guard)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    add_admin_routes(app)
    from kallm.server.cacheadmin import add_routes as add_cache_admin_routes

    add_cache_admin_routes(app)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
    return app
