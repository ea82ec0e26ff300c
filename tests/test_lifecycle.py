"""Entries come and go: TTL, LRU eviction, snapshots across restarts, corrupt files, files of
another embedder kept."""

from __future__ import annotations

import time
from typing import Any

import openai

from tests.harness import Http, LoopThread, Proxy, Upstream, stop
from tests.test_chat_cache import ask, cache_header


def client_for(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url, api_key="k", max_retries=0)


def test_ttl_expiry(make_proxy: Any, upstream: Upstream) -> None:
    client = client_for(make_proxy(cache_ttl=1.0))
    ask(client, "What is the boiling point of water?")
    assert cache_header(ask(client, "What is the boiling point of water?")) == "HIT"
    time.sleep(1.2)
    assert cache_header(ask(client, "What is the boiling point of water?")) == "MISS"
    assert upstream.fake.chat_calls == 2


def test_lru_eviction_keeps_recently_used(make_proxy: Any, upstream: Upstream) -> None:
    proxy = make_proxy(max_cache_size=2)
    client = client_for(proxy)
    questions = [
        "Who painted the Mona Lisa?",
        "How many legs does a spider have?",
        "What is the chemical symbol for gold?",
    ]
    ask(client, questions[0])
    ask(client, questions[1])
    assert cache_header(ask(client, questions[0])) == "HIT"  # now the most recently used
    ask(client, questions[2])  # evicts questions[1], the least recently used
    stats = Http(proxy.root).get("/stats").json()
    assert stats["total_entries"] == 2 and stats["evictions"] == 1
    assert cache_header(ask(client, questions[0])) == "HIT"
    assert cache_header(ask(client, questions[1])) == "MISS"


def test_snapshot_survives_restart(
    make_proxy: Any, loop_thread: LoopThread, upstream: Upstream
) -> None:
    first = make_proxy()
    ask(client_for(first), "Which planet is known as the red planet?")
    stop(loop_thread, first.runner)  # graceful stop writes the snapshot
    assert first.settings.cache_file is not None and first.settings.cache_file.exists()
    second = make_proxy()
    again = ask(client_for(second), "Which planet is known as the red planet?")
    assert cache_header(again) == "HIT"
    assert upstream.fake.chat_calls == 1


def test_corrupt_snapshot_starts_empty(make_proxy: Any, proxy_settings: Any) -> None:
    path = proxy_settings.cache_file
    path.write_bytes(b"KALLMSNP\x01\n" + b"\x00garbage" * 100)
    proxy = make_proxy()
    assert Http(proxy.root).get("/health").json()["cache_entries"] == 0
    assert path.with_name(path.name + ".corrupt").exists()
    assert cache_header(ask(client_for(proxy), "Hello after corruption")) == "MISS"


def test_truncated_snapshot_starts_empty(
    make_proxy: Any, loop_thread: LoopThread, proxy_settings: Any
) -> None:
    first = make_proxy()
    ask(client_for(first), "How far away is the moon?")
    stop(loop_thread, first.runner)
    path = proxy_settings.cache_file
    path.write_bytes(path.read_bytes()[:-20])
    second = make_proxy()
    assert Http(second.root).get("/health").json()["cache_entries"] == 0
    assert path.with_name(path.name + ".corrupt").exists()


def test_snapshot_of_another_embedder_is_not_mixed_in(
    make_proxy: Any, loop_thread: LoopThread, upstream: Upstream, proxy_settings: Any
) -> None:
    first = make_proxy(embedding_model="hash", embedder=None)
    ask(client_for(first), "What is the tallest animal?")
    stop(loop_thread, first.runner)
    path = proxy_settings.cache_file
    theirs = path.read_bytes()
    second = make_proxy()  # the local embedder
    assert Http(second.root).get("/health").json()["cache_entries"] == 0
    assert cache_header(ask(client_for(second), "What is the tallest animal?")) == "MISS"
    stop(loop_thread, second.runner)  # writes the local embedder's snapshot...
    aside = path.with_name(f"{path.name}.{first.runtime.cache.embedder.name}")
    assert aside.read_bytes() == theirs  # ...beside the hash embedder's, which is kept
    third = make_proxy(embedding_model="hash", embedder=None)
    assert Http(third.root).get("/health").json()["cache_entries"] == 0  # not the local one
    aside.replace(path.with_name("restored.kallm"))
    fourth = make_proxy(
        embedding_model="hash", embedder=None, cache_file=aside.with_name("restored.kallm")
    )
    assert cache_header(ask(client_for(fourth), "What is the tallest animal?")) == "HIT"
