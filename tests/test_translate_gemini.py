"""OpenAI <-> Gemini generateContent translation: every mapping, then proof against a strict fake.

The unit tests pin each rule of ``kallm.providers.gemini``; the server tests send
what ``build_request`` produces to ``tests.fake_gemini`` (which refuses what the
real API refuses, including unsigned Gemini 3 function calls) and translate the
answers back, streamed and not.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from kallm.errors import RequestError, UpstreamError
from kallm.providers import gemini
from kallm.providers.sse import StreamAssembler, iter_events
from tests.fake_gemini import SKIP_SIGNATURE, FakeGemini, start_fake_gemini

FLASH = "gemini-2.5-flash"
PRO3 = "gemini-3-pro-preview"
PNG = "data:image/png;base64,iVBORw0KGgo="
SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": SCHEMA,
    },
}


def build(messages: list[dict[str, Any]], model: str = FLASH, **extra: Any) -> dict[str, Any]:
    return gemini.build_request({"model": "alias", "messages": messages, **extra}, model)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call_turn(extra_content: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    call: dict[str, Any] = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
    }
    if extra_content is not None:
        call["extra_content"] = extra_content
    return [
        user("weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]


def response(parts: list[dict[str, Any]], finish: str | None = "STOP", **usage: int) -> dict:
    return {
        "candidates": [
            {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 4,
            "totalTokenCount": 14 + usage.get("thoughtsTokenCount", 0),
            **usage,
        },
        "modelVersion": FLASH,
        "responseId": "resp1",
    }


def without_created(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "created"}


# ---------------------------------------------------------------- requests


def test_headers_and_paths() -> None:
    assert gemini.request_headers("AIza") == {
        "x-goog-api-key": "AIza",
        "content-type": "application/json",
    }
    assert gemini.chat_path(FLASH, False) == f"/v1beta/models/{FLASH}:generateContent"
    assert (
        gemini.chat_path(f"models/{FLASH}", True)
        == f"/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"
    )


def test_contents_roles_and_system_instruction() -> None:
    body = build(
        [
            {"role": "system", "content": "Be brief."},
            user("hi"),
            {"role": "assistant", "content": "Hello!"},
            user("one"),
            user("two"),
        ]
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "Hello!"}]},
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
    ]
    assert "generationConfig" not in body and "model" not in body


def test_generation_config() -> None:
    body = build(
        [user("hi")],
        temperature=0.3,
        top_p=0.8,
        max_tokens=99,
        stop=["END"],
        n=2,
        seed=5,
        presence_penalty=0.1,
        frequency_penalty=0.2,
    )
    assert body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.8,
        "maxOutputTokens": 99,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 5,
        "presencePenalty": 0.1,
        "frequencyPenalty": 0.2,
    }


def test_response_formats() -> None:
    config = build([user("hi")], response_format={"type": "json_object"})["generationConfig"]
    assert config == {"responseMimeType": "application/json"}
    config = build(
        [user("hi")],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": SCHEMA, "strict": True},
        },
    )["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}
    assert "generationConfig" not in build([user("hi")], response_format={"type": "text"})


def test_images_must_be_inline() -> None:
    body = build(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            }
        ]
    )
    assert body["contents"][0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]
    with pytest.raises(RequestError) as err:
        build(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                    ],
                }
            ]
        )
    assert err.value.param == "messages[0].content[0].image_url.url"


def test_tools_and_tool_choice() -> None:
    body = build([user("hi")], tools=[WEATHER, {"type": "function", "function": {"name": "now"}}])
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city.",
                    "parametersJsonSchema": SCHEMA,
                },
                {"name": "now"},
            ]
        }
    ]
    assert "toolConfig" not in body
    for choice, config in [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ]:
        body = build([user("hi")], tools=[WEATHER], tool_choice=choice)
        assert body["toolConfig"] == {"functionCallingConfig": config}


def test_tool_calls_and_results_become_function_parts() -> None:
    body = build([*call_turn(), user("thanks")])
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
                {"text": "thanks"},
            ],
        },
    ]
    messages = call_turn()
    messages[2]["content"] = '{"temp": 18}'  # a JSON object result is passed as the object
    assert build(messages)["contents"][2]["parts"][0]["functionResponse"]["response"] == {
        "temp": 18
    }


def test_a_tool_result_without_its_call_is_a_400() -> None:
    with pytest.raises(RequestError) as err:
        build([user("hi"), {"role": "tool", "tool_call_id": "call_x", "content": "?"}])
    assert err.value.param == "messages[1].tool_call_id"


def test_thought_signatures_round_trip_or_fall_back_on_gemini_3() -> None:
    signed = build(call_turn({"google": {"thought_signature": "c2ln"}}), PRO3)
    assert signed["contents"][1]["parts"][0]["thoughtSignature"] == "c2ln"
    unsigned = build(call_turn(), PRO3)
    assert unsigned["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "thoughtSignature" not in build(call_turn(), FLASH)["contents"][1]["parts"][0]


def test_reasoning_effort_and_thinking_config() -> None:
    assert build([user("hi")], reasoning_effort="low")["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 1024,
        "includeThoughts": True,
    }
    assert build([user("hi")], PRO3, reasoning_effort="high")["generationConfig"][
        "thinkingConfig"
    ] == {"thinkingLevel": "high", "includeThoughts": True}
    explicit = build([user("hi")], google={"thinking_config": {"thinking_budget": 0}})
    assert explicit["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"n": 0}, "n"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "x"}}, "tools": [WEATHER]},
            "tool_choice",
        ),
    ],
)
def test_what_gemini_cannot_express_is_a_400(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        build([user("hi")], **extra)
    assert err.value.param == param


# ---------------------------------------------------------------- responses


def test_text_response_and_usage() -> None:
    body = gemini.translate_response(
        response(
            [{"text": "Thinking...", "thought": True}, {"text": "Hel"}, {"text": "lo"}],
            cachedContentTokenCount=6,
            thoughtsTokenCount=3,
        ),
        "alias",
    )
    assert body["id"] == "chatcmpl-resp1" and body["model"] == "alias"
    assert body["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": "Hello",
                "reasoning_content": "Thinking...",
            },
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 7,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }


def test_function_call_response() -> None:
    body = gemini.translate_response(
        response(
            [
                {
                    "functionCall": {"name": "get_weather", "args": {"location": "Köln"}},
                    "thoughtSignature": "c2ln",
                },
                {"functionCall": {"name": "now", "args": {}}},
            ]
        ),
        "alias",
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    first, second = choice["message"]["tool_calls"]
    assert first["id"].startswith("call_") and first["id"] != second["id"]
    assert first["function"] == {"name": "get_weather", "arguments": '{"location": "Köln"}'}
    assert first["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    assert second["function"]["arguments"] == "{}" and "extra_content" not in second


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    body = gemini.translate_response(response([{"text": "x"}], reason), "m")
    assert body["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_and_several_candidates() -> None:
    blocked = gemini.translate_response(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3},
        },
        "m",
    )
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert blocked["usage"]["prompt_tokens"] == 3
    two = response([{"text": "a"}])
    two["candidates"].append(
        {"content": {"parts": [{"text": "b"}], "role": "model"}, "finishReason": "STOP", "index": 1}
    )
    choices = gemini.translate_response(two, "m")["choices"]
    assert [(c["index"], c["message"]["content"]) for c in choices] == [(0, "a"), (1, "b")]


def chunks_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a whole response into the partial responses a stream would send."""
    out = []
    for candidate in body["candidates"]:
        parts = candidate["content"]["parts"]
        for k, part in enumerate(parts):
            piece: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
            if candidate.get("index"):
                piece["index"] = candidate["index"]
            if k == len(parts) - 1:
                piece["finishReason"] = candidate["finishReason"]
            out.append(
                {
                    "candidates": [piece],
                    "responseId": body["responseId"],
                    "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
                }
            )
    out[-1]["usageMetadata"] = body["usageMetadata"]
    return out


