"""Another API dialect served like chat: cached, routed, priced and limited the same way.

``/v1/messages`` (Anthropic Messages, Claude Code) and ``/v1/responses`` (OpenAI
Responses, Codex CLI, the Agents SDK) share this flow; each describes itself with a
``Dialect`` (``kallm.server.messages``, ``kallm.server.responses``). Admission has
already checked the key, resolved the routes and reserved the cost.

- A route whose provider speaks the dialect gets the request natively (byte for byte,
  the model name aside); any other provider gets it translated to chat and the answer
  translated back, streams included (``kallm.dialects``).
- The cache keys on the dialect's view (``kallm.dialects.scope``); the dialect is part
  of the scope, so an entry is served only to the dialect that stored it. Entries are
  the dialect's own answer objects, stored only when whole (a stream after its final
  event), and replayed as the same event sequence with fresh ids.
- Every answer is priced by the model its route called: from the usage it reports, or,
  for a stream the client abandoned without one, from what was relayed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.cache.semantic import Hit, Lookup
from kallm.errors import (
    MALFORMED,
    KallmError,
    UpstreamError,
    blamed_on_request,
    blamed_on_upstream,
    stream_break,
)
from kallm.providers.base import ChatCall, HttpCall, client_headers, forwardable
from kallm.providers.router import Route
from kallm.providers.sse import StreamAssembler, event_data, iter_events
from kallm.server.admission import Admission, admission, settle_once
from kallm.server.chat import CACHE_HEADER, PROVIDER_HEADER, SIMILARITY_HEADER
from kallm.server.deadline import deadline_of, within
from kallm.server.log import RequestLog, request_log
from kallm.server.request import CacheControls, cache_key_of
from kallm.server.runtime import Runtime, runtime_of
from kallm.server.upstream import Event, compact, event_stream, next_event, read_bounded

CHARS_PER_TOKEN = 4
DRAIN_SECONDS = 2.0  # after a client leaves: how long to read on for the final usage
_DROP_RESPONSE = frozenset({"content-encoding", "content-length"})


class NativeAssembler(Protocol):
    complete: bool

    @property
    def ended(self) -> bool: ...

    def feed(self, event: str | None, data: dict[str, Any]) -> None: ...


class ChatTranslator(Protocol):
    """Chat chunks in, the dialect's SSE events out."""

    complete: bool

    def feed(self, chunk: dict[str, Any]) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class Dialect(Protocol):
    name: str  # part of the cache scope
    native_kind: str  # the provider kind that speaks it

    def view(self, payload: dict[str, Any]) -> dict[str, Any] | None: ...

    def native_call(
        self,
        runtime: Runtime,
        route: Route,
        payload: dict[str, Any],
        body: bytes,
        headers: Any,
    ) -> HttpCall: ...

    def is_answer(self, answer: Any) -> bool: ...

    def usage(self, answer: dict[str, Any]) -> Usage: ...

    def assembler(self) -> NativeAssembler: ...

    def assembled(self, assembler: NativeAssembler) -> dict[str, Any]: ...

    def replay(self, answer: dict[str, Any]) -> list[bytes]: ...

    def refreshed(self, answer: dict[str, Any]) -> dict[str, Any]: ...

    def to_chat(self, payload: dict[str, Any]) -> dict[str, Any]: ...

    def from_chat(self, completion: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]: ...

    def translator(self, payload: dict[str, Any], body: bytes) -> ChatTranslator: ...

    def chat_error(self, status: int, body: bytes) -> tuple[int, bytes]: ...

    def stream_error(self, message: str, translator: ChatTranslator | None) -> bytes: ...


