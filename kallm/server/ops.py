"""Operational endpoints: GET /health, GET /stats and GET /metrics (Prometheus).

Cache figures that live in the backend (entries, evictions) are read through the
``CacheBackend`` seam, so the same endpoints work whichever backend runs.
"""

from __future__ import annotations

import time

from aiohttp import web

from kallm import __version__
from kallm.metrics import CONTENT_TYPE, CacheFigures
from kallm.server.runtime import Runtime, runtime_of


async def health(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    body: dict[str, object] = {
        "status": runtime.health.status,
        "version": __version__,
        "cache_entries": await runtime.backends.cache.size(),
        "uptime_seconds": round(time.time() - runtime.started_at, 1),
    }
    if runtime.health.degraded:
        body["degraded"] = runtime.health.degraded
    return web.json_response(body)


def _percentile_ms(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000, 3)


async def figures(runtime: Runtime) -> CacheFigures:
    backend = runtime.backends.cache
    counters = backend.counters()
    return CacheFigures(await backend.size(), counters.evictions, counters.expirations)


async def stats(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    cache = runtime.semantic_cache
    counts = cache.stats
    lookups = counts.hits + counts.misses
    samples = list(counts.lookup_seconds)
    current = await figures(runtime)
    writer = runtime.request_log
    return web.json_response(
        {
            "total_entries": current.entries,
            "total_hits": counts.hits,
            "exact_hits": counts.exact_hits,
            "semantic_hits": counts.semantic_hits,
            "total_misses": counts.misses,
            "hit_rate": round(counts.hits / lookups, 4) if lookups else 0.0,
            "guarded": sum(counts.guarded.values()),
            "guarded_by_reason": dict(counts.guarded),
            "stores": counts.stores,
            "embedding_errors": counts.embed_errors,
            "estimated_saved_usd": round(counts.saved_usd, 6),
            "tokens_saved": counts.saved_tokens,
            "lookup_latency_ms": {
                "p50": _percentile_ms(samples, 50),
                "p99": _percentile_ms(samples, 99),
            },
            "evictions": current.evictions,
            "expirations": current.expirations,
            "embedder": cache.embedder.name,
            "similarity_threshold": cache.threshold,
            "snapshot_saved_at": runtime.keeper.last_saved if runtime.keeper else None,
            "log_rows_written": writer.written if writer else 0,
            "log_rows_dropped": writer.dropped if writer else 0,
            "uptime_seconds": round(time.time() - runtime.started_at, 1),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    assert runtime.metrics is not None
    body = runtime.metrics.render(await figures(runtime))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
