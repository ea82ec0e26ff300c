"""Reading an upstream's answer, shared by every route that relays one.

The upstream's failures, and only the upstream's, become the provider's errors (a client
that leaves is not the upstream failing); answers are read within a size bound; SSE
responses are framed one way everywhere.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from kallm.providers.base import Provider

Event = tuple[bytes, str | None, bytes | None]


async def next_event(events: AsyncIterator[Event], provider: Provider) -> Event | None:
    """The upstream's next event; its failures (and only its) become the provider's errors:
    a client that leaves is not the upstream failing."""
    with provider.errors():
        return await anext(events, None)


async def read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The answer read so far and whether that is all of it (reading stops past ``limit``)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in upstream.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


def event_stream(headers: Any) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx-based proxies: relay each event
    return response


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def sent(request: web.Request, response: web.Response) -> web.Response:
    """Send a whole response now, inside the handler: work after this call is off the
    client's clock (aiohttp would otherwise send it only after the handler returns)."""
    await response.prepare(request)
    await response.write_eof()
    return response
