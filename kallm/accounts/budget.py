"""Spend per key against its budget, exact under concurrency.

A request reserves its maximum cost at admission, atomically with the check,
and settles to its real cost when it completes (a failed request settles at what
it cost upstream, usually nothing). Concurrent requests therefore cannot all
pass the check and overspend together: the overshoot is at most one request,
the one admitted when nothing else was in flight. ``SpendLedger`` is the seam for shared state;
this in-process version needs no lock because it never awaits inside a check.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kallm.accounts.keys import KeyRecord
from kallm.errors import BudgetExceeded


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    key_id: str
    amount: float


@dataclass(slots=True)
class Account:
    spend: float
    period_start: float
    reserved: dict[int, float]


# (key id, spend so far this period, saved delta, period start) -> persisted somewhere.
# Spend is written as a total so that the last write wins and a period reset is exact.
SpendSink = Callable[[str, float, float, float], None]


class SpendLedger(Protocol):
    async def reserve(self, key: KeyRecord, amount: float, now: float) -> Reservation: ...

    async def settle(self, reservation: Reservation, cost: float) -> None: ...

    async def add_saved(self, key: KeyRecord, saved: float, now: float) -> None: ...


class MemoryLedger:
    def __init__(self, sink: SpendSink | None = None):
        self._accounts: dict[str, Account] = {}
        self._ids = itertools.count(1)
        self._sink = sink

    def spend(self, key_id: str) -> float:
        account = self._accounts.get(key_id)
        return account.spend if account else 0.0

    def _account(self, key: KeyRecord, now: float) -> Account:
        account = self._accounts.get(key.id)
        if account is None:
            account = self._accounts[key.id] = Account(key.spend_usd, key.period_start, {})
        period = key.budget_period
        if period and now >= account.period_start + period:
            elapsed = (now - account.period_start) // period
            account.period_start += elapsed * period
            account.spend = 0.0
            self._persist(key.id, account, 0.0)
        return account

    async def reserve(self, key: KeyRecord, amount: float, now: float) -> Reservation:
        account = self._account(key, now)
        if key.budget_usd is not None:
            committed = account.spend + sum(account.reserved.values())
            fits = committed + amount <= key.budget_usd
            last_one = not account.reserved and account.spend < key.budget_usd
            if not (fits or last_one):
                raise BudgetExceeded(
                    f"This key has used ${account.spend:.4f} of its ${key.budget_usd:.4f} "
                    "budget" + (" for this period" if key.budget_period else "") + "."
                )
        reservation = Reservation(next(self._ids), key.id, amount)
        account.reserved[reservation.id] = amount
        return reservation

    async def settle(self, reservation: Reservation, cost: float) -> None:
        account = self._accounts[reservation.key_id]
        account.reserved.pop(reservation.id, None)
        account.spend += cost
        self._persist(reservation.key_id, account, 0.0)

    async def add_saved(self, key: KeyRecord, saved: float, now: float) -> None:
        self._persist(key.id, self._account(key, now), saved)

    def _persist(self, key_id: str, account: Account, saved: float) -> None:
        if self._sink is not None:
            self._sink(key_id, account.spend, saved, account.period_start)
