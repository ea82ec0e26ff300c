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
from kallm.errors import KallmError
from kallm.providers.openai import forwardable
from kallm.providers.sse import DONE, StreamAssembler, iter_events, replay_events
from kallm.server.app import RUNTIME, Runtime
from kallm.server.log import request_log
from kallm.server.request import CacheControls, authorization, parse_chat_request

CACHE_HEADER = "X-Kallm-Cache"
SIMILARITY_HEADER = "X-Kallm-Similarity"
_DROP_RESPONSE = frozenset({"content-encoding"})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    body = await request.read()
    payload = parse_chat_request(body)
    auth = authorization(request.headers, runtime.settings)
    controls = CacheControls.from_headers(request.headers)
    record = request_log(request)
    record.model = payload["model"]
    key = cache_key(payload, controls.namespace)
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
    record.provider = runtime.upstream.name
    if lookup.refusal is not None:
        refusal = lookup.refusal
        record.note = (f"guard refused {refusal.similarity:.4f} {refusal.reason}: "
                       f"{refusal.candidate[:80]!r}")
    store = lookup if controls.store else None
    if payload.get("stream") is True:
        return await _relay_stream(request, runtime, payload, auth, store)
    return await _relay_json(request, runtime, body, auth, store)


# ---------------------------------------------------------------- hits

async def _serve_hit(request: web.Request, payload: dict[str, Any], hit: Hit) -> web.StreamResponse:
    completion = json.loads(hit.entry.response)
    completion["id"] = "chatcmpl-kallm" + secrets.token_hex(12)
    completion["created"] = int(time.time())
    record = request_log(request)
    record.cache, record.similarity = "HIT", hit.similarity
    record.usage = Usage.from_openai(completion.get("usage"))
    headers = {CACHE_HEADER: "HIT", SIMILARITY_HEADER: f"{hit.similarity:.4f}"}
    if payload.get("stream") is not True:
        return web.json_response(completion, headers=headers, dumps=_compact)
    response = _event_stream(headers)
    await response.prepare(request)
    for event in replay_events(completion, _wants_usage(payload)):
        await response.write(event)
    await response.write_eof()
    return response


# ---------------------------------------------------------------- misses

def _upstream_headers(request: web.Request, auth: str) -> dict[str, str]:
    headers = dict(forwardable(request.headers, frozenset({"authorization", "accept-encoding"})))
    headers["Authorization"] = auth
    headers["Accept-Encoding"] = "identity"  # we read the answer to cache it
    headers["Content-Type"] = "application/json"
    return headers


async def _relay_json(
    request: web.Request, runtime: Runtime, body: bytes, auth: str, store: Lookup | None
) -> web.Response:
    upstream = runtime.upstream
    started = time.perf_counter()
    response = await upstream.send(
        "POST", upstream.url("/chat/completions"), _upstream_headers(request, auth), body
    )
    async with response:
        with upstream.errors():
            data = await response.read()
    request_log(request).upstream_seconds = time.perf_counter() - started
    headers = forwardable(response.headers, _DROP_RESPONSE)
    headers[CACHE_HEADER] = "MISS"
    if response.status == 200:
        completion = _json_or_none(data)
        if completion is not None:
            await _remember(request, runtime, store, completion, data)
    return web.Response(body=data, status=response.status, headers=headers)


async def _relay_stream(
    request: web.Request, runtime: Runtime, payload: dict[str, Any], auth: str,
    store: Lookup | None,
) -> web.StreamResponse:
    upstream = runtime.upstream
    client_wants_usage = _wants_usage(payload)
    # Ask for usage even when the client did not, so the answer can be priced and replayed.
    sent = {**payload, "stream_options": {**(payload.get("stream_options") or {}),
                                          "include_usage": True}}
    started = time.perf_counter()
    upstream_response = await upstream.send(
        "POST", upstream.url("/chat/completions"), _upstream_headers(request, auth),
        json.dumps(sent).encode(),
    )
    async with upstream_response:
        if upstream_response.status != 200:
            with upstream.errors():
                data = await upstream_response.read()
            headers = forwardable(upstream_response.headers, _DROP_RESPONSE)
            headers[CACHE_HEADER] = "MISS"
            return web.Response(body=data, status=upstream_response.status, headers=headers)
        headers = forwardable(upstream_response.headers, _DROP_RESPONSE)
        headers[CACHE_HEADER] = "MISS"
        response = _event_stream(headers)
        await response.prepare(request)
        assembler = await _pump(request, response, upstream_response, client_wants_usage, started)
    if assembler is not None and assembler.done and assembler.complete:
        completion = assembler.completion()
        await _remember(request, runtime, store, completion, _compact(completion).encode())
    await response.write_eof()
    return response


async def _pump(
    request: web.Request, response: web.StreamResponse, upstream: aiohttp.ClientResponse,
    client_wants_usage: bool, started: float,
) -> StreamAssembler | None:
    """Relay events as they come; None when the stream broke and must not be stored."""
    assembler = StreamAssembler()
    record = request_log(request)
    runtime = request.app[RUNTIME]
    try:
        with runtime.upstream.errors():
            async for raw, data in iter_events(upstream.content):
                if record.first_token_seconds is None:
                    record.first_token_seconds = time.perf_counter() - started
                if data == b"[DONE]":
                    assembler.done = True
                elif data is not None:
                    chunk = _json_or_none(data)
                    if chunk is None:
                        return None
                    assembler.feed(chunk)
                    if not client_wants_usage and not chunk.get("choices") and chunk.get("usage"):
                        continue  # the usage chunk we asked for on our own account
                await response.write(raw)
    except KallmError as exc:
        record.note = f"stream broke: {exc.message}"
        await response.write(b"data: " + _compact(exc.to_body()).encode() + b"\n\n")
        return None
    if not assembler.done:
        record.note = "stream ended without [DONE]"
    record.upstream_seconds = time.perf_counter() - started
    return assembler


async def _remember(
    request: web.Request, runtime: Runtime, store: Lookup | None,
    completion: dict[str, Any], body: bytes,
) -> None:
    """Price the answer, note its usage, and store it if it is complete and wanted."""
    record = request_log(request)
    usage = Usage.from_openai(completion.get("usage"))
    record.usage = usage
    record.cost_usd = runtime.prices.cost(str(completion.get("model") or record.model), usage)
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


__all__ = ["DONE", "chat_completions"]
