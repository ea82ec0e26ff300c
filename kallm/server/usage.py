"""Who spent what, over HTTP: for the operator (GET /admin/usage) and for a key's owner
(GET /v1/kallm/usage, with the key alone).

Spend and budgets come from the spend ledger (fleet-wide when the state is shared);
requests, tokens and the split by model come from this server's request log, read
through a read-only connection in a worker thread so a report never holds the loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from kallm.accounts import usage
from kallm.accounts.keys import KeyRecord
from kallm.config import parse_duration
from kallm.db import connect
from kallm.errors import RequestError, RouteNotFound
from kallm.server.admission import admission
from kallm.server.runtime import Runtime, runtime_of

DEFAULT_SINCE = 24 * 3600.0
MAX_LAST = 1000


async def admin_usage(request: web.Request) -> web.Response:
    """``kallm stats --url``: totals, by key (with live spend and budgets), by model, recent."""
    runtime = runtime_of(request)
    since = time.time() - _seconds(request.query.get("since"))
    last = _count(request.query.get("last"))
    report = await _read(runtime, lambda conn: usage.report(conn, since, last), {})
    keys = runtime.backends.keys
    records = await keys.list() if keys is not None else []
    return web.json_response(
        {
            "source": {"url": str(request.url.origin())},
            "generated_at": time.time(),
            "since": since,
            "period_seconds": time.time() - since,
            "totals": report.get("totals", usage.no_requests()),
            "by_key": report.get("by_key", []),
            "by_model": report.get("by_model", []),
            "recent": report.get("recent", []),
            "keys": [await _key_summary(runtime, r) for r in records],
        }
    )


async def own_usage(request: web.Request) -> web.Response:
    """A key's own spend, budget and use by model this budget period."""
    runtime = runtime_of(request)
    key = admission(request).key
    if key is None:
        raise RouteNotFound("/v1/kallm/usage reports a virtual key's use: kallm runs without keys")
    summary = await _key_summary(runtime, key)
    since = summary["period_start"] if key.budget_period else key.created
    by_model = await _read(runtime, lambda conn: usage.by_model(conn, since, key.id), [])
    totals = await _read(runtime, lambda conn: usage.totals(conn, since, key.id), None)
    return web.json_response({**summary, "since": since, "totals": totals, "by_model": by_model})


async def _key_summary(runtime: Runtime, key: KeyRecord) -> dict[str, Any]:
    now = time.time()
    spend = await runtime.backends.ledger.spend(key, now)
    period_start = key.period_start
    if key.budget_period:
        elapsed = (now - key.period_start) // key.budget_period
        period_start = key.period_start + elapsed * key.budget_period
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "status": key.status(now),
        "spend_usd": round(spend, 8),
        "budget_usd": key.budget_usd,
        "budget_period_seconds": key.budget_period,
        "period_start": period_start,
        "remaining_usd": None if key.budget_usd is None else max(key.budget_usd - spend, 0.0),
        "saved_usd": key.saved_usd,
        "rpm": key.rpm,
        "tpm": key.tpm,
    }


async def _read(runtime: Runtime, query: Any, empty: Any) -> Any:
    path: Path | None = runtime.settings.db_path
    if path is None or not path.exists():
        return empty

    def run() -> Any:
        conn = connect(path, readonly=True)
        try:
            return query(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


def _seconds(raw: str | None) -> float:
    if raw is None:
        return DEFAULT_SINCE
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise RequestError(f"since: expected {exc}", param="since") from None
    if seconds <= 0:
        raise RequestError("since: expected a duration above zero", param="since")
    return seconds


def _count(raw: str | None) -> int:
    if raw is None:
        return 10
    if not raw.isdigit() or int(raw) > MAX_LAST:
        raise RequestError(f"last: expected a whole number from 0 to {MAX_LAST}", param="last")
    return int(raw)
