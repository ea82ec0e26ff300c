"""Plumbing shared by the fake upstreams the test-suite owns (OpenAI, Anthropic, Gemini).

Each fake is an aiohttp app with one catch-all route, plain attributes a test
sets to steer it, and a record of every request to assert on. ``FakeServer``
holds what they have in common: the app and its shutdown event, the steering
every fake understands, request recording, the interruptible pause, the
``fail_times`` countdown, and ``start()``. The API-specific parts (routing,
validation, answers, error shapes) stay in each fake's own module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


class Headers(dict[str, str]):
    """Request headers as a plain dict, but case-insensitive like HTTP.

    Keys are stored lower-cased; lookups fold case, so ``headers["Authorization"]``
    and ``headers["authorization"]`` both work whatever the client sent.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((key.lower(), value) for key, value in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class RecordedRequest:
    """One request as the fake received it, so tests can assert what the proxy forwarded."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    json: Any | None
    body: bytes


class FakeServer:
    """An aiohttp app with one catch-all route to ``_dispatch``, which subclasses write.

    Shared steering (``reset()`` turns it off; subclasses extend it via ``super()``):
    ``fail_status`` / ``fail_times`` / ``fail_message`` (see ``armed_failure()``),
    ``stall_seconds``, ``cut_stream_after`` and ``reply``. Observation: ``calls``
    (requests per path) and ``requests`` (every ``RecordedRequest``, in order).
    """

    #: Appended to ``http://host:port`` to form ``base_url`` (e.g. ``"/v1"``).
    base_path = ""

    def __init__(self) -> None:
        self.app = web.Application(client_max_size=64 * 1024 * 1024)  # kallm allows 10 MB
        # One catch-all route: every request is recorded before routing, and
        # unknown paths still get the API's own 404 error rather than aiohttp's.
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)
        # Set on shutdown so stalls and chunk delays end at once instead of
        # holding runner.cleanup() hostage.
        self._closing = asyncio.Event()
        self.base_url: str | None = None
        self.reset()

    def reset(self) -> None:
        """Clear steering and observation, so one fake can serve many tests."""
        self.fail_status: int | None = None
        self.fail_times: int | None = None
        self.fail_message: str | None = None
        self.stall_seconds: float = 0.0
        self.cut_stream_after: int | None = None
        self.reply: str | None = None
        self.calls: collections.Counter[str] = collections.Counter()
        self.requests: list[RecordedRequest] = []

    async def _on_startup(self, _app: web.Application) -> None:
        self._closing.clear()

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing.set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def record(self, request: web.Request) -> tuple[bytes, Any]:
        """Read the body, count the path and keep a ``RecordedRequest``.

        Returns ``(raw body, parsed JSON)``; the JSON is None for an empty or
        unparseable body.
        """
        raw = await request.read()
        parsed = parse_json(raw)
        self.calls[request.path] += 1
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=Headers(request.headers.items()),
                json=parsed,
                body=raw,
            )
        )
        return raw, parsed

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake early when the server shuts down."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def armed_failure(self) -> int | None:
        """The status to fail this request with, or None to behave.

        ``fail_times`` counts down: only that many requests fail, then the fake
        behaves again; without ``fail_status`` the failures are 500s.
        """
        if self.fail_status is None and self.fail_times is None:
            return None
        if self.fail_times is not None:
            if self.fail_times <= 0:
                return None
            self.fail_times -= 1
        return self.fail_status if self.fail_status is not None else 500


def parse_json(raw: bytes) -> Any | None:
    """The body as JSON, or None when it is empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


async def start(fake: FakeServer, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve ``fake`` on ``port`` (0: one the OS picks); return (runner, base_url).

    Sets ``fake.base_url`` too. Call ``await runner.cleanup()`` to stop it;
    pending stalls end immediately.
    """
    runner = web.AppRunner(fake.app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    fake.base_url = f"http://{url_host}:{bound_port}{fake.base_path}"
    return runner, fake.base_url
