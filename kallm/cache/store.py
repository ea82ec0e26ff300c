"""Cache entries and the backend that holds them.

``CacheBackend`` is the seam for shared state: the in-process ``MemoryBackend``
keeps entries in an LRU-ordered dict with one ``VectorIndex`` per scope; a
Redis backend can implement the same async methods and slot in without the
request path changing. Expiry is lazy (checked when an entry is found) plus a
periodic ``sweep``, so a lookup never scans the whole cache.

Memory is capped twice: by entry count and by bytes. A count alone does not
bound memory (20 prompts of 9.5 MB kept 381 MB under a 10,000-entry cap), so
every entry's bytes are counted (``entry_bytes``) and the least recently used
go until both caps hold. ``Snapshottable`` is the optional capability of being
written to one file (``kallm.cache.persistence``).
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from kallm.cache.index import VectorIndex

log = logging.getLogger("kallm.cache")

# Kept equal to Settings.cache_max_bytes' default (kallm.config must not import numpy);
# tests/test_cache_memory.py checks that they agree.
DEFAULT_MAX_BYTES = 512 * 1024**2
# An entry may take at most this share of max_bytes: one huge answer must not flush the
# whole cache, and four of them still fit side by side.
MAX_ENTRY_SHARE = 4
# What an entry costs beyond its strings, bytes and vector: the Entry object and its three
# floats, its slots in the LRU dict and the exact-key dict with their average slack.
# Measured with tracemalloc (tests/test_cache_memory.py holds the count to what is allocated).
ENTRY_OVERHEAD = 356
# A vector lives twice: the entry's own array and a row of its scope's index (plus sign bits
# and the id map). Index capacity doubles, so a row costs 1x to 2x its size: count 1.5x.
VECTOR_OVERHEAD = 112 + 96
# One VectorIndex object with its three arrays and dict, charged while the scope has entries.
SCOPE_OVERHEAD = 700


@dataclass(slots=True, eq=False)
class Entry:
    """One stored answer: a complete chat.completion body and what it cost to get."""

    scope: str
    exact: str
    text: str | None
    vector: np.ndarray | None
    response: bytes
    created_at: float
    expires_at: float
    cost_usd: float = 0.0
    tokens: int = 0
    hits: int = 0
    id: int = field(default=0)
    nbytes: int = field(default=0, repr=False)  # entry_bytes, set by MemoryBackend.add


def entry_bytes(entry: Entry) -> int:
    """The memory ``entry`` holds in a MemoryBackend: body, compared text, keys, vector
    (the entry's own copy, the index's row and its sign bits) and fixed bookkeeping.

    What ``sys.getsizeof`` would say, from lengths (getsizeof costs ~150 ns a call, and
    this runs for every entry loaded): a bytes object is 33 bytes + its length, an ASCII
    string 49 + its length; other strings are asked.
    """
    text, vector = entry.text, entry.vector
    size = ENTRY_OVERHEAD + 33 + len(entry.response) + _str_bytes(entry.exact)
    size += _str_bytes(entry.scope)
    if text is not None:
        size += _str_bytes(text)
    if vector is not None:
        dim = len(vector)
        row = 4 * dim + 8 * (-(-dim // 64))  # float32 values and packed sign bits
        size += 4 * dim + row * 3 // 2 + VECTOR_OVERHEAD
    return size


def _str_bytes(text: str) -> int:
    return 49 + len(text) if text.isascii() else sys.getsizeof(text)


class CacheBackend(Protocol):
    """What the cache facade needs from wherever entries live."""

    async def get_exact(self, exact: str, now: float) -> Entry | None: ...

    async def nearest(
        self, scope: str, vector: np.ndarray, now: float, k: int = 1, min_score: float = -1.0
    ) -> list[tuple[Entry, float]]: ...

    async def put(self, entry: Entry) -> None: ...

    async def touch(self, entry: Entry, now: float) -> None: ...

    async def size(self) -> int: ...

    def counters(self) -> BackendCounters:
        """Evictions and expirations so far (fleet-wide where the backend can tell)."""
        ...


@runtime_checkable
class Snapshottable(Protocol):
    """What ``SnapshotKeeper`` needs from a backend that can live in one file.

    Optional for a backend: a shared one (Redis) keeps its own state and has no file.
    """

    @property
    def changes(self) -> int:
        """Bumped on every add and removal: a snapshot is skipped while it stands still."""
        ...

    def entries(self) -> Iterator[Entry]:
        """Every entry, least recently used first (the order a snapshot keeps)."""
        ...

    def add(self, entry: Entry) -> bool:
        """Insert as the most recently used; False when the entry was refused."""
        ...

    def sweep(self, now: float) -> int:
        """Drop expired entries; returns how many."""
        ...

    def listen(self, on_store: Callable[[Entry], None] | None) -> None:
        """Call ``on_store`` with every entry stored from now on (the journal's feed)."""
        ...


@dataclass
class BackendCounters:
    evictions: int = 0
    expirations: int = 0
    oversized: int = 0  # entries refused because they alone exceed max_bytes / MAX_ENTRY_SHARE


class MemoryBackend:
    """Entries in this process: dict for the exact tier, numpy per scope for meaning."""

    def __init__(self, max_entries: int, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // MAX_ENTRY_SHARE
        self._counters = BackendCounters()
        self.bytes = 0  # entry_bytes of every entry held + SCOPE_OVERHEAD per vector scope
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # oldest use first
        self._by_exact: dict[str, int] = {}
        self._scopes: dict[str, VectorIndex] = {}
        self._ids = itertools.count(1)
        self._on_store: Callable[[Entry], None] | None = None
        self._listener_failed = False
        self.changes = 0  # bumped on every add and removal: what a snapshot must catch up on

    def __len__(self) -> int:
        return len(self._entries)

    async def size(self) -> int:
        return len(self._entries)

    def counters(self) -> BackendCounters:
        return self._counters

    async def get_exact(self, exact: str, now: float) -> Entry | None:
        entry_id = self._by_exact.get(exact)
        if entry_id is None:
            return None
        entry = self._entries[entry_id]
        if entry.expires_at <= now:
            self._expire(entry)
            return None
        return entry

    async def nearest(
        self, scope: str, vector: np.ndarray, now: float, k: int = 1, min_score: float = -1.0
    ) -> list[tuple[Entry, float]]:
        index = self._scopes.get(scope)
        while index is not None and len(index):
            found = [(self._entries[i], score) for i, score in index.nearest(vector, k, min_score)]
            expired = [entry for entry, _ in found if entry.expires_at <= now]
            if not expired:
                return found
            for entry in expired:
                self._expire(entry)
        return []

    async def put(self, entry: Entry) -> None:
        self.add(entry)

    def add(self, entry: Entry) -> bool:
        """Insert (replacing an entry with the same exact key) and evict past either cap.

        An entry bigger than ``max_entry_bytes`` is refused (counted in
        ``counters.oversized``) rather than stored at the price of most of the cache.
        """
        entry.nbytes = size = entry_bytes(entry)
        if size > self.max_entry_bytes:
            self._refuse(size)
            return False
        previous = self._by_exact.get(entry.exact)
        if previous is not None:
            self._remove(self._entries[previous])
        entry.id = next(self._ids)
        self.changes += 1
        self.bytes += size
        self._entries[entry.id] = entry
        self._by_exact[entry.exact] = entry.id
        if entry.vector is not None:
            index = self._scopes.get(entry.scope)
            if index is None:
                # capacity 1: a conversation's own scope often holds a single entry
                index = self._scopes[entry.scope] = VectorIndex(len(entry.vector), capacity=1)
                self.bytes += SCOPE_OVERHEAD
            index.add(entry.id, entry.vector)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries.values())))
            self._counters.evictions += 1
        self._tell(entry)
        return True

    def listen(self, on_store: Callable[[Entry], None] | None) -> None:
        self._on_store = on_store

    def _tell(self, entry: Entry) -> None:
        """Hand a stored entry to the listener; a failing listener never fails the store."""
        if self._on_store is None:
            return
        try:
            self._on_store(entry)
        except Exception:
            if not self._listener_failed:
                self._listener_failed = True
                log.exception("cache: store listener failed; the entry is kept in memory")

    def _refuse(self, size: int) -> None:
        self._counters.oversized += 1
        if self._counters.oversized == 1:
            log.warning(
                "cache: an entry of %d bytes was not stored (over a quarter of the %d-byte "
                "cache.max_bytes); further refusals are only counted",
                size,
                self.max_bytes,
            )

    async def touch(self, entry: Entry, now: float) -> None:
        entry.hits += 1
        if entry.id in self._entries:
            self._entries.move_to_end(entry.id)

    def sweep(self, now: float) -> int:
        """Drop every expired entry; returns how many went."""
        expired = [e for e in self._entries.values() if e.expires_at <= now]
        for entry in expired:
            self._expire(entry)
        return len(expired)

    def entries(self) -> Iterator[Entry]:
        """Entries from least to most recently used (the order a snapshot keeps)."""
        return iter(list(self._entries.values()))

    def _expire(self, entry: Entry) -> None:
        self._remove(entry)
        self._counters.expirations += 1

    def _remove(self, entry: Entry) -> None:
        if self._entries.pop(entry.id, None) is None:
            return
        self.changes += 1
        self.bytes -= entry.nbytes
        if self._by_exact.get(entry.exact) == entry.id:
            del self._by_exact[entry.exact]
        index = self._scopes.get(entry.scope)
        if index is not None:
            index.remove(entry.id)
            if not len(index):
                del self._scopes[entry.scope]
                self.bytes -= SCOPE_OVERHEAD
