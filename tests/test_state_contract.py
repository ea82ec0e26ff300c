"""One contract for every shared-state backend: the same behaviour in process and on Redis.

Each test runs twice, against the in-process backends (``MemoryBackend``, ``MemoryLedger``,
``MemoryRateLimits``, ``DatabaseKeys``) and against the Redis ones on a real Valkey
server (``tests/redis_server.py``): the request path cannot tell them apart. Time is real
(Redis keeps its own clock, so nothing can be faked there); periods and TTLs are short.
A few Redis-only tests at the end check what only sharing can break: two instances on
one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kallm.accounts.budget import MemoryLedger, Reservation, SpendLedger
from kallm.accounts.k8s import record_for_secret
from kallm.accounts.keyring import DatabaseKeys, KeyBackend
from kallm.accounts.keys import KeyRecord
from kallm.accounts.ratelimit import MemoryRateLimits, RateLimits
from kallm.cache.store import CacheBackend, Entry, MemoryBackend
from kallm.errors import BudgetExceeded, KeyConflict
from kallm.server.health import Health
from kallm.state.redis.cache import RedisCache
from kallm.state.redis.client import RETRY_SECONDS, Part, RedisState, StateUnavailable
from kallm.state.redis.keys import RedisKeys
from kallm.state.redis.ledger import RedisLedger
from kallm.state.redis.ratelimit import RedisRateLimits
from tests.redis_server import RedisServer, redis_url, shared_redis  # noqa: F401

DIM = 8


@dataclass
class Parts:
    kind: str
    cache: CacheBackend
    ledger: SpendLedger
    limits: RateLimits
    keys: KeyBackend
    saved: Callable[[KeyRecord], Any]  # -> awaitable of the key's saved USD, as recorded
    make_cache: Callable[[int], Any]  # max entries -> awaitable of a fresh cache backend


@pytest.fixture(params=["memory", "redis"])
async def parts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Parts]:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    if request.param == "memory":
        saved: dict[str, float] = {}

        async def sink(key_id: str, spend: float, delta: float, start: float, when: float) -> None:
            saved[key_id] = saved.get(key_id, 0.0) + delta

        async def memory_saved(key: KeyRecord) -> float:
            return saved.get(key.id, 0.0)

        async def memory_cache(max_entries: int) -> CacheBackend:
            return MemoryBackend(max_entries)

        from kallm.db import connect

        connect(tmp_path / "kallm.db").close()  # the schema
        keys = DatabaseKeys(tmp_path / "kallm.db", keys_dir)
        await keys.start()
        yield Parts(
            "memory",
            MemoryBackend(100),
            MemoryLedger(sink),
            MemoryRateLimits(),
            keys,
            memory_saved,
            memory_cache,
        )
        await keys.close()
        return

    url = request.getfixturevalue("redis_url")
    states: list[RedisState] = []
    caches: list[RedisCache] = []

    async def redis_cache(max_entries: int) -> CacheBackend:
        state = RedisState(url, Health())
        await state.start()
        states.append(state)
        cache = RedisCache(state, max_entries, f"replica-{len(states)}")
        await cache.start()
        caches.append(cache)
        return cache

    state = RedisState(url, Health())
    await state.start()
    states.append(state)
    ledger = RedisLedger(state, reservation_ttl=600)
    keys = RedisKeys(state, ledger, keys_dir)
    await keys.start()
    cache = await redis_cache(100)

    async def redis_saved(key: KeyRecord) -> float:
        return (await ledger.accounts([key]))[key.id][1]

    yield Parts("redis", cache, ledger, RedisRateLimits(state, 1), keys, redis_saved, redis_cache)
    await keys.close()
    for made in caches:
        await made.close()
    for made in states:
        await made.close()


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def entry(exact: str, vector: np.ndarray | None = None, ttl: float = 60, scope: str = "s") -> Entry:
    now = time.time()
    return Entry(
        scope, exact, f"text {exact}", vector, f"answer {exact}".encode(), now, now + ttl, 0.01, 5
    )


def key(**policy: Any) -> KeyRecord:
    now = time.time()
    return KeyRecord(
        id=f"key_{time.monotonic_ns()}", name="k", prefix="sk-kallm-x", hash="h", created=now,
        period_start=now, **policy,
    )  # fmt: skip


# -- cache ------------------------------------------------------------------------------


async def test_cache_put_then_exact_and_nearest(parts: Parts) -> None:
    cache = parts.cache
    await cache.put(entry("a", unit(1, 0)))
    await cache.put(entry("b", unit(0, 1)))
    now = time.time()
    found = await cache.get_exact("a", now)
    assert found is not None and found.response == b"answer a"
    assert await cache.get_exact("nope", now) is None
    (best, score), *_ = await cache.nearest("s", unit(0.1, 1), now, k=2)
    assert best.exact == "b" and score > 0.99
    assert await cache.nearest("other scope", unit(1, 0), now) == []
    assert await cache.nearest("s", unit(1, 0), now, min_score=1.01) == []
    assert await cache.size() == 2


async def test_cache_replaces_an_exact_key(parts: Parts) -> None:
    await parts.cache.put(entry("a", unit(1, 0)))
    newer = entry("a", unit(1, 0))
    newer.response = b"newer"
    await parts.cache.put(newer)
    found = await parts.cache.get_exact("a", time.time())
    assert found is not None and found.response == b"newer"
    assert await parts.cache.size() == 1


async def test_cache_entries_expire(parts: Parts) -> None:
    await parts.cache.put(entry("short", unit(1, 0), ttl=0.3))
    await parts.cache.put(entry("long", unit(0, 1), ttl=60))
    await asyncio.sleep(0.4)
    now = time.time()
    assert await parts.cache.get_exact("short", now) is None
    assert await parts.cache.nearest("s", unit(1, 0), now, min_score=0.99) == []
    assert await parts.cache.get_exact("long", now) is not None
    assert await parts.cache.size() == 1


async def test_cache_keeps_max_entries_least_recently_used_first(parts: Parts) -> None:
    cache = await parts.make_cache(2)
    await cache.put(entry("a", unit(1, 0)))
    await cache.put(entry("b", unit(0, 1)))
    found = await cache.get_exact("a", time.time())
    assert found is not None
    await cache.touch(found, time.time())  # a hit: "a" is now the most recently used
    await cache.put(entry("c", unit(1, 1)))
    now = time.time()
    assert await cache.size() == 2
    assert await cache.get_exact("b", now) is None
    assert await cache.get_exact("a", now) is not None
    assert await cache.get_exact("c", now) is not None
    assert cache.counters().evictions >= 1 or parts.kind == "redis"  # fleet figure lags 1 s


# -- budgets ----------------------------------------------------------------------------


async def test_budget_reserve_settle_and_settle_again(parts: Parts) -> None:
    ledger, k = parts.ledger, key(budget_usd=1.0)
    now = time.time()
    held = await ledger.reserve(k, 0.4, "r1", now)
    assert await ledger.spend(k, now) == 0.0
    await ledger.settle(held, 0.3, now)
    await ledger.settle(held, 0.3, now)  # settling twice is harmless
    assert await ledger.spend(k, time.time()) == pytest.approx(0.3)


async def test_budget_refuses_past_the_budget(parts: Parts) -> None:
    ledger, k = parts.ledger, key(budget_usd=1.0)
    now = time.time()
    first = await ledger.reserve(k, 0.5, "r1", now)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(k, 0.6, "r2", now)  # 0.5 held + 0.6 > 1.0
    await ledger.settle(first, 1.2, now)  # the one admitted request may overshoot
    with pytest.raises(BudgetExceeded, match=r"\$1\.2000 of its \$1\.0000"):
        await ledger.reserve(k, 0.01, "r3", now)


async def test_budget_concurrent_reservations_stop_at_the_budget(parts: Parts) -> None:
    ledger, k = parts.ledger, key(budget_usd=1.0)
    now = time.time()

    async def one(i: int) -> Reservation | None:
        try:
            return await ledger.reserve(k, 0.1, f"c{i}", now)
        except BudgetExceeded:
            return None

    held = [r for r in await asyncio.gather(*(one(i) for i in range(25))) if r is not None]
    assert len(held) == 10


async def test_budget_one_request_may_start_when_nothing_is_in_flight(parts: Parts) -> None:
    ledger, k = parts.ledger, key(budget_usd=1.0)
    held = await ledger.reserve(k, 5.0, "big", time.time())  # dearer than the budget
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(k, 0.01, "small", time.time())
    await ledger.settle(held, 0.2, time.time())
    await ledger.reserve(k, 0.5, "next", time.time())


async def test_budget_period_resets(parts: Parts) -> None:
    ledger, k = parts.ledger, key(budget_usd=1.0, budget_period=1.0)
    held = await ledger.reserve(k, 1.0, "r1", time.time())
    await ledger.settle(held, 1.0, time.time())
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(k, 0.1, "r2", time.time())
    await asyncio.sleep(1.1)
    assert await ledger.spend(k, time.time()) == 0.0
    await ledger.reserve(k, 0.1, "r3", time.time())


async def test_budget_spend_seeded_from_the_key_record(parts: Parts) -> None:
    k = key(budget_usd=1.0, spend_usd=0.95)
    with pytest.raises(BudgetExceeded):
        held = await parts.ledger.reserve(k, 0.01, "r0", time.time())  # fits on its own
        await parts.ledger.reserve(k, 0.1, "r1", time.time())
    await parts.ledger.settle(held, 0.01, time.time())
    assert await parts.ledger.spend(k, time.time()) == pytest.approx(0.96)


async def test_budget_saved_adds_up(parts: Parts) -> None:
    k = key()
    await parts.ledger.add_saved(k, 0.25, time.time())
    await parts.ledger.add_saved(k, 0.5, time.time())
    assert await parts.saved(k) == pytest.approx(0.75)


async def test_budget_keys_without_one_are_only_counted(parts: Parts) -> None:
    ledger, k = parts.ledger, key()
    for i in range(3):
        held = await ledger.reserve(k, 100.0, f"r{i}", time.time())
        await ledger.settle(held, 1.5, time.time())
    assert await ledger.spend(k, time.time()) == pytest.approx(4.5)


# -- rate limits ------------------------------------------------------------------------


async def test_rpm_admits_the_limit_then_refuses(parts: Parts) -> None:
    k = key(rpm=3)
    states = [await parts.limits.admit(k, 0, f"r{i}", time.time()) for i in range(4)]
    assert [s.retry_after is None for s in states] == [True, True, True, False]
    assert [s.remaining_requests for s in states[:3]] == [2, 1, 0]
    refused = states[3]
    assert refused.reason == "requests per minute"
    assert refused.retry_after is not None and 0 < refused.retry_after <= 60
    assert refused.headers()["Retry-After"]


async def test_rpm_zero_admits_nothing(parts: Parts) -> None:
    state = await parts.limits.admit(key(rpm=0), 0, "r0", time.time())
    assert state.retry_after is not None and state.reason == "requests per minute"


async def test_tpm_charged_at_admission_and_corrected_at_settlement(parts: Parts) -> None:
    k, limits = key(tpm=100), parts.limits
    first = await limits.admit(k, 60, "r1", time.time())
    assert first.retry_after is None and first.remaining_tokens == 40
    refused = await limits.admit(k, 60, "r2", time.time())  # 60 + 60 > 100: charged already
    assert refused.reason == "tokens per minute"
    await limits.settle(k, 60, 10, "r1", time.time())  # it used 10, not 60
    again = await limits.admit(k, 60, "r3", time.time())
    assert again.retry_after is None


async def test_tpm_one_request_may_exceed_it_alone(parts: Parts) -> None:
    k = key(tpm=100)
    assert (await parts.limits.admit(k, 150, "big", time.time())).retry_after is None
    assert (await parts.limits.admit(k, 1, "next", time.time())).retry_after is not None


async def test_keys_without_limits_are_never_limited(parts: Parts) -> None:
    k = key()
    for i in range(50):
        assert (await parts.limits.admit(k, 10_000, f"r{i}", time.time())).retry_after is None


# -- keys -------------------------------------------------------------------------------


async def test_keys_create_find_list_get(parts: Parts) -> None:
    keys = parts.keys
    record, secret = await keys.create("team-a", budget_usd=5.0, rpm=10, models=["gpt-*"])
    found = keys.find(secret)
    assert found is not None and found.id == record.id and found.models == ("gpt-*",)
    assert keys.find(secret + "x") is None and keys.find("") is None
    assert [r.name for r in await keys.list()] == ["team-a"]
    for ref in (record.id, "team-a", record.prefix):
        assert (await keys.get(ref)).id == record.id
    with pytest.raises(KeyConflict):
        await keys.create("team-a")


async def test_keys_update_revoke_rotate(parts: Parts) -> None:
    keys = parts.keys
    record, secret = await keys.create("team-b", budget_usd=5.0)
    updated = await keys.update("team-b", budget_usd=7.5, name="team-c")
    assert updated.budget_usd == 7.5 and updated.name == "team-c"
    assert keys.find(secret).budget_usd == 7.5  # type: ignore[union-attr]
    await keys.create("team-b")  # the old name is free again
    with pytest.raises(KeyConflict):
        await keys.update("team-c", name="team-b")
    rotated, new_secret = await keys.rotate("team-c")
    assert rotated.id == record.id and keys.find(secret) is None
    assert keys.find(new_secret).id == record.id  # type: ignore[union-attr]
    revoked = await keys.revoke("team-c")
    assert revoked.status() == "revoked"
    assert keys.find(new_secret).status() == "revoked"  # type: ignore[union-attr]


async def test_keys_from_a_secrets_directory(parts: Parts, tmp_path: Path) -> None:
    """Loaded from the files; a rotation's retired hash and a revocation outlive them."""
    keys = parts.keys
    record, secret = await keys.create("from-file", rpm=5)
    file = tmp_path / "keys" / f"{record.id}.json"
    file.write_text(json.dumps(record_for_secret(replace(record, rpm=9))))
    await keys.refresh()
    assert keys.find(secret).rpm == 9  # type: ignore[union-attr]
    _, new_secret = await keys.rotate(record.id)
    file.write_text(json.dumps(record_for_secret(replace(record, rpm=11))))  # old hash
    await keys.refresh()
    assert keys.find(secret) is None
    assert keys.find(new_secret).rpm == 11  # type: ignore[union-attr]
    file.unlink()
    await keys.refresh()
    assert keys.find(new_secret).status() == "revoked"  # type: ignore[union-attr]


