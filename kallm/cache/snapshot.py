"""The cache file: one atomic snapshot of every entry, loadable in well under a second.

Layout (all integers little-endian):
    MAGIC | u64 header length | header JSON (format, embedder, dim, count, journal_seq)
    | u64 meta length | meta JSON (one list per entry)
    | u64 offsets[count + 1] into the blob | blob of response bodies
    | float32 vectors[rows with a vector, dim]
    | u32 CRC-32 of everything before it
Responses stay as raw bytes and vectors as one block, so loading is a few
slices and one ``np.frombuffer`` rather than parsing every answer; writing
streams the same pieces to the file, so a save never holds a second copy of
the cache in memory. ``journal_seq`` is the last journal record the snapshot
includes (``kallm.cache.journal``): replay skips those.

A file from another embedder or format is refused (``SnapshotMismatch``: cosines
do not mix); a corrupt, truncated or structurally invalid one (``SnapshotError``)
is moved aside by the caller, which then starts empty.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from kallm.cache.store import Entry
from kallm.errors import KallmError

MAGIC = b"KALLMSNP\x01\n"
FORMAT_VERSION = 1
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_VECTOR_ROWS_PER_WRITE = 4096  # vectors are written in slabs, never as one big matrix copy
# mkstemp's names: PREFIX + 8 characters from [a-z0-9_] + SUFFIX
_TEMP_NAME = r"\.[a-z0-9_]{8}\.tmp"


class SnapshotError(KallmError):
    """The file is not a snapshot we can use; the message says why, for the log."""


class SnapshotMismatch(SnapshotError):
    """A valid snapshot made by another embedder or format; ``tag`` names it (for a file name)."""

    def __init__(self, message: str, tag: str):
        super().__init__(message)
        self.tag = tag


@dataclass(frozen=True)
class Snapshot:
    embedder: str
    dim: int
    entries: list[Entry]
    journal_seq: int = 0  # journal records up to this one are already in the snapshot


# ---------------------------------------------------------------- entry fields


def meta_of(entry: Entry) -> list[Any]:
    """An entry's fields apart from its body and vector, as stored in both files."""
    return [
        entry.scope,
        entry.exact,
        entry.text,
        entry.created_at,
        entry.expires_at,
        entry.cost_usd,
        entry.tokens,
        entry.hits,
        entry.vector is not None,
    ]


# the types meta_of writes, column by column (JSON gives an int for a whole float)
_NUMBER = frozenset({float, int})
_COLUMN_TYPES = (
    ("scope", frozenset({str})),
    ("key", frozenset({str})),
    ("text", frozenset({str, type(None)})),
    ("created_at", _NUMBER),
    ("expires_at", _NUMBER),
    ("cost_usd", _NUMBER),
    ("tokens", frozenset({int})),
    ("hits", frozenset({int})),
    ("has_vector", frozenset({bool})),
)


def check_meta(rows: Any) -> None:
    """Raise ``ValueError`` unless ``rows`` is a list of what ``meta_of`` writes.

    The checksum proves the bytes are what was written, not that the writer was sane: a
    string where a time belongs would otherwise crash start-up at the first comparison.
    Checked a column at a time with ``map``: 100,000 rows in ~40 ms.
    """
    if type(rows) is not list:
        raise ValueError("the entry list is not a list")
    if not rows:
        return
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {len(_COLUMN_TYPES)}:
        raise ValueError(f"an entry is not a list of {len(_COLUMN_TYPES)} fields")
    for i, (name, allowed) in enumerate(_COLUMN_TYPES):
        wrong = set(map(type, map(itemgetter(i), rows))) - allowed
        if wrong:
            raise ValueError(f"an entry's {name} is a {min(t.__name__ for t in wrong)}")


def entry_from(row: list[Any], vector: np.ndarray | None, response: bytes) -> Entry:
    scope, exact, text, created, expires, cost, tokens, hits, _ = row
    return Entry(scope, exact, text, vector, response, created, expires, float(cost), tokens, hits)


# ---------------------------------------------------------------- writing


def encode(entries: list[Entry], embedder: str, journal_seq: int = 0) -> bytes:
    """The whole file as one ``bytes`` (for callers that write it themselves)."""
    parts = list(_pieces(entries, embedder, journal_seq))
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join([*parts, _U32.pack(crc)])


def write_snapshot(path: Path, entries: list[Entry], embedder: str, journal_seq: int = 0) -> int:
    """Stream a snapshot to ``path`` atomically; returns its size in bytes."""
    return write_atomic_parts(path, _pieces(entries, embedder, journal_seq), checksum=True)


