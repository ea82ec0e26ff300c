"""Where shared state lives, chosen in one place from the settings.

``in-process`` (the default, a laptop): the cache index, spend and rate limits in this
process, keys and spend made durable in the local SQLite database. Every backend sits
behind the seam its domain defines (``CacheBackend``, ``SpendLedger``, ``RateLimits``,
``KeyBackend``); the request path never knows which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kallm.accounts.budget import MemoryLedger, SpendLedger, SpendSink
from kallm.accounts.keyring import DatabaseKeys, KeyBackend
from kallm.accounts.ratelimit import MemoryRateLimits, RateLimits
from kallm.cache.store import CacheBackend, MemoryBackend
from kallm.config import Settings


@dataclass(frozen=True, slots=True)
class Backends:
    """Where shared state lives, handed to the app whole."""

    cache: CacheBackend
    ledger: SpendLedger
    limits: RateLimits
    keys: KeyBackend | None  # None: no key store (no database and no Redis)


def in_process(settings: Settings, spend_sink: SpendSink | None) -> Backends:
    """State in this process; keys (and durable spend) in the database, if there is one."""
    keys = DatabaseKeys(settings.db_path, settings.keys_dir) if settings.db_path else None
    return Backends(
        cache=MemoryBackend(settings.max_cache_size, max_bytes=settings.cache_max_bytes),
        ledger=MemoryLedger(spend_sink),
        limits=MemoryRateLimits(),
        keys=keys,
    )
