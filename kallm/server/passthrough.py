"""Every /v1 route but chat: relayed to an upstream as it comes, and priced where it can be.

Routes that name a model (completions, embeddings, responses) go to the provider their
model resolved to, with the model name that provider knows, and are priced from the
``usage`` the answer ends with (read from the relayed bytes' tail, so nothing is
buffered); an answer without usage is billed from its size. Everything else goes to the
default (first OpenAI-compatible) provider. The path sent upstream is always the
normalised one (``kallm.server.routes``), never the client's bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.errors import KallmError, RequestError
from kallm.providers.base import CLIENT_BODY, Provider, client_headers, encode_payload, forwardable
from kallm.providers.openai import authorization
from kallm.server.admission import Admission, admission, settle_once
from kallm.server.connections import read_body
from kallm.server.deadline import deadline_of, within
from kallm.server.log import request_log
from kallm.server.runtime import Runtime, runtime_of

TAIL_BYTES = 16 * 1024  # where an answer's usage object is found: at its end
CHARS_PER_TOKEN = 4


async def passthrough(request: web.Request) -> web.StreamResponse:
    """A model-naming route to its provider (priced); anything else to the default one."""
    runtime = runtime_of(request)
    admitted = admission(request)
    if admitted.payload is not None:
        return await _policed(request, runtime, admitted)
    body = (
        await read_body(request, runtime.settings.body_timeout) if request.can_read_body else None
    )
    return await relay(request, runtime.router.default, admitted.path.upstream_path, body)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _policed(request, runtime_of(request), admission(request))


async def _policed(
    request: web.Request, runtime: Runtime, admitted: Admission
) -> web.StreamResponse:
    route = admitted.routes[0]
    if route.provider.kind != "openai":
        raise RequestError(
            f"provider {route.provider.name} ({route.provider.kind}) has no OpenAI "
            f"/{'/'.join(admitted.path.segments)} endpoint",
            param="model",
        )
    body = encode_payload(admitted.payload or {}, route.model, admitted.body)
    record = request_log(request)
    record.upstream_model = route.model
    tap = UsageTap()

    def price() -> None:
        usage = tap.usage()
        if usage is None and tap.status == 200 and tap.relayed:
            usage = _counted(admitted, tap.relayed)
            record.note = "billed from the bytes relayed: the answer had no usage"
        if usage is not None:
            record.usage = usage
            record.cost_usd = runtime.prices.cost(route.model, usage)

    async def settle_before_the_end() -> None:
        price()
        await settle_once(runtime, record)

    try:
        return await relay(
            request,
            route.provider,
            admitted.path.upstream_path,
            body,
            tap,
            before_end=settle_before_the_end,
        )
    finally:
        price()  # a relay cut short is billed what it delivered


def _counted(admitted: Admission, relayed: int) -> Usage:
    output = 0 if admitted.path.route.name == "embeddings" else relayed
    return Usage(len(admitted.body) // CHARS_PER_TOKEN, math.ceil(output / CHARS_PER_TOKEN))


def raw_query(request: web.Request) -> str:
    """The query as the client encoded it: decoding it (``%23`` to ``#``) would change it."""
    return request.raw_path.partition("?")[2].partition("#")[0]


class UsageTap:
    """Watches relayed bytes for the ``usage`` object an answer (or its last event) ends with."""

    def __init__(self) -> None:
        self.tail = b""
        self.relayed = 0
        self.status = 0

    def feed(self, chunk: bytes) -> None:
        self.relayed += len(chunk)
        self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def usage(self) -> Usage | None:
        at = self.tail.rfind(b'"usage"')
        while at != -1:
            start = self.tail.find(b"{", at)
            try:
                found, _ = json.JSONDecoder().raw_decode(self.tail[start:].decode(errors="replace"))
            except (ValueError, RecursionError):
                found = None
            if isinstance(found, dict) and start != -1:
                return Usage.from_openai(found)
            at = self.tail.rfind(b'"usage"', 0, at)
        return None


async def relay(
    request: web.Request,
    upstream: Provider,
    path: str,
    body: bytes | None,
    tap: UsageTap | None = None,
    *,
    headers: dict[str, str] | None = None,
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """Relay one call upstream and its answer back as it comes. ``headers`` replaces the
    client's (and the credential choice) when the route builds its own; ``before_end``
    runs once the upstream's answer is all relayed, before the response ends."""
    runtime = runtime_of(request)
    if headers is None:
        headers = client_headers(
            request.headers, runtime.virtual_keys, CLIENT_BODY | {"authorization"}
        )
        client: Any = {} if runtime.virtual_keys else request.headers  # a virtual key is ours
        headers["Authorization"] = authorization(upstream, client)
    else:
        headers = {**headers, "Content-Type": "application/json"}
    if tap is not None:
        headers["Accept-Encoding"] = "identity"  # the tap reads the usage from plain bytes
    request_log(request).provider = upstream.name
    deadline = deadline_of(request, runtime.settings.upstream_deadline)
    async with within(deadline):
        upstream_response = await upstream.send(
            request.method, upstream.url(path, raw_query(request)), headers, body
        )
    async with upstream_response:
        if tap is not None:
            tap.status = upstream_response.status
        response = web.StreamResponse(
            status=upstream_response.status,
            reason=upstream_response.reason,
            headers=forwardable(upstream_response.headers),
        )
        length = upstream_response.content_length  # None when absent or not a number
        if length is not None and length >= 0:
            response.content_length = length
        await response.prepare(request)
        try:
            async with within(deadline):
                with upstream.errors():
                    async for chunk in upstream_response.content.iter_any():
                        if tap is not None:
                            tap.feed(chunk)
                        await response.write(chunk)
        except KallmError as exc:  # headers are gone: all we can do is cut the connection
            request_log(request).note = f"relay broke: {exc.message}"
            response.force_close()
            return response
    if before_end is not None:
        await before_end()
    await response.write_eof()
    return response