async def serve(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    runtime = runtime_of(request)
    admitted = admission(request)
    payload = admitted.payload
    assert payload is not None
    record = request_log(request)
    if runtime.settings.log_bodies:
        record.request_body = admitted.body.decode(errors="replace")
    with blamed_on_request():
        view = dialect.view(payload)
    store: Lookup | None = None
    if view is not None:
        controls = CacheControls.from_headers(request.headers)
        tenant = admitted.cache_tenant(controls.namespace, dialect.name)
        with blamed_on_request():
            key = await cache_key_of(view, tenant, admitted.body, dialect.name)
        lookup = Lookup(key)
        if controls.lookup:
            lookup = await runtime.semantic_cache.lookup(
                key,
                threshold=controls.threshold,
                use_guard=controls.guard and runtime.settings.guard,
            )
            record.lookup_seconds, record.embed_seconds = lookup.seconds, lookup.embed_seconds
        if lookup.hit is not None:
            return await _serve_hit(request, runtime, dialect, payload, lookup.hit)
        record.cache = "MISS"
        store = lookup if controls.store else None
    return await _relay(request, runtime, dialect, admitted, store)


async def _serve_hit(
    request: web.Request, runtime: Runtime, dialect: Dialect, payload: dict[str, Any], hit: Hit
) -> web.StreamResponse:
    answer = json.loads(hit.entry.response)
    record = request_log(request)
    record.cache, record.similarity = "HIT", hit.similarity
    record.usage = dialect.usage(answer)
    record.saved_usd = hit.entry.cost_usd
    headers = {CACHE_HEADER: "HIT", SIMILARITY_HEADER: f"{hit.similarity:.4f}"}
    if payload.get("stream") is not True:
        return web.json_response(dialect.refreshed(answer), headers=headers, dumps=compact)
    response = event_stream(headers)
    await response.prepare(request)
    for event in dialect.replay(answer):
        await response.write(event)
    await response.write_eof()
    return response


# ---------------------------------------------------------------- misses


@dataclass
class _Call:
    """One upstream call of this request: which route answered and how it is read."""

    route: Route
    response: aiohttp.ClientResponse
    native: bool


async def _relay(
    request: web.Request,
    runtime: Runtime,
    dialect: Dialect,
    admitted: Admission,
    store: Lookup | None,
) -> web.StreamResponse:
    payload = admitted.payload
    assert payload is not None
    stream = payload.get("stream") is True
    deadline = deadline_of(request, runtime.settings.upstream_deadline)
    started = time.perf_counter()
    record = request_log(request)

    async def send(route: Route) -> aiohttp.ClientResponse:
        if route.provider.kind == dialect.native_kind:
            http = dialect.native_call(runtime, route, payload, admitted.body, request.headers)
            return await route.provider.send("POST", http.url, http.headers, http.data)
        with blamed_on_request():
            chat = dialect.to_chat(payload)
        headers = client_headers(
            request.headers, runtime.virtual_keys, frozenset({"authorization", "x-api-key"})
        )
        call = ChatCall(chat, route.model, stream, headers)
        return await route.provider.open_chat(call)

    async with within(deadline):
        opened = await runtime.router.open_with(admitted.routes, send)
    call = _Call(opened.route, opened.response, opened.route.provider.kind == dialect.native_kind)
    record.provider, record.upstream_model = call.route.provider.name, call.route.model
    headers = forwardable(call.response.headers, _DROP_RESPONSE)
    headers[CACHE_HEADER] = "MISS" if store is not None else "BYPASS"
    headers[PROVIDER_HEADER] = f"{call.route.provider.name}/{call.route.model}"
    async with call.response:
        if stream and call.response.status == 200:
            return await _stream(
                request, runtime, dialect, admitted, call, headers, store, deadline
            )
        async with within(deadline):
            body, whole = await _read(call, runtime)
        record.upstream_seconds = time.perf_counter() - started
        if not whole:
            raise UpstreamError(
                f"provider {call.route.provider.name} sent an answer over the "
                f"{runtime.settings.max_answer_bytes:,}-byte limit (upstream.max_answer_size)"
            )
        return await _whole(request, runtime, dialect, admitted, call, headers, body, store)


async def _read(call: _Call, runtime: Runtime) -> tuple[bytes, bool]:
    with call.route.provider.errors():
        return await read_bounded(call.response, runtime.settings.max_answer_bytes)


async def _whole(
    request: web.Request,
    runtime: Runtime,
    dialect: Dialect,
    admitted: Admission,
    call: _Call,
    headers: Any,
    body: bytes,
    store: Lookup | None,
) -> web.Response:
    """A whole answer or error: checked, priced, stored when an answer, relayed."""
    payload = admitted.payload
    assert payload is not None
    provider = call.route.provider
    status = call.response.status
    if not call.native:
        with blamed_on_upstream(provider.name):
            body = provider.adapter.answer(status, body, payload["model"])
        status = provider.adapter.error_status(status)
    if status != 200:
        if not call.native:
            status, body = dialect.chat_error(status, body)
        headers["Content-Type"] = "application/json"
        return web.Response(body=body, status=status, headers=headers)
    answer = _parsed(body)
    if not call.native:
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamError(f"provider {provider.name} answered 200 without an answer")
        with blamed_on_upstream(provider.name):
            usage = Usage.from_openai(answer.get("usage"))
            answer = dialect.from_chat(answer, payload)
        body = compact(answer).encode()
    elif not dialect.is_answer(answer):
        raise UpstreamError(f"provider {provider.name} answered 200 without an answer")
    else:
        with blamed_on_upstream(provider.name):
            usage = dialect.usage(answer)
    record = request_log(request)
    _price(runtime, record, call.route, usage)
    await _remember(runtime, record, store, body)
    headers["Content-Type"] = "application/json"
    return web.Response(body=body, status=200, headers=headers)


async def _stream(
    request: web.Request,
    runtime: Runtime,
    dialect: Dialect,
    admitted: Admission,
    call: _Call,
    headers: Any,
    store: Lookup | None,
    deadline: float,
) -> web.StreamResponse:
    """Relay the stream as it comes (translated if need be), assembling the answer; after
    the final event, store it; whatever happens, price it."""
    payload = admitted.payload
    assert payload is not None
    record = request_log(request)
    response = event_stream(headers)
    await response.prepare(request)
    reader = _StreamReader(dialect, call, payload, admitted.body, runtime.settings.max_answer_bytes)
    relay = _Writer(response, record)
    events = iter_events(call.response.content)
    try:
        async with asyncio.timeout_at(deadline):
            while (item := await next_event(events, call.route.provider)) is not None:
                outs = reader.feed(item)
                if reader.complete:  # the final event: billed before the client sees it
                    await _settle_now(runtime, record, call.route, reader, admitted)
                await relay.write_all(outs)
                if relay.gone_for() > DRAIN_SECONDS or (relay.gone and reader.complete):
                    break
            outs = reader.close()
            if reader.complete:
                await _settle_now(runtime, record, call.route, reader, admitted)
            await relay.write_all(outs)
            if reader.cut_short:  # the client must not take a truncated answer for a whole one
                record.note = "the upstream's stream ended before the answer did"
                await relay.write_all([dialect.stream_error(record.note, reader.translator)])
    except TimeoutError:
        record.note = "stream cut at the deadline (upstream.deadline)"
        message = "the answer did not finish before the request's deadline"
        await relay.write_all([dialect.stream_error(message, reader.translator)])
    except (KallmError, *MALFORMED) as exc:
        message = stream_break(exc)
        record.note = f"stream broke: {message}"
        await relay.write_all([dialect.stream_error(message, reader.translator)])
    finally:
        _price(runtime, record, call.route, reader.usage(len(admitted.body)))
    if relay.gone:
        raise ConnectionResetError("client left mid-stream")
    if reader.complete:
        await _remember(runtime, record, store, compact(reader.answer()).encode())
    await response.write_eof()
    return response


class _Writer:
    """Writes to a client that may leave: after it has, writes are skipped (the upstream
    is read on briefly, for the usage that bills the request)."""

    def __init__(self, response: web.StreamResponse, record: RequestLog):
        self.response = response
        self.record = record
        self.gone_at: float | None = None

    @property
    def gone(self) -> bool:
        return self.gone_at is not None

    def gone_for(self) -> float:
        return 0.0 if self.gone_at is None else time.monotonic() - self.gone_at

    async def write_all(self, events: list[bytes]) -> None:
        for event in events:
            if self.gone_at is not None:
                return
            try:
                await self.response.write(event)
            except ConnectionResetError:
                self.gone_at = time.monotonic()
                self.record.note = "client left mid-stream"


class _StreamReader:
    """One upstream stream, native or chat, turned into the dialect's events and answer."""

    def __init__(
        self, dialect: Dialect, call: _Call, payload: dict[str, Any], body: bytes, limit: int
    ):
        self.dialect = dialect
        self.native = call.native
        self.payload = payload
        self.limit = limit
        self.relayed = 0
        self.assembler = dialect.assembler() if call.native else None
        self.unreadable = False  # a native event kallm could not read: relayed, not kept
        self.chat = None if call.native else StreamAssembler()
        self.translator = None if call.native else dialect.translator(payload, body)
        self.chat_relay = (
            None if call.native else call.route.provider.adapter.stream(payload["model"])
        )

    def feed(self, item: Event) -> list[bytes]:
        raw, event, data = item
        self.relayed += len(raw)
        if self.assembler is not None:
            if data is not None and data != b"[DONE]" and not self.unreadable:
                try:
                    parsed = json.loads(data)
                    if isinstance(parsed, dict):
                        self.assembler.feed(event, parsed)
                except MALFORMED:
                    # the provider's own dialect goes to the client as it wrote it; kallm
                    # only stops assembling (not stored; billed by what was relayed)
                    self.unreadable = True
            return [raw]
        assert self.chat_relay is not None
        return self._translated(self.chat_relay.feed(raw, event, data))

    def close(self) -> list[bytes]:
        if self.chat_relay is None:
            return []
        return self._translated(self.chat_relay.close())

    def _translated(self, chat_events: list[bytes]) -> list[bytes]:
        assert self.chat is not None and self.translator is not None
        out: list[bytes] = []
        for chat_event in chat_events:
            data = event_data(chat_event)
            if data is None:
                continue
            if data == b"[DONE]":
                self.chat.done = True
                out += self.translator.close()
                continue
            chunk = json.loads(data)
            if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                raise UpstreamError(_stream_error_message(chunk["error"]))
            self.chat.feed(chunk)
            out += self.translator.feed(chunk)
        return out

    @property
    def complete(self) -> bool:
        """The answer is whole, and readable and small enough to keep."""
        if self.unreadable or self.relayed > self.limit:
            return False
        if self.assembler is not None:
            return self.assembler.complete
        return self._translated_whole()

    @property
    def cut_short(self) -> bool:
        """The stream stopped without saying how it ends (no final event, no error), as
        far as kallm could read it: the client must not take it for a whole answer."""
        if self.unreadable:
            return False
        if self.assembler is not None:
            return not self.assembler.ended
        return not self._translated_whole()

    def _translated_whole(self) -> bool:
        assert self.translator is not None and self.chat is not None
        return self.translator.complete and self.chat.complete

    def answer(self) -> dict[str, Any]:
        if self.assembler is not None:
            return self.dialect.assembled(self.assembler)
        assert self.chat is not None
        return self.dialect.from_chat(self.chat.completion(), self.payload)

    def usage(self, body_size: int) -> Usage:
        """What the upstream reported, else what was relayed, counted."""
        try:
            usage = self._reported(body_size)
        except MALFORMED:  # a usage of strings or lists: no report
            usage = Usage(0, 0)
        if usage.total_tokens == 0 and self.relayed:
            return Usage(body_size // CHARS_PER_TOKEN, math.ceil(self.relayed / CHARS_PER_TOKEN))
        return usage

    def _reported(self, body_size: int) -> Usage:
        if self.unreadable:
            return Usage(0, 0)
        if self.assembler is not None:
            return self.dialect.usage(self.dialect.assembled(self.assembler))
        assert self.chat is not None
        if self.chat.usage is None and self.chat.relayed_chars:
            return Usage(
                body_size // CHARS_PER_TOKEN, math.ceil(self.chat.relayed_chars / CHARS_PER_TOKEN)
            )
        return Usage.from_openai(self.chat.usage)


def _stream_error_message(error: Any) -> str:
    """An OpenAI-kind provider's mid-stream error, as one line for the client's dialect."""
    message = error.get("message") if isinstance(error, dict) else error
    return f"the provider's stream failed: {' '.join(str(message).split())[:300]}"


async def _settle_now(
    runtime: Runtime,
    record: RequestLog,
    route: Route,
    reader: _StreamReader,
    admitted: Admission,
) -> None:
    _price(runtime, record, route, reader.usage(len(admitted.body)))
    await settle_once(runtime, record)


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _price(runtime: Runtime, record: RequestLog, route: Route, usage: Usage) -> None:
    record.usage = usage
    record.cost_usd = runtime.prices.cost(route.model, usage)


async def _remember(
    runtime: Runtime, record: RequestLog, store: Lookup | None, body: bytes
) -> None:
    if runtime.settings.log_bodies:
        record.response_body = body.decode(errors="replace")
    if store is None:
        return
    usage = record.usage or Usage()
    await runtime.semantic_cache.store(
        store, body, cost_usd=record.cost_usd, tokens=usage.total_tokens
    )