@pytest.mark.parametrize(
    "parts",
    [
        [{"text": "Hello "}, {"text": "there, "}, {"text": "friend."}],
        [
            {"functionCall": {"name": "get_weather", "args": {"location": "Oslo"}}},
            {"functionCall": {"name": "now"}},
        ],
        [{"text": "Hmm.", "thought": True}, {"text": "Done."}],
    ],
    ids=["text", "tools", "thoughts"],
)
def test_a_stream_assembles_to_the_non_streamed_completion(parts: list[dict[str, Any]]) -> None:
    body = response(parts, thoughtsTokenCount=2)
    expected = gemini.translate_response(body, "alias")
    translator, assembler = gemini.StreamTranslator("alias"), StreamAssembler()
    for data in chunks_of(body):
        for chunk in translator.feed(None, data):
            assembler.feed(chunk)
    assert translator.finished
    for chunk in translator.close():
        assert chunk["choices"] == []
        assembler.feed(chunk)
    streamed = assembler.completion()
    for completion in (expected, streamed):  # generated call ids differ; all else must not
        for call in completion["choices"][0]["message"].get("tool_calls", []):
            call["id"] = "call"
    assert without_created(streamed) == without_created(expected)


def test_stream_error_object_raises_and_close_without_usage_is_empty() -> None:
    translator = gemini.StreamTranslator("alias")
    assert translator.close() == [] and not translator.finished
    with pytest.raises(UpstreamError, match="overloaded"):
        translator.feed(
            None,
            {
                "error": {
                    "code": 503,
                    "message": "The model is overloaded.",
                    "status": "UNAVAILABLE",
                }
            },
        )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "native", "out_type", "code"),
    [
        (400, "INVALID_ARGUMENT", "invalid_request_error", None),
        (403, "PERMISSION_DENIED", "permission_error", None),
        (404, "NOT_FOUND", "not_found_error", None),
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error", "rate_limit_exceeded"),
        (500, "INTERNAL", "server_error", None),
        (503, "UNAVAILABLE", "server_error", "overloaded"),
    ],
)
def test_error_statuses_map(status: int, native: str, out_type: str, code: str | None) -> None:
    raw = json.dumps({"error": {"code": status, "message": "boom", "status": native}}).encode()
    assert gemini.translate_error(status, raw) == (
        status,
        {"error": {"message": "boom", "type": out_type, "param": None, "code": code}},
    )


