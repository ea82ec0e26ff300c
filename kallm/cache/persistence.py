"""When the in-memory cache is written to and read from its file and journal.

Loading never stops kallm from starting and never loses a file: a corrupt or
structurally invalid snapshot is moved aside (``cache.kallm.corrupt``), one written
by another embedder or format is moved aside under that name
(``cache.kallm.<embedder>``) so the next save cannot overwrite it, and temp files a
crash left behind are removed. Then the journal (``kallm.cache.journal``) is
replayed on top, so the stores made after the last snapshot come back too.

Saving copies the entry list on the event loop and streams it to the file in a worker
thread, so requests keep flowing while a large cache is written; the journal is then
cut to what the snapshot does not hold. Snapshots run every ``interval`` and also when
the journal outgrows its limit.

``SnapshotKeeper`` needs only ``Snapshottable`` from its backend, not a MemoryBackend.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from kallm.cache.journal import Journal, Replay, journal_path, read_journal
from kallm.cache.snapshot import (
    SnapshotError,
    SnapshotMismatch,
    move_aside,
    read_snapshot,
    safe_tag,
    temp_files,
    write_snapshot,
)
from kallm.cache.store import Entry, Snapshottable

log = logging.getLogger("kallm.cache")

# The journal may grow to the larger of this and the last snapshot's size before a
# snapshot is taken early: replaying it stays cheap, and the disk holds at most about
# twice the cache. Past twice that limit (snapshots failing) records are dropped.
JOURNAL_MIN_BYTES = 64 * 1024**2
TICK_SECONDS = 1.0  # how often run_periodically looks at the journal's size


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Hold the cycle collector while entries are created by the hundred thousand.

    Loading makes no reference cycles, but every few hundred allocations the collector
    runs, and its full passes walk every object alive: replaying 100,000 journal records
    beside a large heap took 3.0-4.3 s with it and 2.1 s without (loading happens once, at
    start-up, before anything else runs).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class SnapshotKeeper:
    def __init__(
        self,
        backend: Snapshottable,
        path: Path,
        embedder_name: str,
        *,
        journal: bool = True,
        journal_min_bytes: int = JOURNAL_MIN_BYTES,
    ):
        self.backend = backend
        self.path = path
        self.embedder_name = embedder_name
        self.journal = Journal(journal_path(path), embedder_name) if journal else None
        self.journal_min_bytes = journal_min_bytes
        self.last_saved: float | None = None
        self._saved_changes: int | None = None  # backend.changes when the file last matched
        self._snapshot_bytes = 0
        self._triggered_at_size = -1  # journal size when it last asked for a snapshot
        self._off: str | None = None  # why nothing is written this run (a file we must keep)
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ start-up

    def load(self, now: float | None = None) -> int:
        """Fill the backend from the file and the journal; returns how many live entries came
        back. Starts journaling: from here on, every store is appended to the journal."""
        now = time.time() if now is None else now
        self._remove_temp_files()
        with _no_gc():
            seq, dim, loaded = self._load_snapshot(now)
            if self._off is not None:
                return loaded
            replayed, last_seq, good_end = self._replay(seq, dim, now)
        self._start_journal(max(seq, last_seq), good_end)
        return loaded + replayed

    def _remove_temp_files(self) -> None:
        for leftover in temp_files(self.path):
            try:
                leftover.unlink()
                log.info("cache: removed %s, left by an interrupted write", leftover)
            except OSError as exc:
                log.warning("cache: could not remove leftover %s: %s", leftover, exc)

    def _load_snapshot(self, now: float) -> tuple[int, int, int]:
        """(journal seq, vector length, live entries) of the snapshot, (0, 0, 0) without one."""
        try:
            snapshot = read_snapshot(self.path, self.embedder_name)
        except FileNotFoundError:
            return 0, 0, 0
        except SnapshotMismatch as exc:
            self._set_aside(self.path, exc, safe_tag(exc.tag))
            return 0, 0, 0
        except SnapshotError as exc:
            self._set_aside(self.path, exc, "corrupt")
            return 0, 0, 0
        except OSError as exc:
            self._turn_off(f"cache file {self.path} cannot be read ({exc})")
            return 0, 0, 0
        except Exception as exc:  # never a crash at start-up because of a file
            self._set_aside(self.path, SnapshotError(f"unreadable ({exc!r})"), "corrupt")
            return 0, 0, 0
        loaded = self._add_live(snapshot.entries, now)
        self.last_saved = self.path.stat().st_mtime
        self._saved_changes = self.backend.changes
        self._snapshot_bytes = self.path.stat().st_size
        return snapshot.journal_seq, snapshot.dim, loaded

    def _replay(self, after_seq: int, dim: int, now: float) -> tuple[int, int, int]:
        """(entries added, last seq, bytes of whole records) from the journal."""
        if self.journal is None:
            return 0, 0, 0
        path = self.journal.path
        try:
            replay = read_journal(path, self.embedder_name, dim)
        except FileNotFoundError:
            return 0, 0, 0
        except SnapshotMismatch as exc:
            self._set_aside(path, exc, safe_tag(exc.tag))
            return 0, 0, 0
        except (SnapshotError, ValueError) as exc:
            self._set_aside(path, SnapshotError(str(exc)), "corrupt")
            return 0, 0, 0
        except OSError as exc:  # the next snapshot would cut it: keep it, write nothing
            self._turn_off(f"cache journal {path} cannot be read ({exc})")
            return 0, 0, 0
        self._report(replay)
        added = self._add_live([e for seq, e in replay.records if seq > after_seq], now)
        if added:
            log.info("cache: %d entries replayed from the journal %s", added, path)
        return added, replay.last_seq, replay.good_end

    def _report(self, replay: Replay) -> None:
        assert self.journal is not None
        if replay.torn:
            log.warning(
                "cache journal %s: ignored %d bytes after the last whole record (a write "
                "cut short by a crash)",
                self.journal.path,
                replay.torn,
            )
        if replay.invalid:
            log.warning(
                "cache journal %s: skipped %d records whose fields do not hold together",
                self.journal.path,
                replay.invalid,
            )

    def _add_live(self, entries: list[Entry], now: float) -> int:
        return sum(1 for entry in entries if entry.expires_at > now and self.backend.add(entry))

    def _start_journal(self, last_seq: int, good_end: int) -> None:
        if self.journal is None:
            return
        try:
            self.journal.start(last_seq, good_end)
        except OSError as exc:
            log.error("cache journal %s unusable (%s); snapshots only", self.journal.path, exc)
            self.journal = None
            return
        self.journal.hard_limit = 2 * self._journal_limit()
        self.backend.listen(self.journal.append)

    def _set_aside(self, path: Path, reason: SnapshotError, suffix: str) -> None:
        """Move a file we cannot use out of the way, never overwriting it; one log line."""
        try:
            aside = move_aside(path, suffix)
        except OSError as exc:
            self._turn_off(f"{path} is not usable ({reason}) and cannot be moved aside ({exc})")
            return
        if suffix == "corrupt":
            log.warning("cache: %s unusable (%s); moved to %s, starting empty", path, reason, aside)
        else:
            log.warning("cache: %s not used (%s); kept as %s, starting empty", path, reason, aside)

    def _turn_off(self, why: str) -> None:
        """Keep a file we could not read or move: no snapshot or journal this run."""
        self._off = why
        if self.journal is not None:
            self.journal = None
        log.error("cache: %s; the cache runs in memory only until restart", why)

    # ------------------------------------------------------------ saving

    async def save(self) -> int:
        """Write every entry atomically, then cut the journal; returns how many were written.

        Nothing is written when no entry came or went since the file last matched: an idle
        large cache would otherwise rewrite hundreds of MB every interval (hit counts alone
        are not worth that).
        """
        async with self._lock:
            if self._off is not None:
                return 0
            changes = self.backend.changes
            if changes == self._saved_changes:
                return 0
            seq = self.journal.seq if self.journal is not None else 0
            entries = list(self.backend.entries())  # with seq: the same instant
            size = await asyncio.to_thread(
                write_snapshot, self.path, entries, self.embedder_name, seq
            )
            self.last_saved = time.time()
            self._saved_changes = changes
            self._snapshot_bytes = size
            if self.journal is not None:
                self.journal.hard_limit = 2 * self._journal_limit()
                await asyncio.to_thread(self.journal.checkpoint, seq)
            return len(entries)

    def _journal_limit(self) -> int:
        return max(self.journal_min_bytes, self._snapshot_bytes)

    def journal_wants_snapshot(self) -> bool:
        """True once per growth of the journal past its limit (not again while a failed
        cut leaves it there: that would rewrite the snapshot every tick)."""
        journal = self.journal
        if journal is None or journal.size <= self._journal_limit():
            return False
        if journal.size == self._triggered_at_size:
            return False
        self._triggered_at_size = journal.size
        return True

    async def run_periodically(self, interval: float) -> None:
        """Sweep and save every ``interval`` seconds, and early when the journal is too big;
        a failed save is logged and retried next time."""
        due = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(max(interval, 0.01), TICK_SECONDS))
            if time.monotonic() < due and not self.journal_wants_snapshot():
                continue
            due = time.monotonic() + interval
            self.backend.sweep(time.time())
            try:
                await self.save()
            except OSError as exc:
                log.error("cache snapshot to %s failed: %s", self.path, exc)
            except Exception:
                log.exception("cache snapshot to %s failed", self.path)

    async def close(self) -> None:
        """Stop journaling (after the last ``save``): the writer thread ends, the file closes."""
        self.backend.listen(None)
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
