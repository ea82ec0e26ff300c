"""Fields of the wrong shape, from a client or from an upstream, on the translated routes.

A list where an object was due, an object where text was due: reading such a request is
the client's error (400 in its dialect), reading such an answer the provider's (502),
never kallm's 500. Found by fuzzing the landed code: each case here answered 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from kallm.providers.config import ProviderConfig
from tests.fake_anthropic import start_fake_anthropic
from tests.fake_gemini import start_fake_gemini
from tests.harness import Http, LoopThread, Proxy, stop

OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


def _openai_error(body: Any) -> bool:
    return isinstance(body, dict) and set(body.get("error", {})) == OPENAI_ERROR_KEYS


def _anthropic_error(body: Any) -> bool:
    return isinstance(body, dict) and body.get("type") == "error" and "message" in body["error"]


class Scripted:
    """An upstream that answers every POST with the body it is given (any shape)."""

    def __init__(self) -> None:
        self.body: bytes = b"{}"
        self.content_type = "application/json"
        self.app = web.Application()
        self.app.router.add_route("POST", "/{tail:.*}", self._answer)

    async def _answer(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type=self.content_type)

    def stream(self, *events: tuple[str, dict[str, Any]]) -> None:
        """Answer with these Anthropic-style SSE events (name, data)."""
        self.content_type = "text/event-stream"
        self.body = b"".join(
            f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
        )


async def _start_scripted() -> tuple[Scripted, web.AppRunner, str]:
    scripted = Scripted()
    runner = web.AppRunner(scripted.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return scripted, runner, f"http://127.0.0.1:{port}"


@pytest.fixture
def translated(
    loop_thread: LoopThread, make_proxy: Callable[..., Proxy]
) -> Iterator[tuple[Http, Scripted]]:
    """kallm with real Anthropic and Gemini fakes, and a scripted upstream of each kind."""
    _a, a_runner, a_url = loop_thread.run(start_fake_anthropic())
    _g, g_runner, g_url = loop_thread.run(start_fake_gemini())
    scripted, s_runner, s_url = loop_thread.run(_start_scripted())
    providers = (
        ProviderConfig("anthropic", "anthropic", a_url, "sk-ant", None, ("claude-*",)),
        ProviderConfig("gemini", "gemini", g_url + "/v1beta", "g-key", None, ("gemini-*",)),
        ProviderConfig("bad-a", "anthropic", s_url, "k", None, ("bad-a-*",), max_retries=0),
        ProviderConfig("bad-g", "gemini", s_url, "k", None, ("bad-g-*",), max_retries=0),
        ProviderConfig("bad-o", "openai", s_url + "/v1", "k", None, ("bad-o-*",), max_retries=0),
    )
    proxy = make_proxy(providers=providers)
    yield Http(proxy.root), scripted
    for runner in (a_runner, g_runner, s_runner):
        stop(loop_thread, runner)


USER = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [
    (
        "/v1/responses",
        {"model": "claude-haiku-4-5", "input": "hi", "reasoning": {"effort": ["high"]}},
    ),
    (
        "/v1/responses",
        {"model": "gemini-2.5-flash", "input": "hi", "reasoning": {"effort": ["high"]}},
    ),
    (
        "/v1/responses",
        {
            "model": "claude-haiku-4-5",
            "input": "hi",
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": ["x"]},
        },
    ),
    ("/v1/responses", {"model": "claude-haiku-4-5", "input": [5], "store": False}),
    ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [5]}),
    ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": {"role": "user"}}),
    (
        "/v1/messages",
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": USER,
            "tools": [{"type": ["custom"], "name": "f", "input_schema": {}}],
        },
    ),
    (
        "/v1/messages",
        {
            "model": "gemini-2.5-flash",
            "max_tokens": 10,
            "messages": USER,
            "output_config": {"effort": ["low"]},
        },
    ),
    (
        "/v1/chat/completions",
        {"model": "claude-haiku-4-5", "messages": USER, "reasoning_effort": ["high"]},
    ),
    (
        "/v1/chat/completions",
        {"model": "gemini-2.5-flash", "messages": USER, "reasoning_effort": {}},
    ),
]


@pytest.mark.parametrize(("path", "body"), BAD_REQUESTS, ids=lambda v: json.dumps(v)[:60])
def test_a_request_field_of_the_wrong_shape_is_a_400_in_the_callers_dialect(
    translated: tuple[Http, Scripted], path: str, body: dict[str, Any]
) -> None:
    http, _scripted = translated
    reply = http.post(path, body, headers={"x-api-key": "sk-client"})
    assert reply.status == 400, reply.body[:300]
    shaped = _anthropic_error if path == "/v1/messages" else _openai_error
    assert shaped(reply.json()), reply.body[:300]


def _asking(path: str, model: str, stream: bool = False) -> dict[str, Any]:
    """Saying "hi" to ``model`` in the dialect of ``path``."""
    body: dict[str, Any] = {"model": model, "stream": stream}
    if path == "/v1/responses":
        body["input"] = "hi"
    else:
        body["messages"] = USER
    if path == "/v1/messages":
        body["max_tokens"] = 10
    return body


BAD_ANSWERS = [
    ("bad-a-1", b"[]"),
    ("bad-a-1", json.dumps({"type": "message", "role": "assistant", "content": "x"}).encode()),
    ("bad-a-1", json.dumps({"type": "message", "content": [5, None], "usage": [1]}).encode()),
    ("bad-g-1", b"[]"),
    ("bad-g-1", json.dumps({"candidates": [5]}).encode()),
    ("bad-g-1", json.dumps({"candidates": [{"content": "x"}]}).encode()),
]


@pytest.mark.parametrize(("model", "answer"), BAD_ANSWERS, ids=lambda v: str(v)[:50])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
def test_an_upstream_answer_of_the_wrong_shape_is_a_502(
    translated: tuple[Http, Scripted], path: str, model: str, answer: bytes
) -> None:
    http, scripted = translated
    scripted.body = answer
    reply = http.post(path, _asking(path, model), headers={"Cache-Control": "no-store"})
    if path == "/v1/messages" and model.startswith("bad-a"):
        # Anthropic's own dialect: relayed as the provider wrote it (a 502 when it is no
        # message at all), never a 500
        assert reply.status in (200, 502), reply.body[:300]
        return
    assert reply.status == 502, reply.body[:300]
    shaped = _anthropic_error if path == "/v1/messages" else _openai_error
    assert shaped(reply.json()), reply.body[:300]


@pytest.mark.parametrize(
    "answer",
    [
        {"choices": [5]},
        {"choices": [{"index": 0, "message": "x", "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": "x"}}]},
    ],
    ids=lambda v: json.dumps(v)[:50],
)
def test_an_openai_answer_of_the_wrong_shape_is_a_502_on_messages(
    translated: tuple[Http, Scripted], answer: dict[str, Any]
) -> None:
    http, scripted = translated
    scripted.body = json.dumps({"id": "x", "object": "chat.completion", **answer}).encode()
    body = {"model": "bad-o-1", "max_tokens": 10, "messages": USER}
    reply = http.post("/v1/messages", body, headers={"Cache-Control": "no-store"})
    assert reply.status == 502, reply.body[:300]
    assert _anthropic_error(reply.json()), reply.body[:300]


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "bad-a-1",
    "content": [],
    "stop_reason": None,
    "usage": {"input_tokens": 3, "output_tokens": 0},
}
START = ("message_start", {"type": "message_start", "message": MESSAGE})
BLOCK = (
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
TEXT = (
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
)
END = [
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def _streamed(http: Http, path: str, model: str) -> bytes:
    body = _asking(path, model, stream=True)
    reply = http.post(path, body, headers={"Cache-Control": "no-store"})  # read to the end
    assert reply.status == 200, reply.body[:300]
    return reply.body


def test_an_unreadable_event_in_a_native_stream_is_relayed_not_a_cut(
    translated: tuple[Http, Scripted],
) -> None:
    http, scripted = translated
    odd = (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": None}},
    )
    scripted.stream(START, BLOCK, TEXT, odd, *END)
    body = _streamed(http, "/v1/messages", "bad-a-1")
    assert body.count(b"event: ") == 7 and b"message_stop" in body  # all of it, as written
    assert b"event: error" not in body


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_an_unreadable_event_in_a_translated_stream_ends_it_with_an_error(
    translated: tuple[Http, Scripted], path: str
) -> None:
    http, scripted = translated
    scripted.stream(("message_start", {"type": "message_start", "message": "x"}), TEXT, *END)
    body = _streamed(http, path, "bad-a-1")
    events = body.strip().split(b"\n\n")
    assert any(b"error" in e for e in events[-2:]), body[-400:]  # the end says it broke


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_a_stream_that_stops_without_its_end_says_so(
    translated: tuple[Http, Scripted], path: str
) -> None:
    http, scripted = translated
    scripted.stream(START, BLOCK, TEXT)  # no message_stop, no error: the upstream just stopped
    body = _streamed(http, path, "bad-a-1")
    tail = body.strip().split(b"\n\n")[-1]
    assert b"error" in tail or b"response.failed" in tail, tail


def test_an_openai_error_mid_stream_is_an_error_event_on_messages(
    translated: tuple[Http, Scripted],
) -> None:
    """Claude Code through kallm to an OpenAI-kind provider: the provider's mid-stream
    error must reach it as an error, not as a short answer followed by message_stop."""
    http, scripted = translated
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bad-o-1",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
    }
    failure = {"error": {"message": "overloaded", "type": "server_error"}}
    scripted.content_type = "text/event-stream"
    scripted.body = (
        b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in (chunk, failure))
        + b"data: [DONE]\n\n"
    )
    body = _streamed(http, "/v1/messages", "bad-o-1")
    events = body.strip().split(b"\n\n")
    assert b"event: error" in events[-1] and b"overloaded" in events[-1], body[-400:]
    assert b"message_stop" not in body
