"""The schema of kallm's local database, as an ordered list of small steps.

The version lives in ``PRAGMA user_version`` (in the file header, so it needs no
table of its own and changes in the same transaction as the step). Step *n*
takes the schema from version *n-1* to *n*; steps are only ever appended, never
edited, because databases in the field are at every version that ever shipped.
A database from a newer kallm is refused rather than guessed at: an older
binary writing to a schema it does not know could silently lose data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from kallm.errors import SchemaTooNew


def _v1_keys_and_requests(conn: sqlite3.Connection) -> None:
    """Virtual keys (policy and spend) and one row per proxied request."""
    conn.execute("""
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            created REAL NOT NULL,
            expires REAL,
            revoked REAL,
            last_used REAL,
            budget_usd REAL,
            budget_period REAL,
            period_start REAL NOT NULL,
            spend_usd REAL NOT NULL DEFAULT 0,
            saved_usd REAL NOT NULL DEFAULT 0,
            rpm INTEGER,
            tpm INTEGER,
            models TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            namespace TEXT
        )""")
    conn.execute("""
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            request_id TEXT,
            key_id TEXT,
            method TEXT,
            path TEXT,
            model TEXT,
            provider TEXT,
            upstream_model TEXT,
            status INTEGER,
            latency_ms REAL,
            ttft_ms REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cached_tokens INTEGER,
            cost_usd REAL,
            saved_usd REAL,
            cache TEXT,
            similarity REAL,
            request_body TEXT,
            response_body TEXT
        )""")
    # Every report is "over a time range", usually per key or per model.
    conn.execute("CREATE INDEX requests_time ON requests (time)")
    conn.execute("CREATE INDEX requests_key_time ON requests (key_id, time)")
    conn.execute("CREATE INDEX requests_model_time ON requests (model, time)")


def _v2_retired_hashes(conn: sqlite3.Connection) -> None:
    """Hashes of secrets replaced by a rotation: a key file from a mounted Secret that still
    carries one must not bring a leaked secret back after a restart."""
    conn.execute("""
        CREATE TABLE retired_hashes (
            hash TEXT PRIMARY KEY,
            key_id TEXT NOT NULL,
            retired REAL NOT NULL
        )""")


def _v3_one_request_index(conn: sqlite3.Connection) -> None:
    """Every report reads a time range first, so the time index serves them all; the
    per-key and per-model indexes cost each logged request two more B-tree writes (the
    request log's writer spent a third of a core on them at 3,000 requests a second)."""
    conn.execute("DROP INDEX IF EXISTS requests_key_time")
    conn.execute("DROP INDEX IF EXISTS requests_model_time")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_keys_and_requests,
    _v2_retired_hashes,
    _v3_one_request_index,
]


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_not_too_new(conn: sqlite3.Connection) -> int:
    """The database's version; raises ``SchemaTooNew`` if this code cannot know its schema."""
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the database {_file_name(conn)} has schema version {version}, but this kallm "
            f"only knows up to version {len(MIGRATIONS)}; upgrade kallm or use another "
            "database file"
        )
    return version


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing steps, one transaction each; returns the resulting version.

    Each step re-reads the version inside its own ``BEGIN IMMEDIATE``, so two
    processes starting at once do not both apply it. A failing step rolls back
    whole and raises: the database stays at the last good version.
    """
    version = check_not_too_new(conn)
    for number in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if check_not_too_new(conn) < number:
                MIGRATIONS[number - 1](conn)
                conn.execute(f"PRAGMA user_version = {number:d}")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return schema_version(conn)


def _file_name(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return row[2] or ":memory:"
    return "?"
