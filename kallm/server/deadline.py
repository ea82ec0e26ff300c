"""A request's deadline upstream: how long one request may take, stream included.

A read timeout alone lets an upstream that trickles a byte every few seconds hold a
request (and its reservation) for ever. ``upstream.deadline`` bounds the whole call;
a client may ask for less with ``X-Kallm-Deadline: 30s``, never for more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

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


@contextlib.asynccontextmanager
async def within(deadline: float) -> AsyncIterator[None]:
    """Upstream work bounded by the deadline, ending as the 504 an SDK shows."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise UpstreamTimeout(
            "the upstream did not answer before the request's deadline (upstream.deadline)"
        ) from None
