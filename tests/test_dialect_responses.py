"""OpenAI Responses <-> chat (kallm.dialects.responses*): every mapping, then proof.

Unit tests pin each rule; the ``openai`` SDK's own types check every response
object and stream event produced; a Responses request goes through the
translation to the strict fake Anthropic API and back (including the thinking
round trip a tool loop needs); the fake's own ``/v1/responses`` is driven with
the real SDK, and its streams are assembled and replayed.
"""

from __future__ import annotations

import copy
import http.client
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from kallm.accounts.pricing import Usage
from kallm.dialects import responses as r
from kallm.dialects.responses_stream import (
    ResponsesAssembler,
    ResponsesStreamFromChat,
    replay_response_events,
)
from kallm.errors import RequestError, UpstreamError
from kallm.providers import anthropic as native_anthropic
from kallm.providers.sse import DONE, StreamAssembler, event_data, replay_events
from tests.fake_anthropic import FakeAnthropic, _events, start_fake_anthropic
from tests.fake_upstream import FakeUpstream, start_fake_upstream
from tests.harness import Http, LoopThread, stop

EVENT = TypeAdapter(ResponseStreamEvent)
CLAUDE = "claude-test-1"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": WEATHER["parameters"],
        "strict": True,
    },
}


def request(input_: Any = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": CLAUDE, "input": input_, **extra}


def parse_sse(events: list[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    for raw in events:
        head, data, blank = raw.decode().split("\n", 2)
        assert head.startswith("event: ") and data.startswith("data: ") and blank == "\n"
        payload = json.loads(data[6:])
        assert payload["type"] == head[7:]
        yield head[7:], payload


def assemble(events: list[bytes]) -> ResponsesAssembler:
    assembler = ResponsesAssembler()
    for name, data in parse_sse(events):
        assembler.feed(name, data)
    return assembler


def check_stream(events: list[bytes]) -> list[dict[str, Any]]:
    """Every event parses as the SDK's union; sequence numbers count from 0; every item
    event points at the item its output_index names."""
    payloads = [data for _, data in parse_sse(events)]
    for n, data in enumerate(payloads):
        EVENT.validate_python(data)
        assert data["sequence_number"] == n
    items: dict[int, str] = {}
    for data in payloads:
        if data["type"] == "response.output_item.added":
            assert data["output_index"] == len(items)
            items[data["output_index"]] = data["item"]["id"]
        elif "item_id" in data:
            assert items[data["output_index"]] == data["item_id"]
    return payloads


def read_cut_stream(url: str, body: dict[str, Any]) -> bytes:
    """What arrived before the server dropped the connection mid-stream."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as reply:
        try:
            return reply.read()
        except http.client.IncompleteRead as cut:
            return cut.partial


def completion(message: dict[str, Any], finish: str = "stop", usage: Any = None) -> dict:
    return {
        "id": "chatcmpl-xyz789",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": CLAUDE,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage
        or {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 12},
        },
    }


def chat_chunks(whole: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        json.loads(event_data(raw) or b"{}")
        for raw in replay_events(whole, include_usage=True)
        if raw != DONE
    ]


# ---------------------------------------------------------------- request


def test_a_string_input_and_instructions() -> None:
    chat = r.chat_request_from_responses(
        request(
            "Hello",
            instructions="Be brief.",
            max_output_tokens=300,
            temperature=0.3,
            top_p=0.8,
            reasoning={"effort": "xhigh", "summary": "auto"},
            safety_identifier="user-1",
            stream=True,
            store=False,
            include=["reasoning.encrypted_content"],
            text={"verbosity": "low"},
            truncation="auto",
            prompt_cache_key="k",
            metadata={"run": "1"},
        )
    )
    assert chat == {
        "model": CLAUDE,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.8,
        "reasoning_effort": "high",
        "user": "user-1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_input_items_become_chat_turns() -> None:
    sealed = r.seal_reasoning("I should call the tool.", "sig-1")
    items = [
        {"role": "developer", "content": "Use tools."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather in Paris?"},
                {"type": "input_image", "image_url": PNG, "detail": "low"},
                {"type": "input_file", "file_data": "JVBERi0=", "filename": "a.pdf"},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-openai"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": sealed},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"location": "Paris"}',
        },
        {"type": "function_call", "call_id": "call_2", "name": "screenshot", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_image", "image_url": PNG}],
        },
        {"role": "user", "content": "Thanks"},
    ]
    chat = r.chat_request_from_responses(request(items))["messages"]
    assert chat == [
        {"role": "system", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                {
                    "type": "file",
                    "file": {
                        "file_data": "data:application/pdf;base64,JVBERi0=",
                        "filename": "a.pdf",
                    },
                },
            ],
        },
        {"role": "assistant", "content": "Checking."},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "I should call the tool.",
            "reasoning_signature": "sig-1",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "screenshot", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": "(the tool returned the image(s) that follow)",
        },
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "user", "content": "Thanks"},
    ]


def test_a_function_call_joins_the_assistant_message_before_it() -> None:
    items = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"},
    ]
    chat = r.chat_request_from_responses(request(items))["messages"]
    assert chat[1]["content"] == "Let me check." and chat[1]["tool_calls"][0]["id"] == "c"


X_TOOL = {"type": "function", "name": "x"}
CHAT_X = {"type": "function", "function": {"name": "x"}}


@pytest.mark.parametrize(
    ("choice", "offered", "expected"),
    [
        ("auto", [CHAT_WEATHER, CHAT_X], "auto"),
        ("required", [CHAT_WEATHER, CHAT_X], "required"),
        ("none", [CHAT_WEATHER, CHAT_X], "none"),
        (
            {"type": "function", "name": "get_weather"},
            [CHAT_WEATHER, CHAT_X],
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [X_TOOL]},
            [CHAT_X],
            "required",
        ),
    ],
)
def test_function_tools_and_tool_choice(choice: Any, offered: list, expected: Any) -> None:
    chat = r.chat_request_from_responses(request(tools=[WEATHER, X_TOOL], tool_choice=choice))
    assert chat["tools"] == offered
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat
    serial = r.chat_request_from_responses(request(tools=[WEATHER], parallel_tool_calls=False))
    assert serial["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
        ),
    ],
)
def test_text_format_becomes_response_format(text: dict, expected: Any) -> None:
    assert r.chat_request_from_responses(request(text=text)).get("response_format") == expected


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"input": None}, "input"),
        ({"input": 5}, "input"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"background": True}, "background"),
        ({"instructions": ["x"]}, "instructions"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": ["text"]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].file_data",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_image"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "chat_shaped"}}]}, "tools[0].name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "y"}},
            "tool_choice.name",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"reasoning": {"effort": "maximal"}}, "reasoning.effort"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_field(change: dict, param: str) -> None:
    with pytest.raises(RequestError) as caught:
        r.chat_request_from_responses({**request(), **change})
    assert caught.value.status == 400 and caught.value.param == param


def test_only_kallm_sealed_reasoning_is_restored() -> None:
    sealed = r.seal_reasoning("Thinking ☀️", "sig")
    assert r.unseal_reasoning(sealed) == ("Thinking ☀️", "sig")
    for other in (None, "gAAAAABopenai", "kallm.r1.!!!", "kallm.r1." + "e30="):
        assert r.unseal_reasoning(other) is None


# ---------------------------------------------------------------- response


def test_text_answer_with_usage_and_echoed_request() -> None:
    req = request(
        "Hi",
        instructions="Be brief.",
        tools=[WEATHER],
        tool_choice="auto",
        temperature=0.5,
        max_output_tokens=500,
        metadata={"run": "7"},
        text={"format": {"type": "text"}, "verbosity": "low"},
        reasoning={"effort": "low", "summary": "auto"},
    )
    response = r.response_from_chat(completion({"role": "assistant", "content": "Hello!"}), req)
    Response.model_validate(response)
    assert response["id"].startswith("resp_") and response["object"] == "response"
    assert response["created_at"] == 1_700_000_000 and response["status"] == "completed"
    assert response["output"] == [
        {
            "id": response["output"][0]["id"],
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert response["output"][0]["id"].startswith("msg_")
    assert response["usage"] == {
        "input_tokens": 120,
        "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 0},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 12},
        "total_tokens": 150,
    }
    for name in ("instructions", "tools", "tool_choice", "temperature", "max_output_tokens"):
        assert response[name] == req[name]
    assert response["metadata"] == {"run": "7"} and response["store"] is False
    assert response["text"] == req["text"] and response["reasoning"] == req["reasoning"]
    assert response["model"] == CLAUDE and response["parallel_tool_calls"] is True
    assert Response.model_validate(response).output_text == "Hello!"


def test_reasoning_and_function_calls() -> None:
    message = {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Need a tool.",
        "reasoning_signature": "sig-9",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
            },
            {"id": "", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    }
    response = r.response_from_chat(completion(message, "tool_calls"), request(tools=[WEATHER]))
    Response.model_validate(response)
    kinds = [item["type"] for item in response["output"]]
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    reasoning, _, first, second = response["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Need a tool."}]
    assert r.unseal_reasoning(reasoning["encrypted_content"]) == ("Need a tool.", "sig-9")
    assert first == {
        "id": first["id"],
        "type": "function_call",
        "status": "completed",
        "arguments": '{"location":"Paris"}',
        "call_id": "toolu_1",
        "name": "get_weather",
    }
    assert second["call_id"].startswith("call_") and first["id"].startswith("fc_")
    assert len({item["id"] for item in response["output"]}) == 4


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
    ],
)
def test_status_from_finish_reason(finish: str, status: str, reason: str | None) -> None:
    response = r.response_from_chat(completion({"content": "Cut"}, finish), request())
    assert response["status"] == status
    assert response["incomplete_details"] == ({"reason": reason} if reason else None)
    assert response["output"][0]["status"] == status
    Response.model_validate(response)


def test_usage_for_pricing() -> None:
    usage = r.usage_from_chat(completion({"content": "x"})["usage"])
    assert Usage.from_openai(usage) == Usage(120, 30, 100)
    assert Usage.from_openai(usage) == Usage.from_openai(completion({"content": "x"})["usage"])
    assert Usage.from_openai(None) == Usage()


# ---------------------------------------------------------------- chat stream -> Responses

ANSWERS = [
    pytest.param({"role": "assistant", "content": "Hello there, " * 9}, "stop", id="text"),
    pytest.param({"role": "assistant", "content": "Cut short " * 3}, "length", id="incomplete"),
    pytest.param(
        {
            "role": "assistant",
            "content": "I'll check.",
            "reasoning_content": "Weather needs a tool. " * 3,
            "reasoning_signature": "EqQBsig",
            "tool_calls": [
                {
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "toolu_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
                },
            ],
        },
        "tool_calls",
        id="reasoning-text-tools",
    ),
    pytest.param(
        {"role": "assistant", "content": None, "refusal": "I can't."}, "stop", id="refusal"
    ),
    pytest.param({"role": "assistant", "content": ""}, "stop", id="empty"),
]


def translate(chunks: list[dict[str, Any]], req: dict[str, Any]) -> tuple[list[bytes], dict]:
    stream = ResponsesStreamFromChat(req)
    events = [e for c in chunks for e in stream.feed(c)] + stream.close()
    assert stream.complete and stream.response is not None
    return events, stream.response


@pytest.mark.parametrize(("message", "finish"), ANSWERS)
def test_a_translated_stream_ends_with_the_translated_answer(message: dict, finish: str) -> None:
    req = request(tools=[WEATHER], reasoning={"effort": "low"})
    chunks = chat_chunks(completion(message, finish))
    events, final = translate(chunks, req)
    payloads = check_stream(events)
    assembler = StreamAssembler()
    for c in chunks:
        assembler.feed(c)
    expected = r.response_from_chat(assembler.completion(), req)
    assert final == expected
    terminal = "response.completed" if expected["status"] == "completed" else "response.incomplete"
    assert payloads[0]["type"] == "response.created" and payloads[-1]["type"] == terminal
    assert payloads[-1]["response"] == expected
    done = [p["item"] for p in payloads if p["type"] == "response.output_item.done"]
    assert done == expected["output"]
    assembled = assemble(events)
    assert assembled.response == expected and assembled.complete == (
        terminal == "response.completed"
    )


def test_the_event_order_within_items() -> None:
    chunks = chat_chunks(completion(ANSWERS[2].values[0], "tool_calls"))
    payloads = check_stream(translate(chunks, request())[0])
    kinds = [p["type"] for p in payloads]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
    ]
    assert kinds[-1] == "response.completed"
    for name in (
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ):
        assert name in kinds
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 4
    )
    head = payloads[0]["response"]
    assert head["status"] == "in_progress" and head["output"] == [] and head["usage"] is None


def test_the_end_waits_for_usage_or_close() -> None:
    chunks = chat_chunks(completion({"role": "assistant", "content": "Hi"}))
    *body, usage = chunks
    stream = ResponsesStreamFromChat(request())
    events = [e for c in body for e in stream.feed(c)]
    assert not stream.complete and b"response.completed" not in b"".join(events)
    assert b"response.completed" in stream.feed(usage)[-1] and stream.close() == []

    cut = ResponsesStreamFromChat(request())
    for c in body[:-1]:
        cut.feed(c)
    assert cut.close() == [] and not cut.complete
    failed = list(parse_sse(cut.fail("provider went away")))
    assert failed[-1][0] == "response.failed"
    assert failed[-1][1]["response"]["error"] == {
        "code": "server_error",
        "message": "provider went away",
    }
    EVENT.validate_python(failed[-1][1])
    assert cut.fail("twice") != [] and ResponsesStreamFromChat(request()).fail("x") == []


def test_interleaved_parallel_tool_arguments_are_an_upstream_error() -> None:
    def call(index: int, arguments: str, head: bool = False) -> dict:
        piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if head:
            piece.update(id=f"call_{index}", type="function")
            piece["function"]["name"] = "f"
        return {
            "id": "c",
            "created": 1,
            "choices": [{"index": 0, "delta": {"tool_calls": [piece]}}],
        }

    stream = ResponsesStreamFromChat(request())
    stream.feed(call(0, '{"a":', head=True))
    stream.feed(call(1, '{"b": 1}', head=True))
    with pytest.raises(UpstreamError):
        stream.feed(call(0, " 1}"))


# ---------------------------------------------------------------- native assembly and replay


def native(output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_68af0001",
        "object": "response",
        "created_at": 1_756_000_000,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": "Be brief.",
        "max_output_tokens": None,
        "model": "gpt-5-2025-08-07",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [WEATHER],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 300,
            "input_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 0},
            "output_tokens": 90,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 390,
        },
        "user": None,
        "metadata": {},
    }


REASONING = {
    "id": "rs_68af01",
    "type": "reasoning",
    "summary": [
        {"type": "summary_text", "text": "**Checking the weather** I will call the tool. " * 3},
        {"type": "summary_text", "text": "Second thought."},
    ],
    "encrypted_content": "gAAAAABo-sealed-by-openai==",
}
MESSAGE = {
    "id": "msg_68af02",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [
        {
            "type": "output_text",
            "text": "Paris is sunny today — 21°C. " * 4,
            "annotations": [
                {
                    "type": "url_citation",
                    "start_index": 0,
                    "end_index": 5,
                    "title": "Weather",
                    "url": "https://example.com",
                }
            ],
            "logprobs": [],
        }
    ],
}
CALL = {
    "id": "fc_68af03",
    "type": "function_call",
    "status": "completed",
    "arguments": '{"location": "Paris", "units": "celsius", "detail": ["wind", "rain"]}',
    "call_id": "call_68af03",
    "name": "get_weather",
}
SHAPES = [
    pytest.param([MESSAGE], "completed", id="message"),
    pytest.param(
        [REASONING, CALL, {**CALL, "id": "fc_2", "call_id": "call_2"}],
        "completed",
        id="reasoning-calls",
    ),
    pytest.param(
        [
            {
                "id": "ws_1",
                "type": "web_search_call",
                "status": "completed",
                "action": {"type": "search", "query": "paris weather"},
            },
            {
                **MESSAGE,
                "content": [{"type": "refusal", "refusal": "I can't help with that."}],
            },
        ],
        "completed",
        id="hosted-tool-and-refusal",
    ),
    pytest.param([{**MESSAGE, "status": "incomplete"}], "incomplete", id="incomplete"),
    pytest.param([], "completed", id="empty"),
]


@pytest.mark.parametrize(("output", "status"), SHAPES)
@pytest.mark.parametrize("fresh", [False, True])
def test_replay_then_assembly_gives_the_same_response(
    output: list, status: str, fresh: bool
) -> None:
    response = native(copy.deepcopy(output), status)
    Response.model_validate(response)
    events = replay_response_events(response, fresh_ids=fresh)
    check_stream(events)
    assembler = assemble(events)
    assert assembler.complete == (status == "completed")
    result = assembler.response
    assert result is not None
    if fresh:
        assert result["id"] != response["id"] and result["id"].startswith("resp_")
        assert result["created_at"] >= response["created_at"]
        for new, old in zip(result["output"], response["output"], strict=True):
            assert new["id"] != old["id"] and new["id"].split("_")[0] == old["id"].split("_")[0]
            assert new.get("call_id") == old.get("call_id")
            new["id"] = old["id"]
        result["id"], result["created_at"] = response["id"], response["created_at"]
    assert result == response


def test_replayed_text_comes_in_several_deltas() -> None:
    payloads = check_stream(replay_response_events(native([REASONING, MESSAGE, CALL])))
    kinds = [p["type"] for p in payloads]
    assert kinds.count("response.output_text.delta") > 1
    assert kinds.count("response.reasoning_summary_text.delta") > 2
    assert kinds.count("response.function_call_arguments.delta") > 1
    added = [p["item"] for p in payloads if p["type"] == "response.output_item.added"]
    assert (
        added[0]["summary"] == []
        and added[0]["encrypted_content"] == REASONING["encrypted_content"]
    )


def test_unfinished_failed_and_error_streams_are_not_complete() -> None:
    events = replay_response_events(native([MESSAGE]))
    assert not assemble(events[:-1]).complete
    failed = native([], "failed")
    failed["error"] = {"code": "server_error", "message": "boom"}
    assembler = assemble(replay_response_events(failed))
    assert not assembler.complete and assembler.status == "response.failed"
    error = ResponsesAssembler()
    error.feed(
        "error",
        {
            "type": "error",
            "code": "server_error",
            "message": "x",
            "param": None,
            "sequence_number": 3,
        },
    )
    assert not error.complete and error.error == {
        "code": "server_error",
        "message": "x",
        "param": None,
    }


def test_items_fill_in_a_terminal_response_without_output() -> None:
    events = list(parse_sse(replay_response_events(native([MESSAGE]))))
    events[-1][1]["response"]["output"] = []
    assembler = ResponsesAssembler()
    for name, data in events:
        assembler.feed(name, data)
    assert assembler.complete and assembler.response["output"] == [MESSAGE]


# ---------------------------------------------------------------- through the fakes


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def openai_server(loop: LoopThread) -> Iterator[tuple[FakeUpstream, str]]:
    fake, runner, url = loop.run(start_fake_upstream())
    yield fake, url
    stop(loop, runner)


@pytest.fixture
def fake_openai(openai_server: tuple[FakeUpstream, str]) -> tuple[FakeUpstream, str]:
    openai_server[0].reset()
    return openai_server


@pytest.fixture(scope="module")
def anthropic_server(loop: LoopThread) -> Iterator[tuple[FakeAnthropic, str]]:
    fake, runner, url = loop.run(start_fake_anthropic())
    yield fake, url
    stop(loop, runner)


@pytest.fixture
def fake_claude(anthropic_server: tuple[FakeAnthropic, str]) -> tuple[FakeAnthropic, str]:
    anthropic_server[0].reset()
    return anthropic_server


def via_anthropic(url: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """What the server will do for a Responses request routed to Anthropic: translate to chat,
    chat to Messages, send, and translate back (whole and streamed)."""
    chat = r.chat_request_from_responses(body)
    http = Http(url)
    headers = native_anthropic.request_headers("sk-ant-test")
    reply = http.post(
        "/v1/messages", native_anthropic.build_request(chat, CLAUDE, False), headers=headers
    )
    assert reply.status == 200, reply.body
    whole = native_anthropic.translate_response(reply.json(), CLAUDE)
    response = r.response_from_chat(whole, body)
    streamed = http.post(
        "/v1/messages", native_anthropic.build_request(chat, CLAUDE, True), headers=headers
    )
    translator = native_anthropic.StreamTranslator(CLAUDE)
    stream = ResponsesStreamFromChat(body)
    events: list[bytes] = []
    for raw in streamed.body.split(b"\n\n"):
        data = event_data(raw)
        if data:
            for chunk in translator.feed(None, json.loads(data)):
                events += stream.feed(chunk)
    events += stream.close()
    assert stream.complete
    return response, events


def test_a_codex_style_tool_loop_with_thinking_through_the_fake_anthropic(
    fake_claude: tuple[FakeAnthropic, str],
) -> None:
    fake, url = fake_claude
    first_request = request(
        [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "What's the weather in Paris?"}],
            }
        ],
        instructions="You are a coding agent.",
        tools=[WEATHER],
        reasoning={"effort": "low", "summary": "auto"},
        store=False,
        include=["reasoning.encrypted_content"],
    )
    first, events = via_anthropic(url, first_request)
    Response.model_validate(first)
    assert [item["type"] for item in first["output"]] == ["reasoning", "message", "function_call"]
    streamed = check_stream(events)[-1]["response"]
    assert [i["type"] for i in streamed["output"]] == ["reasoning", "message", "function_call"]
    call = first["output"][-1]
    assert json.loads(call["arguments"]) == {"location": "Paris"}
    follow_up = {
        **first_request,
        "input": [
            *first_request["input"],
            *first["output"],
            {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 21C"},
        ],
    }
    second, events = via_anthropic(url, follow_up)
    assert Response.model_validate(second).output_text == "The tool said: Sunny, 21C"
    assert check_stream(events)[-1]["response"]["output"][-1]["content"][0]["text"] == (
        "The tool said: Sunny, 21C"
    )
    sent = fake.requests[-1].json["messages"][1]["content"]  # the assistant turn sent back
    assert sent[0]["type"] == "thinking" and sent[0]["signature"] in fake.signatures


def test_the_fake_anthropic_event_sequence_translates_to_a_valid_stream() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "Hello from Claude, in pieces."}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 2},
    }
    translator = native_anthropic.StreamTranslator(CLAUDE)
    stream = ResponsesStreamFromChat(request(max_output_tokens=16))
    events = [
        e
        for name, data, _ in _events(message)
        for c in translator.feed(name, data)
        for e in stream.feed(c)
    ]
    payloads = check_stream(events)
    assert payloads[-1]["type"] == "response.incomplete"
    assert payloads[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 2


def test_the_fake_responses_api_with_the_sdk(fake_openai: tuple[FakeUpstream, str]) -> None:
    fake, url = fake_openai
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    plain = client.responses.create(model="gpt-5", input="Hello there", instructions="Be brief.")
    assert plain.output_text == "Answer to: Hello there" and plain.status == "completed"
    assert plain.usage is not None and plain.usage.input_tokens == 4
    called = client.responses.create(
        model="gpt-5",
        input="What's the weather in Lyon?",
        tools=[WEATHER],
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        store=False,
    )
    kinds = [item.type for item in called.output]
    assert kinds == ["reasoning", "function_call"]
    reasoning, call = called.output
    assert reasoning.encrypted_content and reasoning.summary[0].text.startswith("Thinking about")
    assert json.loads(call.arguments) == {"location": "Lyon"}
    follow_up = [
        {"role": "user", "content": "What's the weather in Lyon?"},
        *[item.model_dump(exclude_none=True) for item in called.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "Rain"},
    ]
    with client.responses.stream(model="gpt-5", input=follow_up, tools=[WEATHER]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "The tool said: Rain" == "".join(deltas)
    events = list(
        client.responses.create(model="gpt-5", input="Hi", stream=True, max_output_tokens=16)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert fake.calls["/v1/responses"] == 4


def test_a_native_stream_from_the_fake_assembles_like_the_sdk(
    fake_openai: tuple[FakeUpstream, str],
) -> None:
    _fake, url = fake_openai
    body = {
        "model": "gpt-5",
        "input": "What's the weather in Oslo?",
        "tools": [WEATHER],
        "reasoning": {"effort": "low", "summary": "detailed"},
        "stream": True,
    }
    raw = Http(url).post("/responses", body).body
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]
    check_stream(events)
    assembler = assemble(events)
    assert assembler.complete
    Response.model_validate(assembler.response)
    replayed = assemble(replay_response_events(assembler.response, fresh_ids=False))
    assert replayed.response == assembler.response
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    with client.responses.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        final = stream.get_final_response()
    assert [i.type for i in final.output] == [i["type"] for i in assembler.response["output"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-5", "input": "x", "messages": []}, "messages"),
        ({"model": "gpt-5"}, "input"),
        ({"model": "gpt-5", "input": "x", "tools": [CHAT_WEATHER]}, "tools[0].name"),
        (
            {"model": "gpt-5", "input": "x", "previous_response_id": "resp_1"},
            "previous_response_id",
        ),
        (
            {
                "model": "gpt-5",
                "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}],
            },
            "input",
        ),
        (
            {
                "model": "gpt-5",
                "input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}],
            },
            "input[0].content[0]",
        ),
        ({"model": "gpt-5", "input": "x", "max_output_tokens": 5}, "max_output_tokens"),
    ],
)
def test_the_fake_refuses_what_the_responses_api_refuses(
    fake_openai: tuple[FakeUpstream, str], body: dict, param: str
) -> None:
    reply = Http(fake_openai[1]).post("/responses", body)
    assert reply.status == 400 and reply.json()["error"]["param"] == param


def test_the_fake_honours_failure_steering_and_cuts(fake_openai: tuple[FakeUpstream, str]) -> None:
    fake, url = fake_openai
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    fake.fail_status, fake.fail_times = 429, 1
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-5", input="Hi")
    assert client.responses.create(model="gpt-5", input="Hi").status == "completed"
    fake.cut_stream_after = 3
    raw = read_cut_stream(
        url + "/responses", {"model": "gpt-5", "input": "Hi there", "stream": True}
    )
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]
    assert len(events) == 3 and not assemble(events).complete
