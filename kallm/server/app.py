"""The aiohttp application: its parts, chosen once, and how each starts and stops.

``create_app`` receives its backends (cache, spend ledger, rate limits, keys) or chooses
them from the settings in one place (``kallm.state``); nothing on the request path knows
which ones run. Each component has its own cleanup context, so a failed start unwinds
only what had started: the database writers, the key store, the providers' HTTP
clients, and the semantic cache (embedder, cache file, periodic snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from kallm.accounts.budget import SpendLedger
from kallm.accounts.keyring import KeyBackend
from kallm.accounts.pricing import PriceTable
from kallm.accounts.ratelimit import RateLimits
from kallm.cache.guard import hit_guard
from kallm.cache.persistence import SnapshotKeeper
from kallm.cache.semantic import HitGuard, SemanticCache
from kallm.cache.store import CacheBackend, Snapshottable
from kallm.config import Settings
from kallm.db import DatabaseWriter
from kallm.db.spend import SpendWriter
from kallm.embed import Embedder, create_embedder
from kallm.errors import ConfigError, KallmError
from kallm.metrics import Metrics
from kallm.providers.router import Router
from kallm.server import (
    admin,
    catalogue,
    chat,
    messages,
    ops,
    passthrough,
    responses,
    usage,
)
from kallm.server.admission import admit
from kallm.server.health import Health
from kallm.server.loop import new_instance_id
from kallm.server.middleware import request_context, stamp_response
from kallm.server.runtime import RUNTIME, Runtime
from kallm.state import Backends, choose

log = logging.getLogger("kallm.server")

PRUNE_SECONDS = 3600.0
_SPEND = web.AppKey("kallm.spend", SpendWriter)
_PARTS = web.AppKey("kallm.parts", dict)


def create_app(
    settings: Settings,
    *,
    cache: CacheBackend | None = None,
    ledger: SpendLedger | None = None,
    limits: RateLimits | None = None,
    keys: KeyBackend | None = None,
    embedder: Embedder | None = None,
    guard: HitGuard | None = None,
) -> web.Application:
    """The whole server as an aiohttp app; usable as a library and in tests."""
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[request_context, admit]
    )
    spend = SpendWriter(settings.db_path) if settings.db_path else None
    instance_id = new_instance_id()
    health = Health()
    chosen = choose(settings, spend.write if spend else None, health, instance_id)
    backends = Backends(
        cache=cache or chosen.cache,
        ledger=ledger or chosen.ledger,
        limits=limits or chosen.limits,
        keys=keys or chosen.keys,
        shared=chosen.shared,
    )
    runtime = Runtime(
        settings=settings,
        backends=backends,
        router=Router(settings, via=instance_id),
        prices=PriceTable(overrides=dict(settings.prices)),
        instance_id=instance_id,
        health=health,
    )
    runtime.metrics = Metrics(runtime)
    runtime.catalogue = catalogue.Catalogue(runtime.router)
    app[RUNTIME] = runtime
    if spend is not None:
        app[_SPEND] = spend
    app[_PARTS] = {"embedder": embedder, "guard": guard or hit_guard}
    app.cleanup_ctx.extend([_database, _shared_state, _keys, _providers, _semantic_cache])
    app.on_response_prepare.append(stamp_response)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/embeddings", passthrough.embeddings)
    app.router.add_post("/v1/messages", messages.messages)
    app.router.add_post("/v1/messages/count_tokens", messages.count_tokens)
    app.router.add_post("/v1/responses", responses.responses)
    app.router.add_get("/v1/models", catalogue.models)
    app.router.add_get("/v1/models/{model_id}", catalogue.one_model)
    app.router.add_get("/v1/kallm/usage", usage.own_usage)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough.passthrough)
    app.router.add_get("/health", ops.health)
    app.router.add_get("/stats", ops.stats)
    app.router.add_get("/metrics", ops.metrics)
    app.add_subapp("/admin", admin.admin_app())


# ---------------------------------------------------------------- components


async def _database(app: web.Application) -> AsyncIterator[None]:
    """The request log and durable spend: background writers on the SQLite file."""
    runtime = app[RUNTIME]
    path = runtime.settings.db_path
    spend = app.get(_SPEND)
    if path is not None and spend is not None:
        runtime.request_log = DatabaseWriter(path)
        runtime.request_log.start()
        spend.start()
        if runtime.settings.log_retention > 0:
            pruning = asyncio.create_task(_prune_forever(runtime))
    yield
    if path is not None and spend is not None:
        if runtime.settings.log_retention > 0:
            await _cancel(pruning)
        await asyncio.to_thread(spend.close)
        assert runtime.request_log is not None
        await asyncio.to_thread(runtime.request_log.close)


async def _shared_state(app: web.Application) -> AsyncIterator[None]:
    """Shared state's connection and background tasks (Redis), before the parts use it.
    An unreachable Redis does not stop start-up: the parts start degraded and recover."""
    shared = app[RUNTIME].backends.shared
    if shared is not None:
        await shared.start()
    yield
    if shared is not None:
        await shared.close()


async def _keys(app: web.Application) -> AsyncIterator[None]:
    """The key store; virtual keys cannot run without one, a request log can."""
    runtime = app[RUNTIME]
    keys = runtime.backends.keys
    settings = runtime.settings
    if settings.keys_dir is not None and not settings.keys_dir.is_dir():
        raise ConfigError(f"auth.keys_dir {settings.keys_dir}: not a directory")
    if keys is None and runtime.virtual_keys:
        raise ConfigError("auth = virtual-keys needs a key store: set db.path (--db)")
    if keys is not None:
        try:
            await keys.start()
        except (sqlite3.Error, OSError, KallmError) as exc:
            if runtime.virtual_keys:
                raise ConfigError(
                    f"database {settings.db_path} cannot be opened ({exc}); virtual keys need it"
                ) from None
            log.warning(
                "database %s cannot be opened (%s): serving without keys", settings.db_path, exc
            )
            runtime.backends = replace(runtime.backends, keys=None)
            keys = None
    yield
    if keys is not None:
        await keys.close()


async def _providers(app: web.Application) -> AsyncIterator[None]:
    router = app[RUNTIME].router
    await router.start()
    yield
    await router.close()


async def _semantic_cache(app: web.Application) -> AsyncIterator[None]:
    """Embedder, cache facade, the cache file and its periodic snapshots."""
    runtime = app[RUNTIME]
    settings = runtime.settings
    parts = app[_PARTS]
    default = runtime.router.default
    assert default.session is not None
    embedder = parts["embedder"] or create_embedder(
        settings.embedding_model, default.session, default.base_url, default.config.api_key
    )
    threshold = settings.similarity_threshold
    runtime.cache = SemanticCache(
        runtime.backends.cache,
        embedder,
        threshold=embedder.default_threshold if threshold is None else threshold,
        ttl=settings.cache_ttl,
        guard=parts["guard"],
    )
    keeper = _keeper(runtime, embedder.name)
    snapshots = None
    if keeper is not None and settings.snapshot_interval > 0:
        snapshots = asyncio.create_task(keeper.run_periodically(settings.snapshot_interval))
    log.info(
        "cache: embedder %s, threshold %.3f, ttl %ss, max %d entries",
        embedder.name,
        runtime.cache.threshold,
        int(settings.cache_ttl),
        settings.max_cache_size,
    )
    yield
    if snapshots is not None:
        await _cancel(snapshots)
    if keeper is not None:
        try:
            saved = await keeper.save()
            if saved:
                log.info("cache: %d entries saved to %s", saved, keeper.path)
        except OSError as exc:
            log.error("cache: final snapshot to %s failed: %s", keeper.path, exc)
        await keeper.close()


def _keeper(runtime: Runtime, embedder_name: str) -> SnapshotKeeper | None:
    """The cache file's keeper, when there is a file and the backend can be snapshotted."""
    path = runtime.settings.cache_file
    backend = runtime.backends.cache
    if path is None or not isinstance(backend, Snapshottable):
        return None  # a shared backend (Redis) keeps its own state: no file
    _check_writable(path)
    runtime.keeper = SnapshotKeeper(backend, path, embedder_name)
    loaded = runtime.keeper.load()
    log.info("cache: %d entries loaded from %s", loaded, path)
    return runtime.keeper


def _check_writable(path: Path) -> None:
    """A cache file kallm cannot write would fail only at shutdown, losing the cache: say so
    at start-up instead."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".kallm-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cache.file {path}: its folder is not writable ({exc.strerror or exc}); "
            "choose another path or 'off'"
        ) from None


async def _prune_forever(runtime: Runtime) -> None:
    while True:
        if runtime.request_log is not None:
            runtime.request_log.prune(time.time() - runtime.settings.log_retention)
        await asyncio.sleep(PRUNE_SECONDS)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
