"""The cache file: one atomic snapshot of every entry, loadable in well under a second.

Layout (all integers little-endian):
    MAGIC | u64 header length | header JSON (format, embedder, dim, count)
    | u64 meta length | meta JSON (one list per entry)
    | u64 offsets[count + 1] into the blob | blob of response bodies
    | float32 vectors[rows with a vector, dim]
    | u32 CRC-32 of everything before it
Responses stay as raw bytes and vectors as one block, so loading is a few
slices and one ``np.frombuffer`` rather than parsing every answer.
A file written by another embedder is refused (cosines do not mix); a corrupt
or truncated file is reported so the caller can move it aside and start empty.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kallm.cache.store import Entry
from kallm.errors import KallmError

MAGIC = b"KALLMSNP\x01\n"
FORMAT_VERSION = 1
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class SnapshotError(KallmError):
    """The file is not a snapshot we can use; ``reason`` says why for the log."""


class SnapshotMismatch(SnapshotError):
    """A valid snapshot made by another embedder or format."""


@dataclass(frozen=True)
class Snapshot:
    embedder: str
    dim: int
    entries: list[Entry]


def encode(entries: list[Entry], embedder: str) -> bytes:
    vectors = [e.vector for e in entries if e.vector is not None]
    dim = len(vectors[0]) if vectors else 0
    meta = [
        [
            e.scope,
            e.exact,
            e.text,
            e.created_at,
            e.expires_at,
            e.cost_usd,
            e.tokens,
            e.hits,
            e.vector is not None,
        ]
        for e in entries
    ]
    offsets = np.zeros(len(entries) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(e.response) for e in entries], dtype=np.uint64)
    matrix = np.asarray(vectors, dtype="<f4").reshape(len(vectors), dim)
    header = {"format": FORMAT_VERSION, "embedder": embedder, "dim": dim, "count": len(entries)}
    parts = [MAGIC]
    for blob in (json.dumps(header).encode(), json.dumps(meta, ensure_ascii=False).encode()):
        parts += [_U64.pack(len(blob)), blob]
    parts += [offsets.tobytes(), b"".join(e.response for e in entries), matrix.tobytes()]
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def decode(data: bytes, embedder: str) -> Snapshot:
    """Parse a snapshot; raise SnapshotMismatch or SnapshotError when it cannot be used."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise SnapshotError("not a kallm snapshot")
    view = memoryview(data)[:-4]
    if zlib.crc32(view) != _U32.unpack_from(data, len(data) - 4)[0]:
        raise SnapshotError("checksum mismatch (truncated or corrupt)")
    try:
        return _decode_body(data, len(view), embedder)
    except SnapshotMismatch:
        raise
    except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise SnapshotError(f"unreadable ({exc})") from None


def _decode_body(data: bytes, end: int, embedder: str) -> Snapshot:
    pos = len(MAGIC)
    blobs = []
    for _ in range(2):
        (length,) = _U64.unpack_from(data, pos)
        pos += 8
        blobs.append(json.loads(data[pos : pos + length]))
        pos += length
    header, meta = blobs
    if header.get("format") != FORMAT_VERSION:
        raise SnapshotMismatch(f"format {header.get('format')}, this kallm reads {FORMAT_VERSION}")
    if header["embedder"] != embedder:
        raise SnapshotMismatch(f"made by embedder {header['embedder']!r}, running {embedder!r}")
    count, dim = header["count"], header["dim"]
    offsets = np.frombuffer(data, dtype="<u8", count=count + 1, offset=pos)
    pos += 8 * (count + 1)
    starts = (offsets + pos).tolist()  # plain ints: numpy scalars make slicing slow
    pos = starts[-1]
    rows = sum(1 for m in meta if m[8])
    # one copy, so entries do not pin the whole file in memory
    matrix = (
        np.frombuffer(data, dtype="<f4", count=rows * dim, offset=pos).reshape(rows, dim).copy()
    )
    if pos + matrix.nbytes != end or len(meta) != count:
        raise SnapshotError("sections do not add up")
    entries, row = [], 0
    for i, (scope, exact, text, created, expires, cost, tokens, hits, has_vec) in enumerate(meta):
        vector = None
        if has_vec:
            vector, row = matrix[row], row + 1
        entries.append(
            Entry(
                scope,
                exact,
                text,
                vector,
                data[starts[i] : starts[i + 1]],
                created,
                expires,
                cost,
                tokens,
                hits,
            )
        )
    return Snapshot(header["embedder"], dim, entries)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_aside(path: Path) -> Path:
    """Keep a bad snapshot for inspection instead of overwriting it."""
    target = path.with_name(path.name + ".corrupt")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt{counter}")
        counter += 1
    os.replace(path, target)
    return target
