"""Operational endpoints: GET /health, GET /stats and GET /metrics (Prometheus)."""

from __future__ import annotations

import time

import numpy as np
from aiohttp import web

from kallm import __version__
from kallm.metrics import CONTENT_TYPE
from kallm.server.app import RUNTIME


async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "cache_entries": await runtime.cache.backend.size(),
            "uptime_seconds": round(time.time() - runtime.started_at, 1),
        }
    )


def _percentile_ms(samples: list[float], q: float) -> float | None:
    return round(float(np.percentile(samples, q)) * 1000, 3) if samples else None


async def stats(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    cache = runtime.cache
    counts = cache.stats
    lookups = counts.hits + counts.misses
    samples = list(counts.lookup_seconds)
    backend_counters = getattr(cache.backend, "counters", None)
    return web.json_response(
        {
            "total_entries": await cache.backend.size(),
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
            "evictions": getattr(backend_counters, "evictions", 0),
            "expirations": getattr(backend_counters, "expirations", 0),
            "embedder": cache.embedder.name,
            "similarity_threshold": cache.threshold,
            "snapshot_saved_at": runtime.keeper.last_saved if runtime.keeper else None,
            "log_rows_written": runtime.accounts.writer.written if runtime.accounts.writer else 0,
            "log_rows_dropped": runtime.accounts.dropped_rows,
            "uptime_seconds": round(time.time() - runtime.started_at, 1),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