def _pieces(entries: list[Entry], embedder: str, journal_seq: int) -> Iterator[bytes]:
    """The file in order, as the slices it is made of (bodies are not copied)."""
    with_vector = [e.vector for e in entries if e.vector is not None]
    dim = len(with_vector[0]) if with_vector else 0
    if any(len(v) != dim for v in with_vector):
        raise ValueError("entries carry vectors of different lengths")
    header = {
        "format": FORMAT_VERSION,
        "embedder": embedder,
        "dim": dim,
        "count": len(entries),
        "journal_seq": journal_seq,
    }
    meta = [meta_of(e) for e in entries]
    yield MAGIC
    for blob in (json.dumps(header).encode(), json.dumps(meta, ensure_ascii=False).encode()):
        yield _U64.pack(len(blob))
        yield blob
    offsets = np.zeros(len(entries) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(e.response) for e in entries], dtype=np.uint64)
    yield offsets.tobytes()
    for entry in entries:
        yield entry.response
    for start in range(0, len(with_vector), _VECTOR_ROWS_PER_WRITE):
        slab = with_vector[start : start + _VECTOR_ROWS_PER_WRITE]
        yield np.asarray(slab, dtype="<f4").reshape(len(slab), dim).tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a crash leaves the old file or the new one."""
    write_atomic_parts(path, [data])


def write_atomic_parts(path: Path, parts: Iterable[bytes], *, checksum: bool = False) -> int:
    """``write_atomic`` for a file given in pieces; with ``checksum``, a CRC-32 of them all
    is appended. Returns the file's size. A leftover temp file (a crash mid-write) matches
    ``temp_files`` and is removed at the next start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    size = crc = 0
    try:
        with os.fdopen(fd, "wb", buffering=1024 * 1024) as handle:
            for part in parts:
                if part:
                    handle.write(part)
                    size += len(part)
                    if checksum:
                        crc = zlib.crc32(part, crc)
            if checksum:
                size += handle.write(_U32.pack(crc))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` survive a power cut."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------- reading


def read_snapshot(path: Path, embedder: str) -> Snapshot:
    """``decode`` the file at ``path`` through a read-only map (no second copy of the file)."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise SnapshotError("empty file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return decode(data, embedder)


def decode(data: bytes | mmap.mmap, embedder: str) -> Snapshot:
    """Parse a snapshot; raise SnapshotMismatch or SnapshotError when it cannot be used."""
    if len(data) < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a kallm snapshot")
    end = len(data) - 4
    with memoryview(data) as view:
        crc = zlib.crc32(view[:end])
    if crc != _U32.unpack_from(data, end)[0]:
        raise SnapshotError("checksum mismatch (truncated or corrupt)")
    try:
        return _decode_body(data, end, embedder)
    except SnapshotMismatch:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, struct.error) as exc:
        raise SnapshotError(f"structurally invalid ({exc})") from None


def _decode_body(data: bytes | mmap.mmap, end: int, embedder: str) -> Snapshot:
    pos = len(MAGIC)
    blobs = []
    for _ in range(2):
        (length,) = _U64.unpack_from(data, pos)
        pos += 8
        if pos + length > end:
            raise ValueError("a section runs past the end")
        blobs.append(json.loads(data[pos : pos + length]))
        pos += length
    header, meta = blobs
    count, dim, journal_seq = _check_header(header, embedder)
    check_meta(meta)
    if len(meta) != count:
        raise ValueError("the entry list does not match the header's count")
    # copies, never views: a view left in a traceback would keep the file's map open
    offsets = np.frombuffer(data, dtype="<u8", count=count + 1, offset=pos).astype(np.int64)
    pos += 8 * (count + 1)
    if count and (offsets[0] != 0 or np.any(offsets[1:] < offsets[:-1])):
        raise ValueError("response offsets are out of order")
    starts = (offsets + pos).tolist()  # plain ints: numpy scalars make slicing slow
    pos = starts[-1]
    rows = sum(1 for row in meta if row[8])
    if offsets[0] != 0 or pos + rows * dim * 4 != end:
        raise ValueError("sections do not add up")
    matrix = np.frombuffer(data, dtype="<f4", count=rows * dim, offset=pos).copy()
    matrix = matrix.reshape(rows, dim)
    entries, row_number = [], 0
    for i, row in enumerate(meta):
        vector = None
        if row[8]:
            vector, row_number = matrix[row_number], row_number + 1
        entries.append(entry_from(row, vector, data[starts[i] : starts[i + 1]]))
    return Snapshot(header["embedder"], dim, entries, journal_seq)


def _check_header(header: Any, embedder: str) -> tuple[int, int, int]:
    """The header's count, dim and journal_seq, or a reason why the file is not ours."""
    if type(header) is not dict:
        raise ValueError("the header is not an object")
    fmt = header.get("format")
    if fmt != FORMAT_VERSION:
        raise SnapshotMismatch(f"format {fmt}, this kallm reads {FORMAT_VERSION}", f"format{fmt}")
    other = header.get("embedder")
    if type(other) is not str:
        raise ValueError("the header names no embedder")
    if other != embedder:
        raise SnapshotMismatch(f"made by embedder {other!r}, running {embedder!r}", other)
    count, dim, seq = header.get("count"), header.get("dim"), header.get("journal_seq", 0)
    for name, value in (("count", count), ("dim", dim), ("journal_seq", seq)):
        if type(value) is not int or value < 0:
            raise ValueError(f"the header's {name} is not a whole number")
    return count, dim, seq


# ---------------------------------------------------------------- files beside the snapshot


def temp_files(path: Path) -> list[Path]:
    """Temp files a crash left behind while writing ``path`` or its journal."""
    pattern = re.compile(re.escape(path.name) + r"(\.journal)?" + _TEMP_NAME)
    try:
        return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []


def safe_tag(tag: str) -> str:
    """An embedder's name as a file-name suffix (``remote:text-embedding-3-small``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("._") or "unknown"


def move_aside(path: Path, suffix: str = "corrupt") -> Path:
    """Rename ``path`` to ``<name>.<suffix>`` (then ``.1``, ``.2``...), never replacing a file.

    A hard link fails rather than overwrite, so a file that appeared meanwhile is kept
    too; where links are not supported, an existence check and a rename stand in.
    """
    for number in range(10_000):
        name = f"{path.name}.{suffix}" + (f".{number}" if number else "")
        target = path.with_name(name)
        if target.exists():
            continue
        try:
            os.link(path, target)
        except FileExistsError:
            continue
        except OSError:
            os.rename(path, target)  # no hard links here: checked just above
            return target
        os.unlink(path)
        return target
    raise OSError(f"no free name beside {path} to move it aside")
