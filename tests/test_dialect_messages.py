"""Anthropic Messages <-> chat (kallm.dialects.messages*): every mapping, then proof.

Unit tests pin each rule; the Anthropic SDK's own types check every object and
event produced; a round trip through the fake OpenAI upstream shows a Messages
request survives translation to chat and the answer comes back whole; the strict
fake Anthropic API is driven with the real ``anthropic`` SDK.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from kallm.accounts.pricing import Usage
from kallm.dialects import messages as m
from kallm.dialects.messages_stream import (
    MessagesAssembler,
    MessagesStreamFromChat,
    error_event,
    replay_message_events,
)
from kallm.errors import BudgetExceeded, RequestError, UpstreamError, UpstreamTimeout
from kallm.providers.sse import DONE, StreamAssembler, event_data, replay_events
from tests.fake_anthropic import FakeAnthropic, _events, start_fake_anthropic
from tests.fake_upstream import start_fake_upstream
from tests.harness import Http, LoopThread, stop

try:  # the SDK checks need the anthropic package (it belongs in the dev extra)
    import anthropic
    from anthropic.lib.streaming._messages import accumulate_event
    from anthropic.types import Message, RawMessageStreamEvent
    from anthropic.types.shared import ErrorResponse
    from pydantic import TypeAdapter

    EVENT: Any = TypeAdapter(RawMessageStreamEvent)
except ImportError:  # pragma: no cover - the pure tests still run
    anthropic = None

needs_sdk = pytest.mark.skipif(anthropic is None, reason="the anthropic SDK is not installed")
MODEL = "gpt-4o-mini"
CLAUDE = "claude-test-1"  # a model name the SDK has no deprecation warning for
PNG = "iVBORw0KGgo="
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
    "cache_control": {"type": "ephemeral"},
}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    turns = list(messages) or [{"role": "user", "content": "Hi"}]
    return {"model": MODEL, "max_tokens": 256, "messages": turns, **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def parse_sse(events: list[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) per SSE event, checking the framing on the way."""
    for raw in events:
        head, data, blank = raw.decode().split("\n", 2)
        assert head.startswith("event: ") and data.startswith("data: ") and blank == "\n"
        payload = json.loads(data[6:])
        assert payload["type"] == head[7:]
        yield head[7:], payload


def assemble(events: list[bytes]) -> MessagesAssembler:
    assembler = MessagesAssembler()
    for name, data in parse_sse(events):
        assembler.feed(name, data)
    return assembler


def sdk_final(events: list[bytes]) -> dict[str, Any]:
    """What the Anthropic SDK's own accumulator makes of the events (each validated first)."""
    snapshot, buffers = None, {}
    for name, data in parse_sse(events):
        if name in ("ping", "error"):
            continue
        event = EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return snapshot.model_dump(exclude_none=True)


