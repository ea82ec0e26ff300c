"""The APIs agents speak, through the real SDKs: Anthropic Messages and OpenAI Responses.

Claude Code speaks Messages (``ANTHROPIC_BASE_URL`` at kallm), Codex CLI and the Agents
SDK speak Responses. Each is served natively where the provider speaks it and translated
where it does not, cached (MISS then HIT, streams replayed as streams), and priced the
same streamed or not. The fakes are strict about what they receive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from kallm.providers.config import AliasConfig, ProviderConfig
from tests.fake_anthropic import FakeAnthropic, start_fake_anthropic
from tests.harness import LoopThread, Proxy, Upstream, stop

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4o-mini"


@dataclass
class Agents:
    proxy: Proxy
    upstream: Upstream
    fake_anthropic: FakeAnthropic
    claude: anthropic.Anthropic  # an Anthropic SDK pointed at kallm, as Claude Code is
    codex: openai.OpenAI  # an OpenAI SDK pointed at kallm, as Codex CLI is


@pytest.fixture
def agents(loop_thread: LoopThread, upstream: Upstream, make_proxy: Any) -> Iterator[Agents]:
    fake, runner, url = loop_thread.run(start_fake_anthropic())
    providers = (
        ProviderConfig("openai", "openai", upstream.url, "sk-openai", None, ("gpt-*",)),
        ProviderConfig("anthropic", "anthropic", url, "sk-ant", None, ("claude-*",)),
    )
    aliases = (AliasConfig("fast", ("anthropic/claude-haiku-4-5",)),)
    proxy = make_proxy(providers=providers, aliases=aliases)
    root = proxy.url.removesuffix("/v1")
    claude = anthropic.Anthropic(base_url=root, api_key="sk-ant-client", max_retries=0)
    codex = openai.OpenAI(base_url=proxy.url, api_key="sk-client", max_retries=0)
    yield Agents(proxy, upstream, fake, claude, codex)
    stop(loop_thread, runner)


def ask_claude(agents: Agents, text: str, model: str = CLAUDE, **params: Any) -> Any:
    return agents.claude.messages.with_raw_response.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": text}], **params
    )


def collapsed(kinds: list[str]) -> list[str]:
    """Event types with runs of one type (deltas of one text) counted once."""
    return [kind for i, kind in enumerate(kinds) if i == 0 or kinds[i - 1] != kind]


def cache_of(raw: Any) -> str:
    return raw.headers.get("x-kallm-cache", "")


# ---------------------------------------------------------------- Messages


def test_messages_native_miss_then_hit(agents: Agents) -> None:
    first = ask_claude(agents, "Name a large mammal", extra_headers={"anthropic-beta": "b-1"})
    again = ask_claude(agents, "Name a large mammal", extra_headers={"anthropic-beta": "b-1"})
    assert (cache_of(first), cache_of(again)) == ("MISS", "HIT")
    a, b = first.parse(), again.parse()
    assert a.content[0].text == b.content[0].text and a.id != b.id
    assert agents.fake_anthropic.calls["/v1/messages"] == 1
    # the client's own version and beta headers reached the provider
    assert agents.fake_anthropic.anthropic_betas[-1] == ["b-1"]
    assert agents.fake_anthropic.anthropic_versions[-1]


def test_messages_stream_miss_then_hit_replays_the_same_events(agents: Agents) -> None:
    def stream() -> tuple[list[str], Any, str]:
        with agents.claude.messages.stream(
            model=CLAUDE, max_tokens=256, messages=[{"role": "user", "content": "Tell a joke"}]
        ) as events:
            raw = (
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            )
            kinds = [event.type for event in events if event.type in raw]  # not SDK-derived
            final = events.get_final_message()
            return kinds, final, events.response.headers.get("x-kallm-cache", "")

    kinds, first, miss = stream()
    again_kinds, second, hit = stream()
    assert (miss, hit) == ("MISS", "HIT")
    assert [block.model_dump() for block in first.content] == [
        block.model_dump() for block in second.content
    ]
    assert first.usage.output_tokens == second.usage.output_tokens
    assert collapsed(kinds) == collapsed(again_kinds)
    assert agents.fake_anthropic.calls["/v1/messages"] == 1


def test_messages_to_an_openai_provider_round_trip(agents: Agents) -> None:
    first = ask_claude(agents, "What is the capital of France?", model=GPT)
    message = first.parse()
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.content[0].text and message.usage.output_tokens > 0
    assert agents.upstream.fake.chat_calls == 1
    sent = agents.upstream.fake.requests[-1]
    assert sent.json["model"] == GPT and sent.json["messages"][-1]["role"] == "user"
    assert cache_of(ask_claude(agents, "What is the capital of France?", model=GPT)) == "HIT"
    with agents.claude.messages.stream(
        model=GPT, max_tokens=128, messages=[{"role": "user", "content": "Count to three"}]
    ) as events:
        text = "".join(events.text_stream)
        final = events.get_final_message()
    assert text and final.stop_reason == "end_turn"


def claude_code_request(cch: str, breakpoint_on_tools: bool) -> dict[str, Any]:
    """What Claude Code sends: a per-conversation billing line first in the system prompt,
    cache_control breakpoints that move, tools."""
    tool: dict[str, Any] = {
        "name": "Read",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
    if breakpoint_on_tools:
        tool["cache_control"] = {"type": "ephemeral"}
    return {
        "system": [
            {
                "type": "text",
                "text": f"x-anthropic-billing-header: cc_version=2.1.90.{cch[:3]}; "
                f"cc_entrypoint=cli; cch={cch};",
            },
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {
                "type": "text",
                "text": "Help the user with software engineering tasks.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": [tool],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "What does a Python list comprehension do?",
                        **({} if breakpoint_on_tools else {"cache_control": {"type": "ephemeral"}}),
                    }
                ],
            }
        ],
    }


def test_claude_code_conversations_share_a_scope(agents: Agents) -> None:
    first = agents.claude.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=256, **claude_code_request("a1b2c", True)
    )
    second = agents.claude.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=256, **claude_code_request("f9e8d", False)
    )
    assert (cache_of(first), cache_of(second)) == ("MISS", "HIT")
    # the provider got the request as sent: billing line and cache_control untouched
    sent = agents.fake_anthropic.requests[-1].json
    assert sent["system"][0]["text"].startswith("x-anthropic-billing-header:")
    assert sent["system"][2]["cache_control"] == {"type": "ephemeral"}
    # a different system prompt is a different scope
    other = claude_code_request("a1b2c", True)
    other["system"][2]["text"] = "Only answer questions about cooking."
    third = agents.claude.messages.with_raw_response.create(model=CLAUDE, max_tokens=256, **other)
    assert cache_of(third) == "MISS"


def test_messages_errors_are_anthropic_shaped(agents: Agents) -> None:
    with pytest.raises(anthropic.NotFoundError) as unknown:
        agents.claude.messages.create(
            model="nobody-knows-this-model",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert unknown.value.body["type"] == "error"  # type: ignore[index]
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_count_tokens_native_and_estimated(agents: Agents) -> None:
    native = agents.claude.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "How many tokens is this?"}]
    )
    assert native.input_tokens > 0
    assert agents.fake_anthropic.calls["/v1/messages/count_tokens"] == 1
    estimated = agents.claude.messages.count_tokens(
        model=GPT, messages=[{"role": "user", "content": "How many tokens is this?"}]
    )
    assert estimated.input_tokens > 0


# ---------------------------------------------------------------- Responses


def test_responses_native_miss_then_hit(agents: Agents) -> None:
    def ask() -> Any:
        return agents.codex.responses.with_raw_response.create(
            model=GPT, input="Name a primary colour", store=False
        )

    first, again = ask(), ask()
    assert (cache_of(first), cache_of(again)) == ("MISS", "HIT")
    a, b = first.parse(), again.parse()
    assert a.output_text == b.output_text and a.id != b.id
    assert agents.upstream.fake.calls["/v1/responses"] == 1


def test_responses_stream_miss_then_hit(agents: Agents) -> None:
    def stream() -> tuple[list[str], str, str]:
        events = agents.codex.responses.create(
            model=GPT, input="Describe the sea in one line", store=False, stream=True
        )
        seen = list(events)
        final = seen[-1].response  # type: ignore[union-attr]
        header = events.response.headers.get("x-kallm-cache", "")
        return [event.type for event in seen], final.output_text, header

    kinds, text, miss = stream()
    again_kinds, again_text, hit = stream()
    assert (miss, hit) == ("MISS", "HIT")
    assert text == again_text and text
    # the same event sequence (text may come in other-sized deltas), created ... completed
    assert collapsed(kinds) == collapsed(again_kinds)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_stateful_responses_are_never_cached(agents: Agents) -> None:
    for _ in range(2):  # store defaults to true: the answer lives upstream, by id
        reply = agents.codex.responses.with_raw_response.create(model=GPT, input="Stateful one")
        assert cache_of(reply) in ("BYPASS", "")
    assert agents.upstream.fake.calls["/v1/responses"] == 2


def test_responses_to_an_anthropic_provider(agents: Agents) -> None:
    reply = agents.codex.responses.create(model=CLAUDE, input="Say hello", store=False)
    assert reply.output_text and reply.status == "completed"
    sent = agents.fake_anthropic.requests[-1].json
    assert sent["messages"][-1]["role"] == "user"
    with pytest.raises(openai.BadRequestError):  # no server-side state on Anthropic
        agents.codex.responses.create(
            model=CLAUDE, input="Go on", previous_response_id="resp_123", store=False
        )


# ---------------------------------------------------------------- pricing


@pytest.mark.parametrize(
    ("dialect", "model"),
    [
        ("messages", CLAUDE),
        ("messages", GPT),
        ("responses", GPT),
        ("responses", CLAUDE),
    ],
)
def test_spend_streamed_equals_non_streamed(agents: Agents, dialect: str, model: str) -> None:
    proxy = agents.proxy
    costs = []
    for stream in (False, True):
        spent = _spent(proxy)
        headers = {"Cache-Control": "no-cache, no-store"}
        if dialect == "messages":
            params = dict(
                model=model,
                max_tokens=64,
                extra_headers=headers,
                messages=[{"role": "user", "content": "Price this sentence"}],
            )
            if stream:
                with agents.claude.messages.stream(**params) as events:
                    events.get_final_message()
            else:
                agents.claude.messages.create(**params)
        else:
            params = dict(
                model=model, input="Price this sentence", store=False, extra_headers=headers
            )
            if stream:
                with agents.codex.responses.stream(**params) as events:
                    events.get_final_response()
            else:
                agents.codex.responses.create(**params)
        costs.append(_wait_for_more(proxy, spent) - spent)
    assert costs[0] > 0
    assert costs[1] == pytest.approx(costs[0])


def _spent(proxy: Proxy) -> float:
    metric = proxy.runtime.metrics.spend  # type: ignore[union-attr]
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


def _wait_for_more(proxy: Proxy, before: float) -> float:
    deadline = time.monotonic() + 5
    while (now := _spent(proxy)) <= before:
        assert time.monotonic() < deadline, "the request was never priced"
        time.sleep(0.02)
    return now