# -- only where state is shared ---------------------------------------------------------


async def test_redis_an_entry_put_on_one_instance_is_found_on_another(
    redis_url: str,  # noqa: F811
) -> None:
    states = [RedisState(redis_url, Health()) for _ in range(2)]
    for state in states:
        await state.start()
    a, b = (RedisCache(state, 100, f"r{i}") for i, state in enumerate(states))
    await a.start()
    await b.start()
    try:
        await a.put(entry("x", unit(1, 2)))
        started = time.monotonic()
        while not await b.nearest("s", unit(1, 2), time.time(), min_score=0.99):
            assert time.monotonic() - started < 0.1, "not on the other instance within 100 ms"
            await asyncio.sleep(0.002)
        assert (await b.get_exact("x", time.time())) is not None
        late = RedisCache(states[1], 100, "late")  # starts after the put: rebuilds
        await late.start()
        assert await late.nearest("s", unit(1, 2), time.time(), min_score=0.99)
        await late.close()
    finally:
        for made in (a, b):
            await made.close()
        for state in states:
            await state.close()


async def test_redis_settlements_during_an_outage_are_replayed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    health = Health()
    state = RedisState(server.url, health, timeout=0.3)
    await state.start()
    ledger = RedisLedger(state, reservation_ttl=600)
    limits = RedisRateLimits(state, replicas=3)
    try:
        free, budgeted, limited = key(), key(budget_usd=1.0), key(rpm=9)
        held = await ledger.reserve(free, 1.0, "r1", time.time())
        server.kill()
        await ledger.settle(held, 0.5, time.time())  # queued, not lost
        assert not state.up and "budgets" in health.degraded
        with pytest.raises(Exception, match="cannot reach") as refused:
            await ledger.reserve(budgeted, 0.1, "r2", time.time())
        assert getattr(refused.value, "status", None) == 429
        admitted = [await limits.admit(limited, 0, f"l{i}", time.time()) for i in range(4)]
        assert [s.retry_after is None for s in admitted] == [True, True, True, False]  # 9 / 3
        server.start()
        started = time.monotonic()
        while not state.up or health.degraded:
            assert time.monotonic() - started < 5, "did not recover"
            await asyncio.sleep(0.05)
        # a restarted Redis without persistence lost the account; the replayed settlement
        # is all it knows now, and nothing was counted twice
        assert await ledger.spend(free, time.time()) == pytest.approx(0.5)
    finally:
        await state.close()
        server.stop()


