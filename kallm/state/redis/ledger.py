"""Budgets shared by every replica: reserve and settle in Lua, money in micro-dollars.

Layout, per virtual key, under one Redis Cluster hash tag (``{kallm:<key id>}``):
``acct`` (hash: spend, period start, saved, last use), ``held`` (hash: request id ->
amount held), ``exp`` (zset: request id -> when the hold lapses) and ``settled`` (zset:
request ids settled in the last hour, so settling again is harmless). The spend is
seeded from the key record with HSETNX, inside the scripts, so replicas starting
together cannot seed it twice. Periods reset in Lua, on Redis's clock.

A hold lapses after ``state.reservation_ttl``: a replica killed mid-request leaks its
holds for no longer than that, and a request that outlives its hold is still charged when
it settles (the settled set, not the hold, makes settling idempotent).

Redis unreachable: a key with a budget is refused with a 429 that says why (its budget
cannot be checked: failing open would let every replica spend it); a key without one is
served, and its settlements wait in a bounded queue and are replayed when Redis answers
(idempotent, so a settlement that did land before a timeout is not counted twice).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from kallm.accounts.budget import Reservation, over_budget
from kallm.accounts.keys import KeyRecord
from kallm.errors import RateLimited, RequestError
from kallm.state.redis.client import UNREACHABLE, Part, RedisState, Script, StateUnavailable

log = logging.getLogger("kallm.state")

MICRO = 1_000_000
SETTLED_SECONDS = 3600.0
PENDING_MAX = 10_000
_RESERVE = Script("budget_reserve")
_SETTLE = Script("budget_settle")
_SAVED = Script("budget_saved")


class BudgetUnavailable(RateLimited):
    """429: a key with a budget while the shared budget cannot be read."""

    code = "budget_unavailable"


@dataclass(frozen=True, slots=True)
class SharedReservation(Reservation):
    """A reservation that also carries what settling needs to seed and reset the account."""

    period: float = 0.0
    seed_spend: int = 0
    seed_start: float = 0.0


def micro(usd: float) -> int:
    return round(usd * MICRO)


class RedisLedger:
    """``SpendLedger`` over Redis."""

    def __init__(self, state: RedisState, reservation_ttl: float):
        self.state = state
        self.reservation_ttl = reservation_ttl
        self._pending: deque[tuple[Script, list[str], list[object]]] = deque()
        self.dropped = 0  # settlements lost because the queue was full during an outage
        # the fleet's spend per key as last seen here: the seed if Redis loses its data
        self.seen: dict[str, float] = {}
        state.register(
            Part(
                "budgets",
                "keys with a budget are refused (429) until it answers; keys without one "
                "are served and their spend is settled when it returns",
                self.replay,
            )
        )

    def keys(self, key_id: str) -> list[str]:
        tag = self.state.key
        return [
            tag(key_id, "acct"),
            tag(key_id, "held"),
            tag(key_id, "exp"),
            tag(key_id, "settled"),
        ]

    async def reserve(
        self, key: KeyRecord, amount: float, request_id: str, now: float
    ) -> Reservation:
        reservation = SharedReservation(
            request_id,
            key.id,
            amount,
            key.budget_period or 0.0,
            micro(key.spend_usd),
            key.period_start,
        )
        if key.budget_usd is None:
            return reservation  # nothing to check: the cost is added when it settles
        args = [
            micro(key.budget_usd),
            math.ceil(amount * MICRO),
            request_id,
            reservation.period,
            reservation.seed_spend,
            repr(reservation.seed_start),
            self.reservation_ttl,
        ]
        try:
            status, spend = await self.state.call(
                _RESERVE(self.state.client, self.keys(key.id), args)
            )
        except StateUnavailable:
            raise BudgetUnavailable(
                "This key has a budget, and budgets are kept in shared state (Redis) that "
                "kallm cannot reach right now, so the request was not started. Retry shortly.",
                headers={"Retry-After": "5"},
            ) from None
        self.seen[key.id] = int(spend) / MICRO
        if status == 0:
            raise over_budget(key, int(spend) / MICRO)
        if status == 2:
            raise RequestError(
                f"a request with X-Request-Id {request_id!r} is already in flight for this key",
                param="X-Request-Id",
            )
        return reservation

    async def settle(self, reservation: Reservation, cost: float, now: float) -> None:
        period, seed_spend, seed_start = 0.0, 0, now
        if isinstance(reservation, SharedReservation):
            period, seed_spend, seed_start = (
                reservation.period,
                reservation.seed_spend,
                reservation.seed_start,
            )
        args: list[object] = [
            reservation.id,
            micro(cost),
            period,
            seed_spend,
            repr(seed_start),
            max(SETTLED_SECONDS, 2 * self.reservation_ttl),
        ]
        reply = await self._run_or_queue(_SETTLE, self.keys(reservation.key_id), args)
        if reply is not None:
            self.seen[reservation.key_id] = int(reply[1]) / MICRO

    async def add_saved(self, key: KeyRecord, saved: float, now: float) -> None:
        args: list[object] = [micro(saved), micro(key.spend_usd), repr(key.period_start)]
        await self._run_or_queue(_SAVED, self.keys(key.id)[:1], args)

    async def spend(self, key: KeyRecord, now: float) -> float:
        return (await self.accounts([key]))[key.id][0]

    async def accounts(self, keys: list[KeyRecord]) -> dict[str, tuple[float, float, float | None]]:
        """Fleet-wide (spend, saved, last use) per key, a period that ran out counting 0."""
        client = self.state.client
        async with client.pipeline(transaction=False) as pipe:
            pipe.time()
            for key in keys:
                pipe.hmget(self.keys(key.id)[0], "spend", "ps", "saved", "last")
            replies = await self.state.call(pipe.execute())
        seconds, micros = replies[0]
        clock = seconds + micros / MICRO
        out = {}
        for key, (spend, start, saved, last) in zip(keys, replies[1:], strict=True):
            if spend is None:
                out[key.id] = (key.spend_usd, key.saved_usd, key.last_used)
                continue
            period = key.budget_period
            current = int(spend) / MICRO
            if period and clock >= float(start) + period:
                current = 0.0
            out[key.id] = (current, int(saved or 0) / MICRO, float(last) if last else None)
        return out

    async def replay(self) -> None:
        """Settlements that waited for Redis, oldest first (each is idempotent)."""
        replayed = 0
        while self._pending:
            script, keys, args = self._pending[0]
            try:
                await script(self.state.client, keys, args)
            except UNREACHABLE:
                raise
            except Exception:
                log.exception("budgets: a queued settlement failed and was dropped")
            self._pending.popleft()
            replayed += 1
        if replayed:
            log.info("budgets: %d settlements made during the outage are now counted", replayed)

    async def _run_or_queue(self, script: Script, keys: list[str], args: list[object]) -> Any:
        try:
            return await self.state.call(script(self.state.client, keys, args))
        except StateUnavailable:
            if len(self._pending) >= PENDING_MAX:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((script, keys, args))
            return None
