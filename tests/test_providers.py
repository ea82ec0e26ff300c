"""One OpenAI API in front of OpenAI-compatible, Anthropic and Gemini upstreams.

Real fake servers for each API (strict about the request shapes they accept),
kallm routing between them, and the real openai SDK as the only client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from kallm.providers.config import AliasConfig, ProviderConfig
from tests.fake_anthropic import FakeAnthropic, start_fake_anthropic
from tests.fake_gemini import FakeGemini, start_fake_gemini
from tests.harness import Http, LoopThread, Proxy, Upstream, stop

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a place",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]


@dataclass
class Fleet:
    proxy: Proxy
    client: openai.OpenAI
    openai: Upstream
    anthropic: FakeAnthropic
    gemini: FakeGemini


@pytest.fixture
def fleet(loop_thread: LoopThread, upstream: Upstream, make_proxy: Any) -> Iterator[Fleet]:
    anthropic, a_runner, a_url = loop_thread.run(start_fake_anthropic())
    gemini, g_runner, g_url = loop_thread.run(start_fake_gemini())
    providers = (
        ProviderConfig(
            "openai", "openai", upstream.url, "sk-openai", None, ("gpt-*",), max_retries=1
        ),
        ProviderConfig(
            "anthropic", "anthropic", a_url, "sk-ant", None, ("claude-*",), max_retries=1
        ),
        ProviderConfig("gemini", "gemini", g_url, "g-key", None, ("gemini-*",), max_retries=0),
    )
    aliases = (AliasConfig("fast", ("anthropic/claude-haiku-4-5", "openai/gpt-4o-mini")),)
    proxy = make_proxy(providers=providers, aliases=aliases)
    proxy.runtime.router.backoff = 0.01
    client = openai.OpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)
    yield Fleet(proxy, client, upstream, anthropic, gemini)
    stop(loop_thread, a_runner)
    stop(loop_thread, g_runner)


def chat(fleet: Fleet, model: str, text: str, **params: Any) -> Any:
    return fleet.client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        **params,
    )


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_each_provider_answers_and_caches(fleet: Fleet, model: str) -> None:
    first = chat(fleet, model, "Name a large mammal")
    completion = first.parse()
    assert first.headers["x-kallm-cache"] == "MISS"
    assert first.headers["x-kallm-provider"].split("/")[0] == model.split("-")[0].replace(
        "gpt", "openai"
    ).replace("claude", "anthropic")
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0
    again = chat(fleet, model, "Name a large mammal")
    assert again.headers["x-kallm-cache"] == "HIT"
    assert again.parse().choices[0].message.content == completion.choices[0].message.content


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash"])
def test_native_streams_relay_and_replay(fleet: Fleet, model: str) -> None:
    stream = fleet.client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me about rivers"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    hit = chat(fleet, model, "Tell me about rivers")
    assert hit.headers["x-kallm-cache"] == "MISS"  # a system prompt: another scope
    plain = fleet.client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Tell me about rivers"}]
    )
    assert plain.headers["x-kallm-cache"] == "HIT"
    assert plain.parse().choices[0].message.content == text


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash"])
def test_native_tool_calls(fleet: Fleet, model: str) -> None:
    reply = chat(fleet, model, "What is the weather in Paris?", tools=TOOLS).parse()
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "Paris" in call.function.arguments
    follow_up = fleet.client.chat.completions.create(
        model=model,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        ],
    )
    assert follow_up.choices[0].message.content


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash"])
def test_native_errors_come_back_in_openai_shape(fleet: Fleet, model: str) -> None:
    fake = fleet.anthropic if model.startswith("claude") else fleet.gemini
    fake.fail_status = 400
    with pytest.raises(openai.BadRequestError) as caught:
        chat(fleet, model, "hello")
    assert caught.value.body and "message" in caught.value.body


def test_alias_falls_back_on_429(fleet: Fleet) -> None:
    fleet.anthropic.fail_status = 429
    reply = chat(fleet, "fast", "Which is heavier, a kilo of feathers or of steel?")
    assert reply.headers["x-kallm-provider"] == "openai/gpt-4o-mini"
    assert fleet.anthropic.calls["/v1/messages"] == 2  # one try and one retry
    assert fleet.openai.fake.chat_calls == 1


def test_retry_then_success_on_500(fleet: Fleet) -> None:
    fleet.openai.fake.fail_status, fleet.openai.fake.fail_times = 500, 1
    reply = chat(fleet, "gpt-4o-mini", "retry me")
    assert reply.status_code == 200 and fleet.openai.fake.chat_calls == 2


def test_no_retry_after_the_stream_began(fleet: Fleet) -> None:
    fleet.openai.fake.cut_stream_after = 2
    with pytest.raises(openai.APIError):
        list(
            fleet.client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "a long tale"}],
                stream=True,
            )
        )
    assert fleet.openai.fake.chat_calls == 1


def test_explicit_provider_and_unknown_model(fleet: Fleet) -> None:
    reply = chat(fleet, "anthropic/claude-haiku-4-5", "hi there")
    assert reply.headers["x-kallm-provider"] == "anthropic/claude-haiku-4-5"
    with pytest.raises(openai.NotFoundError) as caught:
        chat(fleet, "llama-9000", "hi")
    assert "gpt-*" in caught.value.message and "fast" in caught.value.message


def test_models_lists_configuration(fleet: Fleet) -> None:
    ids = [m.id for m in fleet.client.models.list()]
    assert "fast" in ids


def test_missing_provider_key_is_a_clear_401(make_proxy: Any, loop_thread: LoopThread) -> None:
    _anthropic, runner, url = loop_thread.run(start_fake_anthropic())
    try:
        proxy = make_proxy(
            providers=(
                ProviderConfig(
                    "anthropic", "anthropic", url, None, "ANTHROPIC_API_KEY", ("claude-*",)
                ),
            )
        )
        reply = Http(proxy.root).post(
            "/v1/chat/completions",
            {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]},
        )
        assert reply.status == 401 and "ANTHROPIC_API_KEY" in reply.json()["error"]["message"]
    finally:
        stop(loop_thread, runner)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"])
def test_streamed_spend_equals_non_streamed(fleet: Fleet, model: str) -> None:
    """Peers price streams at $0; kallm asks for usage in the stream and prices it the same."""
    messages = [{"role": "user", "content": "Describe the ocean in a sentence"}]
    spend = fleet.proxy.runtime.metrics.spend.labels(model)

    def after(previous: float) -> float:
        """The counter once the server has finished the request (it counts after the
        last byte is sent, so the client can be a moment ahead)."""
        deadline = time.monotonic() + 5
        while spend._value.get() == previous and time.monotonic() < deadline:
            time.sleep(0.01)
        return spend._value.get()

    list(fleet.client.chat.completions.create(model=model, messages=messages, stream=True))
    streamed = after(0.0)
    fleet.client.chat.completions.create(
        model=model, messages=messages, extra_headers={"Cache-Control": "no-cache"}
    )
    plain = after(streamed) - streamed
    assert streamed > 0 and streamed == pytest.approx(plain)


def test_alias_falls_back_on_500(fleet: Fleet) -> None:
    fleet.anthropic.fail_status = 500
    reply = chat(fleet, "fast", "Name a river in Africa")
    assert reply.headers["x-kallm-provider"] == "openai/gpt-4o-mini"
    assert fleet.anthropic.calls["/v1/messages"] == 2
