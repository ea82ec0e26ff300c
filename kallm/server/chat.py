"""POST /v1/chat/completions: answer from the cache, or relay upstream and remember.

Admission has already parsed the request, resolved its routes and reserved its cost.
A miss is relayed as it arrives (stream chunks are written the moment they come) while
the answer is assembled; it is stored only if the upstream said 200, every choice
finished, and the client received it all. Whatever happens, the request is priced by
the model the route called (never an alias): a stream the client abandons is billed
from the usage the upstream reported, or else from the tokens relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from kallm.accounts.pricing import Usage, plausible_counts
from kallm.cache.answers import served_answer, stored_answer, stored_usage
from kallm.cache.semantic import Hit, Lookup
from kallm.errors import (
    MALFORMED,
    KallmError,
    RequestError,
    UpstreamError,
    UpstreamTimeout,
    blamed_on_request,
    blamed_on_upstream,
    stream_break,
)
from kallm.ids import random_hex
from kallm.providers.base import ChatCall, Provider, StreamRelay, client_headers, forwardable
from kallm.providers.router import Route
from kallm.providers.sse import DONE, StreamAssembler, event_data, iter_events, replay_events
from kallm.server.admission import Admission, admission, settle_once
from kallm.server.deadline import deadline_of, within
from kallm.server.log import RequestLog, request_log
from kallm.server.passthrough import UsageTap
from kallm.server.request import CacheControls, breathe, cache_key_of, parse_json_yielding
from kallm.server.runtime import Runtime, runtime_of
from kallm.server.upstream import (
    Event,
    compact,
    event_stream,
    next_event,
    read_bounded,
    sent,
)

CACHE_HEADER = "X-Kallm-Cache"
PROVIDER_HEADER = "X-Kallm-Provider"
SIMILARITY_HEADER = "X-Kallm-Similarity"
_DROP_RESPONSE = frozenset({"content-encoding"})
CHARS_PER_TOKEN = 4  # billing a stream with no usage: what was relayed, as tokens
DRAIN_SECONDS = 2.0  # after a client leaves: how long to keep reading for the usage chunk


async def chat_completions(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    admitted = admission(request)
    payload = admitted.payload
    assert payload is not None
    record = request_log(request)
    if runtime.settings.log_bodies:
        record.request_body = admitted.body.decode(errors="replace")
    controls = CacheControls.from_headers(request.headers)
    with blamed_on_request():
        tenant = admitted.cache_tenant(controls.namespace)
        key = await cache_key_of(payload, tenant, admitted.body, "chat")
    cache = runtime.semantic_cache
    if controls.lookup:
        lookup = await cache.lookup(
            key, threshold=controls.threshold, use_guard=controls.guard and runtime.settings.guard
        )
        record.lookup_seconds, record.embed_seconds = lookup.seconds, lookup.embed_seconds
    else:
        lookup = Lookup(key)
    if lookup.hit is not None:
        return await _serve_hit(request, runtime, payload, lookup.hit)
    record.cache = "MISS"
    if lookup.refusal is not None:
        refusal = lookup.refusal
        record.note = (
            f"guard refused {refusal.similarity:.4f} {refusal.reason}: {refusal.candidate[:80]!r}"
        )
    store = lookup if controls.store else None
    return await _relay(request, runtime, admitted, store)


# ---------------------------------------------------------------- hits


async def _serve_hit(
    request: web.Request, runtime: Runtime, payload: dict[str, Any], hit: Hit
) -> web.StreamResponse:
    stored = hit.entry.response
    answer_id, created = "chatcmpl-kallm" + random_hex(24), int(time.time())
    record = request_log(request)
    record.cache, record.similarity = "HIT", hit.similarity
    record.usage = usage_of_stored(stored)
    record.saved_usd = hit.entry.cost_usd
    headers = {CACHE_HEADER: "HIT", SIMILARITY_HEADER: f"{hit.similarity:.4f}"}
    if payload.get("stream") is not True:
        body = served_answer(stored, answer_id, created)
        if runtime.settings.log_bodies:
            record.response_body = body.decode(errors="replace")
        # sent here, not by aiohttp after the handler: the bookkeeping that follows
        # (metrics, the log row) is then off the client's clock
        response = web.Response(body=body, headers=headers, content_type="application/json")
        return await sent(request, response)
    completion = json.loads(stored)
    await breathe(stored)
    completion.update(id=answer_id, created=created)
    if runtime.settings.log_bodies:
        record.response_body = compact(completion)
    response = event_stream(headers)
    await response.prepare(request)
    for event in replay_events(completion, _wants_usage(payload)):
        await response.write(event)
    await response.write_eof()
    return response


# ---------------------------------------------------------------- misses


async def _relay(
    request: web.Request, runtime: Runtime, admitted: Admission, store: Lookup | None
) -> web.StreamResponse:
    """Send along the routes (with retries and fallbacks), then relay JSON or a stream."""
    payload = admitted.payload
    assert payload is not None
    stream = payload.get("stream") is True
    # a virtual key is ours: the provider gets its own key, and no account of the client's
    forwarded: Any = request.headers
    if runtime.virtual_keys:
        forwarded = client_headers(request.headers, True)
    routes = admitted.routes
    call = ChatCall(payload, routes[0].model, stream, forwarded, admitted.body)
    started = time.perf_counter()
    deadline = deadline_of(request, runtime.settings.upstream_deadline)
    async with within(deadline):
        opened = await runtime.router.open_chat(routes, call)
    provider, upstream = opened.route.provider, opened.response
    record = request_log(request)
    record.provider, record.upstream_model = provider.name, opened.route.model
    headers = forwardable(upstream.headers, _DROP_RESPONSE)
    headers[CACHE_HEADER] = "MISS"
    headers[PROVIDER_HEADER] = f"{provider.name}/{opened.route.model}"
    async with upstream:
        if not stream or upstream.status != 200 or not is_event_stream(upstream):
            async with within(deadline):
                return await _relay_whole(
                    request, runtime, opened.route, upstream, headers, store, started
                )
        response = event_stream(headers)
        await response.prepare(request)
        relay = provider.adapter.stream(payload["model"])
        assembler = StreamAssembler()
        try:
            async with asyncio.timeout_at(deadline):
                await _pump(request, response, upstream, relay, provider, assembler, started)
        except TimeoutError:
            assembler.done = False
            record.note = "stream cut at the deadline (upstream.deadline)"
            error = UpstreamTimeout("the answer did not finish before the request's deadline")
            await response.write(b"data: " + compact(error.to_body()).encode() + b"\n\n")
        finally:  # a client that left is billed too
            _price(runtime, record, opened.route, assembler, admitted)
    if assembler.done and assembler.complete:
        await _remember(runtime, record, store, assembler.completion())
    if assembler.done:
        # [DONE] goes out only now: a client that has seen the end finds the answer cached
        # and the request billed (its spend committed)
        await settle_once(runtime, record)
        await response.write(DONE)
    await response.write_eof()
    return response


def is_event_stream(upstream: aiohttp.ClientResponse) -> bool:
    return upstream.content_type == "text/event-stream"


async def _relay_whole(
    request: web.Request,
    runtime: Runtime,
    route: Route,
    upstream: aiohttp.ClientResponse,
    headers: Any,
    store: Lookup | None,
    started: float,
) -> web.StreamResponse:
    """A JSON answer or an error: read, checked, priced, stored if whole, relayed."""
    provider = route.provider
    record = request_log(request)
    payload = admission(request).payload
    assert payload is not None
    with provider.errors():
        data, whole = await read_bounded(upstream, runtime.settings.max_answer_bytes)
    record.upstream_seconds = time.perf_counter() - started
    if not whole:
        return await _relay_oversized(request, runtime, route, upstream, headers, data)
    with blamed_on_upstream(provider.name):
        data = provider.adapter.answer(upstream.status, data, payload["model"])
    if upstream.status == 200:
        completion = await _completion_or_502(data, provider)
        record.usage = Usage.from_openai(completion.get("usage"))
        record.cost_usd = runtime.prices.cost(route.model, record.usage)
    status = provider.adapter.error_status(upstream.status)
    if status == 200 and payload.get("stream") is True:
        # asked for a stream, answered whole (some local servers do): the client still
        # gets the stream it asked for
        await _remember(runtime, record, store, completion, data)
        headers.pop("Content-Type", None)
        response = event_stream(headers)
        await response.prepare(request)
        for event in replay_events(completion, _wants_usage(payload)):
            await response.write(event)
        await response.write(DONE)
        await response.write_eof()
        return response
    if provider.kind != "openai":
        headers["Content-Type"] = "application/json"
    response = web.Response(body=data, status=status, headers=headers)
    if status != 200:
        return response
    if admission(request).reservation is not None:
        await _remember(runtime, record, store, completion, data)
        return response  # settled (spend committed) before it is sent: see the middleware
    await sent(request, response)  # nothing to commit first: the client need not wait
    await _remember(runtime, record, store, completion, data)
    return response


async def _relay_oversized(
    request: web.Request,
    runtime: Runtime,
    route: Route,
    upstream: aiohttp.ClientResponse,
    headers: Any,
    head: bytes,
) -> web.StreamResponse:
    """An answer past ``upstream.max_answer_size``: relayed as it comes, never buffered
    whole, never cached; priced from the usage at its end (or its size). A translated
    answer cannot be translated in pieces: that is a 502."""
    provider = route.provider
    if provider.kind != "openai":
        raise UpstreamError(
            f"provider {provider.name} sent an answer over the "
            f"{runtime.settings.max_answer_bytes:,}-byte limit (upstream.max_answer_size)"
        )
    record = request_log(request)
    record.note = "answer over upstream.max_answer_size: relayed, not cached"
    response = web.StreamResponse(status=upstream.status, headers=headers)
    await response.prepare(request)
    tap = UsageTap()
    tap.feed(head)
    await response.write(head)
    with provider.errors():
        async for chunk in upstream.content.iter_any():
            tap.feed(chunk)
            await response.write(chunk)
    usage = tap.usage() or Usage(
        len(admission(request).body) // CHARS_PER_TOKEN, tap.relayed // CHARS_PER_TOKEN
    )
    record.usage, record.cost_usd = usage, runtime.prices.cost(route.model, usage)
    await response.write_eof()
    return response


async def _completion_or_502(data: bytes, provider: Provider) -> dict[str, Any]:
    """A 200 that is not a chat completion is the upstream's failure, not an answer (strict
    JSON: a usage of 1e400 is no number, and would be stored as ``Infinity``)."""
    try:
        completion = await parse_json_yielding(data, "the upstream's answer")
    except RequestError:
        completion = None
    if (
        not isinstance(completion, dict)
        or not isinstance(completion.get("choices"), list)
        or not plausible_counts(completion.get("usage"))
    ):
        raise UpstreamError(
            f"provider {provider.name} answered 200 without a chat completion "
            f"({len(data)} bytes); nothing was cached or charged beyond its usage"
        )
    return completion


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    relay: StreamRelay,
    provider: Provider,
    assembler: StreamAssembler,
    started: float,
) -> None:
    """Relay events as they come; the assembler says whether the stream ended whole.

    A broken stream (the upstream's fault) ends with an error event the SDKs understand. A
    client that leaves stops the relay; the upstream is read a little longer, unrelayed, in
    case the usage chunk is about to arrive, so the request is billed what it cost."""
    record = request_log(request)
    client_wants_usage = _wants_usage(admission(request).payload or {})
    events = iter_events(upstream.content)
    try:
        while (item := await next_event(events, provider)) is not None:
            outs = relay.feed(*item)
            for out in outs:
                await _forward(response, out, assembler, client_wants_usage, record, started)
        for out in relay.close():
            await _forward(response, out, assembler, client_wants_usage, record, started)
    except ConnectionResetError:
        record.note = "client left mid-stream"
        assembler.done = False
        await _drain_for_usage(events, relay, assembler, provider)
        raise
    except (KallmError, *MALFORMED) as exc:
        message = stream_break(exc)
        record.note = f"stream broke: {message}"
        error = exc if isinstance(exc, KallmError) else UpstreamError(message)
        assembler.done = False
        await response.write(b"data: " + compact(error.to_body()).encode() + b"\n\n")
        return
    finally:
        record.upstream_seconds = time.perf_counter() - started
    if not assembler.done:
        record.note = "stream ended without [DONE]"
        error = UpstreamError("the upstream's stream ended before the answer did")
        await response.write(b"data: " + compact(error.to_body()).encode() + b"\n\n")


async def _drain_for_usage(
    events: AsyncIterator[Event],
    relay: StreamRelay,
    assembler: StreamAssembler,
    provider: Provider,
) -> None:
    """Read on, unrelayed, until the usage chunk comes (or ``DRAIN_SECONDS`` pass)."""

    async def read() -> None:
        while assembler.usage is None and (item := await next_event(events, provider)):
            for out in relay.feed(*item):
                payload = event_data(out)
                if payload and payload != b"[DONE]":
                    assembler.feed(json.loads(payload))

    with contextlib.suppress(TimeoutError, KallmError, ValueError):
        await asyncio.wait_for(read(), DRAIN_SECONDS)


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
    if data is None:
        return  # comments and empty events carry nothing a chat client reads
    if data == b"[DONE]":
        assembler.done = True
        return  # written by the caller once the answer is stored
    chunk = json.loads(data)
    assembler.feed(chunk)
    if not client_wants_usage and not chunk.get("choices") and chunk.get("usage"):
        return  # the usage chunk we asked for on our own account
    await response.write(raw)


def _price(
    runtime: Runtime,
    record: RequestLog,
    route: Route,
    assembler: StreamAssembler,
    admitted: Admission,
) -> None:
    """What a stream cost: its reported usage, or what was relayed, counted (never $0 for
    content a client received)."""
    usage = Usage.from_openai(assembler.usage)
    if assembler.usage is None and assembler.relayed_chars:
        usage = Usage(
            prompt_tokens=len(admitted.body) // CHARS_PER_TOKEN,
            completion_tokens=math.ceil(assembler.relayed_chars / CHARS_PER_TOKEN),
        )
        record.note = (record.note or "") + " (billed from the tokens relayed: no usage came)"
    record.usage = usage
    record.cost_usd = runtime.prices.cost(route.model, usage)


async def _remember(
    runtime: Runtime,
    record: RequestLog,
    store: Lookup | None,
    completion: dict[str, Any],
    body: bytes | None = None,
) -> None:
    """Store the answer if it is complete and wanted (in the layout hits are served from)."""
    if runtime.settings.log_bodies:
        record.response_body = (body or compact(completion).encode()).decode(errors="replace")
    choices = completion.get("choices")
    if (
        store is None
        or not choices
        or not all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    ):
        return
    usage = record.usage or Usage()
    if body is not None:
        await breathe(body)  # a large answer: encoding it to store is another long step
    stored = stored_answer(completion)
    await breathe(stored)
    await runtime.semantic_cache.store(
        store, stored, cost_usd=record.cost_usd, tokens=usage.total_tokens
    )


# ---------------------------------------------------------------- helpers


REMEMBERED_USAGE_BYTES = 16 * 1024


def usage_of_stored(stored: bytes) -> Usage:
    """A stored answer's usage; remembered for answers up to 16 KB (the same entry answers
    hit after hit, and reading its usage again was ~4% of a hit's CPU)."""
    if len(stored) > REMEMBERED_USAGE_BYTES:
        return Usage.from_openai(stored_usage(stored))
    return _remembered_usage(stored)


@functools.lru_cache(maxsize=256)  # keys are the entries' own bytes: their hash is kept
def _remembered_usage(stored: bytes) -> Usage:
    return Usage.from_openai(stored_usage(stored))


def _wants_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