def chat_chunks(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks an OpenAI-compatible provider streams for ``completion`` (with usage)."""
    return [
        json.loads(event_data(raw) or b"{}")
        for raw in replay_events(completion, include_usage=True)
        if raw != DONE
    ]


def completion(message: dict[str, Any], finish: str = "stop", usage: Any = None) -> dict:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage
        or {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }


# ---------------------------------------------------------------- request


def test_system_blocks_are_joined_and_cache_control_dropped() -> None:
    system = [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ]
    chat = m.chat_request_from_messages(body(system=system))
    assert chat["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nBe brief."}
    assert "cache_control" not in json.dumps(chat)
    assert m.chat_request_from_messages(body(system="Plain."))["messages"][0]["content"] == "Plain."


def test_parameters_map_to_chat_names() -> None:
    chat = m.chat_request_from_messages(
        body(
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "user_42"},
            stream=True,
            service_tier="auto",
            context_management={"edits": []},
        )
    )
    assert chat == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 256,
        "stop": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "user": "user_42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    legacy = m.chat_request_from_messages(body(), max_tokens_field="max_tokens")
    assert legacy["max_tokens"] == 256 and "max_completion_tokens" not in legacy


def test_user_blocks_images_and_documents() -> None:
    content = [
        {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "spec.pdf",
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "Notes"},
        },
    ]
    chat = m.chat_request_from_messages(body(user(content)))
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                {
                    "type": "file",
                    "file": {
                        "file_data": "data:application/pdf;base64,JVBERi0=",
                        "filename": "spec.pdf",
                    },
                },
                {"type": "text", "text": "Notes"},
            ],
        }
    ]


def test_tool_use_and_results_keep_ids_and_order() -> None:
    turns = [
        user("Weather in Paris and a screenshot?"),
        assistant(
            [
                {"type": "thinking", "thinking": "Two tools.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"l": "P"}},
                {"type": "tool_use", "id": "toolu_2", "name": "screenshot", "input": {}},
            ]
        ),
        user(
            [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        }
                    ],
                },
                {"type": "text", "text": "Thanks"},
            ]
        ),
        assistant([{"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "Ok"}]),
        user(
            [{"type": "tool_result", "tool_use_id": "toolu_3", "content": "boom", "is_error": True}]
        ),
    ]
    chat = m.chat_request_from_messages(body(*turns))["messages"]
    assert chat == [
        {"role": "user", "content": "Weather in Paris and a screenshot?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"l": "P"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "screenshot", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {
            "role": "tool",
            "tool_call_id": "toolu_2",
            "content": "(the tool returned the image(s) that follow)",
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "Thanks"},
            ],
        },
        {"role": "assistant", "content": "Ok"},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "Error: boom"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            {"type": "function", "function": {"name": "get_weather"}},
            False,
        ),
    ],
)
def test_tools_and_tool_choice(choice: dict, expected: Any, parallel: bool | None) -> None:
    chat = m.chat_request_from_messages(body(tools=[WEATHER_TOOL], tool_choice=choice))
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Current weather for a city.",
            },
        }
    ]
    assert chat["tool_choice"] == expected
    assert chat.get("parallel_tool_calls") == parallel


@pytest.mark.parametrize(
    ("extra", "effort"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "medium"),
        ({"thinking": {"type": "enabled", "budget_tokens": 31999}}, "high"),
        ({"thinking": {"type": "disabled"}}, None),
        ({"thinking": {"type": "adaptive"}}, None),
        ({"output_config": {"effort": "max"}, "thinking": {"type": "adaptive"}}, "high"),
        ({"output_config": {"effort": "low"}}, "low"),
    ],
)
def test_thinking_becomes_reasoning_effort(extra: dict, effort: str | None) -> None:
    assert m.chat_request_from_messages(body(**extra)).get("reasoning_effort") == effort


def test_structured_output_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    for extra in (
        {"output_config": {"format": {"type": "json_schema", "schema": schema}}},
        {"output_format": {"type": "json_schema", "schema": schema}},
    ):
        chat = m.chat_request_from_messages(body(**extra))
        assert chat["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [user([{"type": "audio"}])]}, "messages[0].content[0]"),
        (
            {"messages": [user([{"type": "image", "source": {"type": "file", "file_id": "f"}}])]},
            "messages[0].content[0].source.type",
        ),
        (
            {
                "messages": [
                    assistant([{"type": "server_tool_use", "id": "s", "name": "web_search"}])
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [assistant([{"type": "tool_use", "name": "x", "input": {}}])]},
            "messages[0].content[0].id",
        ),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"name": "x"}]}, "tools[0].input_schema"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool", "name": "y"}},
            "tool_choice.name",
        ),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"output_config": {"effort": "huge"}}, "output_config.effort"),
        ({"mcp_servers": [{"type": "url", "url": "https://x"}]}, "mcp_servers"),
        ({"container": "c_1"}, "container"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_shapes_that_are_wrong_are_a_400_naming_the_field(change: dict, param: str) -> None:
    request = {**body(), **change}
    with pytest.raises(RequestError) as caught:
        m.chat_request_from_messages(request)
    assert caught.value.status == 400 and caught.value.param == param


def test_a_body_that_is_not_an_object_is_a_400() -> None:
    with pytest.raises(RequestError):
        m.chat_request_from_messages(["not", "a", "body"])


# ---------------------------------------------------------------- response


def test_text_answer_with_cached_usage() -> None:
    message = m.message_from_chat(completion({"role": "assistant", "content": "Hello"}), "claude")
    assert message == {
        "id": "msg_chatcmplabc123",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
            "output_tokens": 30,
        },
    }


def test_reasoning_and_tool_calls_answer() -> None:
    chat = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "Need weather.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            },
            {"id": "", "type": "function", "function": {"name": "now", "arguments": ""}},
            {"id": "call_3", "type": "function", "function": {"name": "bad", "arguments": "{x"}},
        ],
    }
    message = m.message_from_chat(completion(chat, "tool_calls"), "claude")
    assert message["stop_reason"] == "tool_use"
    thinking, *calls = message["content"]
    assert thinking == {"type": "thinking", "thinking": "Need weather.", "signature": ""}
    assert calls[0] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"location": "Paris"},
    }
    assert calls[1]["id"].startswith("toolu_") and calls[1]["input"] == {}
    assert calls[2]["input"] == {"_raw_arguments": "{x"}


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, stop: str) -> None:
    message = m.message_from_chat(completion({"content": "x"}, finish), "claude")  # type: ignore[arg-type]
    assert message["stop_reason"] == stop


def test_a_refusal_is_text_with_stop_reason_refusal() -> None:
    message = m.message_from_chat(
        completion({"role": "assistant", "content": None, "refusal": "I can't."}), "claude"
    )
    assert message["content"] == [{"type": "text", "text": "I can't."}]
    assert message["stop_reason"] == "refusal"


# ---------------------------------------------------------------- chat stream -> Messages

ANSWERS = [
    pytest.param({"role": "assistant", "content": "Hello there, " * 9}, "stop", id="text"),
    pytest.param(
        {"role": "assistant", "content": "", "reasoning_content": "Let me think. " * 5},
        "length",
        id="reasoning-only",
    ),
    pytest.param(
        {
            "role": "assistant",
            "content": "I'll check.",
            "reasoning_content": "Weather needs a tool.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
                },
            ],
        },
        "tool_calls",
        id="reasoning-text-tools",
    ),
    pytest.param({"role": "assistant", "content": ""}, "stop", id="empty"),
]


def translate(chunks: list[dict[str, Any]], model: str = "claude") -> list[bytes]:
    stream = MessagesStreamFromChat(model, input_tokens=7)
    events = [e for c in chunks for e in stream.feed(c)] + stream.close()
    assert stream.complete
    return events


@pytest.mark.parametrize(("message", "finish"), ANSWERS)
def test_a_translated_stream_assembles_to_the_translated_answer(message: dict, finish: str) -> None:
    whole = completion(message, finish)
    chunks = chat_chunks(whole)
    events = translate(chunks)
    names = [name for name, _ in parse_sse(events)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assembler = StreamAssembler()
    for c in chunks:
        assembler.feed(c)
    expected = m.message_from_chat(assembler.completion(), "claude")
    assert assemble(events).message == expected


@needs_sdk
@pytest.mark.parametrize(("message", "finish"), ANSWERS)
def test_the_sdk_reads_translated_answers_and_streams_alike(message: dict, finish: str) -> None:
    whole = completion(message, finish)
    expected = Message.model_validate(m.message_from_chat(whole, "claude"))
    events = translate(chat_chunks(whole))
    assert sdk_final(events) == expected.model_dump(exclude_none=True)


def test_text_deltas_follow_the_chunks_and_blocks_never_overlap() -> None:
    chunks = chat_chunks(completion(ANSWERS[2].values[0], "tool_calls"))
    events = list(parse_sse(translate(chunks)))
    open_block = None
    for name, data in events:
        if name == "content_block_start":
            assert open_block is None
            open_block = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_block
        elif name == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
    kinds = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert kinds == ["thinking", "text", "tool_use", "tool_use"]


def test_the_end_waits_for_usage_or_close_and_never_comes_unfinished() -> None:
    chunks = chat_chunks(completion({"role": "assistant", "content": "Hi"}))
    *body_chunks, usage_chunk = chunks
    stream = MessagesStreamFromChat("claude")
    events = [e for c in body_chunks for e in stream.feed(c)]
    assert not stream.complete and b"message_stop" not in b"".join(events)
    end = stream.feed(usage_chunk)
    assert stream.complete and b"message_stop" in end[-1]
    assert stream.close() == []

    no_usage = MessagesStreamFromChat("claude", input_tokens=11)
    for c in body_chunks:
        no_usage.feed(c)
    last = dict(parse_sse(no_usage.close()))
    assert last["message_delta"]["usage"]["input_tokens"] == 11

    cut = MessagesStreamFromChat("claude")
    for c in body_chunks[:-1]:  # the finish_reason never came
        cut.feed(c)
    assert cut.close() == [] and not cut.complete


def test_interleaved_parallel_tool_arguments_are_an_upstream_error() -> None:
    def call(index: int, arguments: str, head: bool = False) -> dict:
        piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if head:
            piece.update(id=f"call_{index}", type="function")
            piece["function"]["name"] = "f"
        return {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}

    stream = MessagesStreamFromChat("claude")
    stream.feed(call(0, '{"a":', head=True))
    stream.feed(call(1, '{"b": 1}', head=True))
    with pytest.raises(UpstreamError):
        stream.feed(call(0, " 1}"))


# ---------------------------------------------------------------- native assembly and replay

SHAPES = [
    pytest.param([{"type": "text", "text": "Short."}], id="text"),
    pytest.param(
        [
            {
                "type": "thinking",
                "thinking": "Consider the weather. " * 6,
                "signature": "EqQBsig==",
            },
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "text", "text": "Let me check the weather in Paris for you — ☀️ " * 3},
            {
                "type": "tool_use",
                "id": "toolu_01A",
                "name": "get_weather",
                "input": {"location": "Paris", "units": ["c", "f"], "deep": {"x": 1.5}},
            },
            {"type": "tool_use", "id": "toolu_01B", "name": "now", "input": {}},
        ],
        id="thinking-redacted-text-tools",
    ),
    pytest.param(
        [
            {
                "type": "server_tool_use",
                "id": "srvtoolu_1",
                "name": "web_search",
                "input": {"query": "kallm"},
            },
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_1",
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://example.com",
                        "title": "Example",
                        "encrypted_content": "abc",
                        "page_age": None,
                    }
                ],
            },
            {
                "type": "text",
                "text": "It is a proxy.",
                "citations": [
                    {
                        "type": "web_search_result_location",
                        "url": "https://example.com",
                        "title": "Example",
                        "encrypted_index": "Eo8B",
                        "cited_text": "a proxy",
                    }
                ],
            },
        ],
        id="server-tools-and-citations",
    ),
    pytest.param([], id="no-content"),
]


def native(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 2048,
            "cache_read_input_tokens": 4096,
            "output_tokens": 87,
            "service_tier": "standard",
        },
    }


@pytest.mark.parametrize("content", SHAPES)
@pytest.mark.parametrize("fresh", [False, True])
def test_replay_then_assembly_gives_the_same_message(content: list[dict], fresh: bool) -> None:
    message = native(content)
    events = replay_message_events(message, fresh_ids=fresh)
    assembler = assemble(events)
    assert assembler.complete
    result = assembler.message
    if fresh:
        assert result["id"] != message["id"] and result["id"].startswith("msg_")
        result["id"] = message["id"]
    assert result == message


@needs_sdk
@pytest.mark.parametrize("content", SHAPES)
def test_the_sdk_reads_replayed_messages_alike(content: list[dict]) -> None:
    message = Message.model_validate(native(content))
    events = replay_message_events(native(content))
    assert sdk_final(events) == message.model_dump(exclude_none=True)


def test_replay_sends_several_deltas_and_the_real_event_order() -> None:
    events = list(parse_sse(replay_message_events(native(SHAPES[1].values[0]))))
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert deltas.count("text_delta") > 1 and deltas.count("input_json_delta") > 1
    assert deltas.count("signature_delta") == 1
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None


def test_the_fake_anthropic_event_sequence_assembles_to_its_message() -> None:
    message = native(SHAPES[1].values[0][:1] + SHAPES[1].values[0][2:], "tool_use")
    message["usage"] = {k: v for k, v in message["usage"].items()}
    assembler = MessagesAssembler()
    for name, data, _terminal in _events(message):
        assembler.feed(name, data)
    assert assembler.complete and assembler.message == message


def test_an_unfinished_or_failed_native_stream_is_not_complete() -> None:
    events = replay_message_events(native([{"type": "text", "text": "Hi"}]))
    assert not assemble(events[:-1]).complete
    failed = [*events[:-2], error_event(m.anthropic_error(529, "Overloaded")), *events[-1:]]
    assembler = assemble(failed)
    assert not assembler.complete and assembler.error == {
        "type": "overloaded_error",
        "message": "Overloaded",
    }


# ---------------------------------------------------------------- errors and counting


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_openai_errors_become_anthropic_errors(status: int, kind: str) -> None:
    upstream = {"error": {"message": "nope", "type": "x", "param": None, "code": None}}
    for raw in (upstream, json.dumps(upstream), json.dumps(upstream).encode()):
        got_status, got = m.error_from_openai(status, raw)
        assert got_status == status
        assert got == {"type": "error", "error": {"type": kind, "message": "nope"}}


@needs_sdk
def test_the_sdk_reads_the_error_bodies() -> None:
    for status in (400, 401, 402, 403, 404, 429, 500, 503, 504, 529):
        ErrorResponse.model_validate(m.anthropic_error(status, "x"))
    # 413 request_too_large is documented by Anthropic but not modelled by the SDK


def test_odd_error_bodies_and_kallm_errors() -> None:
    _status, got = m.error_from_openai(502, b"<html>Bad gateway</html>")
    assert got["error"] == {
        "type": "api_error",
        "message": "upstream returned HTTP 502: <html>Bad gateway</html>",
    }
    quota = {"error": {"message": "budget", "type": "insufficient_quota", "code": None}}
    assert m.error_from_openai(429, quota)[1]["error"]["type"] == "billing_error"
    assert m.error_from_kallm(BudgetExceeded("spent")) == (
        429,
        {"type": "error", "error": {"type": "billing_error", "message": "spent"}},
    )
    assert m.error_from_kallm(RequestError("bad", param="x"))[1]["error"]["type"] == (
        "invalid_request_error"
    )
    assert m.error_from_kallm(UpstreamTimeout("slow"))[1]["error"]["type"] == "timeout_error"
    assert m.anthropic_error(529, "busy")["error"]["type"] == "overloaded_error"


def test_usage_for_pricing_counts_cache_reads_and_writes_as_prompt() -> None:
    usage = native([])["usage"]  # 12 fresh, 2048 written, 4096 read, 87 out
    assert Usage.from_anthropic(usage) == Usage(12 + 2048 + 4096, 87, 4096, 2048)
    assert Usage.from_anthropic(None) == Usage()
    chat_usage = completion({"content": "x"})["usage"]
    round_trip = Usage.from_anthropic(m.usage_from_chat(chat_usage))
    assert round_trip == Usage.from_openai(chat_usage)


def test_estimate_input_tokens_is_about_four_characters_a_token() -> None:
    request = body(
        user("x" * 400),
        assistant([{"type": "tool_use", "id": "t", "name": "n", "input": {}}]),
        user(
            [
                {"type": "tool_result", "tool_use_id": "t", "content": "y" * 40},
                {"type": "image", "source": {"type": "url", "url": "https://e/x.png"}},
            ]
        ),
        system="z" * 40,
    )
    chars = 40 + 400 + len("n{}") + 40  # system, user text, tool_use, tool_result
    assert m.estimate_input_tokens(request) == math.ceil(chars / 4) + 1600
    assert m.count_tokens_response(request) == {"input_tokens": m.estimate_input_tokens(request)}
    assert m.estimate_input_tokens({"messages": "odd"}) == 1
    with pytest.raises(RequestError):
        m.count_tokens_response({"messages": []})


# ---------------------------------------------------------------- through the fakes


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def fake_openai(loop: LoopThread) -> Iterator[str]:
    _fake, runner, url = loop.run(start_fake_upstream())
    yield url
    stop(loop, runner)


@pytest.fixture(scope="module")
def fake_anthropic_server(loop: LoopThread) -> Iterator[tuple[FakeAnthropic, str]]:
    fake, runner, url = loop.run(start_fake_anthropic())
    yield fake, url
    stop(loop, runner)


@pytest.fixture
def fake_claude(fake_anthropic_server: tuple[FakeAnthropic, str]) -> tuple[FakeAnthropic, str]:
    fake, url = fake_anthropic_server
    fake.reset()
    return fake, url


CLAUDE_CODE_REQUEST = {
    "model": MODEL,
    "max_tokens": 512,
    "system": [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
    ],
    "messages": [
        user("What's the weather in Paris?"),
        assistant(
            [
                {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "get_weather",
                    "input": {"location": "P"},
                }
            ]
        ),
        user([{"type": "tool_result", "tool_use_id": "toolu_9", "content": "Sunny, 21C"}]),
    ],
    "tools": [WEATHER_TOOL],
    "metadata": {"user_id": "user_abc_account_1_session_2"},
    "temperature": 1,
}


@pytest.mark.parametrize(
    "last_turn",
    [CLAUDE_CODE_REQUEST["messages"], [user("What's the weather in Paris?")]],
    ids=["tool-result", "tool-call"],
)
def test_a_claude_code_request_through_the_openai_fake(
    fake_openai: str, last_turn: list[dict]
) -> None:
    request = {**CLAUDE_CODE_REQUEST, "messages": last_turn}
    chat = m.chat_request_from_messages(request)
    streamed_chat = m.chat_request_from_messages({**request, "stream": True})
    http = Http(fake_openai)
    whole = http.post("/chat/completions", chat).json()
    sse = http.post("/chat/completions", streamed_chat).body.decode()
    raws = [line[6:] for line in sse.splitlines() if line.startswith("data: ")]
    message = m.message_from_chat(whole, "claude-sonnet-4-5")
    if len(last_turn) > 1:
        assert message["content"] == [{"type": "text", "text": "The tool said: Sunny, 21C"}]
    else:
        assert message["stop_reason"] == "tool_use"
        assert message["content"][0]["input"] == {"location": "Paris"}
    assert raws[-1] == "[DONE]"
    chunks = [json.loads(r) for r in raws[:-1]]
    events = translate(chunks, "claude-sonnet-4-5")
    streamed = assemble(events).message
    for block in (*streamed["content"], *message["content"]):
        block.pop("id", None)  # the fake names each tool call afresh
    assert {k: v for k, v in streamed.items() if k != "id"} == {
        k: v for k, v in message.items() if k != "id"
    }
    assert [name for name, _ in parse_sse(events)][-1] == "message_stop"


@needs_sdk
def test_the_fake_anthropic_api_with_the_sdk(fake_claude: tuple[FakeAnthropic, str]) -> None:
    fake, url = fake_claude
    client = anthropic.Anthropic(
        base_url=url,
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(
        model=CLAUDE,
        max_tokens=2048,
        system=system,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[WEATHER_TOOL],
        messages=[user("What's the weather in Paris?")],
    )
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    thinking, _, call = first.content
    follow_up = [
        user("What's the weather in Paris?"),
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        user([{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]),
    ]
    with client.messages.stream(
        model=CLAUDE,
        max_tokens=2048,
        system=system,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[WEATHER_TOOL],
        messages=follow_up,
    ) as stream:
        second = stream.get_final_message()
    assert second.content[-1].text == "The tool said: Sunny"
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    counted = client.messages.count_tokens(
        model=CLAUDE, system=system, messages=follow_up, tools=[WEATHER_TOOL]
    )
    assert counted.input_tokens > 0
    assert len(fake.anthropic_versions) == 3 and len(set(fake.anthropic_versions)) == 1
    assert fake.anthropic_versions[0]  # whatever version this SDK speaks, recorded
    assert fake.anthropic_betas == [["prompt-caching-2024-07-31"]] * 3
    assert thinking.signature in fake.signatures


@needs_sdk
def test_a_native_stream_from_the_fake_assembles_like_the_sdk(
    fake_claude: tuple[FakeAnthropic, str],
) -> None:
    _fake, url = fake_claude
    request = {
        "model": CLAUDE,
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [WEATHER_TOOL],
        "messages": [user("What's the weather in Paris?")],
        "stream": True,
    }
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    raw = Http(url).post("/v1/messages", request, headers=headers).body
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]
    assembler = assemble(events)
    assert assembler.complete
    sdk = sdk_final(events)
    assert Message.model_validate(assembler.message).model_dump(exclude_none=True) == sdk
    replayed = assemble(replay_message_events(assembler.message))
    assert replayed.message == assembler.message


@needs_sdk
def test_the_fake_refuses_what_anthropic_refuses(fake_claude: tuple[FakeAnthropic, str]) -> None:
    _fake, url = fake_claude
    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.count_tokens(model=CLAUDE, messages=[])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    forged = [
        user("Hi"),
        assistant(
            [
                {"type": "thinking", "thinking": "x", "signature": "forged"},
                {"type": "text", "text": "Hello"},
            ]
        ),
        user("Again"),
    ]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=CLAUDE, max_tokens=64, messages=forged)


def test_copy_safety_of_the_translators() -> None:
    """Translating never changes the caller's objects (the server keeps them for the cache)."""
    request = copy.deepcopy(CLAUDE_CODE_REQUEST)
    m.chat_request_from_messages(request)
    assert request == CLAUDE_CODE_REQUEST
    message = native(SHAPES[1].values[0])
    kept = copy.deepcopy(message)
    replay_message_events(message, fresh_ids=True)
    assert message == kept


def test_reading_a_half_assembled_message_changes_nothing() -> None:
    events = replay_message_events(native(SHAPES[1].values[0]))
    half = MessagesAssembler()
    pairs = list(parse_sse(events))
    cut = next(i for i, (n, d) in enumerate(pairs) if d.get("delta", {}).get("partial_json"))
    for name, data in pairs[: cut + 2]:
        half.feed(name, data)
        half.message  # noqa: B018 - a read mid-stream, as a progress view would
    for name, data in pairs[cut + 2 :]:
        half.feed(name, data)
    assert half.complete and half.message == native(SHAPES[1].values[0])


def test_an_empty_user_turn_stays_an_empty_string() -> None:
    chat = m.chat_request_from_messages(body(user([{"type": "text", "text": ""}])))
    assert chat["messages"] == [{"role": "user", "content": ""}]
