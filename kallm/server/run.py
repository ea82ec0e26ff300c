"""Run the server until SIGINT/SIGTERM: in-flight requests finish, then the cache is saved.

The start-up line is written only once the socket is bound, and it names the port
really bound (``--port 0`` asks the OS for one) and the providers requests will go to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kallm.config import Settings
from kallm.errors import ConfigError
from kallm.providers.router import provider_configs
from kallm.server.app import create_app
from kallm.server.connections import KallmRunner, close_stalled
from kallm.server.loop import upstream_is_self

log = logging.getLogger("kallm.server")

GRACE_SECONDS = 30.0  # how long in-flight requests may finish after a stop signal


def serve(settings: Settings) -> None:
    """Block serving ``settings.host:port``; raises OSError if the address is taken and
    ConfigError when a setting makes serving impossible (e.g. kallm as its own upstream)."""
    run_loop(settings.event_loop, _serve(settings))


def run_loop(choice: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (``auto``) or asked for, else asyncio.

    uvloop is measured (``scripts/bench_core.py``, one run each, interleaved): at 32
    concurrent requests +40-50% exact hits and misses per second, +15% paraphrase hits.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    "server.event_loop = uvloop, but uvloop is not installed"
                ) from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


@dataclass
class Served:
    """An app listening on a socket, with its connection timers; ``stop`` ends both."""

    runner: web.AppRunner
    port: int
    sweeper: asyncio.Task[None]

    async def stop(self) -> None:
        self.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper
        await self.runner.cleanup()


async def start_serving(app: web.Application, settings: Settings, host: str, port: int) -> Served:
    """Start ``app`` (its components, then the socket) and the connection timers."""
    runner = KallmRunner(
        app,
        access_log=None,
        shutdown_timeout=GRACE_SECONDS,
        keepalive_timeout=settings.idle_timeout,
        # a body kallm refused unread (too large, undecodable) is not drained: the
        # connection closes after the answer instead
        lingering_time=0,
    )
    try:
        await runner.setup()  # start-up: database, providers, cache file
    except BaseException:
        # a component that failed to start (a bad cache file, a missing keys dir) must not
        # leave those before it running: the cleanup contexts that entered exit, in reverse
        await app.cleanup()
        raise
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    sweeper = asyncio.create_task(close_stalled(runner, settings.idle_timeout))
    return Served(runner, _bound_port(runner, port), sweeper)


async def _serve(settings: Settings) -> None:
    served = await start_serving(create_app(settings), settings, settings.host, settings.port)
    try:
        _refuse_self_as_upstream(settings, served.port)
        log.info(
            "kallm listening on http://%s:%d/v1 → %s",
            settings.host,
            served.port,
            describe_providers(settings),
        )
        await _until_stopped()
        log.info("stopping: finishing requests in flight (up to %.0fs)", GRACE_SECONDS)
    finally:
        await served.stop()


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


def _refuse_self_as_upstream(settings: Settings, port: int) -> None:
    for config in provider_configs(settings):
        if upstream_is_self(config.base_url, settings.host, port):
            where = "OPENAI_BASE_URL" if not settings.providers else f"provider {config.name}"
            raise ConfigError(
                f"{where} ({config.base_url}) points at this kallm itself "
                f"(listening on {settings.host}:{port}); set it to the real upstream"
            )


def describe_providers(settings: Settings) -> str:
    """``openai (https://api.openai.com/v1)`` or ``openai, anthropic, gemini; aliases: fast``."""
    configs = provider_configs(settings)
    if not settings.providers:
        return f"upstream {configs[0].base_url}"
    text = ", ".join(f"{c.name} ({c.kind})" for c in configs)
    if settings.aliases:
        text += "; aliases: " + ", ".join(a.name for a in settings.aliases)
    return "providers " + text


async def _until_stopped() -> None:
    """Wait for SIGINT or SIGTERM (Ctrl-C, docker stop, a Kubernetes pod deletion)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
