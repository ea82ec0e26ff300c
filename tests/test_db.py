"""kallm.db on real SQLite files: schema migrations and the background request-log writer.

Failure cases use failures that happen even as root (CI runs as root, where
chmod 0444 does not stop writes): another connection holding ``BEGIN
EXCLUSIVE`` (SQLITE_BUSY after the busy timeout), a connection opened with
SQLite's ``mode=ro`` (SQLITE_READONLY, what a read-only mount gives), and a
database path that is a directory (SQLITE_CANTOPEN).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kallm.db import (
    MIGRATIONS,
    DatabaseWriter,
    RequestRow,
    SchemaTooNew,
    connect,
    default_db_path,
    migrate,
    schema_version,
)
from kallm.db import migrations as migrations_module
from kallm.errors import KallmError

FAST = {"flush_interval": 0.01}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def db_warnings() -> Iterator[list[logging.LogRecord]]:
    """Warnings of kallm.db, whatever configure_logging did to the 'kallm' logger earlier."""
    handler = Records()
    logger = logging.getLogger("kallm.db")
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A migrated, closed database file."""
    path = tmp_path / "kallm.db"
    connect(path).close()
    return path


def rows(path: Path, sql: str = "SELECT * FROM requests ORDER BY id") -> list[sqlite3.Row]:
    """Read through a separate connection: what the writer committed, and only that."""
    conn = connect(path, readonly=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def row(t: float, **values: object) -> RequestRow:
    return RequestRow(time=t, **values)  # type: ignore[arg-type]


# -- schema -----------------------------------------------------------------------------------


def test_connect_creates_and_migrates_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "kallm.db"
    conn = connect(path)
    assert path.exists()
    assert schema_version(conn) == len(MIGRATIONS) == 3
    tables = {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"keys", "requests"} <= tables
    indexes = {
        r["name"]: r["sql"]
        for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'")
    }
    assert "(time)" in indexes["requests_time"]
    # Reports read a time range first; the per-key and per-model indexes went in v3.
    assert "requests_key_time" not in indexes and "requests_model_time" not in indexes
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
    assert isinstance(conn.execute("SELECT 1 AS one").fetchone(), sqlite3.Row)
    conn.close()


def test_request_row_matches_the_table(db: Path) -> None:
    conn = connect(db)
    columns = [r["name"] for r in conn.execute("PRAGMA table_info(requests)")]
    conn.close()
    assert columns == ["id", *RequestRow._fields]


def test_reconnecting_is_idempotent_and_keeps_data(db: Path) -> None:
    conn = connect(db)
    with conn:
        conn.execute(
            "INSERT INTO keys (id, name, prefix, hash, created, period_start) "
            "VALUES ('k1', 'team', 'sk-kallm-ab', 'h', 1, 1)"
        )
    conn.close()
    conn = connect(db)
    assert schema_version(conn) == 3
    assert migrate(conn) == 3
    key = conn.execute("SELECT * FROM keys").fetchone()
    assert (key["name"], key["spend_usd"], key["metadata"]) == ("team", 0, "{}")
    conn.close()


def test_a_database_from_a_newer_kallm_is_refused(db: Path) -> None:
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(SchemaTooNew, match="version 99") as info:
        connect(db)
    assert isinstance(info.value, KallmError)
    with pytest.raises(SchemaTooNew):
        connect(db, readonly=True)


def test_a_failing_migration_rolls_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise RuntimeError("the last step failed")

    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*MIGRATIONS, broken])
    path = tmp_path / "kallm.db"
    with pytest.raises(RuntimeError):
        connect(path)
    monkeypatch.undo()
    # every real step committed on its own; the broken one left nothing behind
    assert schema_version(connect(path, readonly=True)) == len(MIGRATIONS)
    conn = connect(path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    conn.close()


def test_readonly_connect_neither_migrates_nor_writes(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    sqlite3.connect(path).close()
    conn = connect(path, readonly=True)
    assert schema_version(conn) == 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("CREATE TABLE t (x)")
    conn.close()


def test_default_path_is_in_the_user_data_dir(tmp_path: Path) -> None:
    assert default_db_path() == tmp_path / "xdg-data" / "kallm" / "kallm.db"


# -- the writer -------------------------------------------------------------------------------


def test_rows_are_written_in_batches_and_flush_makes_them_visible(db: Path) -> None:
    begins: list[str] = []

    def traced(path: Path) -> sqlite3.Connection:
        conn = connect(path)
        conn.set_trace_callback(lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
        return conn

    writer = DatabaseWriter(db, batch_size=10, opener=traced, **FAST)
    for i in range(25):  # queued before the thread starts: batches of 10, 10 and 5
        assert writer.log(
            row(float(i), model="gpt-4o-mini", status=200, cost_usd=0.001, request_body='{"a": 1}')
        )
    writer.start()
    assert writer.flush()
    assert (writer.written, writer.dropped, writer.last_error) == (25, 0, None)
    assert len(begins) == 3
    got = rows(db)
    assert [r["time"] for r in got] == [float(i) for i in range(25)]
    assert (got[0]["model"], got[0]["status"], got[0]["request_body"]) == (
        "gpt-4o-mini",
        200,
        '{"a": 1}',
    )
    writer.close()


def test_a_full_queue_drops_instead_of_blocking(db: Path) -> None:
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the thread waits in busy_timeout on its first batch
    writer = DatabaseWriter(db, max_queue=3, batch_size=1, busy_timeout_ms=1000, **FAST)
    writer.start()
    accepted = [writer.log(row(float(i))) for i in range(20)]
    assert accepted.count(False) >= 20 - 3 - 1  # queue + the one item in the thread's hands
    assert writer.dropped >= accepted.count(False)
    locker.execute("ROLLBACK")
    locker.close()
    assert writer.flush()
    assert writer.written + writer.dropped == 20
    assert len(rows(db)) == writer.written
    writer.close()


def test_locked_past_busy_timeout_drops_then_recovers(
    db: Path, db_warnings: list[logging.LogRecord]
) -> None:
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    writer = DatabaseWriter(db, busy_timeout_ms=20, **FAST)
    writer.start()
    for i in range(5):
        writer.log(row(float(i)))
    assert writer.flush()
    writer.execute("UPDATE keys SET spend_usd = 1")
    writer.log(row(5.0))
    assert writer.flush()
    assert (writer.written, writer.dropped) == (0, 7)
    assert "locked" in (writer.last_error or "")
    assert len(db_warnings) == 1  # once per kind of error, not once per batch
    locker.execute("ROLLBACK")
    locker.close()
    for i in range(3):
        writer.log(row(10.0 + i))
    assert writer.flush()
    assert (writer.written, writer.dropped) == (3, 7)
    assert [r["time"] for r in rows(db)] == [10.0, 11.0, 12.0]
    writer.close()


def test_a_read_only_database_drops_without_raising_and_reopens_later(
    db: Path, db_warnings: list[logging.LogRecord]
) -> None:
    opened: list[bool] = []

    def read_only_first(path: Path) -> sqlite3.Connection:
        opened.append(True)
        return connect(path, readonly=len(opened) == 1)

    writer = DatabaseWriter(db, opener=read_only_first, **FAST)
    writer.start()
    assert writer.log(row(1.0))
    assert writer.execute("DELETE FROM keys")
    assert writer.flush()
    assert (writer.written, writer.dropped) == (0, 2)
    assert "SQLITE_READONLY" in (writer.last_error or "")
    assert "SQLITE_READONLY" in db_warnings[0].getMessage()
    writer.log(row(2.0))  # the connection was dropped after the error; a new one can write
    assert writer.flush()
    assert (writer.written, len(opened)) == (1, 2)
    assert [r["time"] for r in rows(db)] == [2.0]
    writer.close()


def test_a_database_that_cannot_be_opened_drops_without_raising(tmp_path: Path) -> None:
    path = tmp_path / "is-a-directory.db"
    path.mkdir()
    writer = DatabaseWriter(path, **FAST)
    writer.start()
    for i in range(3):
        assert writer.log(row(float(i)))
    assert writer.flush()
    assert (writer.written, writer.dropped) == (0, 3)
    assert writer.last_error is not None
    writer.close()
    assert writer.log(row(9.0)) is False  # closed: refused and counted
    assert writer.dropped == 4


def test_prune_deletes_old_rows_only(db: Path) -> None:
    writer = DatabaseWriter(db, **FAST)
    writer.start()
    for t in (100.0, 200.0, 250.0, 300.0):
        writer.log(row(t))
    writer.prune(250.0)
    writer.log(row(50.0))  # queued after the prune: kept
    assert writer.flush()
    assert [r["time"] for r in rows(db)] == [250.0, 300.0, 50.0]
    writer.close()


def test_statements_apply_in_order_with_rows_and_a_bad_one_costs_only_itself(db: Path) -> None:
    conn = connect(db)
    with conn:
        conn.execute(
            "INSERT INTO keys (id, name, prefix, hash, created, period_start) "
            "VALUES ('k1', 'team', 'p', 'h', 1, 1)"
        )
    conn.close()
    writer = DatabaseWriter(db, **FAST)
    writer.log(row(1.0, model="a"))
    writer.execute("UPDATE requests SET model = 'b' WHERE time = 1")
    writer.log(row(2.0, model="a"))
    writer.execute("UPDATE keys SET spend_usd = spend_usd + ? WHERE id = ?", (0.5, "k1"))
    writer.execute("INSERT INTO no_such_table VALUES (1)")
    writer.execute("UPDATE keys SET spend_usd = ?", ({"not": "bindable"},))
    writer.execute("UPDATE keys SET spend_usd = spend_usd * 2 WHERE id = 'k1'")
    writer.start()  # all of it in one batch
    assert writer.flush()
    assert [(r["time"], r["model"]) for r in rows(db)] == [(1.0, "b"), (2.0, "a")]
    assert rows(db, "SELECT spend_usd FROM keys")[0][0] == 1.0
    assert (writer.written, writer.dropped) == (5, 2)
    writer.close()
    assert writer.flush()  # nothing left, thread gone


def test_close_without_start_counts_what_was_queued(db: Path) -> None:
    writer = DatabaseWriter(db)
    writer.log(row(1.0))
    assert writer.flush(timeout=0.01) is False  # no thread to write it
    writer.close()
    assert (writer.written, writer.dropped) == (0, 1)
    writer.close()  # idempotent
