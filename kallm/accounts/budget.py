"""Spend per key against its budget, exact under concurrency.

A request reserves its maximum cost at admission, atomically with the check,
and settles to its real cost when it completes (a failed request settles at what
it cost upstream, usually nothing). Concurrent requests therefore cannot all
pass the check and overspend together: the overshoot is at most one request,
the one admitted when nothing else was in flight.

``SpendLedger`` is the seam for shared state. This in-process ledger needs no lock
because it never awaits between a check and its reservation; it makes spend durable
through a ``SpendSink`` that is awaited at settlement (the server's is a SQLite commit),
so a crash forgets at most the requests in flight. A Redis ledger keeps the same
promises across replicas (``kallm.state.redis``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from kallm.accounts.keys import KeyRecord
from kallm.errors import BudgetExceeded


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one request; ``id`` is the request's, so settling twice is harmless."""

    id: str
    key_id: str
    amount: float


@dataclass(slots=True)
class Account:
    spend: float
    period_start: float
    reserved: dict[str, float]


# (key id, spend so far this period, saved delta, period start, when) -> made durable.
# Spend is written as a total so that the last write wins and a period reset is exact.
SpendSink = Callable[[str, float, float, float, float], Awaitable[None]]


class SpendLedger(Protocol):
    async def reserve(
        self, key: KeyRecord, amount: float, request_id: str, now: float
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, cost: float, now: float) -> None: ...

    async def add_saved(self, key: KeyRecord, saved: float, now: float) -> None: ...

    async def spend(self, key: KeyRecord, now: float) -> float: ...


def over_budget(key: KeyRecord, spend: float) -> BudgetExceeded:
    period = " for this period" if key.budget_period else ""
    assert key.budget_usd is not None
    return BudgetExceeded(
        f"This key has used ${spend:.4f} of its ${key.budget_usd:.4f} budget{period}."
    )


class MemoryLedger:
    def __init__(self, sink: SpendSink | None = None):
        self._accounts: dict[str, Account] = {}
        self._sink = sink

    def _account(self, key: KeyRecord, now: float) -> Account:
        account = self._accounts.get(key.id)
        if account is None:
            account = self._accounts[key.id] = Account(key.spend_usd, key.period_start, {})
        period = key.budget_period
        if period and now >= account.period_start + period:
            elapsed = (now - account.period_start) // period
            account.period_start += elapsed * period
            account.spend = 0.0
        return account

    async def reserve(
        self, key: KeyRecord, amount: float, request_id: str, now: float
    ) -> Reservation:
        account = self._account(key, now)
        if key.budget_usd is not None:
            committed = account.spend + sum(account.reserved.values())
            fits = committed + amount <= key.budget_usd
            last_one = not account.reserved and account.spend < key.budget_usd
            if not (fits or last_one):
                raise over_budget(key, account.spend)
        reservation = Reservation(request_id, key.id, amount)
        account.reserved[request_id] = amount
        return reservation

    async def settle(self, reservation: Reservation, cost: float, now: float) -> None:
        account = self._accounts.get(reservation.key_id)
        if account is None or account.reserved.pop(reservation.id, None) is None:
            return  # settled already
        account.spend += cost
        await self._persist(reservation.key_id, account, 0.0, now)

    async def add_saved(self, key: KeyRecord, saved: float, now: float) -> None:
        await self._persist(key.id, self._account(key, now), saved, now)

    async def spend(self, key: KeyRecord, now: float) -> float:
        return self._account(key, now).spend

    async def _persist(self, key_id: str, account: Account, saved: float, now: float) -> None:
        if self._sink is not None:
            await self._sink(key_id, account.spend, saved, account.period_start, now)
