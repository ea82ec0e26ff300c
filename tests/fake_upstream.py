"""A fake OpenAI upstream that the test-suite owns.

kallm is a proxy, so most of its tests need something on the other side that
behaves like OpenAI: the same JSON shapes, the same SSE framing, the same error
envelope, and the same failure modes (errors, stalls, streams cut mid-way).
Talking to the real API would be slow, flaky and costly, and it cannot be told
to misbehave on cue. This module serves just enough of the API that both the
real ``openai`` SDK and kallm's proxy accept it, with plain attributes a test
sets between requests to steer it and records of every request to assert on.

Run it standalone (for benchmarks) with::

    python -m tests.fake_upstream --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import itertools
import json
import math
import random
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fake_base import FakeServer, start
from tests.fake_base import Headers as Headers  # re-exported: tests import it from here
from tests.fake_base import RecordedRequest as RecordedRequest

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"

EMBEDDING_DIM = 64
MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
)
_MODEL_CREATED = 1_700_000_000
_FINGERPRINT = "fp_fake"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}

# What OpenAI says for the statuses tests inject most; anything else gets a generic text.
_FAILURE_TEXT: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (injected by the fake upstream).", "invalid_request_error", None),
    401: (
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


class UpstreamError(Exception):
    """An OpenAI-shaped error; raising it anywhere in a handler becomes the response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` envelope the SDK parses into its exception."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class _Turn:
    """What the fake "model" decided to say for one choice."""

    content: str | None
    finish_reason: str
    tool_call: dict[str, Any] | None = None

    @property
    def tokens(self) -> int:
        if self.tool_call is not None:
            return count_tokens(self.tool_call["function"]["arguments"])
        return count_tokens(self.content or "")


Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


class FakeUpstream(FakeServer):
    """Owns an aiohttp app; state is plain attributes so tests can steer it.

    Steering (all off by default; ``reset()`` turns them off again):

    - ``fail_status``: chat, completions and embeddings answer with this status
      and OpenAI's error JSON (models are never failed, so health checks work).
    - ``fail_times``: only the next N of those calls fail, then it counts down
      to 0 and the fake behaves; without ``fail_status`` the failures are 500s.
    - ``fail_message``: replaces the OpenAI-like error text for the status.
    - ``retry_after_ms``: sent as ``retry-after-ms`` on errors; 1 makes the
      SDK's own retries near-instant.
    - ``stall_seconds``: sleep before the response headers (any endpoint).
    - ``cut_stream_after``: SSE answers send N chunks, then drop the socket,
      never reaching finish_reason, usage or ``[DONE]``.
    - ``chunk_delay``: sleep between SSE chunks.
    - ``reply``: fixed content instead of ``f"Answer to: {last user text}"``.
    - ``image_tokens``: prompt tokens each image part of a chat message adds to usage
      (0: images are free, as before), to bill images as a provider would.
    - ``canned``: ``{(method, path): json}``; such a request answers 200 with it (for
      routes the fake does not otherwise serve: files, batches, ...).

    Observation beyond ``requests``: ``raw_paths``, each request's target exactly as it
    arrived (undecoded, query included).

    ``/v1/responses`` (the Responses API) follows the same steering: failures,
    stalls, ``cut_stream_after`` (N events, then the socket drops before the
    terminal event), ``chunk_delay`` and ``reply``. It calls the first function
    tool when asked about weather (or when ``tool_choice`` forces it), answers a
    ``function_call_output`` with ``"The tool said: ..."``, and adds a reasoning
    item when ``reasoning.effort`` is set (a summary when ``reasoning.summary`` is,
    ``encrypted_content`` when ``include`` asks for it).

    Choice ``i > 0`` of an ``n > 1`` request gets `` [i]`` appended so tests can
    tell the choices apart.
    """

    base_path = "/v1"

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", CHAT_PATH): self._chat,
            ("POST", RESPONSES_PATH): self._responses,
            ("POST", COMPLETIONS_PATH): self._completions,
            ("POST", EMBEDDINGS_PATH): self._embeddings,
            ("GET", MODELS_PATH): self._models,
        }

    def reset(self) -> None:
        """Clear steering and observation, so one fake can serve many tests."""
        super().reset()
        self.retry_after_ms: int | None = None
        self.chunk_delay: float = 0.0
        self.image_tokens: int = 0
        self.canned: dict[tuple[str, str], Any] = {}
        self.raw_paths: list[str] = []

    @property
    def chat_calls(self) -> int:
        """Requests that reached ``/v1/chat/completions`` (failed ones included)."""
        return self.calls[CHAT_PATH]

    @property
    def embedding_calls(self) -> int:
        """Requests that reached ``/v1/embeddings`` (failed ones included)."""
        return self.calls[EMBEDDINGS_PATH]

    # -- plumbing -------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.raw_paths.append(request.raw_path)
        _raw, parsed = await self.record(request)
        canned = self.canned.get((request.method, request.path))
        if canned is not None:
            return web.json_response(canned, headers=_response_headers())
        try:
            await self.pause(self.stall_seconds)
            handler = self._route(request)
            response = await handler(request, parsed)
        except UpstreamError as err:
            headers = _response_headers()
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = str(self.retry_after_ms)
            return web.json_response(err.body(), status=err.status, headers=headers)
        if not response.prepared:
            response.headers.update(_response_headers())
        return response

    def _route(self, request: web.Request) -> Handler:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            return handler
        if request.method == "GET" and request.path.startswith(MODELS_PATH + "/"):
            return self._model
        raise UpstreamError(404, f"Invalid URL ({request.method} {request.path})")

    def _maybe_fail(self) -> None:
        """Raise the injected failure, if one is armed, counting down ``fail_times``."""
        status = self.armed_failure()
        if status is None:
            return
        message, type_, code = _FAILURE_TEXT.get(
            status,
            (
                f"Injected failure (HTTP {status}).",
                "server_error" if status >= 500 else "invalid_request_error",
                None,
            ),
        )
        raise UpstreamError(status, self.fail_message or message, type_=type_, code=code)

    # -- endpoints --------------------------------------------------------------

    async def _chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        self._maybe_fail()
        body = _require_object(body)
        model = _require_model(body)
        messages = _require_messages(body)
        n = _int_param(body, "n", default=1, low=1, high=128)
        limit = _max_tokens(body)
        tools = _require_tools(body)
        turns = [
            self._chat_turn(messages, tools, body.get("tool_choice"), i, limit) for i in range(n)
        ]
        prompt_tokens = sum(count_tokens(_text_of(m)) for m in messages)
        prompt_tokens += self.image_tokens * sum(_image_parts(m) for m in messages)
        usage = _usage(prompt_tokens, sum(t.tokens for t in turns))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": _FINGERPRINT,
            "service_tier": "default",
        }
        if body.get("stream") is True:
            chunks = _chat_chunks(base, turns, usage, _include_usage(body))
            return await self._sse(request, chunks)
        choices = [
            {
                "index": i,
                "message": _assistant_message(turn),
                "logprobs": None,
                "finish_reason": turn.finish_reason,
            }
            for i, turn in enumerate(turns)
        ]
        return web.json_response(
            {**base, "object": "chat.completion", "choices": choices, "usage": usage}
        )

    def _chat_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tool_choice: Any,
        index: int,
        limit: int | None,
    ) -> _Turn:
        """Decide one choice: a tool call when asked about weather, else a text answer."""
        last = messages[-1]
        tool_name = _pick_tool(tools, tool_choice, last)
        if tool_name is not None:
            return _Turn(None, "tool_calls", _tool_call(tool_name, _text_of(last)))
        if self.reply is not None:
            content = self.reply
        elif last.get("role") == "tool":
            content = f"The tool said: {_text_of(last)}"
        else:
            content = f"Answer to: {_last_user_text(messages)}"
        if index:
            content = f"{content} [{index}]"
        return _truncate(content, limit)

    async def _responses(self, request: web.Request, body: Any) -> web.StreamResponse:
        """``POST /v1/responses``: validated like the real API, answered deterministically."""
        self._maybe_fail()
        body = _require_object(body)
        _validate_responses_request(body)
        response = _responses_answer(body, self.reply)
        if body.get("stream") is True:
            return await self._sse_named(request, _responses_events(response))
        return web.json_response(response)

    async def _sse_named(
        self, request: web.Request, events: list[tuple[str, dict[str, Any]]]
    ) -> web.StreamResponse:
        """Named SSE events (``event:`` + ``data:``), no ``[DONE]``: the Responses framing.

        ``cut_stream_after`` drops the socket after N events, and always before
        the terminal one, so a cut stream never looks complete.
        """
        response = web.StreamResponse(headers={**_SSE_HEADERS, **_response_headers()})
        await response.prepare(request)
        try:
            for sent, (name, data) in enumerate(events):
                cut = self.cut_stream_after
                if cut is not None and (sent >= cut or name in _RESPONSE_TERMINAL):
                    _drop_connection(request)
                    return response
                if sent:
                    await self.pause(self.chunk_delay)
                await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        except ConnectionError:
            pass
        return response

    async def _completions(self, request: web.Request, body: Any) -> web.StreamResponse:
        """Legacy ``/v1/completions``: the one streamed endpoint that is not chat."""
        self._maybe_fail()
        body = _require_object(body)
        model = _require_model(body)
        prompts = _require_prompts(body)
        n = _int_param(body, "n", default=1, low=1, high=128)
        limit = _max_tokens(body)
        turns = [
            _truncate(self.reply if self.reply is not None else f"Answer to: {prompt}", limit)
            for prompt in prompts
            for _ in range(n)
        ]
        usage = _usage(sum(count_tokens(p) for p in prompts), sum(t.tokens for t in turns))
        base = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": _FINGERPRINT,
        }
        if body.get("stream") is True:
            chunks = _completion_chunks(base, turns, usage, _include_usage(body))
            return await self._sse(request, chunks)
        choices = [
            {"text": t.content, "index": i, "logprobs": None, "finish_reason": t.finish_reason}
            for i, t in enumerate(turns)
        ]
        return web.json_response({**base, "choices": choices, "usage": usage})

    async def _embeddings(self, _request: web.Request, body: Any) -> web.StreamResponse:
        self._maybe_fail()
        body = _require_object(body)
        model = _require_model(body)
        texts = _require_inputs(body)
        dim = _int_param(body, "dimensions", default=EMBEDDING_DIM, low=1, high=4096)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise UpstreamError(
                400,
                f"Invalid value for 'encoding_format': {encoding!r}. "
                "Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode(fake_embedding(t, dim), encoding),
            }
            for i, t in enumerate(texts)
        ]
        tokens = sum(count_tokens(t) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, _request: web.Request, _body: Any) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [_model_object(m) for m in MODELS]})

    async def _model(self, request: web.Request, _body: Any) -> web.StreamResponse:
        model = request.path[len(MODELS_PATH) + 1 :]
        if model not in MODELS:
            raise UpstreamError(
                404,
                f"The model '{model}' does not exist",
                param="model",
                code="model_not_found",
            )
        return web.json_response(_model_object(model))

    async def _sse(
        self, request: web.Request, chunks: Iterator[tuple[dict[str, Any], bool]]
    ) -> web.StreamResponse:
        """Write ``data:`` events, then ``[DONE]``; or cut the connection when told to.

        ``chunks`` yields ``(payload, terminal)``; terminal chunks (finish_reason,
        usage) are never sent once ``cut_stream_after`` is set, so a cut stream
        always looks unfinished to the client.
        """
        response = web.StreamResponse(headers={**_SSE_HEADERS, **_response_headers()})
        await response.prepare(request)
        sent = 0
        try:
            for payload, terminal in chunks:
                cut = self.cut_stream_after
                if cut is not None and (sent >= cut or terminal):
                    _drop_connection(request)
                    return response
                if sent:
                    await self.pause(self.chunk_delay)
                await response.write(_sse_event(json.dumps(payload)))
                sent += 1
            if self.cut_stream_after is not None:
                _drop_connection(request)
                return response
            await response.write(_sse_event("[DONE]"))
        except ConnectionError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response


async def start_fake_upstream(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[FakeUpstream, web.AppRunner, str]:
    """Start on ``port`` (0: one the OS picks); return (fake, runner, base_url ending in /v1).

    Call ``await runner.cleanup()`` to stop it; pending stalls end immediately.
    """
    fake = FakeUpstream()
    runner, base_url = await start(fake, host, port)
    return fake, runner, base_url


# -- the fake "model" -------------------------------------------------------------


def count_tokens(text: str) -> int:
    """Whitespace words: crude, but deterministic and good enough for usage maths."""
    return len(text.split())


def fake_embedding(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector: the normalised sum of one random vector per word.

    Summing per-word vectors (rather than hashing the whole text) keeps the
    fake useful for a *semantic* cache: texts sharing most words have a high
    cosine, case and punctuation are ignored, unrelated texts land near zero.
    """
    words = re.findall(r"\w+", text.lower()) or [text]
    acc = [0.0] * dim
    for word in words:
        for i, value in enumerate(_word_vector(word, dim)):
            acc[i] += value
    norm = math.sqrt(sum(x * x for x in acc)) or 1.0
    return [x / norm for x in acc]


@functools.lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int) -> tuple[float, ...]:
    rng = random.Random(hashlib.sha256(word.encode()).digest())
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dim))


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """Floats as-is, or base64 of little-endian float32 as OpenAI does."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _truncate(content: str, limit: int | None) -> _Turn:
    """Honour max_tokens loosely: keep the first ``limit`` words, report ``length``."""
    words = content.split()
    if limit is not None and len(words) > limit:
        return _Turn(" ".join(words[:limit]), "length")
    return _Turn(content, "stop")


def _pick_tool(tools: list[dict[str, Any]], tool_choice: Any, last: dict[str, Any]) -> str | None:
    """Name of the tool to call, or None to answer in text.

    Like a model: only a user turn triggers a call (a tool result gets a text
    answer), "weather" triggers it, and tool_choice can force or forbid it.
    """
    if not tools or tool_choice == "none" or last.get("role") != "user":
        return None
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if isinstance(name, str):
            return name
    if tool_choice == "required" or re.search(r"\bweather\b", _text_of(last), re.IGNORECASE):
        return str(tools[0]["function"]["name"])
    return None


def _tool_call(name: str, text: str) -> dict[str, Any]:
    match = re.search(r"\bin\s+([^?.!,;]+)", text, re.IGNORECASE)
    location = match.group(1).strip() if match else "unknown"
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"location": location})},
    }


def _assistant_message(turn: _Turn) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": turn.content,
        "refusal": None,
        "annotations": [],
    }
    if turn.tool_call is not None:
        message["tool_calls"] = [turn.tool_call]
    return message


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _MODEL_CREATED, "owned_by": "fake-upstream"}


# -- SSE framing ------------------------------------------------------------------


def _response_headers() -> dict[str, str]:
    """Headers OpenAI sends on every answer; the SDK exposes x-request-id to callers."""
    return {"x-request-id": f"req_{uuid.uuid4().hex}", "openai-processing-ms": "1"}


def _sse_event(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


def _drop_connection(request: web.Request) -> None:
    """Close the socket after flushing what was written: the client sees a truncated body."""
    if request.transport is not None:
        request.transport.close()


def _pieces(text: str) -> list[str]:
    """Split into word-sized pieces (leading spaces kept) that join back exactly."""
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text] if text else []
    pieces[-1] += text[len("".join(pieces)) :]
    return pieces


def _chat_deltas(turn: _Turn) -> list[tuple[dict[str, Any], str | None]]:
    """The (delta, finish_reason) sequence OpenAI streams for one choice."""
    if turn.tool_call is not None:
        call = turn.tool_call
        arguments = call["function"]["arguments"]
        head = {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        steps: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": None, "refusal": None}, None),
            ({"tool_calls": [head]}, None),
        ]
        steps += [
            ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + 8]}}]}, None)
            for i in range(0, len(arguments), 8)
        ]
    else:
        steps = [({"role": "assistant", "content": "", "refusal": None}, None)]
        steps += [({"content": piece}, None) for piece in _pieces(turn.content or "")]
    steps.append(({}, turn.finish_reason))
    return steps


def _chat_chunks(
    base: dict[str, Any], turns: list[_Turn], usage: dict[str, Any], include_usage: bool
) -> Iterator[tuple[dict[str, Any], bool]]:
    """chat.completion.chunk payloads, choices interleaved as OpenAI does for n > 1."""
    head = {**base, "object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None
    per_choice = [_chat_deltas(turn) for turn in turns]
    for step in itertools.zip_longest(*per_choice):
        for index, item in enumerate(step):
            if item is None:
                continue
            delta, finish = item
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            yield {**head, "choices": [choice]}, finish is not None
    if include_usage:
        yield {**head, "choices": [], "usage": usage}, True


def _completion_chunks(
    base: dict[str, Any], turns: list[_Turn], usage: dict[str, Any], include_usage: bool
) -> Iterator[tuple[dict[str, Any], bool]]:
    """text_completion payloads for the legacy endpoint's stream."""
    head = {**base, "usage": None} if include_usage else base
    per_choice = [
        [(piece, None) for piece in _pieces(t.content or "")] + [("", t.finish_reason)]
        for t in turns
    ]
    for step in itertools.zip_longest(*per_choice):
        for index, item in enumerate(step):
            if item is None:
                continue
            text, finish = item
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            yield {**head, "choices": [choice]}, finish is not None
    if include_usage:
        yield {**head, "choices": [], "usage": usage}, True


# -- the Responses API -------------------------------------------------------------

# Top-level parameters the Responses API takes; anything else is "Unknown parameter".
_RESPONSES_PARAMS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "stream_options",
        "background",
        "context_management",
        "conversation",
        "include",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
_USER_PARTS = frozenset({"input_text", "input_image", "input_file", "input_audio"})
_ASSISTANT_PARTS = frozenset({"output_text", "refusal"})
_RESPONSE_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _bad(message: str, param: str | None = None, code: str | None = None) -> UpstreamError:
    return UpstreamError(400, message, param=param, code=code)


def _validate_responses_request(body: dict[str, Any]) -> None:
    """Raise what the real API raises for unknown parameters and malformed input or tools."""
    for name in body:
        if name not in _RESPONSES_PARAMS:
            raise _bad(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    _require_model(body)
    if body.get("previous_response_id") is not None:
        raise _bad(
            f"Previous response with id '{body['previous_response_id']}' not found.",
            "previous_response_id",
            "previous_response_not_found",
        )
    if "input" not in body:
        raise _bad("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    raw = body["input"]
    if not isinstance(raw, str | list):
        raise _bad(_type_message("input", "a string or array", raw), "input", "invalid_type")
    if isinstance(raw, list):
        calls: set[str] = set()
        for i, item in enumerate(raw):
            _validate_input_item(item, f"input[{i}]", calls)
    _validate_responses_tools(body.get("tools"))
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 16):
        raise _bad(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            f"but got {limit} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and "name" not in fmt:
        raise _bad(
            "Missing required parameter: 'text.format.name'.",
            "text.format.name",
            "missing_required_parameter",
        )


def _validate_input_item(item: Any, where: str, calls: set[str]) -> None:
    if not isinstance(item, dict):
        raise _bad(_type_message(where, "an object", item), where, "invalid_type")
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _bad(
                f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', "
                "'developer', and 'user'.",
                f"{where}.role",
                "invalid_value",
            )
        content = item.get("content")
        if isinstance(content, list):
            allowed = _ASSISTANT_PARTS if role == "assistant" else _USER_PARTS
            for j, part in enumerate(content):
                part_kind = part.get("type") if isinstance(part, dict) else None
                if part_kind not in allowed:
                    raise _bad(
                        f"Invalid value: '{part_kind}'. Supported values are: "
                        + " and ".join(f"'{a}'" for a in sorted(allowed))
                        + ".",
                        f"{where}.content[{j}]",
                        "invalid_value",
                    )
        elif not isinstance(content, str):
            raise _bad(
                f"Missing required parameter: '{where}.content'.",
                f"{where}.content",
                "missing_required_parameter",
            )
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _bad(
                    f"Missing required parameter: '{where}.{name}'.",
                    f"{where}.{name}",
                    "missing_required_parameter",
                )
        calls.add(item["call_id"])
    elif kind == "function_call_output":
        if item.get("call_id") not in calls:
            raise _bad(
                f"No tool call found for function call output with call_id {item.get('call_id')}.",
                "input",
            )
        if not isinstance(item.get("output"), str | list):
            raise _bad(
                f"Missing required parameter: '{where}.output'.",
                f"{where}.output",
                "missing_required_parameter",
            )
    elif kind == "reasoning":
        if not isinstance(item.get("summary"), list):
            raise _bad(
                f"Missing required parameter: '{where}.summary'.",
                f"{where}.summary",
                "missing_required_parameter",
            )
    elif kind == "item_reference":
        raise _bad(f"Item with id '{item.get('id')}' not found.", "input")
    else:
        raise _bad(f"Invalid value: '{kind}'.", f"{where}.type", "invalid_value")


def _validate_responses_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad(_type_message("tools", "an array", tools), "tools", "invalid_type")
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _bad(
                f"Missing required parameter: 'tools[{k}].type'.",
                f"tools[{k}].type",
                "missing_required_parameter",
            )
        # A chat-shaped tool ({"type": "function", "function": {...}}) has no top-level name.
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            raise _bad(
                f"Missing required parameter: 'tools[{k}].name'.",
                f"tools[{k}].name",
                "missing_required_parameter",
            )


def _item_text(item: dict[str, Any]) -> str:
    content = item.get("content") if "content" in item else item.get("output")
    if isinstance(content, str):
        return content
    return " ".join(
        str(p.get("text", "")) for p in content or [] if isinstance(p, dict) and "text" in p
    )


def _responses_answer(body: dict[str, Any], reply: str | None) -> dict[str, Any]:
    """The whole ``response`` object the fake "model" gives for a validated request."""
    raw = body["input"]
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    users = [i for i in items if (i.get("type") or "message") == "message" and i["role"] == "user"]
    last = items[-1] if items else {}
    question = _item_text(users[-1]) if users else ""
    base = uuid.uuid4().hex[:24]
    output: list[dict[str, Any]] = []
    reasoning = body.get("reasoning") or {}
    reasoning_tokens = 0
    if reasoning.get("effort") not in (None, "none"):
        item: dict[str, Any] = {"id": f"rs_{base}", "type": "reasoning", "summary": []}
        if reasoning.get("summary"):
            text = f"Thinking about: {question}"
            item["summary"] = [{"type": "summary_text", "text": text}]
        if "reasoning.encrypted_content" in (body.get("include") or []):
            item["encrypted_content"] = base64.b64encode(f"sealed:{base}".encode()).decode()
        reasoning_tokens = 8
        output.append(item)
    status, details = "completed", None
    tool = _responses_tool(body, last)
    if tool is not None:
        arguments = json.loads(_tool_call(tool, question)["function"]["arguments"])
        output.append(
            {
                "id": f"fc_{base}",
                "type": "function_call",
                "status": "completed",
                "arguments": json.dumps(arguments),
                "call_id": f"call_{base}",
                "name": tool,
            }
        )
    else:
        if (last.get("type") or "") == "function_call_output":
            text = f"The tool said: {_item_text(last)}"
        else:
            text = reply if reply is not None else f"Answer to: {question}"
        turn = _truncate(text, body.get("max_output_tokens"))
        if turn.finish_reason == "length":
            status, details = "incomplete", {"reason": "max_output_tokens"}
        output.append(
            {
                "id": f"msg_{base}",
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": turn.content or "",
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            }
        )
    prompt = count_tokens(body.get("instructions") or "") + sum(
        count_tokens(_item_text(i)) for i in items if "content" in i or "output" in i
    )
    completion = reasoning_tokens + sum(
        count_tokens(i.get("arguments") or _item_text(i))
        for i in output
        if i["type"] != "reasoning"
    )
    return {
        "id": f"resp_{base}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": details,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt + completion,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _responses_tool(body: dict[str, Any], last: dict[str, Any]) -> str | None:
    """Like the chat fake: a user turn about weather, or a forcing tool_choice, calls a tool."""
    functions = [t["name"] for t in body.get("tools") or [] if t["type"] == "function"]
    choice = body.get("tool_choice", "auto")
    if not functions or choice == "none" or last.get("role") != "user":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        return str(choice["name"])
    if choice == "required" or re.search(r"\bweather\b", _item_text(last), re.IGNORECASE):
        return functions[0]
    return None


def _responses_events(response: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The real event sequence for ``response``: created, in_progress, each item with its
    deltas, then response.completed (or .incomplete) carrying the whole object."""
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **fields}))

    head = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=head)
    emit("response.in_progress", response=head)
    for index, item in enumerate(response["output"]):
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            part = item["content"][0]
            emit("response.content_part.added", **at, content_index=0, part={**part, "text": ""})
            for piece in _pieces(part["text"]):
                emit("response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[])
            emit("response.output_text.done", **at, content_index=0, text=part["text"], logprobs=[])
            emit("response.content_part.done", **at, content_index=0, part=part)
        elif item["type"] == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            args = item["arguments"]
            for i in range(0, len(args), 8):
                emit("response.function_call_arguments.delta", **at, delta=args[i : i + 8])
            emit("response.function_call_arguments.done", **at, name=item["name"], arguments=args)
        else:
            emit("response.output_item.added", output_index=index, item={**item, "summary": []})
            for j, summary in enumerate(item["summary"]):
                emit(
                    "response.reasoning_summary_part.added",
                    **at,
                    summary_index=j,
                    part={**summary, "text": ""},
                )
                for piece in _pieces(summary["text"]):
                    emit(
                        "response.reasoning_summary_text.delta", **at, summary_index=j, delta=piece
                    )
                emit(
                    "response.reasoning_summary_text.done",
                    **at,
                    summary_index=j,
                    text=summary["text"],
                )
                emit("response.reasoning_summary_part.done", **at, summary_index=j, part=summary)
        emit("response.output_item.done", output_index=index, item=item)
    terminal = "response.completed" if response["status"] == "completed" else "response.incomplete"
    emit(terminal, response=response)
    return events


# -- request validation (messages mirror OpenAI's wording) ------------------------------


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise UpstreamError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return body


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise UpstreamError(400, "you must provide a model parameter")
    if not isinstance(model, str):
        raise UpstreamError(
            400, _type_message("model", "a string", model), param="model", code="invalid_type"
        )
    return model


def _require_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise UpstreamError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise UpstreamError(
            400,
            _type_message("messages", "an array", messages),
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise UpstreamError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise UpstreamError(
                400,
                f"Missing required parameter: 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
    return messages


def _require_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise UpstreamError(
            400, _type_message("tools", "an array", tools), param="tools", code="invalid_type"
        )
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamError(
                400,
                f"Missing required parameter: 'tools[{i}].function.name'.",
                param=f"tools[{i}].function.name",
                code="missing_required_parameter",
            )
    return tools


def _require_prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise UpstreamError(
        400,
        _type_message("prompt", "a string or array of strings", prompt),
        param="prompt",
        code="invalid_type",
    )


def _require_inputs(body: dict[str, Any]) -> list[str]:
    """Embedding input: a string, a list of strings, or token arrays (taken as text)."""
    raw = body.get("input")
    if raw is None:
        raise UpstreamError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    items = [raw] if isinstance(raw, str) or _is_tokens(raw) else raw
    if not isinstance(items, list) or not items:
        raise UpstreamError(
            400, "'$.input' is invalid. Please check the API reference.", param="input"
        )
    texts = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
        elif _is_tokens(item):
            texts.append(" ".join(str(token) for token in item))
        else:
            raise UpstreamError(
                400, "'$.input' is invalid. Please check the API reference.", param="input"
            )
    return texts


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _int_param(body: dict[str, Any], name: str, *, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise UpstreamError(
            400, _type_message(name, "an integer", value), param=name, code="invalid_type"
        )
    if not low <= value <= high:
        raise UpstreamError(
            400,
            f"Invalid '{name}': integer out of range [{low}, {high}] (got {value}).",
            param=name,
            code="integer_out_of_range",
        )
    return value


def _max_tokens(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` wins over the older ``max_tokens``, as in OpenAI."""
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return _int_param(body, name, default=0, low=1, high=1_000_000)
    return None


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _type_message(name: str, expected: str, value: Any) -> str:
    got = {str: "a string", list: "an array", dict: "an object", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )
    return f"Invalid type for '{name}': expected {expected}, but got {got} instead."


def _text_of(message: dict[str, Any]) -> str:
    """Message content as text: a string, or the text parts of a content array."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _image_parts(message: dict[str, Any]) -> int:
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message)
    return _text_of(messages[-1])


# -- standalone ------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    fake, runner, url = await start_fake_upstream(args.host, args.port)
    fake.stall_seconds = args.stall_seconds
    fake.chunk_delay = args.chunk_delay
    fake.reply = args.reply
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted; print the base URL first so scripts can read it."""
    parser = argparse.ArgumentParser(
        description="Fake OpenAI upstream for kallm tests and benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick")
    parser.add_argument("--stall-seconds", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--reply", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