async def test_redis_lost_again_while_catching_up_is_still_down(tmp_path: Path) -> None:
    """Redis that goes away while the parts catch up (a call that a part or a request lets
    pass, as the cache does) is still down: /health says so, waiters keep waiting (they
    spun on the event loop, freezing the replica: a fleet test caught it), and the next
    return is a full recovery."""
    server = RedisServer(tmp_path / "redis").start()
    health = Health()
    state = RedisState(server.url, health, timeout=0.3)
    await state.start()
    ledger = RedisLedger(state, reservation_ttl=600)
    catch_ups = 0

    async def catch_up() -> None:  # the first time: Redis dies under it, and it fails open
        nonlocal catch_ups
        catch_ups += 1
        if catch_ups == 1:
            server.kill()
            with contextlib.suppress(StateUnavailable):
                await state.call(state.client.ping())

    state.register(Part("probe", "fails open", catch_up))
    try:
        server.kill()
        await until(lambda: not state.up and "budgets" in health.degraded)
        server.start()
        await until(lambda: catch_ups == 1)
        waiter = asyncio.create_task(state.until_up())
        await asyncio.sleep(4 * RETRY_SECONDS)  # the monitor has retried since
        assert not state.up
        assert set(health.degraded) == {"budgets", "probe"}
        assert not waiter.done()
        with pytest.raises(Exception, match="cannot reach"):
            await ledger.reserve(key(budget_usd=1.0), 0.1, "r1", time.time())
        server.start()
        await asyncio.wait_for(waiter, 5)
        assert state.up and not health.degraded and catch_ups == 2
        assert await ledger.reserve(key(budget_usd=1.0), 0.1, "r2", time.time())
    finally:
        await state.close()
        server.stop()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not within the time"
        await asyncio.sleep(0.02)
