"""Usage reports from the request log: one function per query, each over a time range.

Only API requests (``/v1/...``) count: the server also logs its health checks,
/stats polls and admin calls, which would swamp the numbers (a liveness probe is
thousands of rows a day) and cost nothing. Every function takes a connection
(``kallm.db.connect(path, readonly=True)`` for a report) and returns plain dicts,
so the CLI, a test or a notebook can use them alike.
"""

from __future__ import annotations

import sqlite3
from typing import Any

_API = "(r.path IS NULL OR r.path LIKE '/v1/%')"

# What every grouping reports: requests, cache outcome, tokens and money.
_MEASURES = """
    COUNT(*) AS requests,
    COALESCE(SUM(r.cache = 'HIT'), 0) AS hits,
    COALESCE(SUM(r.cache = 'MISS'), 0) AS misses,
    COALESCE(SUM(r.status >= 400), 0) AS errors,
    COALESCE(SUM(r.prompt_tokens), 0) AS prompt_tokens,
    COALESCE(SUM(r.completion_tokens), 0) AS completion_tokens,
    COALESCE(SUM(r.cost_usd), 0.0) AS spend_usd,
    COALESCE(SUM(r.saved_usd), 0.0) AS saved_usd"""


def _with_rate(row: sqlite3.Row) -> dict[str, Any]:
    """The row as a dict, plus the hit rate among requests the cache decided on."""
    out = dict(row)
    looked_up = out["hits"] + out["misses"]
    out["hit_rate"] = round(out["hits"] / looked_up, 4) if looked_up else 0.0
    return out


def _of_key(key_id: str | None) -> tuple[str, tuple[Any, ...]]:
    """The extra condition (and its parameter) that keeps one key's rows, or none."""
    return (" AND r.key_id = ?", (key_id,)) if key_id is not None else ("", ())


def no_requests() -> dict[str, Any]:
    """The totals of a period without requests (or a server without a request log)."""
    measures = ("requests", "hits", "misses", "errors", "prompt_tokens", "completion_tokens")
    return {**dict.fromkeys(measures, 0), "spend_usd": 0.0, "saved_usd": 0.0, "hit_rate": 0.0}


def totals(conn: sqlite3.Connection, since: float, key_id: str | None = None) -> dict[str, Any]:
    """Requests, hits, misses, hit rate, errors, tokens, spend and savings since ``since``."""
    only, params = _of_key(key_id)
    row = conn.execute(
        f"SELECT {_MEASURES} FROM requests r WHERE r.time >= ? AND {_API}{only}",
        (since, *params),
    ).fetchone()
    return _with_rate(row)


def by_key(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    """The measures per key (``key_id`` None: requests without a virtual key), most
    spend first; ``name`` is None for a key that has since been deleted."""
    rows = conn.execute(
        f"SELECT r.key_id AS key_id, k.name AS name, {_MEASURES} FROM requests r "
        f"LEFT JOIN keys k ON k.id = r.key_id WHERE r.time >= ? AND {_API} "
        "GROUP BY r.key_id ORDER BY spend_usd DESC, requests DESC, r.key_id",
        (since,),
    )
    return [_with_rate(row) for row in rows]


def by_model(
    conn: sqlite3.Connection, since: float, key_id: str | None = None
) -> list[dict[str, Any]]:
    """The measures per requested model (the name the client used), most spend first."""
    only, params = _of_key(key_id)
    rows = conn.execute(
        f"SELECT r.model AS model, {_MEASURES} FROM requests r WHERE r.time >= ? AND {_API}"
        f"{only} GROUP BY r.model ORDER BY spend_usd DESC, requests DESC, r.model",
        (since, *params),
    )
    return [_with_rate(row) for row in rows]


def recent(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` requests, newest first, with the key's name."""
    rows = conn.execute(
        "SELECT r.time, r.request_id, r.key_id, k.name AS key_name, r.method, r.path, r.model, "
        "r.provider, r.status, r.cache, r.similarity, r.latency_ms, r.prompt_tokens, "
        "r.completion_tokens, r.cost_usd, r.saved_usd FROM requests r "
        f"LEFT JOIN keys k ON k.id = r.key_id WHERE {_API} "
        "ORDER BY r.time DESC, r.id DESC LIMIT ?",
        (max(0, limit),),
    )
    return [dict(row) for row in rows]


def report(conn: sqlite3.Connection, since: float, last: int) -> dict[str, Any]:
    """Everything ``kallm stats`` shows: totals, by key, by model and the last requests."""
    return {
        "totals": totals(conn, since),
        "by_key": by_key(conn, since),
        "by_model": by_model(conn, since),
        "recent": recent(conn, last),
    }
