"""Every other /v1/* route: relayed to the upstream unchanged and streamed back as it comes."""

from __future__ import annotations

from aiohttp import web

from kallm.errors import KallmError
from kallm.providers.base import forwardable
from kallm.providers.openai import authorization
from kallm.server.app import RUNTIME
from kallm.server.log import request_log

_RELAY_CHUNK = 64 * 1024


async def passthrough(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    upstream = runtime.router.default
    headers = forwardable(request.headers, frozenset({"authorization"}))
    headers["Authorization"] = authorization(upstream, request.headers)
    body = await request.read() if request.can_read_body else None
    request_log(request).provider = upstream.name
    path = request.match_info["tail"]
    upstream_response = await upstream.send(
        request.method, upstream.url("/" + path, request.query_string), headers, body
    )
    async with upstream_response:
        response = web.StreamResponse(
            status=upstream_response.status, reason=upstream_response.reason,
            headers=forwardable(upstream_response.headers),
        )
        if "Content-Length" in upstream_response.headers:
            response.content_length = int(upstream_response.headers["Content-Length"])
        await response.prepare(request)
        try:
            with upstream.errors():
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
        except KallmError as exc:  # headers are gone: all we can do is cut the connection
            request_log(request).note = f"relay broke: {exc.message}"
            response.force_close()
            return response
    await response.write_eof()
    return response
