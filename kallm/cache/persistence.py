"""When the in-memory cache is written to and read from its file.

Loading never stops kallm from starting: a file from another embedder is left
alone (warn, start empty), a corrupt one is moved aside. Saving copies the
entry list on the event loop and encodes and writes it in a worker thread, so
requests keep flowing while a large cache is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from kallm.cache.snapshot import (
    SnapshotError,
    SnapshotMismatch,
    decode,
    encode,
    move_aside,
    write_atomic,
)
from kallm.cache.store import MemoryBackend

log = logging.getLogger("kallm.cache")


class SnapshotKeeper:
    def __init__(self, backend: MemoryBackend, path: Path, embedder_name: str):
        self.backend = backend
        self.path = path
        self.embedder_name = embedder_name
        self.last_saved: float | None = None
        self._saved_changes: int | None = None  # backend.changes when the file last matched
        self._lock = asyncio.Lock()

    def load(self, now: float | None = None) -> int:
        """Fill the backend from the file; returns how many live entries came back."""
        if not self.path.exists():
            return 0
        try:
            snapshot = decode(self.path.read_bytes(), self.embedder_name)
        except SnapshotMismatch as exc:
            log.warning("cache file %s not used: %s; starting empty", self.path, exc)
            return 0
        except (SnapshotError, OSError) as exc:
            aside = move_aside(self.path) if isinstance(exc, SnapshotError) else None
            log.warning(
                "cache file %s is unreadable (%s); moved to %s, starting empty",
                self.path,
                exc,
                aside,
            )
            return 0
        now = time.time() if now is None else now
        live = [e for e in snapshot.entries if e.expires_at > now]
        for entry in live:
            self.backend.add(entry)
        self.last_saved = self.path.stat().st_mtime
        self._saved_changes = self.backend.changes
        return len(live)

    async def save(self) -> int:
        """Write every entry atomically; returns how many were written.

        Nothing is written when no entry came or went since the file last matched: an idle
        large cache would otherwise rewrite hundreds of MB every interval (hit counts alone
        are not worth that).
        """
        async with self._lock:
            changes = self.backend.changes
            if changes == self._saved_changes:
                return 0
            entries = list(self.backend.entries())
            await asyncio.to_thread(self._write, entries)
            self.last_saved = time.time()
            self._saved_changes = changes
            return len(entries)

    def _write(self, entries: list) -> None:
        write_atomic(self.path, encode(entries, self.embedder_name))

    async def run_periodically(self, interval: float) -> None:
        """Save every ``interval`` seconds; a failed save is logged and retried next time."""
        while True:
            await asyncio.sleep(interval)
            self.backend.sweep(time.time())
            try:
                await self.save()
            except OSError as exc:
                log.error("cache snapshot to %s failed: %s", self.path, exc)
