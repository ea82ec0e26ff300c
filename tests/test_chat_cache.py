"""The semantic cache through the real HTTP path, driven by the real openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from kallm.errors import EmbeddingError
from tests.harness import Http, Proxy, Upstream

MODEL = "gpt-4o-mini"


def ask(client: openai.OpenAI, text: str, **params: Any) -> Any:
    """One chat call; returns the raw response so tests see kallm's headers."""
    messages = params.pop("messages", None) or [{"role": "user", "content": text}]
    return client.chat.completions.with_raw_response.create(
        model=params.pop("model", MODEL), messages=messages, **params
    )


def cache_header(raw: Any) -> str:
    return raw.headers.get("x-kallm-cache")


def test_miss_then_exact_hit(client: openai.OpenAI, upstream: Upstream) -> None:
    first = ask(client, "What is the capital of France?")
    second = ask(client, "What is the capital of France?")
    assert cache_header(first) == "MISS"
    assert cache_header(second) == "HIT"
    assert second.headers["x-kallm-similarity"] == "1.0000"
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.id != a.id and b.usage == a.usage
    assert upstream.fake.chat_calls == 1


def test_paraphrase_hits_and_unrelated_misses(client: openai.OpenAI, upstream: Upstream) -> None:
    ask(client, "How do I reset my password?")
    paraphrase = ask(
        client, "how can I reset my password", extra_headers={"X-Kallm-Threshold": "0.8"}
    )
    unrelated = ask(client, "Write a haiku about autumn leaves")
    assert cache_header(paraphrase) == "HIT"
    assert 0.8 <= float(paraphrase.headers["x-kallm-similarity"]) < 1.0
    assert cache_header(unrelated) == "MISS"
    assert upstream.fake.chat_calls == 2


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.2},
        {"max_tokens": 5},
        {
            "messages": [
                {"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "What is the capital of France?"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Tell me about Spain."},
                {"role": "assistant", "content": "Spain is in Europe."},
                {"role": "user", "content": "What is the capital of France?"},
            ]
        },
        {"extra_headers": {"X-Kallm-Namespace": "tenant-b"}},
    ],
    ids=["model", "temperature", "max_tokens", "system_prompt", "history", "namespace"],
)
def test_scope_keeps_answers_apart(
    client: openai.OpenAI, upstream: Upstream, change: dict[str, Any]
) -> None:
    ask(client, "What is the capital of France?")
    other = ask(client, "What is the capital of France?", **change)
    assert cache_header(other) == "MISS"
    assert upstream.fake.chat_calls == 2


def test_no_cache_skips_lookup_but_stores(client: openai.OpenAI, upstream: Upstream) -> None:
    ask(client, "Name three primary colours")
    skipped = ask(client, "Name three primary colours", extra_headers={"Cache-Control": "no-cache"})
    assert cache_header(skipped) == "MISS"
    assert upstream.fake.chat_calls == 2
    assert cache_header(ask(client, "Name three primary colours")) == "HIT"


def test_no_store_is_not_remembered(client: openai.OpenAI, upstream: Upstream) -> None:
    ask(client, "Name three primary colours", extra_headers={"Cache-Control": "no-store"})
    again = ask(client, "Name three primary colours")
    assert cache_header(again) == "MISS"
    assert upstream.fake.chat_calls == 2


def test_stream_miss_then_stream_and_json_hits(client: openai.OpenAI, upstream: Upstream) -> None:
    def stream_text(**extra: Any) -> tuple[str, str, list[Any]]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Explain rainbows in one line"}],
            stream=True,
            **extra,
        )
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-kallm-cache"], text, chunks

    status, text, chunks = stream_text()
    assert status == "MISS" and text.startswith("Answer to:")
    assert all(c.usage is None for c in chunks)  # client did not ask for usage
    status_hit, text_hit, chunks_hit = stream_text(stream_options={"include_usage": True})
    assert status_hit == "HIT" and text_hit == text
    assert len([c for c in chunks_hit if c.choices and c.choices[0].delta.content]) >= 1
    assert chunks_hit[-1].usage is not None and chunks_hit[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks_hit if c.choices][-1] == "stop"
    as_json = ask(client, "Explain rainbows in one line")
    assert cache_header(as_json) == "HIT"
    assert as_json.parse().choices[0].message.content == text
    assert upstream.fake.chat_calls == 1


def test_json_entry_serves_a_stream(client: openai.OpenAI, upstream: Upstream) -> None:
    answer = ask(client, "List two prime numbers").parse().choices[0].message.content
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "List two prime numbers"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
    assert upstream.fake.chat_calls == 1


def test_tool_calls_survive_the_cache(client: openai.OpenAI, upstream: Upstream) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
            },
        }
    ]
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools,
        stream=True,
    )
    list(streamed)
    hit = ask(client, "What is the weather in Paris?", tools=tools)
    assert cache_header(hit) == "HIT"
    choice = hit.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert "Paris" in choice.message.tool_calls[0].function.arguments


async def test_async_client_hits(aclient: openai.AsyncOpenAI, upstream: Upstream) -> None:
    for _ in range(2):
        raw = await aclient.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "async hello"}]
        )
    assert raw.headers["x-kallm-cache"] == "HIT"
    assert upstream.fake.chat_calls == 1


def test_stats_count_hits_and_misses(client: openai.OpenAI, http: Http) -> None:
    ask(client, "What is two plus two?")
    ask(client, "What is two plus two?")
    stats = http.get("/stats").json()
    assert stats["total_entries"] == 1
    assert stats["total_hits"] == 1 and stats["total_misses"] == 1
    assert stats["hit_rate"] == 0.5
    assert stats["estimated_saved_usd"] > 0  # gpt-4o-mini is priced
    assert stats["tokens_saved"] > 0


def test_exact_repeat_needs_no_embedding(make_proxy: Any, upstream: Upstream) -> None:
    proxy: Proxy = make_proxy(embedding_model="text-embedding-3-small")
    client = openai.OpenAI(base_url=proxy.url, api_key="k", max_retries=0)
    ask(client, "How tall is Mount Everest?")
    embeddings_after_miss = upstream.fake.embedding_calls
    assert embeddings_after_miss == 1  # the remote embedder is really used
    assert cache_header(ask(client, "How tall is Mount Everest?")) == "HIT"
    assert upstream.fake.embedding_calls == embeddings_after_miss


class BrokenEmbedder:
    """An embedder whose service is down: the cache must degrade, not fail requests."""

    name, dim, default_threshold = "broken", 8, 0.9

    async def embed(self, text: str) -> Any:
        raise EmbeddingError("embedding service down")


def test_embedding_failure_serves_uncached(make_proxy: Any, upstream: Upstream, http: Any) -> None:
    proxy: Proxy = make_proxy(embedder=BrokenEmbedder())
    client = openai.OpenAI(base_url=proxy.url, api_key="k", max_retries=0)
    first = ask(client, "Still answered?")
    assert first.status_code == 200 and cache_header(first) == "MISS"
    assert cache_header(ask(client, "Still answered?")) == "HIT"  # the exact tier still works
    assert cache_header(ask(client, "Is it still answered?")) == "MISS"
    assert Http(proxy.root).get("/stats").json()["embedding_errors"] == 2
