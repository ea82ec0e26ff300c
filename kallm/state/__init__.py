"""Where shared state lives, chosen in one place from the settings.

``in-process`` (the default, a laptop): the cache index, spend and rate limits in this
process, keys and spend made durable in the local SQLite database. ``redis`` (when
``state.redis_url`` is set): all four shared through Redis or Valkey, so several replicas
behave as one (``kallm.state.redis``; imported only then, so a laptop needs no Redis
client). Every backend sits behind the seam its domain defines (``CacheBackend``,
``SpendLedger``, ``RateLimits``, ``KeyBackend``); the request path never knows which one
runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kallm.accounts.budget import MemoryLedger, SpendLedger, SpendSink
from kallm.accounts.keyring import DatabaseKeys, KeyBackend
from kallm.accounts.ratelimit import MemoryRateLimits, RateLimits
from kallm.cache.store import CacheBackend, MemoryBackend
from kallm.config import Settings

if TYPE_CHECKING:
    from kallm.server.health import Health


class Shared(Protocol):
    """What a shared backend runs besides the parts: a connection, background tasks."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Backends:
    """Where shared state lives, handed to the app whole."""

    cache: CacheBackend
    ledger: SpendLedger
    limits: RateLimits
    keys: KeyBackend | None  # None: no key store (no database and no Redis)
    shared: Shared | None = None  # started before the parts, stopped after them


def choose(
    settings: Settings, spend_sink: SpendSink | None, health: Health, replica: str
) -> Backends:
    """The one place backends are chosen: Redis when ``state.redis_url`` is set."""
    if settings.redis_url:
        from kallm.state.redis import shared

        return shared(settings, health, replica)
    return in_process(settings, spend_sink)


def in_process(settings: Settings, spend_sink: SpendSink | None) -> Backends:
    """State in this process; keys (and durable spend) in the database, if there is one."""
    keys = DatabaseKeys(settings.db_path, settings.keys_dir) if settings.db_path else None
    return Backends(
        cache=MemoryBackend(settings.max_cache_size, max_bytes=settings.cache_max_bytes),
        ledger=MemoryLedger(spend_sink),
        limits=MemoryRateLimits(),
        keys=keys,
    )