def test_invalid_key_array_bodies_and_non_json() -> None:
    raw = json.dumps(
        [
            {
                "error": {
                    "code": 400,
                    "message": "API key not valid.",
                    "status": "INVALID_ARGUMENT",
                    "details": [{"reason": "API_KEY_INVALID"}],
                }
            }
        ]
    ).encode()
    status, body = gemini.translate_error(400, raw)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = gemini.translate_error(504, b"upstream request timeout")
    assert status == 504 and body["error"]["type"] == "server_error"
    assert body["error"]["message"] == "upstream returned HTTP 504: upstream request timeout"


# ---------------------------------------------------------------- against the fake


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    server, runner, _url = await start_fake_gemini()
    try:
        yield server
    finally:
        await runner.cleanup()


async def call(
    fake: FakeGemini,
    body: dict[str, Any],
    model: str = FLASH,
    stream: bool = False,
    key: str | None = "AIza-test",
) -> tuple[int, Any, list[dict[str, Any]]]:
    """POST to the fake; (status, JSON body, SSE data objects)."""
    headers = gemini.request_headers(key) if key else {"content-type": "application/json"}
    url = fake.base_url + gemini.chat_path(model, stream)
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        if response.content_type != "text/event-stream":
            return response.status, await response.read(), []
        with contextlib.suppress(aiohttp.ClientPayloadError):  # a cut stream ends like this
            async for _raw, _name, data in iter_events(response.content):
                if data is not None:
                    events.append(json.loads(data))
    return response.status, None, events


