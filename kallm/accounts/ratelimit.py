"""Requests and tokens per minute, per key, over a sliding 60-second window.

Tokens are charged at admission with the request's estimate and corrected at
settlement with what it really used, so fifty concurrent requests cannot all slip
under a tokens-per-minute limit before any of them has finished. As with budgets,
one request is admitted when nothing of the key's is in the window, so a single
request bigger than the limit is not refused for ever.

``RateLimits`` is the seam for shared state: this in-process version keeps
timestamps in deques; the Redis version (``kallm.state.redis``) runs GCRA in Lua.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol

from kallm.accounts.keys import KeyRecord

WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class RateState:
    """What a caller sees in ``x-ratelimit-*`` headers; ``retry_after`` is set when refused."""

    limit_requests: int | None
    remaining_requests: int | None
    limit_tokens: int | None
    remaining_tokens: int | None
    retry_after: float | None = None
    reason: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(max(self.remaining_requests or 0, 0))
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(max(self.remaining_tokens or 0, 0))
        if self.retry_after is not None:
            out["Retry-After"] = str(max(1, round(self.retry_after + 0.5)))
        return out


class RateLimits(Protocol):
    async def admit(self, key: KeyRecord, tokens: int, request_id: str, now: float) -> RateState:
        """Count the request and charge ``tokens`` (its estimate) if both fit."""
        ...

    async def settle(
        self, key: KeyRecord, reserved: int, used: int, request_id: str, now: float
    ) -> None:
        """Replace the estimate charged at admission with the tokens really used."""
        ...


class MemoryRateLimits:
    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = {}
        # per key: request id -> [admitted at, tokens], oldest first; settle edits in place
        self._tokens: dict[str, OrderedDict[str, list[float]]] = {}

    async def admit(self, key: KeyRecord, tokens: int, request_id: str, now: float) -> RateState:
        """Count the request if it fits; a refused request is not counted."""
        requests = self._requests.setdefault(key.id, deque())
        charged = self._tokens.setdefault(key.id, OrderedDict())
        while requests and requests[0] <= now - WINDOW:
            requests.popleft()
        while charged and next(iter(charged.values()))[0] <= now - WINDOW:
            charged.popitem(last=False)
        used = int(sum(n for _, n in charged.values()))
        state = RateState(
            key.rpm,
            None if key.rpm is None else key.rpm - len(requests),
            key.tpm,
            None if key.tpm is None else key.tpm - used,
        )
        if key.rpm is not None and len(requests) >= key.rpm:
            oldest = requests[0] if requests else now  # rpm 0: nothing is ever admitted
            return _refused(state, oldest + WINDOW - now, "requests per minute")
        if key.tpm is not None and charged and used + tokens > key.tpm:
            oldest = next(iter(charged.values()))[0]
            return _refused(state, oldest + WINDOW - now, "tokens per minute")
        requests.append(now)
        if key.tpm is not None:
            charged[request_id] = [now, tokens]
        return RateState(
            key.rpm,
            None if key.rpm is None else key.rpm - len(requests),
            key.tpm,
            None if key.tpm is None else key.tpm - used - tokens,
        )

    async def settle(
        self, key: KeyRecord, reserved: int, used: int, request_id: str, now: float
    ) -> None:
        entry = self._tokens.get(key.id, {}).get(request_id)
        if entry is not None:  # still in the window: it now counts what it really used
            entry[1] = used


def _refused(state: RateState, retry_after: float, reason: str) -> RateState:
    return RateState(
        state.limit_requests,
        state.remaining_requests,
        state.limit_tokens,
        state.remaining_tokens,
        max(retry_after, 0.0),
        reason,
    )
