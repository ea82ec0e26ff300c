"""The request log and other background writes, off the event loop.

One thread owns the writing connection; handlers only put items on a bounded
queue, which never blocks: when the queue is full the item is dropped and
counted. The thread writes what it finds in batches, one transaction each, so
a burst of requests costs one commit rather than one per request. Whatever
goes wrong with the database (locked past the busy timeout, read-only, disk
full or gone) drops that batch, counts it, logs the kind of error once, and the
thread goes on; it reopens the connection after errors that a new connection
may cure. Memory is bounded by ``max_queue`` plus one batch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from kallm.db.connection import DEFAULT_BUSY_TIMEOUT_MS, connect

log = logging.getLogger("kallm.db")


class RequestRow(NamedTuple):
    """One row of the ``requests`` table; ``time`` is Unix seconds (``time.time()``).

    A named tuple, so the row is what ``executemany`` binds, in column order: built once
    per request, a frozen dataclass of these 21 fields took 6.6 us, this ~1 us.
    """

    time: float
    request_id: str | None = None
    key_id: str | None = None
    method: str | None = None
    path: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: float | None = None
    saved_usd: float | None = None
    cache: str | None = None
    similarity: float | None = None
    request_body: str | None = None
    response_body: str | None = None


_COLUMNS = RequestRow._fields
_INSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


class _Statement(NamedTuple):
    sql: str
    params: tuple[Any, ...]


_STOP = object()
_Item = RequestRow | _Statement

# Primary result codes that say "the database cannot take writes now", not "this
# statement is wrong": the whole batch is dropped rather than retried item by item.
# BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB
_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
_KEEP_CONNECTION = frozenset({5, 6})  # a lock passes; everything else may need a new connection


class DatabaseWriter:
    """One background thread owns the writing connection; the event loop only enqueues.

    ``opener`` (default: ``connect`` with ``busy_timeout_ms``) is how the thread
    opens its connection; tests use it to open the file read-only.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        opener: Callable[[Path], sqlite3.Connection] | None = None,
    ) -> None:
        self.path = Path(path)
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self._opener = opener or functools.partial(connect, busy_timeout_ms=busy_timeout_ms)
        # A deque, not queue.Queue: appending wakes nobody, so the event loop never pays for
        # a thread switch per row (measured: Queue's notify was ~10% of a cache miss's CPU).
        # The writer wakes every flush_interval, or at once for flush and close.
        self.max_queue = max(1, max_queue)
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # counters and the set of errors already logged
        self._dropped = 0
        self._written = 0
        self._logged_kinds: set[str] = set()
        self.last_error: str | None = None  # the most recent error, kept after recovery

    @property
    def dropped(self) -> int:
        """Rows and statements lost: queue full, writer closed, or the database refused them."""
        return self._dropped

    @property
    def written(self) -> int:
        """Rows and statements committed."""
        return self._written

    # -- the caller's side: never blocks, never raises -------------------------------------

    def start(self) -> None:
        """Start the writer thread; the database is opened there, so a locked file cannot
        hold up start-up."""
        if self._closed:
            raise RuntimeError("DatabaseWriter is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kallm-db-writer", daemon=True)
            self._thread.start()

    def log(self, row: RequestRow) -> bool:
        """Queue a request row; False (and counted in ``dropped``) if the queue is full."""
        return self._put(row)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> bool:
        """Queue any write (e.g. a spend update); applied in order with the rows."""
        return self._put(_Statement(sql, tuple(params)))

    def prune(self, older_than: float) -> bool:
        """Queue the deletion of request rows older than ``older_than`` (Unix seconds)."""
        return self.execute("DELETE FROM requests WHERE time < ?", (older_than,))

    def _put(self, item: _Item) -> bool:
        if self._closed:
            self._count_dropped(1)
            return False
        if len(self._queue) >= self.max_queue:
            self._count_dropped(1)
            self._report("queue full", f"queue full ({self.max_queue} items)")
            return False
        self._queue.append(item)
        return True

    # -- shutdown and tests -----------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is handled: committed, or counted in
        ``dropped``. False if that took longer than ``timeout`` or no thread is running."""
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new items, flush, stop the thread and close the connection.

        What is still queued after ``timeout`` is counted in ``dropped``; the
        thread is a daemon, so a writer stuck on a lock cannot keep the process alive.
        """
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            self._drain()
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stopping.set()
        self._queue.append(_STOP)
        self._wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                items, markers, stop = self._next_batch()
                if items:
                    try:
                        self._write(items)
                    except Exception as exc:  # the thread must outlive any surprise
                        self._count_dropped(len(items))
                        self._report(type(exc).__name__, f"{type(exc).__name__}: {exc}")
                for marker in markers:
                    marker.set()
                if stop or self._stopping.is_set():
                    break
        finally:
            self._drain()
            self._disconnect()

    def _next_batch(self) -> tuple[list[_Item], list[threading.Event], bool]:
        """Up to ``batch_size`` items, after waiting at most ``flush_interval`` for some;
        a flush marker or the stop sentinel ends the batch at once."""
        items: list[_Item] = []
        markers: list[threading.Event] = []
        while not self._queue:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
        while self._queue and len(items) < self.batch_size:
            item = self._queue.popleft()
            if item is _STOP:
                return items, markers, True
            if isinstance(item, threading.Event):
                markers.append(item)
                return items, markers, False
            items.append(item)
        return items, markers, False

    def _write(self, items: list[_Item]) -> None:
        error = self._attempt(items)
        if error is None:
            return
        if _unavailable(error) or len(items) == 1:
            self._fail(len(items), error)
            return
        # One bad statement (constraint, typo, unbindable value) must not take the good
        # rows of its batch with it: write them one by one, unless the database itself
        # gives out meanwhile (then waiting out the busy timeout per item would stall).
        for done, item in enumerate(items):
            error = self._attempt([item])
            if error is not None:
                self._fail(len(items) - done if _unavailable(error) else 1, error)
                if _unavailable(error):
                    return

    def _attempt(self, items: list[_Item]) -> Exception | None:
        try:
            self._commit(self._connection(), items)
        except Exception as exc:
            return exc
        with self._lock:
            self._written += len(items)
        return None

    def _fail(self, lost: int, exc: Exception) -> None:
        self._count_dropped(lost)
        self._report(_kind(exc), f"{_kind(exc)}: {exc}", lost)
        if _unavailable(exc) and _errorcode(exc) not in _KEEP_CONNECTION:
            self._disconnect()  # read-only, I/O, full, gone: a new connection may do

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._opener(self.path)
        return self._conn

    @staticmethod
    def _commit(conn: sqlite3.Connection, items: list[_Item]) -> None:
        """All items in one transaction; consecutive rows go through one executemany."""
        if conn.in_transaction:
            conn.rollback()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows: list[tuple[Any, ...]] = []
            for item in items:
                if isinstance(item, RequestRow):
                    rows.append(item)
                    continue
                if rows:
                    conn.executemany(_INSERT, rows)
                    rows = []
                conn.execute(item.sql, item.params)
            if rows:
                conn.executemany(_INSERT, rows)
            conn.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            raise

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _drain(self) -> None:
        """After stopping: what is left will not be written; count it and release waiters."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, threading.Event):
                item.set()
            elif item is not _STOP:
                self._count_dropped(1)

    # -- bookkeeping ------------------------------------------------------------------------

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def _report(self, kind: str, message: str, lost: int = 1) -> None:
        """Remember the error; warn once per kind, so a full disk is one line, not millions."""
        self.last_error = message
        with self._lock:
            if kind in self._logged_kinds:
                return
            self._logged_kinds.add(kind)
        log.warning(
            "database %s: %d log rows/statements dropped: %s; further %s errors "
            "are only counted (DatabaseWriter.dropped)",
            self.path,
            lost,
            message,
            kind,
        )


def _errorcode(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


# Errors of one statement's values (a string SQLite cannot bind, an integer past 64 bits):
# they cost that item alone, like a constraint violation.
_BAD_VALUE = (UnicodeError, OverflowError, ValueError, TypeError)


def _unavailable(exc: BaseException) -> bool:
    """The database cannot take writes now (or could not be opened at all)."""
    if isinstance(exc, _BAD_VALUE):
        return False
    if not isinstance(exc, sqlite3.Error):
        return True  # OSError creating the folder, SchemaTooNew, ...
    return _errorcode(exc) in _UNAVAILABLE


def _kind(exc: BaseException) -> str:
    return getattr(exc, "sqlite_errorname", None) or type(exc).__name__
