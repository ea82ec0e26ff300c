"""Shared state on plain Redis or Valkey (>= 6.2, no modules): several ``kallm serve``
replicas behave as one.

Chosen by ``state.redis_url`` (``KALLM_REDIS_URL``, ``--redis-url``) in ``kallm.state``.
Each part sits behind the seam its domain defines, so the request path does not know it
runs: ``RedisCache`` (a ``CacheBackend``), ``RedisLedger`` (a ``SpendLedger``),
``RedisRateLimits`` (``RateLimits``) and ``RedisKeys`` (a ``KeyBackend``), all on one
``RedisState`` (the connection, whether Redis answers, and what to redo when it returns).
The client library (redis-py) is imported only here, so a laptop never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kallm.config import Settings
from kallm.errors import ConfigError

if TYPE_CHECKING:
    from kallm.server.health import Health
    from kallm.state import Backends

try:
    import redis.asyncio  # noqa: F401
except ImportError:  # pragma: no cover - depends on what is installed
    raise ConfigError(
        "state.redis_url (KALLM_REDIS_URL) is set, but the Redis client is not installed: "
        "pip install 'redis>=5.0.1'"
    ) from None

from kallm.state.redis.cache import RedisCache
from kallm.state.redis.client import RedisState
from kallm.state.redis.keys import RedisKeys
from kallm.state.redis.ledger import RedisLedger
from kallm.state.redis.ratelimit import RedisRateLimits


class SharedRedis:
    """Starts and stops what the parts share: the connection monitor and the cache's
    tailer. (Keys start with the key store, like every ``KeyBackend``.)"""

    def __init__(self, state: RedisState, cache: RedisCache):
        self.state = state
        self.cache = cache

    async def start(self) -> None:
        await self.state.start()
        await self.cache.start()

    async def close(self) -> None:
        await self.cache.close()
        await self.state.close()


def shared(settings: Settings, health: Health, replica: str) -> Backends:
    """Every backend on the Redis at ``settings.redis_url``."""
    from kallm.state import Backends

    assert settings.redis_url is not None
    state = RedisState(
        settings.redis_url,
        health,
        timeout=settings.redis_timeout,
        prefix=settings.redis_prefix,
    )
    cache = RedisCache(state, settings.max_cache_size, replica)
    ledger = RedisLedger(state, settings.reservation_ttl)
    return Backends(
        cache=cache,
        ledger=ledger,
        limits=RedisRateLimits(state, settings.replicas),
        keys=RedisKeys(state, ledger, settings.keys_dir),
        shared=SharedRedis(state, cache),
    )
