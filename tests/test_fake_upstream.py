"""The fake upstream must fool the real ``openai`` SDK, or the proxy tests prove nothing.

These tests drive it with the SDK (and raw aiohttp where the SDK hides the
wire format), covering each steering knob the proxy tests rely on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from tests.fake_upstream import EMBEDDING_DIM, MODELS, FakeUpstream, start_fake_upstream

pytestmark = pytest.mark.asyncio

USER = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
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


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake, runner, url = await start_fake_upstream()
    try:
        yield fake, url
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def fake(upstream: tuple[FakeUpstream, str]) -> FakeUpstream:
    return upstream[0]


@pytest_asyncio.fixture
async def client(upstream: tuple[FakeUpstream, str]) -> AsyncIterator[AsyncOpenAI]:
    # No SDK retries: each test decides how many upstream calls it expects.
    sdk = AsyncOpenAI(base_url=upstream[1], api_key="x", max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


@pytest_asyncio.fixture
async def http(upstream: tuple[FakeUpstream, str]) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=upstream[1] + "/") as session:
        yield session


# -- chat, non-streamed -------------------------------------------------------------------


async def test_plain_chat_completion(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Answer to: hello there"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 4, 6)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert fake.chat_calls == 1
    [recorded] = fake.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["Authorization"] == "Bearer x"
    assert recorded.headers["authorization"] == "Bearer x"
    assert recorded.json == {"model": "gpt-4o-mini", "messages": USER}
    assert json.loads(recorded.body) == recorded.json


async def test_reply_and_n_choices(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.reply = "fixed words"
    completion = await client.chat.completions.create(model="m", messages=USER, n=3)

    contents = [c.message.content for c in completion.choices]
    assert contents == ["fixed words", "fixed words [1]", "fixed words [2]"]
    assert [c.index for c in completion.choices] == [0, 1, 2]


async def test_max_tokens_truncates_with_length(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="m", messages=USER, max_tokens=2)

    assert completion.choices[0].message.content == "Answer to:"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


async def test_tool_call_then_tool_result(client: AsyncOpenAI) -> None:
    question = {"role": "user", "content": "What's the weather in Paris?"}
    first = await client.chat.completions.create(
        model="m", messages=[question], tools=[WEATHER_TOOL]
    )

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    follow_up = [
        question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = await client.chat.completions.create(
        model="m", messages=follow_up, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "The tool said: sunny"
    assert second.choices[0].finish_reason == "stop"


async def test_tools_without_weather_answer_in_text(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="m", messages=USER, tools=[WEATHER_TOOL]
    )

    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content == "Answer to: hello there"


async def test_missing_messages_is_a_bad_request(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="m", messages=None)  # type: ignore[arg-type]

    assert caught.value.param == "messages"
    assert caught.value.code == "missing_required_parameter"
    assert fake.chat_calls == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, None),
        ({"model": 3, "messages": USER}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": USER, "n": 0}, "n"),
    ],
)
async def test_validation_errors_use_openai_envelope(
    http: aiohttp.ClientSession, body: dict[str, object], param: str | None
) -> None:
    async with http.post("chat/completions", json=body) as response:
        assert response.status == 400
        payload = await response.json()

    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param


async def test_unparseable_body_is_a_bad_request(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post("chat/completions", data=b"{not json") as response:
        assert response.status == 400
        assert "parse the JSON body" in (await response.json())["error"]["message"]
    assert fake.requests[0].json is None
    assert fake.requests[0].body == b"{not json"


async def test_unknown_route_is_a_404_and_still_recorded(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get("nope?x=1") as response:
        assert response.status == 404
        error = (await response.json())["error"]

    assert error["message"] == "Invalid URL (GET /v1/nope)"
    assert fake.calls["/v1/nope"] == 1
    assert fake.requests[0].query == {"x": "1"}


# -- chat, streamed -----------------------------------------------------------------------


async def test_stream_with_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Answer to: hello there"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert [f for f in finishes if f] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])


async def test_sdk_stream_helper_assembles_completion(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="m", messages=USER, n=2, stream_options={"include_usage": True}
    ) as stream:
        completion = await stream.get_final_completion()

    contents = [c.message.content for c in completion.choices]
    assert contents == ["Answer to: hello there", "Answer to: hello there [1]"]
    assert completion.usage is not None and completion.usage.completion_tokens == 9


async def test_streamed_tool_call_uses_delta_format(client: AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "weather in Oslo, please"}]
    stream = await client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [chunk async for chunk in stream]

    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    assert all(call.index == 0 for call in calls)
    assert len(calls) > 2  # arguments arrive in pieces
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"location": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    async with client.chat.completions.stream(
        model="m", messages=messages, tools=[WEATHER_TOOL]
    ) as helper:
        final = await helper.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"location": "Oslo"}


async def test_raw_sse_framing_ends_with_done(
    http: aiohttp.ClientSession, fake: FakeUpstream
) -> None:
    fake.chunk_delay = 0.001
    body = {"model": "m", "messages": USER, "stream": True}
    async with http.post("chat/completions", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()

    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert "usage" not in json.loads(events[-2].removeprefix("data: "))


async def test_cut_stream_ends_without_finish_reason(
    fake: FakeUpstream, client: AsyncOpenAI
) -> None:
    fake.cut_stream_after = 2
    stream = await client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            chunks.append(chunk)

    assert len(chunks) == 2
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_cut_stream_longer_than_answer_still_drops_the_end(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.cut_stream_after = 1000
    body = {"model": "m", "messages": USER, "stream": True}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post("chat/completions", json=body) as response:
            async for line in response.content:
                received += line

    assert b"Answer" in received
    assert b'finish_reason": "stop' not in received
    assert b"[DONE]" not in received


async def test_stall_triggers_client_timeout(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.stall_seconds = 30  # released by the fixture's runner.cleanup()
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.05).chat.completions.create(model="m", messages=USER)
    assert fake.chat_calls == 1


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "message"),
    [
        (400, openai.BadRequestError, "Invalid request"),
        (401, openai.AuthenticationError, "Incorrect API key"),
        (404, openai.NotFoundError, "does not exist"),
        (429, openai.RateLimitError, "Rate limit reached"),
        (500, openai.InternalServerError, "The server had an error"),
        (503, openai.InternalServerError, "overloaded"),
    ],
)
async def test_fail_status_raises_matching_sdk_error(
    fake: FakeUpstream,
    client: AsyncOpenAI,
    status: int,
    error_class: type[openai.APIStatusError],
    message: str,
) -> None:
    fake.fail_status = status
    with pytest.raises(error_class, match=message) as caught:
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert caught.value.status_code == status
    assert message in caught.value.message

    with pytest.raises(error_class):
        await client.embeddings.create(model="e", input="hi")
    assert (fake.chat_calls, fake.embedding_calls) == (1, 1)


async def test_fail_message_overrides_text(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fail_status = 418
    fake.fail_message = "I am a teapot"
    with pytest.raises(openai.APIStatusError, match="I am a teapot") as caught:
        await client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 418


async def test_fail_times_recovers(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fail_status = 500
    fake.fail_times = 2
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=USER)

    completion = await client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "Answer to: hello there"
    assert fake.chat_calls == 3
    assert fake.fail_times == 0


async def test_sdk_retries_through_fail_times(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fail_status = 429
    fake.fail_times = 1
    fake.retry_after_ms = 1  # keeps the SDK's back-off out of the test's run time
    completion = await client.with_options(max_retries=2).chat.completions.create(
        model="m", messages=USER
    )
    assert completion.choices[0].finish_reason == "stop"
    assert fake.chat_calls == 2


async def test_models_are_not_failed(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fail_status = 500
    models = await client.models.list()
    assert [m.id for m in models.data] == list(MODELS)


# -- embeddings, models, legacy completions -----------------------------------------------


async def test_embeddings_are_deterministic_unit_vectors(
    fake: FakeUpstream, client: AsyncOpenAI
) -> None:
    texts = ["What is the capital of France?", "what is the capital of france", "banana bread"]
    response = await client.embeddings.create(model="text-embedding-3-small", input=texts)

    assert response.object == "list"
    assert [d.index for d in response.data] == [0, 1, 2]
    vectors = [d.embedding for d in response.data]
    assert all(len(v) == EMBEDDING_DIM for v in vectors)
    # The SDK asks for base64 (float32) by default, so unit norm holds to float32 precision.
    assert fake.requests[0].json["encoding_format"] == "base64"
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)
    assert vectors[0] == vectors[1]  # case and punctuation do not matter
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert unrelated < 0.9
    assert response.usage.prompt_tokens == 14  # words

    again = await client.embeddings.create(model="e", input=texts[2])
    assert again.data[0].embedding == vectors[2]
    assert fake.embedding_calls == 2


async def test_shared_words_mean_higher_similarity(client: AsyncOpenAI) -> None:
    texts = ["how do I bake bread", "how do I bake sourdough bread", "stock market news today"]
    response = await client.embeddings.create(model="e", input=texts)
    a, b, c = (d.embedding for d in response.data)

    def cosine(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cosine(a, b) > cosine(a, c)


async def test_embeddings_base64_matches_floats(http: aiohttp.ClientSession) -> None:
    async def fetch(encoding: str) -> object:
        body = {"model": "e", "input": "hello", "encoding_format": encoding}
        async with http.post("embeddings", json=body) as response:
            return (await response.json())["data"][0]["embedding"]

    floats = await fetch("float")
    packed = await fetch("base64")
    assert isinstance(floats, list) and isinstance(packed, str)
    decoded = struct.unpack(f"<{EMBEDDING_DIM}f", base64.b64decode(packed))
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(decoded, floats, strict=True))


async def test_embeddings_reject_empty_input(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="e", input="")


async def test_models_list_and_retrieve(client: AsyncOpenAI) -> None:
    page = await client.models.list()
    assert {m.object for m in page.data} == {"model"}
    model = await client.models.retrieve("gpt-4o")
    assert model.id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_legacy_completions(client: AsyncOpenAI) -> None:
    completion = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Answer to: Say hi"

    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hi",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Answer to: Say hi"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


# -- housekeeping -------------------------------------------------------------------------


async def test_reset_clears_steering_and_records(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    await client.chat.completions.create(model="m", messages=USER)
    fake.fail_status, fake.reply, fake.cut_stream_after = 500, "r", 1
    fake.reset()

    assert (fake.chat_calls, fake.requests) == (0, [])
    assert (fake.fail_status, fake.reply, fake.cut_stream_after) == (None, None, None)
    completion = await client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "Answer to: hello there"


async def test_standalone_prints_url_and_serves() -> None:
    root = Path(__file__).resolve().parent.parent
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fake_upstream",
        "--port",
        "0",
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        async with aiohttp.ClientSession() as session, session.get(url + "/models") as response:
            assert response.status == 200
    finally:
        process.terminate()
        await process.wait()
