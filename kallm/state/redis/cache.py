"""The cache shared through Redis, looked up locally.

Every entry lives in Redis (one string per exact key, with the TTL as its expiry), and
every put is appended to a capped stream. Each replica keeps its own ``MemoryBackend``
(the numpy index per scope), fills it from that stream in a background task (XREAD
BLOCK), and rebuilds it from Redis when it starts, when Redis comes back, or when it
falls behind the stream's oldest entry (puts carry a sequence number: a gap means
entries were trimmed before this replica read them). So a semantic lookup never leaves
the process; only the exact tier asks Redis, and only when this replica does not hold
the entry already.

Fleet-wide ``max_entries`` and LRU hold approximately: a ZSET of last-use times (Redis
time) is trimmed by whichever replica writes, oldest first; hits are batched per replica
and flushed to it once a second (a hit never waits for Redis). Each replica's index is
capped at ``max_entries`` too, with its own LRU. Expired entries leave Redis by their TTL
and the ZSETs at the next write.

Redis unreachable: lookups and stores keep working on this replica's index (the cache
fails open: never an error), and the index is rebuilt when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from kallm.cache.store import BackendCounters, Entry, MemoryBackend
from kallm.state.redis.client import (
    UNREACHABLE,
    Part,
    RedisState,
    Script,
    StateUnavailable,
    stop_tasks,
)

log = logging.getLogger("kallm.state")

BLOCK_SECONDS = 1.0  # XREAD BLOCK; the tailer's socket timeout is longer than this
READ_COUNT = 256
REBUILD_BATCH = 500
HOUSEKEEPING_SECONDS = 1.0
STREAM_MIN, STREAM_MAX = 1_000, 10_000
SHARE_BATCH = 500  # entries written back per pipelined round trip after an outage
_PUT = Script("cache_put")
_TOUCH = Script("cache_touch")


def encode(entry: Entry) -> bytes:
    """One entry as bytes: a length-prefixed JSON header, the float32 vector, the answer."""
    vector = b"" if entry.vector is None else np.asarray(entry.vector, np.float32).tobytes()
    header = json.dumps(
        {
            "scope": entry.scope,
            "exact": entry.exact,
            "text": entry.text,
            "created": entry.created_at,
            "expires": entry.expires_at,
            "cost": entry.cost_usd,
            "tokens": entry.tokens,
            "dim": 0 if entry.vector is None else len(vector) // 4,
        },
        separators=(",", ":"),
    ).encode()
    return struct.pack(">I", len(header)) + header + vector + entry.response


def decode(blob: bytes) -> Entry:
    (size,) = struct.unpack_from(">I", blob)
    header = json.loads(blob[4 : 4 + size])
    start = 4 + size
    end = start + 4 * header["dim"]
    vector = np.frombuffer(blob[start:end], np.float32).copy() if header["dim"] else None
    return Entry(
        header["scope"],
        header["exact"],
        header["text"],
        vector,
        bytes(blob[end:]),
        header["created"],
        header["expires"],
        header["cost"],
        header["tokens"],
    )


class RedisCache:
    """``CacheBackend`` over Redis, with a local index per replica."""

    def __init__(self, state: RedisState, max_entries: int, replica: str):
        self.state = state
        self.max_entries = max_entries
        self.replica = replica
        self.local = MemoryBackend(max_entries)
        self.stream_length = max(STREAM_MIN, min(max_entries, STREAM_MAX))
        self._touched: dict[str, None] = {}  # exact keys hit since the last flush, in order
        self._fleet: BackendCounters | None = None
        self._seq = 0  # the last put of the stream this replica has applied
        self._stream_id = b"0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._tail_client = state.blocking_client(BLOCK_SECONDS)
        self.rebuilds = 0
        self._put_while_rebuilding: list[Entry] | None = None
        self._unshared: list[Entry] = []  # put while Redis was away: shared when it is back
        state.register(
            Part(
                "cache",
                "serving from this replica's own index (fails open); it is rebuilt from "
                "Redis when Redis answers again",
                self.rebuild,
            )
        )

    # -- keys -----------------------------------------------------------------------------

    def _entry_key(self, exact: str) -> str:
        return self.state.key("cache", "e", exact)

    @property
    def _keys(self) -> list[str]:
        key = self.state.key
        return [key("cache", "lru"), key("cache", "exp"), key("cache", "log"), key("cache", "n")]

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.state.up:
            with contextlib.suppress(StateUnavailable):
                await self.rebuild()
        self._tasks = [
            asyncio.create_task(self._tail_forever()),
            asyncio.create_task(self._housekeeping()),
        ]

    async def close(self) -> None:
        self._closing = True  # redis-py may turn a cancellation into a ConnectionError
        await stop_tasks(self._tasks)
        with contextlib.suppress(StateUnavailable, *UNREACHABLE):
            await self._flush_touches()

    # -- CacheBackend ---------------------------------------------------------------------

    async def get_exact(self, exact: str, now: float) -> Entry | None:
        """This replica's copy, else one GET (an entry not tailed yet, or evicted here)."""
        entry = await self.local.get_exact(exact, now)
        if entry is not None or not self.state.up:
            return entry
        try:
            blob = await self.state.call(self.state.client.get(self._entry_key(exact)))
        except StateUnavailable:
            return None
        if blob is None:
            return None
        found = decode(blob)
        if found.expires_at <= now:
            return None
        self.local.add(found)
        return found

    async def nearest(
        self, scope: str, vector: np.ndarray, now: float, k: int = 1, min_score: float = -1.0
    ) -> list[tuple[Entry, float]]:
        return await self.local.nearest(scope, vector, now, k, min_score)

    async def put(self, entry: Entry) -> None:
        """Here at once; in Redis and on every other replica's stream unless Redis is down."""
        self.local.add(entry)
        if self._put_while_rebuilding is not None:
            self._put_while_rebuilding.append(entry)
        if self._touched:  # this replica's hits count before the put trims the fleet's LRU
            with contextlib.suppress(StateUnavailable):
                await self._flush_touches()
        try:
            await self.state.call(self._put_script(entry))
        except StateUnavailable:
            if len(self._unshared) < self.max_entries:
                self._unshared.append(entry)

    def _put_script(self, entry: Entry) -> Any:
        """The put, as a coroutine for ``RedisState.call``."""
        return _PUT(self.state.client, *self._put_call(entry))

    def _put_call(self, entry: Entry) -> tuple[list[str], list[Any]]:
        """The put script's keys and arguments for ``entry``."""
        ttl_ms = max(1, int((entry.expires_at - time.time()) * 1000))  # what is left of it
        args = [
            entry.exact,
            encode(entry),
            ttl_ms,
            self.max_entries,
            self.stream_length,
            self._entry_key(""),
            self.replica,
        ]
        keys = [self._entry_key(entry.exact), *self._keys]
        return keys, args

    async def _share_local(self, redis_is_empty: bool) -> None:
        """Before reading Redis back: entries put here while it was away, or, when Redis
        came back empty (restarted without persistence), everything this replica holds,
        so an outage does not cost the fleet its cache."""
        entries = list(self.local.entries()) if redis_is_empty else self._unshared
        self._unshared = []
        now = time.time()
        live = [entry for entry in entries if entry.expires_at > now]
        for start in range(0, len(live), SHARE_BATCH):
            calls = [self._put_call(entry) for entry in live[start : start + SHARE_BATCH]]
            await self.state.call(_PUT.many(self.state.client, calls))
            await asyncio.sleep(0)  # a large cache must not hold the event loop
        if entries and redis_is_empty:
            log.warning(
                "cache: Redis came back without kallm's entries (restarted without "
                "persistence?); %d written back from this replica",
                len(entries),
            )

    async def touch(self, entry: Entry, now: float) -> None:
        await self.local.touch(entry, now)
        if len(self._touched) < 10_000:
            self._touched[entry.exact] = None

    async def size(self) -> int:
        """Live entries in the fleet (by expiry time); this replica's count without Redis."""
        if self.state.up:
            with contextlib.suppress(StateUnavailable):
                exp = self._keys[1]
                return int(
                    await self.state.call(self.state.client.zcount(exp, time.time(), "+inf"))
                )
        return len(self.local)

    def counters(self) -> BackendCounters:
        """Fleet-wide evictions and expirations as of the last housekeeping round."""
        return self._fleet if self._fleet is not None else self.local.counters()

    # -- keeping up with the fleet --------------------------------------------------------

    async def rebuild(self) -> None:
        """A fresh index from Redis, most recently used last; then tail from where it was."""
        self._put_while_rebuilding = []
        try:
            await self._rebuild()
        finally:
            self._put_while_rebuilding = None

    async def _rebuild(self) -> None:
        client = self.state.client
        lru, _, stream, stats = self._keys
        await self._share_local(await self.state.call(client.exists(stats)) == 0)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hget(stats, "seq")
            pipe.xrevrange(stream, count=1)
            pipe.zrange(lru, -self.max_entries, -1)
            seq, last, members = await self.state.call(pipe.execute())
        fresh = MemoryBackend(self.max_entries)
        now = time.time()
        for start in range(0, len(members), REBUILD_BATCH):
            batch = [self._entry_key(m.decode()) for m in members[start : start + REBUILD_BATCH]]
            for blob in await self.state.call(client.mget(batch)):
                if blob is not None and (entry := decode(blob)).expires_at > now:
                    fresh.add(entry)
            await asyncio.sleep(0)  # a large cache must not hold the event loop
        for entry in self._put_while_rebuilding or []:  # made here while this ran
            if entry.expires_at > now:
                fresh.add(entry)
        self.local = fresh
        self._seq = int(seq or 0)
        self._stream_id = last[0][0] if last else b"0-0"
        self.rebuilds += 1
        log.info("cache: index rebuilt from Redis (%d entries)", len(fresh))

    async def _tail_forever(self) -> None:
        """Apply other replicas' puts as they come; rebuild after a gap or an outage."""
        stream = self._keys[2]
        while not self._closing:
            if not self.state.up:
                await self.state.until_up()
                continue
            try:
                replies = await self._tail_client.xread(
                    {stream: self._stream_id}, count=READ_COUNT, block=int(BLOCK_SECONDS * 1000)
                )
            except UNREACHABLE as exc:
                if not self._closing:
                    self.state.lost(exc)
                continue
            for _, items in replies or []:
                if not self._apply(items):
                    with contextlib.suppress(StateUnavailable):
                        await self.rebuild()
                    break

    def _apply(self, items: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> bool:
        """Add other replicas' puts to the index (this replica's own are there already);
        False when puts were trimmed before being read."""
        now = time.time()
        for stream_id, fields in items:
            seq = int(fields[b"q"])
            if seq <= self._seq:
                self._stream_id = stream_id
                continue
            if seq != self._seq + 1:
                log.warning("cache: fell behind the shared stream (%d -> %d)", self._seq, seq)
                return False
            self._seq, self._stream_id = seq, stream_id
            if fields.get(b"r", b"").decode() == self.replica:
                continue
            entry = decode(fields[b"b"])
            if entry.expires_at > now:
                self.local.add(entry)
        return True

    async def _housekeeping(self) -> None:
        """Once a second: hits into the fleet LRU, fleet counters for /stats and /metrics."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            if not self.state.up:
                continue
            with contextlib.suppress(StateUnavailable):
                await self._flush_touches()
                values = await self.state.call(
                    self.state.client.hmget(self._keys[3], "evictions", "expirations")
                )
                self._fleet = BackendCounters(int(values[0] or 0), int(values[1] or 0))

    async def _flush_touches(self) -> None:
        touched, self._touched = list(self._touched), {}
        for start in range(0, len(touched), 1000):
            await self.state.call(
                _TOUCH(self.state.client, [self._keys[0]], touched[start : start + 1000])
            )
