"""Opening kallm's SQLite database, always with the same settings.

WAL lets the server's writer thread, the CLI and report readers work on one
file at once (readers never wait for the writer); ``synchronous=NORMAL`` is
safe under WAL (a power cut may lose the last commits, never corrupt the file)
and saves an fsync per commit; a bounded busy timeout turns a long lock into
an error the caller can count instead of a hang.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import platformdirs

from kallm.db.migrations import check_not_too_new, migrate

DEFAULT_BUSY_TIMEOUT_MS = 2000


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("kallm")) / "kallm.db"


def connect(
    path: Path | str, *, readonly: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """A connection with kallm's settings; a writable one is migrated to the current schema.

    ``readonly`` opens with SQLite's ``mode=ro`` (SQLite itself refuses writes,
    whoever the process runs as) and neither creates the folder nor migrates,
    so a report never changes the file it reads; a schema newer than this code
    still raises ``SchemaTooNew``. The Python transaction handling is left at
    its default, so ``with conn:`` groups statements into one transaction.
    """
    path = Path(path)
    timeout = busy_timeout_ms / 1000
    if readonly:
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro", uri=True, timeout=timeout, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            check_not_too_new(conn)
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn
