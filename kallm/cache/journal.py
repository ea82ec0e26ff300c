"""The journal: every stored entry appended to a file as it is stored, so that a ``kill -9``
loses almost nothing that was stored since the last snapshot.

Layout (little-endian): JOURNAL_MAGIC | u32 header length | header JSON (embedder), then
records, each ``u32 payload length | u32 CRC-32 of payload | payload`` with payload
``u64 seq | u32 meta length | u32 vector length | meta JSON | float32 vector | response``.

The request path only queues the entry (``append``: a lock held for a list append, no
I/O); a writer thread wakes at most every ``BATCH_SECONDS`` and encodes and writes
whatever has queued, so records reach the kernel within ~50 ms (all a ``kill -9`` needs)
and the event loop never waits for a disk; it fsyncs within ``FSYNC_SECONDS`` (what a
power cut can take).
Records carry increasing sequence numbers; a snapshot notes the last one it includes
and ``checkpoint`` then cuts the file down to the records after it. On load, the
records after the snapshot's number are replayed; reading stops at the first record
whose length or checksum does not hold (the torn tail of a crash), and that tail is cut
off before appending resumes. A failed write (a full disk) is counted and logged once;
the entry stays in memory and reaches the file with the next snapshot.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kallm.cache.snapshot import (
    SnapshotError,
    SnapshotMismatch,
    check_meta,
    entry_from,
    fsync_dir,
    meta_of,
    write_atomic_parts,
)
from kallm.cache.store import Entry

log = logging.getLogger("kallm.cache")

JOURNAL_MAGIC = b"KALLMJNL\x01\n"
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
_PAYLOAD = struct.Struct("<QII")  # seq, meta length, vector length
_U32 = struct.Struct("<I")
# The writer wakes at most this often. Each wake-up takes the GIL from the event loop: one
# per store cost a busy server ~100 µs of CPU a store (~10%), one per 50 ms ~30 µs (~3%,
# scripts/bench_snapshot.py --kill9). A kill -9 loses what gathered meanwhile (~50 ms).
BATCH_SECONDS = 0.05
FSYNC_SECONDS = 0.2  # written records are fsync'd within this long (what a power cut takes)
IDLE_SECONDS = 5.0  # the writer thread ends (and closes the file) after this long idle
MAX_QUEUED_BYTES = 64 * 1024**2  # a stalled disk must not grow memory without bound
WRITE_CHUNK = 4 * 1024**2


def journal_path(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.name + ".journal")


def header_bytes(embedder: str) -> bytes:
    blob = json.dumps({"embedder": embedder}).encode()
    return JOURNAL_MAGIC + _U32.pack(len(blob)) + blob


def encode_record(seq: int, entry: Entry) -> bytes:
    meta = json.dumps(meta_of(entry), ensure_ascii=False).encode()
    vector = b"" if entry.vector is None else np.asarray(entry.vector, dtype="<f4").tobytes()
    payload = b"".join((_PAYLOAD.pack(seq, len(meta), len(vector)), meta, vector, entry.response))
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


# ---------------------------------------------------------------- reading


@dataclass
class Replay:
    """What a journal file holds: records in order, and where the whole ones end."""

    records: list[tuple[int, Entry]] = field(default_factory=list)
    good_end: int = 0  # bytes from the start that are header and whole records
    torn: int = 0  # bytes after good_end that were ignored
    invalid: int = 0  # whole records (checksum fine) whose fields made no sense
    last_seq: int = 0


def read_journal(path: Path, embedder: str, dim: int = 0) -> Replay:
    """Every whole record of the journal at ``path``.

    Raises FileNotFoundError, SnapshotMismatch (another embedder's journal) or
    SnapshotError (not a journal). ``dim`` is the vector length the snapshot uses (0:
    take the first record's): a record with another one is skipped, never indexed.
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return Replay()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read(data, embedder, dim)


def _read(data: mmap.mmap, embedder: str, dim: int) -> Replay:
    pos = _check_header(data, embedder)
    replay = Replay(good_end=pos)
    payloads = []
    while pos + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length
        if end > len(data) or length < _PAYLOAD.size:
            break
        payload = data[pos + _RECORD.size : end]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        pos = replay.good_end = end
    replay.torn = len(data) - replay.good_end
    parsed = _split_all(payloads)
    replay.last_seq = max((seq for seq, _, _ in parsed), default=0)
    good = _valid_rows([row for _, row, _ in parsed])
    for (seq, row, payload), fine in zip(parsed, good, strict=True):
        entry = _entry(row, payload, dim) if fine else None
        if entry is None:
            replay.invalid += 1
            continue
        if entry.vector is not None:
            dim = len(entry.vector)
        replay.records.append((seq, entry))
    return replay


def _check_header(data: mmap.mmap, embedder: str) -> int:
    if data[: len(JOURNAL_MAGIC)] != JOURNAL_MAGIC:
        raise SnapshotError("not a kallm journal")
    pos = len(JOURNAL_MAGIC)
    try:
        (length,) = _U32.unpack_from(data, pos)
        header = json.loads(data[pos + 4 : pos + 4 + length])
        other = header["embedder"]
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise SnapshotError(f"unreadable journal header ({exc})") from None
    if type(other) is not str:
        raise SnapshotError("the journal header names no embedder")
    if other != embedder:
        raise SnapshotMismatch(f"made by embedder {other!r}, running {embedder!r}", other)
    return pos + 4 + length


def _split_all(payloads: list[bytes]) -> list[tuple[int, Any, bytes]]:
    """(seq, meta row or None, payload) of each record whose checksum held. The rows are
    parsed as one JSON array (one call instead of one per record) unless one is broken."""
    heads = [_PAYLOAD.unpack_from(payload, 0) for payload in payloads]
    metas = []
    for payload, (_, meta_length, vector_length) in zip(payloads, heads, strict=True):
        meta_end = _PAYLOAD.size + meta_length
        fits = meta_end + vector_length <= len(payload) and vector_length % 4 == 0
        metas.append(payload[_PAYLOAD.size : meta_end] if fits else b"null")
    try:
        rows = json.loads(b"[" + b",".join(metas) + b"]")
        if len(rows) != len(metas):
            raise ValueError("a record's meta is more than one value")
    except ValueError:
        rows = [_json_or_none(meta) for meta in metas]
    return [(head[0], row, p) for head, row, p in zip(heads, rows, payloads, strict=True)]


def _json_or_none(blob: bytes) -> Any:
    try:
        return json.loads(blob)
    except ValueError:
        return None


def _valid_rows(rows: list[Any]) -> list[bool]:
    """Which rows have the right types: all at once (fast), one by one only if one is off."""
    try:
        check_meta(rows)
        return [True] * len(rows)
    except ValueError:
        pass
    fine = []
    for row in rows:
        try:
            check_meta([row])
            fine.append(True)
        except ValueError:
            fine.append(False)
    return fine


def _entry(row: list[Any], payload: bytes, dim: int) -> Entry | None:
    """The record's entry; None when its vector does not fit the flag or the others."""
    _, meta_length, vector_length = _PAYLOAD.unpack_from(payload, 0)
    if row[8] != (vector_length > 0) or (row[8] and dim and vector_length != 4 * dim):
        return None
    meta_end = _PAYLOAD.size + meta_length
    vector = None
    if vector_length:
        vector = np.frombuffer(payload, dtype="<f4", count=vector_length // 4, offset=meta_end)
        vector = vector.copy()
    return entry_from(row, vector, payload[meta_end + vector_length :])


# ---------------------------------------------------------------- writing


@dataclass
class JournalCounters:
    records: int = 0  # written
    dropped: int = 0  # never written: a failed write, a writer far behind, the size cap
    errors: int = 0  # failed writes, fsyncs or cuts


class Journal:
    """The append side: ``append`` on the event loop, a writer thread for the disk.

    Nothing touches the file before ``start`` (called once the file has been replayed).
    """

    def __init__(self, path: Path, embedder: str):
        self.path = path
        self.embedder = embedder
        self.counters = JournalCounters()
        self.hard_limit = 1 << 62  # bytes; past it records are dropped until a checkpoint
        self._header = header_bytes(embedder)
        self._cond = threading.Condition()  # guards the queue, seq, thread and flags
        self._io = threading.Lock()  # one writer of the file at a time, in seq order
        self._queue: list[tuple[int, Entry]] = []
        self._queued_bytes = 0
        self._seq = 0
        self._started = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._size = 0  # bytes in the file (header and whole records)
        self._ends: list[int] = []  # end offset of each record in the file, in seq order
        self._seqs: list[int] = []  # the seq of each of those records
        self._broken = False  # the file's state is unknown after a failed cut: rewrite it
        self._dirty = False  # written since the last fsync
        self._synced_at = 0.0
        self._warned: set[str] = set()

    @property
    def seq(self) -> int:
        """The last sequence number handed out."""
        with self._cond:
            return self._seq

    @property
    def size(self) -> int:
        return self._size

    def start(self, last_seq: int, good_end: int) -> None:
        """Begin appending after a replay: number from ``last_seq``, cut any torn tail."""
        with self._cond:
            self._seq = max(self._seq, last_seq)
            self._started = not self._closed
        if good_end:  # the header and whole records; an empty file gets its header later
            os.truncate(self.path, good_end)
            self._size = good_end
        if good_end > len(self._header):
            self._seqs, self._ends = [last_seq], [good_end]

    def append(self, entry: Entry) -> None:
        """Queue ``entry`` for the writer; never blocks on the disk, never raises."""
        with self._cond:
            if not self._started or self._closed:
                return
            if self._queued_bytes > MAX_QUEUED_BYTES:
                self._drop(1, "the journal writer is behind; stores wait for the next snapshot")
                return
            self._seq += 1
            self._queue.append((self._seq, entry))
            self._queued_bytes += len(entry.response) + len(entry.text or "") + 1024
            self._cond.notify()
            if self._thread is None:
                self._start_writer()

    def checkpoint(self, seq: int) -> None:
        """Drop the records up to ``seq`` (a snapshot holds them now); keep the later ones.

        Runs in a worker thread. A failure is logged: replay skips records the snapshot
        holds by their seq, so a journal that could not be cut is still correct.
        """
        if not self._started:
            return
        with self._io:
            self._drain()
            try:
                self._cut(seq)
            except OSError as exc:
                self._broken = True
                self._close_file()
                self._fail("cut", exc)

    def flush(self) -> None:
        """Write and fsync whatever is queued now (tests and shutdown)."""
        with self._io:
            self._drain()
            self._sync()

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file."""
        with self._cond:
            self._closed = True
            self._started = False
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._io:
            self._drain()
            self._sync()
            self._close_file()

    # ------------------------------------------------------------ the writer thread

    def _start_writer(self) -> None:
        thread = threading.Thread(target=self._run, name="kallm-journal", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no threads left: the entries wait for the snapshot
            self._drop(len(self._queue), f"cannot start the journal writer ({exc})")
            self._queue, self._queued_bytes = [], 0
            return
        self._thread = thread

    def _run(self) -> None:
        """Write batches, fsync within FSYNC_SECONDS, end when idle or closed (``append``
        starts a new writer)."""
        while True:
            with self._cond:
                if not self._queue and not self._closed:
                    self._cond.wait(FSYNC_SECONDS if self._dirty else IDLE_SECONDS)
                waiting = bool(self._queue)
                ending = not waiting and not self._dirty
                if ending:
                    self._thread = None
            if waiting and not self._closed:
                time.sleep(BATCH_SECONDS)  # let a batch gather: one wake-up, not one a store
            with self._io:
                if ending:
                    self._close_file()  # reopened by the next write: no idle descriptor
                    return
                if waiting:
                    self._drain()
                if not waiting or time.monotonic() - self._synced_at >= FSYNC_SECONDS:
                    self._sync()

    def _sync(self) -> None:
        """fsync what was written (caller holds ``_io``)."""
        if self._dirty and self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._fail("fsync", exc)
        self._dirty = False
        self._synced_at = time.monotonic()

    def _drain(self) -> None:
        """Write the queue (caller holds ``_io``): the queue is taken and written under
        the same lock, so records reach the file in seq order."""
        with self._cond:
            batch, self._queue, self._queued_bytes = self._queue, [], 0
        if batch:
            self._write(batch)

    def _write(self, batch: list[tuple[int, Entry]]) -> None:
        try:
            self._open()
        except OSError as exc:
            self._drop(len(batch), "")
            self._fail("open", exc)
            return
        if self._size >= self.hard_limit:
            self._drop(len(batch), "the journal is at its size cap; stores wait for a snapshot")
            return
        buffer, seqs, ends, written = bytearray(), [], [], 0
        try:
            for seq, entry in batch:
                buffer += encode_record(seq, entry)
                seqs.append(seq)
                ends.append(self._size + len(buffer))
                if len(buffer) >= WRITE_CHUNK:
                    written += self._commit(buffer, seqs, ends)
                    buffer, seqs, ends = bytearray(), [], []
            written += self._commit(buffer, seqs, ends)
        except OSError as exc:
            self.counters.records += written
            self._drop(len(batch) - written, "")
            self._undo_partial_write()
            self._fail("write", exc)
            return
        self.counters.records += len(batch)

    def _commit(self, buffer: bytearray, seqs: list[int], ends: list[int]) -> int:
        assert self._fd is not None
        view = memoryview(buffer)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self._size += len(buffer)
        self._dirty = True
        self._seqs += seqs
        self._ends += ends
        return len(seqs)

    def _undo_partial_write(self) -> None:
        """Cut a half-written record off, so later records are not stranded behind it."""
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, self._size)
        except OSError:
            self._broken = True
            self._close_file()

    def _open(self) -> None:
        if self._fd is not None and not self._broken:
            return
        if self._broken:
            self._rewrite(b"")
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(fd).st_size
        if size == 0:
            try:
                os.write(fd, self._header)
                os.fsync(fd)
                fsync_dir(self.path.parent)
            except OSError:
                os.close(fd)
                raise
            size = len(self._header)
        self._fd, self._size = fd, size

    def _cut(self, seq: int) -> None:
        if self._broken:
            self._rewrite(b"")
            return
        keep = bisect.bisect_right(self._seqs, seq)
        if keep == 0:
            return  # nothing the snapshot covers is in the file
        self._open()
        assert self._fd is not None
        cut = self._ends[keep - 1]
        if cut == self._size:
            os.ftruncate(self._fd, len(self._header))
            os.fsync(self._fd)
            self._size, self._seqs, self._ends = len(self._header), [], []
            return
        tail = os.pread(self._fd, self._size - cut, cut)
        shift = cut - len(self._header)
        seqs, ends = self._seqs[keep:], [end - shift for end in self._ends[keep:]]
        self._rewrite(tail)
        self._seqs, self._ends = seqs, ends

    def _rewrite(self, tail: bytes) -> None:
        """Replace the file atomically with the header and ``tail``, and append to it."""
        self._close_file()
        write_atomic_parts(self.path, [self._header, tail])
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._size = len(self._header) + len(tail)
        self._seqs, self._ends, self._broken = [], [], False

    def _close_file(self) -> None:
        """Close the file, fsync'ing what is still unsynced; errors are moot by now."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                if self._dirty:
                    os.fsync(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dirty = False

    def _drop(self, count: int, why: str) -> None:
        self.counters.dropped += count
        if why and why not in self._warned:
            self._warned.add(why)
            log.warning("cache journal %s: %s (counted, logged once)", self.path, why)

    def _fail(self, what: str, exc: OSError) -> None:
        self.counters.errors += 1
        if what not in self._warned:
            self._warned.add(what)
            log.error(
                "cache journal %s: %s failed (%s); entries stay in memory until the next "
                "snapshot, serving goes on (further failures are only counted)",
                self.path,
                what,
                exc,
            )
