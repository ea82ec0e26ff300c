"""Requests and tokens per minute shared by every replica: GCRA in one Lua script.

One hash per virtual key (``{kallm:<key id>}:rate``) holds a "theoretical arrival time"
per limit; a request is admitted when pushing it by the request's cost keeps it within a
minute of Redis's clock, so ``rpm`` requests may come at once and then one every
``60/rpm`` seconds, whichever replica they reach. Tokens are charged at admission with the
request's estimate and corrected at settlement by the difference.

Redis unreachable: each replica enforces its share of every limit (limit ÷
``state.replicas``, at least 1) in process, so the fleet as a whole stays near the limit
instead of either refusing everything or allowing ``replicas`` times it.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import replace

from kallm.accounts.keys import KeyRecord
from kallm.accounts.ratelimit import MemoryRateLimits, RateState
from kallm.state.redis.client import Part, RedisState, Script, StateUnavailable

_ADMIT = Script("ratelimit_admit")
_SETTLE = Script("ratelimit_settle")
_REASONS = {b"r": "requests per minute", b"t": "tokens per minute"}
LOCAL_IDS = 10_000  # request ids admitted by the fallback, remembered for their settlement


class RedisRateLimits:
    """``RateLimits`` over Redis, with a per-replica share while Redis is away."""

    def __init__(self, state: RedisState, replicas: int):
        self.state = state
        self.replicas = max(1, replicas)
        self.fallback = MemoryRateLimits()
        self._local: OrderedDict[str, None] = OrderedDict()
        state.register(
            Part(
                "rate_limits",
                f"each replica enforces 1/{self.replicas} of every key's limits "
                "(state.replicas) until it answers",
            )
        )

    def _key(self, key: KeyRecord) -> str:
        return self.state.key(key.id, "rate")

    async def admit(self, key: KeyRecord, tokens: int, request_id: str, now: float) -> RateState:
        if key.rpm is None and key.tpm is None:
            return RateState(None, None, None, None)
        if key.rpm == 0:  # a limit of none: nothing is admitted (0 means "no limit" to Lua)
            return RateState(0, 0, key.tpm, None, 60.0, "requests per minute")
        tpm = None if key.tpm is None else max(key.tpm, 1)
        args = [key.rpm or 0, tpm or 0, tokens if tpm else 0]
        try:
            reply = await self.state.call(_ADMIT(self.state.client, [self._key(key)], args))
        except StateUnavailable:
            return await self._admit_locally(key, tokens, request_id, now)
        if int(reply[0]) == 0:
            which = reply[1]
            return RateState(
                key.rpm,
                0 if which == b"r" else None,
                key.tpm,
                0 if which == b"t" else None,
                max(0.0, float(reply[2])),
                _REASONS[which],
            )
        remaining_r, remaining_t = int(reply[1]), int(reply[2])
        return RateState(
            key.rpm,
            remaining_r if key.rpm is not None else None,
            key.tpm,
            remaining_t if key.tpm is not None else None,
        )

    async def settle(
        self, key: KeyRecord, reserved: int, used: int, request_id: str, now: float
    ) -> None:
        if request_id in self._local:
            del self._local[request_id]
            await self.fallback.settle(self._share(key), reserved, used, request_id, now)
            return
        if key.tpm is None or used == reserved:
            return
        args = [used - reserved, max(key.tpm, 1)]
        with contextlib.suppress(StateUnavailable):  # else the estimate stays charged
            await self.state.call(_SETTLE(self.state.client, [self._key(key)], args))

    async def _admit_locally(
        self, key: KeyRecord, tokens: int, request_id: str, now: float
    ) -> RateState:
        self._local[request_id] = None
        while len(self._local) > LOCAL_IDS:
            self._local.popitem(last=False)
        return await self.fallback.admit(self._share(key), tokens, request_id, now)

    def _share(self, key: KeyRecord) -> KeyRecord:
        """This replica's part of the key's limits."""
        return replace(
            key,
            rpm=None if key.rpm is None else max(1, math.floor(key.rpm / self.replicas)),
            tpm=None if key.tpm is None else max(1, math.floor(key.tpm / self.replicas)),
        )
