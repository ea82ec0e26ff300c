"""Spend made durable: committed before a request is done, not queued with the log rows.

The request log may lose rows when the disk is slow (they are counted); spend may not,
or a ``kill -9`` hands a key its money back. Each settlement waits for a commit. The
writes are coalesced per key (spend is written as a total, saved as a sum of deltas) and
committed together by one thread, so a burst of requests costs one transaction, not one
each. When the database cannot take writes, the totals stay pending and are retried;
a request waits at most ``wait`` seconds for its commit and then goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from kallm.db.connection import connect

log = logging.getLogger("kallm.db")

_UPDATE = (
    "UPDATE keys SET spend_usd = ?, saved_usd = saved_usd + ?, period_start = ?, "
    "last_used = MAX(COALESCE(last_used, 0), ?) WHERE id = ?"
)


@dataclass(slots=True)
class _Pending:
    spend: float
    saved: float
    period_start: float
    when: float


class SpendWriter:
    def __init__(self, path: Path, *, wait: float = 2.0, retry_interval: float = 0.5):
        self.path = Path(path)
        self.wait = wait
        self.retry_interval = retry_interval
        self._pending: dict[str, _Pending] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.committed = 0
        self.failures = 0
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kallm-spend", daemon=True)
        self._thread.start()

    async def write(
        self, key_id: str, spend: float, saved: float, period_start: float, when: float
    ) -> None:
        """Queue this key's new totals and wait (bounded) until they are committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            pending = self._pending.get(key_id)
            saved_before = pending.saved if pending is not None else 0.0
            self._pending[key_id] = _Pending(spend, saved_before + saved, period_start, when)
            self._waiters.append((loop, done))
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), self.wait)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending, then stop the thread."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            self._wake.wait(self.retry_interval if self._failing else None)
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
                waiters, self._waiters = self._waiters, []
            if batch:
                try:
                    conn = conn or connect(self.path)
                    with conn:
                        conn.executemany(
                            _UPDATE,
                            [
                                (p.spend, p.saved, p.period_start, p.when, key)
                                for key, p in batch.items()
                            ],
                        )
                    self.committed += len(batch)
                    self._recovered()
                except (sqlite3.Error, OSError) as exc:
                    self._failed(exc, batch)
                    with contextlib.suppress(sqlite3.Error):
                        if conn is not None:
                            conn.close()
                    conn = None
            for loop, done in waiters:
                with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                    loop.call_soon_threadsafe(_resolve, done)
            if self._stop and not self._pending:
                break
            if self._stop and self._failing:
                break  # the database is gone: what is pending stays in memory only
        if conn is not None:
            conn.close()

    def _failed(self, exc: Exception, batch: dict[str, _Pending]) -> None:
        """Put the batch back (newer totals of the same key win) and say so once."""
        self.failures += 1
        with self._lock:
            for key, pending in batch.items():
                newer = self._pending.get(key)
                if newer is None:
                    self._pending[key] = pending
                else:
                    newer.saved += pending.saved
        if not self._failing:
            log.error("spend not yet saved to %s (%s); retrying", self.path, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("spend saved to %s again", self.path)
        self._failing = False


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
