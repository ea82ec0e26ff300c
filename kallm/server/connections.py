"""Connection timers: a client that is slow on purpose cannot hold a connection for ever.

aiohttp has no header timeout, and a client that sends a few header bytes now and then
keeps its keep-alive timer from ever firing: 600 such clients held 600 connections open
indefinitely. So once a second the server's connections are swept: one that has not
started a request (headers complete) for ``idle_timeout`` seconds is closed, whether it
sits idle between requests or trickles a header in. A request that is being handled is
never cut here; its body read has its own deadline (``read_body``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from kallm.errors import KallmError

SWEEP_SECONDS = 1.0
log = logging.getLogger("kallm.server")


class RequestTimeout(KallmError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body, or 408 when the client does not send it within ``timeout``."""
    if request.content.is_eof():  # it all came with the headers: nothing to wait for
        return await request.read()
    try:
        async with asyncio.timeout(timeout):  # no task per request, as wait_for would make
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout:g}s (server.body_timeout)"
        ) from None


async def close_stalled(
    runner: web.BaseRunner, idle_timeout: float, clock: Callable[[], float] = time.monotonic
) -> None:
    """Sweep the runner's connections until it is cleaned up (or this task is cancelled)."""
    last_seen: dict[object, tuple[int, float]] = {}  # connection -> (requests begun, since)
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        server = runner.server
        if server is None:
            return
        now = clock()
        live = server.connections
        for connection in live:
            begun = getattr(connection, "_request_count", 0)
            busy = getattr(connection, "_current_request", None) is not None
            count, since = last_seen.get(connection, (-1, now))
            if busy or begun != count:
                last_seen[connection] = (begun, now)
                continue
            if now - since > idle_timeout:
                with contextlib.suppress(Exception):
                    connection.force_close()
        alive = set(live)
        for connection in [c for c in last_seen if c not in alive]:
            del last_seen[connection]


class _JsonErrorHandler(RequestHandler):
    """aiohttp's protocol handler, but the errors it answers itself (a request line or
    header it cannot parse, before any of kallm's code runs) are OpenAI's error JSON and
    one log line, not plain text and a traceback."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        reason = getattr(exc, "message", None) or message or HTTPStatus(status).phrase
        reason = " ".join(str(reason).split())[:200]
        log.info("refused a malformed request from %s: %s", request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        error = KallmError(f"malformed HTTP request: {reason}")
        error.status = status
        error.type = "invalid_request_error" if status < 500 else "server_error"
        response = web.json_response(error.to_body(), status=status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class KallmRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer protocol errors in kallm's error shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
