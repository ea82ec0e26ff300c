"""POST /v1/chat/completions: answer from the cache, or relay upstream and remember.

A miss is relayed as it arrives (stream chunks are written the moment they
come) while the answer is assembled; it is stored only if the upstream said
200, every choice finished, and the client received it all.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.cache.scope import cache_key
from kallm.cache.semantic import Hit, Lookup
from kallm.errors import KallmError, UpstreamError
from kallm.providers.base import ChatCall, Provider, StreamRelay, forwardable
from kallm.providers.router import Route
from kallm.providers.sse import DONE, StreamAssembler, event_data, iter_events, replay_events
from kallm.server.app import RUNTIME, Runtime
from kallm.server.log import RequestLog, request_log
from kallm.server.request import CacheControls, parse_chat_request

CACHE_HEADER = "X-Kallm-Cache"
PROVIDER_HEADER = "X-Kallm-Provider"
SIMILARITY_HEADER = "X-Kallm-Similarity"
_DROP_RESPONSE = frozenset({"content-encoding"})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    body = await request.read()
    payload = parse_chat_request(body)
    record = request_log(request)
    record.model = payload["model"]
    if runtime.settings.log_bodies:
        record.request_body = body.decode(errors="replace")
    admission = await runtime.accounts.admit(request, payload["model"], payload, record)
    routes = runtime.router.resolve(payload["model"])  # an unknown model: 404 before any lookup
    controls = CacheControls.from_headers(request.headers)
    namespace = controls.namespace
    if admission is not None and admission.key.namespace:
        namespace = f"{admission.key.namespace}|{namespace}"  # a tenant cannot step outside
    key = cache_key(payload, namespace)
    if controls.lookup:
        lookup = await runtime.cache.lookup(
            key, threshold=controls.threshold, use_guard=controls.guard and runtime.settings.guard
        )
        record.lookup_seconds, record.embed_seconds = lookup.seconds, lookup.embed_seconds
    else:
        lookup = Lookup(key)
    if lookup.hit is not None:
        return await _serve_hit(request, payload, lookup.hit)
    record.cache = "MISS"
    if lookup.refusal is not None:
        refusal = lookup.refusal
        record.note = (
            f"guard refused {refusal.similarity:.4f} {refusal.reason}: {refusal.candidate[:80]!r}"
        )
    store = lookup if controls.store else None
    return await _relay(request, runtime, routes, payload, body, store)


# ---------------------------------------------------------------- hits


async def _serve_hit(request: web.Request, payload: dict[str, Any], hit: Hit) -> web.StreamResponse:
    completion = json.loads(hit.entry.response)
    completion["id"] = "chatcmpl-kallm" + secrets.token_hex(12)
    completion["created"] = int(time.time())
    record = request_log(request)
    record.cache, record.similarity = "HIT", hit.similarity
    record.usage = Usage.from_openai(completion.get("usage"))
    record.saved_usd = hit.entry.cost_usd
    if request.app[RUNTIME].settings.log_bodies:
        record.response_body = _compact(completion)
    headers = {
        CACHE_HEADER: "HIT",
        SIMILARITY_HEADER: f"{hit.similarity:.4f}",
        **_rate_headers(record),
    }
    if payload.get("stream") is not True:
        return web.json_response(completion, headers=headers, dumps=_compact)
    response = _event_stream(headers)
    await response.prepare(request)
    for event in replay_events(completion, _wants_usage(payload)):
        await response.write(event)
    await response.write_eof()
    return response


# ---------------------------------------------------------------- misses


async def _relay(
    request: web.Request,
    runtime: Runtime,
    routes: list[Route],
    payload: dict[str, Any],
    raw: bytes,
    store: Lookup | None,
) -> web.StreamResponse:
    """Send along the routes (with retries and fallbacks), then relay JSON or a stream."""
    stream = payload.get("stream") is True
    client_headers = request.headers
    if runtime.accounts.enabled:  # a virtual key is ours: the provider gets its own key
        client_headers = forwardable(request.headers, frozenset({"authorization"}))
    call = ChatCall(payload, raw, routes[0].model, stream, client_headers)
    started = time.perf_counter()
    opened = await runtime.router.open_chat(routes, call)
    provider, upstream = opened.route.provider, opened.response
    record = request_log(request)
    record.provider, record.upstream_model = provider.name, opened.route.model
    headers = forwardable(upstream.headers, _DROP_RESPONSE)
    headers[CACHE_HEADER] = "MISS"
    headers[PROVIDER_HEADER] = f"{provider.name}/{opened.route.model}"
    headers.update(_rate_headers(record))
    async with upstream:
        if not stream or upstream.status != 200:
            with provider.errors():
                data = await upstream.read()
            record.upstream_seconds = time.perf_counter() - started
            data = provider.adapter.answer(upstream.status, data, payload["model"])
            if upstream.status == 200 and (completion := _json_or_none(data)) is not None:
                await _remember(request, runtime, store, completion, data)
            status = provider.adapter.error_status(upstream.status)
            if provider.kind != "openai":
                headers["Content-Type"] = "application/json"
            return web.Response(body=data, status=status, headers=headers)
        response = _event_stream(headers)
        await response.prepare(request)
        relay = provider.adapter.stream(payload["model"])
        assembler = await _pump(request, response, upstream, relay, provider, payload, started)
    if assembler is not None and assembler.done and assembler.complete:
        completion = assembler.completion()
        await _remember(request, runtime, store, completion, _compact(completion).encode())
    if assembler is not None and assembler.done:
        # [DONE] goes out only now: a client that has seen the end finds the answer cached
        await response.write(DONE)
    await response.write_eof()
    return response


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    relay: StreamRelay,
    provider: Provider,
    payload: dict[str, Any],
    started: float,
) -> StreamAssembler | None:
    """Relay events as they come; None when the stream broke and must not be stored."""
    assembler = StreamAssembler()
    record = request_log(request)
    client_wants_usage = _wants_usage(payload)
    try:
        with provider.errors():
            async for raw, event, data in iter_events(upstream.content):
                for out in relay.feed(raw, event, data):
                    await _forward(response, out, assembler, client_wants_usage, record, started)
            for out in relay.close():
                await _forward(response, out, assembler, client_wants_usage, record, started)
    except (KallmError, ValueError) as exc:
        message = exc.message if isinstance(exc, KallmError) else f"bad stream event: {exc}"
        record.note = f"stream broke: {message}"
        error = exc if isinstance(exc, KallmError) else UpstreamError(message)
        await response.write(b"data: " + _compact(error.to_body()).encode() + b"\n\n")
        return None
    if not assembler.done:
        record.note = "stream ended without [DONE]"
    record.upstream_seconds = time.perf_counter() - started
    return assembler


async def _forward(
    response: web.StreamResponse,
    raw: bytes,
    assembler: StreamAssembler,
    client_wants_usage: bool,
    record: RequestLog,
    started: float,
) -> None:
    """Feed one OpenAI SSE event to the assembler and the client."""
    if record.first_token_seconds is None:
        record.first_token_seconds = time.perf_counter() - started
    data = event_data(raw)
    if data == b"[DONE]":
        assembler.done = True
        return  # written by the caller once the answer is stored
    if data is not None:
        chunk = json.loads(data)
        assembler.feed(chunk)
        if not client_wants_usage and not chunk.get("choices") and chunk.get("usage"):
            return  # the usage chunk we asked for on our own account
    await response.write(raw)


async def _remember(
    request: web.Request,
    runtime: Runtime,
    store: Lookup | None,
    completion: dict[str, Any],
    body: bytes,
) -> None:
    """Price the answer, note its usage, and store it if it is complete and wanted."""
    record = request_log(request)
    usage = Usage.from_openai(completion.get("usage"))
    record.usage = usage
    record.cost_usd = runtime.prices.cost(str(completion.get("model") or record.model), usage)
    if runtime.settings.log_bodies:
        record.response_body = body.decode(errors="replace")
    choices = completion.get("choices")
    if store is None or not choices or not all(c.get("finish_reason") for c in choices):
        return
    await runtime.cache.store(store, body, cost_usd=record.cost_usd, tokens=usage.total_tokens)


# ---------------------------------------------------------------- helpers


def _event_stream(headers: Any) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _rate_headers(record: RequestLog) -> dict[str, str]:
    return record.admission.rate_headers if record.admission is not None else {}


def _wants_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
