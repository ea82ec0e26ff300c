"""OpenAI <-> Anthropic Messages translation: every mapping, then proof against a strict fake.

The unit tests pin each rule of ``kallm.providers.anthropic``; the server tests
send what ``build_request`` produces to ``tests.fake_anthropic`` (which refuses
what the real API refuses) and translate the answers back, streamed and not.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from kallm.errors import RequestError, UpstreamError
from kallm.providers import anthropic
from kallm.providers.sse import StreamAssembler, iter_events
from tests.fake_anthropic import FakeAnthropic, _events, start_fake_anthropic

MODEL = "claude-sonnet-4-5"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def build(messages: list[dict[str, Any]], stream: bool = False, **extra: Any) -> dict[str, Any]:
    return anthropic.build_request({"model": "alias", "messages": messages, **extra}, MODEL, stream)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def tool_call_turn(call_id: str = "call_1", args: str = '{"location": "Paris"}') -> list[dict]:
    return [
        user("weather in Paris?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": args},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"},
    ]


def message(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> dict:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def stream_of(msg: dict[str, Any]) -> dict[str, Any]:
    """Feed the real event sequence for ``msg`` through the translator and assemble it."""
    translator = anthropic.StreamTranslator("alias")
    assembler = StreamAssembler()
    for name, data, _terminal in _events(copy.deepcopy(msg)):
        for chunk in translator.feed(name, data):
            assembler.feed(chunk)
    assert translator.finished
    return assembler.completion()


def without_created(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "created"}


# ---------------------------------------------------------------- requests


def test_headers_and_path() -> None:
    assert anthropic.request_headers("sk-ant") == {
        "x-api-key": "sk-ant",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert anthropic.chat_path() == "/v1/messages"


def test_system_and_developer_messages_become_the_top_level_system() -> None:
    body = build(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            user("hi"),
        ]
    )
    assert body["system"] == "Be brief.\n\nUse French."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["model"] == MODEL and body["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS


def test_cache_control_on_system_parts_keeps_system_as_blocks() -> None:
    part = {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
    body = build([{"role": "system", "content": [part]}, user("hi")])
    assert body["system"] == [part]


def test_parameters_map_to_their_native_names() -> None:
    body = build(
        [user("hi")],
        stream=True,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        max_tokens=50,
        max_completion_tokens=70,
        user="u-42",
        seed=7,
    )
    assert body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 70  # max_completion_tokens wins, as in OpenAI
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    assert body["metadata"] == {"user_id": "u-42"}
    assert body["stream"] is True and "seed" not in body
    assert build([user("hi")], stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stream" not in build([user("hi")])


def test_consecutive_turns_merge_and_the_first_turn_is_user() -> None:
    body = build(
        [
            {"role": "assistant", "content": "Hello! How can I help?"},
            user("one"),
            user("two"),
            {"role": "assistant", "content": "ok "},
        ]
    )
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert [b["text"] for b in body["messages"][2]["content"]] == ["one", "two"]
    assert body["messages"][3]["content"] == [{"type": "text", "text": "ok"}]  # prefill rstrip


def test_images_data_urls_become_base64_and_http_urls_url_sources() -> None:
    body = build(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "compare"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    blocks = body["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }


def test_unusable_image_is_a_400_naming_the_part() -> None:
    with pytest.raises(RequestError) as err:
        build(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}
                    ],
                }
            ]
        )
    assert err.value.status == 400 and err.value.param == "messages[0].content[0].image_url.url"


def test_tool_calls_and_results_round_trip_as_blocks() -> None:
    messages = [*tool_call_turn(), user("and tomorrow?")]
    body = build(messages, tools=[WEATHER])
    assistant, answer = body["messages"][1], body["messages"][2]
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}}
    ]
    assert answer["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
        {"type": "text", "text": "and tomorrow?"},
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "native"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice(choice: Any, native: dict[str, Any]) -> None:
    assert build([user("hi")], tools=[WEATHER], tool_choice=choice)["tool_choice"] == native


def test_parallel_tool_calls_false_disables_parallel_use() -> None:
    body = build([user("hi")], tools=[WEATHER], parallel_tool_calls=False)
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_a_parameterless_function_gets_an_empty_object_schema() -> None:
    tool = {"type": "function", "function": {"name": "now"}}
    assert build([user("hi")], tools=[tool])["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]},
            "tool_choice",
        ),
    ],
)
def test_what_anthropic_cannot_express_is_a_400(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        build([user("hi")], **extra)
    assert err.value.param == param


def test_neutral_values_of_unsupported_parameters_pass() -> None:
    build([user("hi")], n=1, logprobs=False, presence_penalty=0, frequency_penalty=0.0)


def test_bad_tool_arguments_name_the_field() -> None:
    with pytest.raises(RequestError) as err:
        build(tool_call_turn(args="{not json"))
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_reasoning_effort_enables_thinking_with_room_to_answer() -> None:
    body = build([user("hi")], reasoning_effort="low")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 1024 + anthropic.DEFAULT_MAX_TOKENS
    with pytest.raises(RequestError):
        build([user("hi")], reasoning_effort="high", max_tokens=100)
    assert "thinking" not in build([user("hi")], reasoning_effort="minimal")


def test_signed_reasoning_goes_back_as_a_thinking_block_when_thinking_is_on() -> None:
    messages = tool_call_turn()
    messages[1].update(reasoning_content="Need weather.", reasoning_signature="sig")
    body = build(messages, reasoning_effort="low")
    assert body["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "Need weather.",
        "signature": "sig",
    }
    assert build(messages)["messages"][1]["content"][0]["type"] == "tool_use"


# ---------------------------------------------------------------- responses


def test_text_response_with_cache_usage() -> None:
    body = anthropic.translate_response(
        message(
            [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            cache_read_input_tokens=100,
            cache_creation_input_tokens=20,
        ),
        "alias",
    )
    assert body["id"] == "chatcmpl-msg_01" and body["object"] == "chat.completion"
    assert body["model"] == "alias" and isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hello there"},
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
    }


def test_tool_use_and_thinking_response() -> None:
    body = anthropic.translate_response(
        message(
            [
                {"type": "thinking", "thinking": "Need weather.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": "Köln"},
                },
            ],
            stop="tool_use",
        ),
        "alias",
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Need weather.",
        "reasoning_signature": "sig",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Köln"}'},
            }
        ],
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    body = anthropic.translate_response(message([{"type": "text", "text": "x"}], stop), "m")
    assert body["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": "The weather in Paris is nice today, thank you."}],
        [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_9",
                "name": "get_weather",
                "input": {"location": "Oslo"},
            },
            {"type": "tool_use", "id": "toolu_10", "name": "now", "input": {}},
        ],
        [
            {"type": "thinking", "thinking": "Hmm, let me think.", "signature": "s"},
            {"type": "text", "text": "Done."},
        ],
        [],
    ],
    ids=["text", "tools", "thinking", "empty"],
)
def test_a_stream_assembles_to_the_non_streamed_completion(content: list[dict]) -> None:
    msg = message(
        content,
        "tool_use" if len(content) > 1 and content[1]["type"] == "tool_use" else "end_turn",
        cache_read_input_tokens=3,
    )
    expected = anthropic.translate_response(msg, "alias")
    assert without_created(stream_of(msg)) == without_created(expected)


def test_stream_chunks_are_openai_shaped() -> None:
    translator = anthropic.StreamTranslator("alias")
    events = list(_events(message([{"type": "text", "text": "Hi there"}])))
    first = translator.feed(None, events[0][1])  # event name is optional: data carries type
    assert first[0]["object"] == "chat.completion.chunk"
    assert first[0]["choices"][0]["delta"] == {"role": "assistant"}
    chunks = [c for _, data, _ in events[1:] for c in translator.feed(None, data)]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 10
    assert {c["id"] for c in [*first, *chunks]} == {"chatcmpl-msg_01"}


def test_stream_error_event_raises_and_unfinished_stream_is_not_finished() -> None:
    translator = anthropic.StreamTranslator("alias")
    translator.feed("ping", {"type": "ping"})
    assert not translator.finished
    with pytest.raises(UpstreamError, match="Overloaded"):
        translator.feed(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "kind", "out_status", "out_type", "code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", None),
        (401, "authentication_error", 401, "authentication_error", "invalid_api_key"),
        (403, "permission_error", 403, "permission_error", None),
        (404, "not_found_error", 404, "not_found_error", None),
        (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", 500, "server_error", None),
        (529, "overloaded_error", 503, "server_error", "overloaded"),
    ],
)
def test_error_types_map(
    status: int, kind: str, out_status: int, out_type: str, code: str | None
) -> None:
    raw = json.dumps({"type": "error", "error": {"type": kind, "message": "boom"}}).encode()
    assert anthropic.translate_error(status, raw) == (
        out_status,
        {"error": {"message": "boom", "type": out_type, "param": None, "code": code}},
    )


def test_error_param_and_model_not_found() -> None:
    raw = (
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"max_tokens: Field required"}}'
    )
    assert anthropic.translate_error(400, raw)[1]["error"]["param"] == "max_tokens"
    raw = b'{"type":"error","error":{"type":"not_found_error","message":"model: claude-x"}}'
    assert anthropic.translate_error(404, raw)[1]["error"]["code"] == "model_not_found"


def test_non_json_error_still_gives_a_clean_envelope() -> None:
    status, body = anthropic.translate_error(502, b"<html>Bad Gateway</html>")
    assert status == 502
    assert body == {
        "error": {
            "message": "upstream returned HTTP 502: <html>Bad Gateway</html>",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert anthropic.translate_error(400, b"")[1]["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- against the fake


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server, runner, _url = await start_fake_anthropic()
    try:
        yield server
    finally:
        await runner.cleanup()


async def call(
    fake: FakeAnthropic,
    body: dict[str, Any],
    key: str | None = "sk-ant",
) -> tuple[int, bytes, list[tuple[str | None, dict[str, Any]]]]:
    """POST to the fake; (status, raw body, SSE events as (event name, data))."""
    headers = anthropic.request_headers(key) if key else {"content-type": "application/json"}
    events = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.base_url}{anthropic.chat_path()}", json=body, headers=headers
        ) as response,
    ):
        if response.content_type != "text/event-stream":
            return response.status, await response.read(), []
        with contextlib.suppress(aiohttp.ClientPayloadError):  # a cut stream ends like this
            async for _raw, name, data in iter_events(response.content):
                if data is not None:
                    events.append((name, json.loads(data)))
    return response.status, b"", events


def assemble(events: list[tuple[str | None, dict[str, Any]]]) -> tuple[dict, bool]:
    translator = anthropic.StreamTranslator("alias")
    assembler = StreamAssembler()
    for name, data in events:
        for chunk in translator.feed(name, data):
            assembler.feed(chunk)
    return assembler.completion(), translator.finished


async def test_plain_answer_through_the_fake(fake: FakeAnthropic) -> None:
    fake.cache_read_tokens = 4
    status, raw, _ = await call(
        fake, build([{"role": "system", "content": "Be brief."}, user("hello there")])
    )
    assert status == 200
    body = anthropic.translate_response(json.loads(raw), "alias")
    assert body["choices"][0]["message"]["content"] == "Answer to: hello there"
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert body["usage"]["prompt_tokens"] == 4 + 4  # "Be brief." + "hello there" + cached


async def test_streamed_answer_equals_the_plain_one(fake: FakeAnthropic) -> None:
    request = build([user("stream me a reply")], stop="never", temperature=0.5)
    _, raw, _ = await call(fake, request)
    plain = anthropic.translate_response(json.loads(raw), "alias")
    status, _, events = await call(fake, {**request, "stream": True})
    streamed, finished = assemble(events)
    assert status == 200 and finished
    assert [n for n, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    assert streamed["choices"] == plain["choices"] and streamed["usage"] == plain["usage"]


async def test_tool_call_round_trip_through_the_fake(fake: FakeAnthropic) -> None:
    messages = [{"role": "system", "content": "You help."}, user("What is the weather in Rome?")]
    request = build(messages, tools=[WEATHER])
    _, raw, _ = await call(fake, request)
    first = anthropic.translate_response(json.loads(raw), "alias")
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call_ = choice["message"]["tool_calls"][0]
    assert json.loads(call_["function"]["arguments"]) == {"location": "Rome"}
    streamed, _ = assemble((await call(fake, {**request, "stream": True}))[2])
    assert streamed["choices"][0]["message"]["tool_calls"][0]["function"] == call_["function"]
    messages += [choice["message"], {"role": "tool", "tool_call_id": call_["id"], "content": "21C"}]
    status, raw, _ = await call(fake, build(messages, tools=[WEATHER]))
    assert status == 200
    final = anthropic.translate_response(json.loads(raw), "alias")
    assert final["choices"][0]["message"]["content"] == "The tool said: 21C"


async def test_forced_argument_less_tool_streams_empty_object(fake: FakeAnthropic) -> None:
    tool = {"type": "function", "function": {"name": "now"}}
    status, _, events = await call(
        fake, build([user("time?")], stream=True, tools=[tool], tool_choice="required")
    )
    completion, finished = assemble(events)
    assert status == 200 and finished
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "now",
        "arguments": "{}",
    }


async def test_images_thinking_and_limits_are_accepted(fake: FakeAnthropic) -> None:
    request = build(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe this one two three four five"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            }
        ],
        reasoning_effort="low",
        max_tokens=2000,
    )
    status, raw, _ = await call(fake, request)
    assert status == 200
    message_ = anthropic.translate_response(json.loads(raw), "alias")["choices"][0]["message"]
    assert message_["reasoning_content"].startswith("The user asks")
    _, raw, _ = await call(fake, build([user("a b c d e f")], max_tokens=3))
    short = anthropic.translate_response(json.loads(raw), "alias")["choices"][0]
    assert short["finish_reason"] == "length" and short["message"]["content"] == "Answer to: a"


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_tool_loop_round_trip(fake: FakeAnthropic, stream: bool) -> None:
    messages = [user("What is the weather in Oslo?")]
    request = build(messages, stream, tools=[WEATHER], reasoning_effort="low")
    if stream:
        first, _ = assemble((await call(fake, request))[2])
    else:
        first = anthropic.translate_response(json.loads((await call(fake, request))[1]), "a")
    reply = first["choices"][0]["message"]
    assert reply["reasoning_signature"] in fake.signatures and reply["tool_calls"]
    messages += [
        reply,
        {"role": "tool", "tool_call_id": reply["tool_calls"][0]["id"], "content": "-3C"},
    ]
    status, raw, _ = await call(fake, build(messages, tools=[WEATHER], reasoning_effort="low"))
    assert status == 200, raw
    reply.pop("reasoning_signature")  # a client that drops it gets Anthropic's 400
    status, raw, _ = await call(fake, build(messages, tools=[WEATHER], reasoning_effort="low"))
    assert status == 400 and b"must start with a thinking block" in raw


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda b: b["messages"].insert(0, {"role": "system", "content": "x"}), 'role "system"'),
        (lambda b: b["messages"].append({"role": "user", "content": "again"}), "alternate"),
        (
            lambda b: b["messages"].insert(0, {"role": "assistant", "content": "hi"}),
            "first message",
        ),
        (lambda b: b.pop("max_tokens"), "max_tokens: Field required"),
        (lambda b: b.update(n=2), "n: Extra inputs are not permitted"),
        (
            lambda b: b["messages"][0].update(
                content=[{"type": "tool_result", "tool_use_id": "x"}]
            ),
            "unexpected `tool_use_id`",
        ),
        (
            lambda b: b["messages"][0].update(content=[{"type": "image_url", "image_url": "x"}]),
            "Input tag 'image_url'",
        ),
        (lambda b: b.update(tools=[{"name": "get_weather", "parameters": {}}]), "input_schema"),
        (lambda b: b.update(tool_choice={"type": "auto"}), "providing tools"),
    ],
)
async def test_the_fake_rejects_malformed_bodies(
    fake: FakeAnthropic, mutate: Any, fragment: str
) -> None:
    body = build([user("What is the weather?")])
    mutate(body)
    status, raw, _ = await call(fake, body)
    assert status == 400
    out_status, envelope = anthropic.translate_error(status, raw)
    assert out_status == 400 and fragment in envelope["error"]["message"]
    assert envelope["error"]["type"] == "invalid_request_error"


async def test_the_fake_rejects_an_unanswered_tool_use(fake: FakeAnthropic) -> None:
    body = build([*tool_call_turn()[:2], user("never mind")])
    body["messages"][2]["content"] = [{"type": "text", "text": "never mind"}]
    status, raw, _ = await call(fake, body)
    assert status == 400 and b"without `tool_result`" in raw


async def test_errors_through_the_fake(fake: FakeAnthropic) -> None:
    status, raw, _ = await call(fake, build([user("hi")]), key=None)
    assert anthropic.translate_error(status, raw) == (
        401,
        {
            "error": {
                "message": "x-api-key header is required",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )
    fake.fail_status, fake.fail_times = 529, 1
    status, raw, _ = await call(fake, build([user("hi")]))
    assert status == 529 and anthropic.translate_error(status, raw)[0] == 503
    assert (await call(fake, build([user("hi")])))[0] == 200
    status, raw, _ = await call(
        fake, anthropic.build_request({"messages": [user("hi")]}, "gpt-4o", False)
    )
    assert anthropic.translate_error(status, raw)[0] == 404
    assert fake.calls["/v1/messages"] == 4
    assert fake.requests[-1].headers["anthropic-version"] == "2023-06-01"


async def test_broken_streams_are_never_finished(fake: FakeAnthropic) -> None:
    fake.cut_stream_after = 4
    status, _, events = await call(fake, build([user("a long answer please")], stream=True))
    completion, finished = assemble(events)
    assert status == 200 and not finished and completion["choices"][0]["finish_reason"] is None
    fake.cut_stream_after, fake.stream_error_after = None, 3
    _, _, events = await call(fake, build([user("hi")], stream=True))
    assert events[-1][0] == "error"
    with pytest.raises(UpstreamError, match="Overloaded"):
        assemble(events)
