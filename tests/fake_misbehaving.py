"""A fake OpenAI upstream that misbehaves on cue, for kallm's robustness tests.

The other fakes behave like a healthy provider. This one answers
``POST /v1/chat/completions`` the way a broken, buggy or hostile upstream does,
in a mode a test sets between requests (``fake.mode = Mode.HTML``): a 200 that is
not JSON, not a completion, gzip without saying so, a usage of ``1e400`` tokens, a
200 MB body, streams with events that are not JSON or carry absurd indices, a line
of 600 KB, a stream that stops without ``[DONE]``, trickles a byte a second, never
ends, or headers that never come.

In ``Mode.OK`` it is lenient: every chat request, whatever its body, gets a valid
``chat.completion`` (or a stream of chunks when the body asks for ``stream: true``).
So behind kallm any answer that is not a 200 is kallm's own doing.

Nothing big is ever held whole: the 200 MB body is written one 1 MiB piece at a time
from a single reused buffer, and the endless stream is generated as it goes.

Run it standalone (for tests that put kallm in its own process) with::

    python -m tests.fake_misbehaving --mode huge --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from tests.fake_base import FakeServer, start

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
HUGE_BYTES = 200 * 1024 * 1024  # Mode.HUGE: the body's size
HUGE_PIECE = 1024 * 1024  # ... written in pieces of this size, one buffer reused
LONG_LINE_BYTES = 600 * 1024  # Mode.STREAM_LONG_LINE: one SSE data line past 512 KB
TRICKLE_SECONDS = 1.0  # Mode.STREAM_TRICKLE: one byte per this many seconds
ENDLESS_SECONDS = 0.005  # Mode.STREAM_ENDLESS: between chunks
STALL_SECONDS = 60.0  # Mode.STALL: before the headers (ends early on shutdown)
HUGE_USAGE_DIGITS = "1" + "0" * 400  # 10**400, as an upstream would write it
JSON_TYPE = "application/json"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class Mode(enum.StrEnum):
    """How the fake answers the next chat requests (until the mode is changed)."""

    OK = "ok"  # a valid completion or stream, whatever the request said
    INVALID_JSON = "invalid-json"  # 200, application/json, a JSON text cut short
    HTML = "html"  # 200, text/html: a load balancer's error page
    EMPTY = "empty"  # 200, application/json, no body at all
    GZIP_NO_HEADER = "gzip-no-header"  # a valid completion, gzipped, no Content-Encoding
    GZIP_WITH_HEADER = "gzip-with-header"  # the same with Content-Encoding: gzip (not asked)
    JSON_ARRAY = "json-array"  # 200: a JSON array holding a completion
    NO_CHOICES = "no-choices"  # 200: a JSON object without "choices"
    USAGE_1E400 = "usage-1e400"  # a valid completion whose usage says 1e400 (raw text)
    USAGE_DIGITS = "usage-digits"  # ... whose usage is a 401-digit integer
    HUGE = "huge"  # a 200 of HUGE_BYTES: one completion with a gigantic content
    STREAM_NOT_JSON = "stream-not-json"  # an event whose data is not JSON, then a clean end
    STREAM_CHOICE_INDEX = "stream-choice-index"  # choices[0].index = 1,000,000
    STREAM_TOOL_INDEX = "stream-tool-index"  # one ~150-byte event: tool call index 1,000,000
    STREAM_LONG_LINE = "stream-long-line"  # one data line of LONG_LINE_BYTES
    STREAM_NO_DONE = "stream-no-done"  # content, then the body ends: no finish, usage, [DONE]
    STREAM_TRICKLE = "stream-trickle"  # a valid stream, one byte per TRICKLE_SECONDS
    STREAM_ENDLESS = "stream-endless"  # content chunks for ever
    STALL = "stall"  # no headers for STALL_SECONDS


class MisbehavingUpstream(FakeServer):
    """Steering: ``mode`` (a ``Mode``; ``reset()`` sets ``Mode.OK``) and ``reply`` (the
    content of good answers). Observation (from ``FakeServer``): ``calls``, ``requests``;
    ``chat_calls`` counts chat requests received; ``finished`` counts the streamed (and
    huge) answers written to the end, ``abandoned`` those whose client (kallm) left first;
    ``unreadable`` the requests whose body could not be read as its headers describe it
    (answered 400, as OpenAI would)."""

    base_path = "/v1"

    def reset(self) -> None:
        super().reset()
        self.mode: Mode = Mode.OK
        self.finished = 0
        self.abandoned = 0
        self.unreadable = 0

    @property
    def chat_calls(self) -> int:
        return self.calls[CHAT_PATH]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            _raw, parsed = await self.record(request)
        except (RequestPayloadError, HttpProcessingError) as exc:
            # e.g. a proxy that forwards the client's Content-Encoding with a decoded body
            self.calls[request.path] += 1
            self.unreadable += 1
            encoding = request.headers.get("Content-Encoding")
            message = f"The request body cannot be read (Content-Encoding {encoding!r}): {exc}"
            return web.json_response(_error(message), status=400)
        if request.method == "GET" and request.path == MODELS_PATH:
            return web.json_response({"object": "list", "data": []})
        if request.method != "POST" or request.path != CHAT_PATH:
            return web.json_response(
                _error(f"Invalid URL ({request.method} {request.path})"), status=404
            )
        body = parsed if isinstance(parsed, dict) else {}
        model = body.get("model") if isinstance(body.get("model"), str) else "gpt-4o-mini"
        return await self._answer(request, self.mode, model, body.get("stream") is True)

    async def _answer(
        self, request: web.Request, mode: Mode, model: str, stream: bool
    ) -> web.StreamResponse:
        content = self.reply or f"A good answer {uuid.uuid4().hex[:8]}."
        if mode is Mode.OK:
            if stream:
                return await self._events(request, ok_events(model, content))
            return web.json_response(completion(model, content))
        if mode is Mode.STALL:
            await self.pause(STALL_SECONDS)
            return web.json_response(completion(model, content))
        if mode is Mode.HUGE:
            return await self._huge(request, model)
        if mode is Mode.STREAM_TRICKLE:
            return await self._trickle(request, b"".join(ok_events(model, content)))
        if mode is Mode.STREAM_ENDLESS:
            return await self._events(request, endless_events(model), pause=ENDLESS_SECONDS)
        if mode in _STREAMS:
            return await self._events(request, _STREAMS[mode](model))
        status, headers, data = _WHOLE[mode](model, content)
        return web.Response(status=status, body=data, headers=headers)

    async def _events(
        self, request: web.Request, events: Iterator[bytes], pause: float = 0.0
    ) -> web.StreamResponse:
        """An event stream: each piece written as it comes, the body ending (cleanly) when
        ``events`` does."""
        return await self._write(request, SSE_HEADERS, events, pause)

    async def _trickle(self, request: web.Request, data: bytes) -> web.StreamResponse:
        pieces = (data[i : i + 1] for i in range(len(data)))
        return await self._write(request, SSE_HEADERS, pieces, TRICKLE_SECONDS)

    async def _huge(self, request: web.Request, model: str) -> web.StreamResponse:
        """A 200 of ``HUGE_BYTES``: one completion whose content is that long, written a
        piece at a time from one reused buffer (never built whole)."""
        before, after = json.dumps(completion(model, "@@")).split("@@")
        prefix, suffix = before.encode(), after.encode()

        def pieces() -> Iterator[bytes]:
            yield prefix
            piece = b"x" * HUGE_PIECE
            left = HUGE_BYTES - len(prefix) - len(suffix)
            while left > 0:
                yield piece if left >= HUGE_PIECE else piece[:left]
                left -= HUGE_PIECE
            yield suffix

        return await self._write(request, {"Content-Type": JSON_TYPE}, pieces(), 0.0, HUGE_BYTES)

    async def _write(
        self,
        request: web.Request,
        headers: dict[str, str],
        pieces: Iterator[bytes],
        pause: float,
        length: int | None = None,
    ) -> web.StreamResponse:
        """Headers, then ``pieces`` one by one (``pause`` between them); counts the answer
        in ``finished``, or in ``abandoned`` when the client leaves first."""
        response = web.StreamResponse(headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            for piece in pieces:
                await response.write(piece)
                if pause:
                    await self.pause(pause)
                    if self._closing.is_set():
                        return response
            await response.write_eof()
        except ConnectionError:
            self.abandoned += 1
            return response
        self.finished += 1
        return response


# ---------------------------------------------------------------- bodies


def _error(message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }


def completion(model: str, content: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid ``chat.completion`` with one finished choice."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage or {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def chunk(model: str, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    """One ``data:`` event holding a ``chat.completion.chunk``."""
    payload = {
        "id": "chatcmpl-fakemisbehaving",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return sse(json.dumps(payload))


def usage_chunk(model: str) -> bytes:
    payload = {
        "id": "chatcmpl-fakemisbehaving",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
    return sse(json.dumps(payload))


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def ok_events(model: str, content: str) -> Iterator[bytes]:
    """A whole, valid stream: role, content in words, finish, usage, [DONE]."""
    yield chunk(model, {"role": "assistant", "content": ""})
    for word in content.split(" "):
        yield chunk(model, {"content": word + " "})
    yield chunk(model, {}, "stop")
    yield usage_chunk(model)
    yield DONE


def _tail(model: str) -> Iterator[bytes]:
    """What makes a stream look finished: a finish, the usage and [DONE]."""
    yield chunk(model, {}, "stop")
    yield usage_chunk(model)
    yield DONE


def not_json_events(model: str) -> Iterator[bytes]:
    yield chunk(model, {"role": "assistant", "content": ""})
    yield chunk(model, {"content": "Before the broken event. "})
    yield b'data: {"choices": [{"index": 0, "delta": {"content": "cut here\n\n'
    yield chunk(model, {"content": "After it."})
    yield from _tail(model)


def choice_index_events(model: str) -> Iterator[bytes]:
    yield chunk(model, {"role": "assistant", "content": ""})
    yield chunk(model, {"content": "a choice nobody asked for"}, index=1_000_000)
    yield from _tail(model)


def tool_index_events(model: str) -> Iterator[bytes]:
    yield chunk(model, {"role": "assistant", "content": None})
    # ~150 bytes that would make a careless assembler allocate a million tool calls
    yield (
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1000000,'
        b'"id":"call_x","type":"function","function":{"name":"f","arguments":""}}]}}]}\n\n'
    )
    yield chunk(model, {}, "tool_calls")
    yield usage_chunk(model)
    yield DONE


def long_line_events(model: str) -> Iterator[bytes]:
    yield chunk(model, {"role": "assistant", "content": ""})
    yield chunk(model, {"content": "L" * LONG_LINE_BYTES})
    yield from _tail(model)


def no_done_events(model: str) -> Iterator[bytes]:
    """A stream that just stops: no finish_reason, no usage, no [DONE], a clean end of body."""
    yield chunk(model, {"role": "assistant", "content": ""})
    yield chunk(model, {"content": "The answer starts"})
    yield chunk(model, {"content": " and then"})


def endless_events(model: str) -> Iterator[bytes]:
    yield chunk(model, {"role": "assistant", "content": ""})
    while True:
        yield chunk(model, {"content": "more "})


_STREAMS = {
    Mode.STREAM_NOT_JSON: not_json_events,
    Mode.STREAM_CHOICE_INDEX: choice_index_events,
    Mode.STREAM_TOOL_INDEX: tool_index_events,
    Mode.STREAM_LONG_LINE: long_line_events,
    Mode.STREAM_NO_DONE: no_done_events,
}

Whole = tuple[int, dict[str, str], bytes]


def _invalid_json(model: str, content: str) -> Whole:
    text = json.dumps(completion(model, content))
    return 200, {"Content-Type": JSON_TYPE}, text[: len(text) // 2].encode()


def _html(model: str, content: str) -> Whole:
    page = b"<!DOCTYPE html><html><head><title>502</title></head><body>Bad Gateway</body></html>"
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page


def _empty(model: str, content: str) -> Whole:
    return 200, {"Content-Type": JSON_TYPE}, b""


def _gzip(model: str, content: str, header: bool) -> Whole:
    data = gzip.compress(json.dumps(completion(model, content)).encode())
    headers = {"Content-Type": JSON_TYPE}
    if header:
        headers["Content-Encoding"] = "gzip"
    return 200, headers, data


def _json_array(model: str, content: str) -> Whole:
    return 200, {"Content-Type": JSON_TYPE}, json.dumps([completion(model, content)]).encode()


def _no_choices(model: str, content: str) -> Whole:
    body = completion(model, content)
    del body["choices"]
    return 200, {"Content-Type": JSON_TYPE}, json.dumps(body).encode()


def _usage_raw(model: str, content: str, figure: str) -> Whole:
    marker = 987_654_321
    usage = {"prompt_tokens": marker, "completion_tokens": 4, "total_tokens": marker}
    text = json.dumps(completion(model, content, usage)).replace(str(marker), figure)
    return 200, {"Content-Type": JSON_TYPE}, text.encode()


_WHOLE = {
    Mode.INVALID_JSON: _invalid_json,
    Mode.HTML: _html,
    Mode.EMPTY: _empty,
    Mode.GZIP_NO_HEADER: lambda m, c: _gzip(m, c, header=False),
    Mode.GZIP_WITH_HEADER: lambda m, c: _gzip(m, c, header=True),
    Mode.JSON_ARRAY: _json_array,
    Mode.NO_CHOICES: _no_choices,
    Mode.USAGE_1E400: lambda m, c: _usage_raw(m, c, "1e400"),
    Mode.USAGE_DIGITS: lambda m, c: _usage_raw(m, c, HUGE_USAGE_DIGITS),
}


async def start_misbehaving(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[MisbehavingUpstream, web.AppRunner, str]:
    """Start on ``port`` (0: one the OS picks); return (fake, runner, base_url ending in /v1)."""
    fake = MisbehavingUpstream()
    runner, url = await start(fake, host, port)
    return fake, runner, url


# ---------------------------------------------------------------- standalone


async def _serve(host: str, port: int, mode: Mode) -> None:
    fake, runner, url = await start_misbehaving(host, port)
    fake.mode = mode
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted; print the base URL first so a test can read it."""
    parser = argparse.ArgumentParser(description="A fake OpenAI upstream that misbehaves.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick")
    parser.add_argument("--mode", type=Mode, default=Mode.OK, choices=list(Mode))
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.mode))


if __name__ == "__main__":
    main()
