"""A request's deadline upstream: how long one request may take, stream included.

A read timeout alone lets an upstream that trickles a byte every few seconds hold a
request (and its reservation) for ever. ``upstream.deadline`` bounds the whole call;
a client may ask for less with ``X-Kallm-Deadline: 30s``, never for more.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kallm.config import parse_duration
from kallm.errors import RequestError, UpstreamTimeout
from kallm.server.request import header_text

DEADLINE_HEADER = "X-Kallm-Deadline"


def deadline_of(request: web.Request, limit: float) -> float:
    """The loop time by which this request must be done upstream."""
    seconds = limit
    asked = header_text(request.headers, DEADLINE_HEADER)
    if asked is not None:
        try:
            wanted = parse_duration(asked)
        except ValueError as exc:
            raise RequestError(
                f"{DEADLINE_HEADER}: expected {exc}", param=DEADLINE_HEADER
            ) from None
        if wanted > 0:
            seconds = min(wanted, limit)
    return asyncio.get_running_loop().time() + seconds


class within:
    """Upstream work bounded by the deadline, ending as the 504 an SDK shows. (A class, not
    an async generator: it runs on every upstream call.)"""

    __slots__ = ("_timeout",)

    def __init__(self, deadline: float):
        self._timeout = asyncio.timeout_at(deadline)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            await self._timeout.__aexit__(kind, error, trace)
        except TimeoutError:
            raise UpstreamTimeout(
                "the upstream did not answer before the request's deadline (upstream.deadline)"
            ) from None
