"""One Redis connection for every shared part, whether Redis answers, and getting it back.

Every call from the request path goes through ``RedisState.call``: while Redis is known to
be down it fails at once (no request waits for a connect timeout per call), and the first
call that fails marks it down. Each part registers what its outage means (the cache serves
from this replica's index, budgets refuse, rate limits fall back to a per-replica share,
keys are served as last seen); those reasons show in ``/health`` and ``/metrics`` and are
logged once per change. A monitor pings every ``PING_SECONDS`` while Redis is up (so an
idle replica notices an outage too) and every ``RETRY_SECONDS`` while it is down; when it
answers again the parts' ``on_reconnect`` hooks run (rebuild the index, reload keys,
replay settlements) and the marks are cleared, without a restart.

Scripts run with EVALSHA and fall back to EVAL on NOSCRIPT; never SCRIPT LOAD, which some
Redis proxies refuse (a peer gateway silently fell back to per-pod limits behind one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kallm.errors import KallmError

if TYPE_CHECKING:
    from kallm.server.health import Health

log = logging.getLogger("kallm.state")

T = TypeVar("T")
PING_SECONDS = 1.0
RETRY_SECONDS = 0.5
# What "Redis is not there" looks like from redis-py and the socket under it.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class StateUnavailable(KallmError):
    """Shared state cannot be read or changed right now (the admin API answers 503)."""

    status = 503
    code = "state_unavailable"


class Script:
    """A Lua script from ``kallm/state/redis/lua``, run by its SHA1 with an EVAL fallback."""

    def __init__(self, name: str):
        self.name = name
        self.source = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client: aioredis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a fresh or restarted server: EVAL caches it for next time
            return await client.eval(self.source, len(keys), *keys, *args)

    async def many(
        self, client: aioredis.Redis, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """The script once per (keys, args), pipelined: one round trip for the lot instead
        of one a call (writing back thousands of entries after an outage took seconds).
        The first call goes alone, so its EVAL fallback caches the script for the rest
        (no SCRIPT LOAD: see the module's docstring)."""
        if not calls:
            return []
        first = await self(client, *calls[0])
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls[1:]:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            return [first, *await pipe.execute()]


@dataclass
class Part:
    """A component that depends on Redis: what its outage means, and what to redo after."""

    name: str
    when_down: str
    on_reconnect: Callable[[], Awaitable[None]] | None = None


class RedisState:
    def __init__(self, url: str, health: Health, *, timeout: float = 0.5, prefix: str = "kallm"):
        self.url = url
        self.health = health
        self.timeout = timeout
        self.prefix = prefix
        self.client = _client(url, timeout)
        self.up = False
        self._parts: list[Part] = []
        self._wake = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._blocking: list[aioredis.Redis] = []
        self._recovered = asyncio.Event()
        self._closing = False

    def where(self) -> str:
        """The server, without a password, for messages."""
        pool = self.client.connection_pool.connection_kwargs
        if "path" in pool:
            return str(pool["path"])
        return f"{pool.get('host', 'localhost')}:{pool.get('port', 6379)}"

    def key(self, tag: str, *rest: str) -> str:
        """``{prefix:tag}:rest``: the braces are a Redis Cluster hash tag, so every key of
        one tag (one virtual key, the cache, the key ring) lives in one slot, and a Lua
        script may touch them all."""
        return ":".join([f"{{{self.prefix}:{tag}}}", *rest])

    def register(self, part: Part) -> None:
        self._parts.append(part)

    def blocking_client(self, seconds: float) -> aioredis.Redis:
        """A client of its own for calls that block (XREAD BLOCK, pub/sub), with a socket
        timeout longer than the block, so waiting is not mistaken for an outage."""
        client = _client(self.url, seconds + self.timeout + 1.0)
        self._blocking.append(client)
        return client

    async def start(self) -> None:
        """Connect if Redis answers; otherwise start degraded and keep trying."""
        try:
            await self.client.ping()
            self.up = True
            log.info("shared state: Redis at %s", self.where())
        except UNREACHABLE as exc:
            self._mark_down(exc)
        self._monitor = asyncio.create_task(self._watch())

    async def close(self) -> None:
        self._closing = True
        if self._monitor is not None:
            await stop_tasks([self._monitor])
        for client in [*self._blocking, self.client]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 1.0)

    async def call(self, action: Awaitable[T]) -> T:
        """Await one Redis call; ``StateUnavailable`` if Redis is down or stops answering."""
        if not self.up:
            _discard(action)
            raise StateUnavailable(self.down_message())
        try:
            return await action
        except UNREACHABLE as exc:
            self.lost(exc)
            raise StateUnavailable(self.down_message()) from None

    def down_message(self) -> str:
        return f"shared state (Redis at {self.where()}) is unreachable"

    def lost(self, exc: BaseException) -> None:
        """A call failed for want of Redis: mark every part down and let the monitor retry."""
        if self.up and not self._closing:
            self.up = False
            self._recovered.clear()
            self._mark_down(exc)
            self._wake.set()

    async def until_up(self) -> None:
        """Wait until Redis is back (and the parts have caught up)."""
        await self._recovered.wait()

    def _mark_down(self, exc: BaseException) -> None:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for part in self._parts:
            self.health.degrade(
                part.name, f"Redis at {self.where()} unreachable ({why}); {part.when_down}"
            )

    async def _watch(self) -> None:
        """Ping while up (an idle replica notices an outage too); retry while down."""
        if self.up:
            self._recovered.set()
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), PING_SECONDS if self.up else RETRY_SECONDS
                )
            self._wake.clear()
            try:
                await self.client.ping()
            except UNREACHABLE as exc:
                self.lost(exc)
                continue
            if not self.up:
                await self._reconnected()

    async def _reconnected(self) -> None:
        self.up = True
        for part in self._parts:
            if part.on_reconnect is not None:
                try:
                    await part.on_reconnect()
                except UNREACHABLE as exc:
                    self.lost(exc)
                    return
                except StateUnavailable:
                    return
                except Exception:
                    log.exception("shared state: catching up %s after Redis returned", part.name)
        if not self.up:
            # lost again while catching up, by a call a part or a request let pass (the
            # cache fails open): still down, and the monitor tries again. Declaring it back
            # would leave `up` false under a healthy /health, and every `until_up` loop
            # spinning on a set event without yielding (the event loop froze).
            return
        for part in self._parts:
            self.health.recover(part.name)
        self._recovered.set()
        log.info("shared state: Redis at %s answers again", self.where())


async def stop_tasks(tasks: list[asyncio.Task[None]], timeout: float = 2.0) -> None:
    """Cancel background tasks and wait for them, boundedly: a task cancelled inside a
    redis-py call may take a moment to let go of its connection, and shutting down must
    not wait on it for ever."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


def _client(url: str, timeout: float) -> aioredis.Redis:
    """No retries inside redis-py (a dead Redis must fail fast; callers decide), short
    socket timeouts, bytes in and out."""
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
        decode_responses=False,
    )


def _discard(action: Awaitable[Any]) -> None:
    """Close a coroutine that will not be awaited (no 'never awaited' warning)."""
    close = getattr(action, "close", None)
    if close is not None:
        close()
