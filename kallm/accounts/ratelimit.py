"""Requests and tokens per minute, per key, over a sliding 60-second window.

``RateLimits`` is the seam for shared state: this in-process version keeps
timestamps in deques; a Redis version can keep the same windows in sorted
sets without the request path changing.
"""

from __future__ import annotations

from collections import deque
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
    async def admit(self, key: KeyRecord, now: float) -> RateState: ...

    async def add_tokens(self, key: KeyRecord, tokens: int, now: float) -> None: ...


class MemoryRateLimits:
    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    async def admit(self, key: KeyRecord, now: float) -> RateState:
        """Count the request if it fits; a refused request is not counted."""
        requests = self._requests.setdefault(key.id, deque())
        tokens = self._tokens.setdefault(key.id, deque())
        while requests and requests[0] <= now - WINDOW:
            requests.popleft()
        while tokens and tokens[0][0] <= now - WINDOW:
            tokens.popleft()
        used_tokens = sum(n for _, n in tokens)
        state = RateState(
            key.rpm,
            None if key.rpm is None else key.rpm - len(requests),
            key.tpm,
            None if key.tpm is None else key.tpm - used_tokens,
        )
        if key.rpm is not None and len(requests) >= key.rpm:
            return _refused(state, requests[0] + WINDOW - now, "requests per minute")
        if key.tpm is not None and used_tokens >= key.tpm:
            return _refused(state, tokens[0][0] + WINDOW - now, "tokens per minute")
        requests.append(now)
        if key.rpm is not None:
            state = RateState(key.rpm, key.rpm - len(requests), key.tpm, state.remaining_tokens)
        return state

    async def add_tokens(self, key: KeyRecord, tokens: int, now: float) -> None:
        if key.tpm is not None and tokens > 0:
            self._tokens.setdefault(key.id, deque()).append((now, tokens))


def _refused(state: RateState, retry_after: float, reason: str) -> RateState:
    return RateState(
        state.limit_requests,
        state.remaining_requests,
        state.limit_tokens,
        state.remaining_tokens,
        max(retry_after, 0.0),
        reason,
    )
