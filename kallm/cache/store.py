"""Cache entries and the backend that holds them.

``CacheBackend`` is the seam for shared state: the in-process ``MemoryBackend``
keeps entries in an LRU-ordered dict with one ``VectorIndex`` per scope; a
Redis backend can implement the same async methods and slot in without the
request path changing. Expiry is lazy (checked when an entry is found) plus a
periodic ``sweep``, so a lookup never scans the whole cache.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kallm.cache.index import VectorIndex


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


@dataclass
class BackendCounters:
    evictions: int = 0
    expirations: int = 0


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


class MemoryBackend:
    """Entries in this process: dict for the exact tier, numpy per scope for meaning."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._counters = BackendCounters()
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # oldest use first
        self._by_exact: dict[str, int] = {}
        self._scopes: dict[str, VectorIndex] = {}
        self._ids = itertools.count(1)
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

    def add(self, entry: Entry) -> None:
        """Insert (replacing an entry with the same exact key) and evict past the cap."""
        previous = self._by_exact.get(entry.exact)
        if previous is not None:
            self._remove(self._entries[previous])
        entry.id = next(self._ids)
        self.changes += 1
        self._entries[entry.id] = entry
        self._by_exact[entry.exact] = entry.id
        if entry.vector is not None:
            index = self._scopes.get(entry.scope)
            if index is None:
                index = self._scopes[entry.scope] = VectorIndex(len(entry.vector))
            index.add(entry.id, entry.vector)
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries.values())))
            self._counters.evictions += 1

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
        self.changes += 1
        self._entries.pop(entry.id, None)
        if self._by_exact.get(entry.exact) == entry.id:
            del self._by_exact[entry.exact]
        index = self._scopes.get(entry.scope)
        if index is not None:
            index.remove(entry.id)
            if not len(index):
                del self._scopes[entry.scope]