def assemble(events: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    translator, assembler = gemini.StreamTranslator("alias"), StreamAssembler()
    for data in events:
        for chunk in translator.feed(None, data):
            assembler.feed(chunk)
    for chunk in translator.close():
        assembler.feed(chunk)
    return assembler.completion(), translator.finished


async def test_plain_and_streamed_answers_agree(fake: FakeGemini) -> None:
    fake.cached_tokens = 2
    request = build(
        [{"role": "system", "content": "Be brief."}, user("hello there, friend")],
        temperature=0.4,
        max_tokens=50,
        seed=1,
    )
    status, raw, _ = await call(fake, request)
    assert status == 200
    plain = gemini.translate_response(json.loads(raw), "alias")
    assert plain["choices"][0]["message"]["content"] == "Answer to: hello there, friend"
    assert plain["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    status, _, events = await call(fake, request, stream=True)
    streamed, finished = assemble(events)
    assert status == 200 and finished and len(events) > 2
    assert streamed["choices"] == plain["choices"] and streamed["usage"] == plain["usage"]


async def test_candidates_limits_and_json_schema(fake: FakeGemini) -> None:
    request = build(
        [user("a b c d e f")],
        n=2,
        max_tokens=3,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    )
    status, raw, _ = await call(fake, request)
    assert status == 200
    choices = gemini.translate_response(json.loads(raw), "alias")["choices"]
    assert [c["finish_reason"] for c in choices] == ["length", "length"]
    streamed, finished = assemble((await call(fake, request, stream=True))[2])
    assert finished and [c["index"] for c in streamed["choices"]] == [0, 1]


@pytest.mark.parametrize("model", [FLASH, PRO3])
async def test_tool_call_round_trip(fake: FakeGemini, model: str) -> None:
    messages = [user("What is the weather in Rome?")]
    request = build(messages, model, tools=[WEATHER])
    status, raw, _ = await call(fake, request, model)
    assert status == 200
    choice = gemini.translate_response(json.loads(raw), "alias")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    tool_call = choice["message"]["tool_calls"][0]
    assert json.loads(tool_call["function"]["arguments"]) == {"location": "Rome"}
    assert ("extra_content" in tool_call) == (model == PRO3)
    streamed, _ = assemble((await call(fake, request, model, stream=True))[2])
    assert streamed["choices"][0]["finish_reason"] == "tool_calls"
    messages += [
        choice["message"],
        {"role": "tool", "tool_call_id": tool_call["id"], "content": "21C"},
    ]
    status, raw, _ = await call(fake, build(messages, model, tools=[WEATHER]), model)
    assert status == 200
    final = gemini.translate_response(json.loads(raw), "alias")["choices"][0]
    assert final["message"]["content"] == "The tool said: 21C"
    # A client that dropped extra_content (or a cached, streamed answer) still works.
    tool_call.pop("extra_content", None)
    status, _, _ = await call(fake, build(messages, model, tools=[WEATHER]), model)
    assert status == 200


async def test_errors_through_the_fake(fake: FakeGemini) -> None:
    status, raw, _ = await call(fake, build([user("hi")]), key=None)
    assert gemini.translate_error(status, raw)[0] == 403
    fake.api_key = "right"
    status, raw, _ = await call(fake, build([user("hi")]), key="wrong")
    assert gemini.translate_error(status, raw)[0] == 401
    fake.api_key, fake.fail_status, fake.fail_times = None, 429, 1
    status, raw, _ = await call(fake, build([user("hi")]))
    assert gemini.translate_error(status, raw)[1]["error"]["code"] == "rate_limit_exceeded"
    assert (await call(fake, build([user("hi")])))[0] == 200
    status, raw, _ = await call(fake, build([user("hi")]), model="claude-3")
    assert gemini.translate_error(status, raw)[0] == 404
    assert fake.requests[-1].headers["x-goog-api-key"] == "AIza-test"


async def test_filtered_blocked_and_cut_streams(fake: FakeGemini) -> None:
    fake.finish_reason = "SAFETY"
    _, raw, _ = await call(fake, build([user("hi")]))
    choice = gemini.translate_response(json.loads(raw), "alias")["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": "content_filter",
    }
    fake.finish_reason, fake.block_prompt = None, "PROHIBITED_CONTENT"
    streamed, finished = assemble((await call(fake, build([user("hi")]), stream=True))[2])
    assert finished and streamed["choices"][0]["finish_reason"] == "content_filter"
    fake.block_prompt, fake.cut_stream_after = None, 2
    status, _, events = await call(fake, build([user("a long answer please")]), stream=True)
    completion, finished = assemble(events)
    assert status == 200 and len(events) == 2 and not finished
    assert completion["choices"][0]["finish_reason"] is None


def _bad(body: dict[str, Any], change: str) -> None:
    if change == "assistant role":
        body["contents"].append({"role": "assistant", "parts": [{"text": "x"}]})
    elif change == "empty parts":
        body["contents"][0]["parts"] = []
    elif change == "empty text":
        body["contents"][0]["parts"] = [{"text": ""}]
    elif change == "unknown field":
        body["generationConfig"] = {"max_tokens": 5}
    elif change == "orphan response":
        body["contents"].append(
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
        )
    elif change == "openapi parameters":  # why build_request sends parametersJsonSchema
        body["tools"] = [{"functionDeclarations": [{"name": "f", "parameters": SCHEMA}]}]
    elif change == "bad function name":
        body["tools"] = [{"functionDeclarations": [{"name": "get weather"}]}]
    elif change == "no contents":
        body.pop("contents")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("assistant role", "valid role"),
        ("empty parts", "must not be empty"),
        ("empty text", "oneof field 'data'"),
        ("unknown field", 'Unknown name "max_tokens"'),
        ("orphan response", "immediately after a function call turn"),
        ("openapi parameters", 'Unknown name "additionalProperties"'),
        ("bad function name", "Invalid function name"),
        ("no contents", "contents is not specified"),
    ],
)
async def test_the_fake_rejects_malformed_bodies(
    fake: FakeGemini, change: str, fragment: str
) -> None:
    body = build([user("hello")])
    _bad(body, change)
    status, raw, _ = await call(fake, body)
    assert status == 400
    out_status, envelope = gemini.translate_error(status, raw)
    assert out_status == 400 and fragment in envelope["error"]["message"]


async def test_the_fake_rejects_unsigned_gemini_3_calls(fake: FakeGemini) -> None:
    body = build(call_turn(), PRO3)
    del body["contents"][1]["parts"][0]["thoughtSignature"]
    status, raw, _ = await call(fake, body, PRO3)
    assert status == 400 and b"missing a thought_signature" in raw
    body["contents"][1]["parts"][0]["thoughtSignature"] = "Zm9yZ2Vk"
    status, raw, _ = await call(fake, body, PRO3)
    assert status == 400 and b"Corrupted thought signature" in raw
