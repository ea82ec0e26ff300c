"""Every other /v1/* route: relayed to an upstream unchanged and streamed back as it comes.

Most go to the default (first OpenAI-compatible) provider. ``/v1/embeddings``
is routed by its model like chat; ``GET /v1/models`` lists the configured
models and aliases once providers are configured.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from kallm.errors import KallmError, RequestError
from kallm.providers.base import Provider, forwardable
from kallm.providers.openai import authorization
from kallm.server.app import RUNTIME
from kallm.server.log import request_log


async def passthrough(request: web.Request) -> web.StreamResponse:
    body = await request.read() if request.can_read_body else None
    runtime = request.app[RUNTIME]
    await runtime.accounts.admit(request, None, None, request_log(request))
    provider = runtime.router.default
    return await relay(request, provider, "/" + request.match_info["tail"], body)


async def embeddings(request: web.Request) -> web.StreamResponse:
    """Route by model; rewrite the model name when an alias or provider/model named it."""
    runtime = request.app[RUNTIME]
    router = runtime.router
    body = await request.read()
    try:
        payload = json.loads(body)
        model = payload["model"]
    except (ValueError, KeyError, TypeError):
        payload, model = None, None
    await runtime.accounts.admit(request, model, None, request_log(request))
    if model is None:
        return await relay(request, router.default, "/embeddings", body)  # upstream judges it
    route = router.resolve(str(model))[0]
    if route.provider.kind != "openai":
        raise RequestError(
            f"provider {route.provider.name} ({route.provider.kind}) has no "
            "OpenAI embeddings endpoint",
            param="model",
        )
    if route.model != model:
        body = json.dumps({**payload, "model": route.model}).encode()
    return await relay(request, route.provider, "/embeddings", body)


async def models(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    await runtime.accounts.admit(request, None, None, request_log(request))
    if not runtime.settings.providers:
        return await relay(request, runtime.router.default, "/models", None)
    now = int(time.time())
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": now, "owned_by": name.split("/")[0]}
                for name in runtime.router.listed_models()
            ],
        }
    )


async def relay(
    request: web.Request, upstream: Provider, path: str, body: bytes | None
) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    headers = forwardable(request.headers, frozenset({"authorization"}))
    client = {} if runtime.accounts.enabled else request.headers  # never forward a virtual key
    headers["Authorization"] = authorization(upstream, client)
    request_log(request).provider = upstream.name
    upstream_response = await upstream.send(
        request.method, upstream.url(path, request.query_string), headers, body
    )
    async with upstream_response:
        response = web.StreamResponse(
            status=upstream_response.status,
            reason=upstream_response.reason,
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
