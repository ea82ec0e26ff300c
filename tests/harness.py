"""Real servers for tests: the fake upstream and kallm, on OS-picked loopback ports.

Both run on an event loop in a background thread, so a test can drive them
with the synchronous ``openai`` client as well as the async one, and can stop
and restart kallm to test persistence.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from kallm.accounts.keyring import KeyBackend
from kallm.config import Settings
from kallm.server import RUNTIME, Runtime, create_app
from kallm.server.run import start_serving
from tests.fake_upstream import FakeUpstream, start_fake_upstream

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Upstream:
    fake: FakeUpstream
    runner: web.AppRunner
    url: str  # ends in /v1


@dataclass
class Proxy:
    """A running kallm; ``url`` ends in /v1 like an OpenAI base URL."""

    app: web.Application
    runner: web.AppRunner
    url: str
    root: str
    settings: Settings
    loop: LoopThread

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def keys(self) -> KeyBackend:
        keys = self.runtime.backends.keys
        assert keys is not None, "this proxy runs without a key store"
        return keys

    def call(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on the server's own loop (its backends live there)."""
        return self.loop.run(coro)


def start_upstream(loop: LoopThread) -> Upstream:
    fake, runner, url = loop.run(start_fake_upstream())
    return Upstream(fake, runner, url)


def start_proxy(loop: LoopThread, settings: Settings, **app_kwargs: Any) -> Proxy:
    async def start() -> Proxy:
        app = create_app(settings, **app_kwargs)
        served = await start_serving(app, settings, "127.0.0.1", 0)  # as `kallm serve` does
        root = f"http://127.0.0.1:{served.port}"
        return Proxy(app, served.runner, f"{root}/v1", root, settings, loop)

    return loop.run(start())


def stop(loop: LoopThread, runner: web.AppRunner) -> None:
    loop.run(runner.cleanup())


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """Plain HTTP to a server root, for what an SDK hides: raw bodies, odd headers, bad JSON."""

    def __init__(self, root: str):
        self.root = root

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Reply:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            self.root + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Reply(response.status, _lower(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, _lower(error.headers), error.read())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: bytes | dict[str, Any] | None = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
