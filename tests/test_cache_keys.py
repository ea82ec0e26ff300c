"""Remembered cache keys: a repeat of a body gets the key its request has, and nothing else."""

from __future__ import annotations

import json
from typing import Any

from kallm.cache.scope import RecentKeys, cache_key


def chat(text: str, model: str = "gpt-4o-mini") -> tuple[dict[str, Any], bytes]:
    request = {"model": model, "messages": [{"role": "user", "content": text}]}
    return request, json.dumps(request).encode()


def test_a_remembered_key_is_the_key() -> None:
    keys = RecentKeys()
    request, body = chat("What is the capital of France?")
    first = keys.get(request, ("credential", "server"), body, "chat")
    again = keys.get(request, ("credential", "server"), body, "chat")
    assert first == again == cache_key(request, ("credential", "server"))
    assert again is first  # from the memo, not computed again


def test_the_tenant_and_the_route_are_part_of_the_memo() -> None:
    keys = RecentKeys()
    request, body = chat("What is the capital of France?")
    team_a = keys.get(request, ("key", "team-a"), body, "chat")
    team_b = keys.get(request, ("key", "team-b"), body, "chat")
    assert team_a != team_b
    assert team_b == cache_key(request, ("key", "team-b"))
    # another route reads the same bytes as another request: its own key, not chat's
    other_view = {**request, "system": "a translated view"}
    translated = keys.get(other_view, ("key", "team-a"), body, "messages")
    assert translated == cache_key(other_view, ("key", "team-a")) != team_a


def test_least_recently_used_bodies_go_first() -> None:
    keys = RecentKeys(size=2)
    tenant = ("credential", "server")
    (a, body_a), (b, body_b), (c, body_c) = chat("a"), chat("b"), chat("c")
    key_a = keys.get(a, tenant, body_a, "chat")
    keys.get(b, tenant, body_b, "chat")
    keys.get(a, tenant, body_a, "chat")  # a is used again: b is now the oldest
    keys.get(c, tenant, body_c, "chat")
    assert len(keys._keys) == 2
    assert keys.get(a, tenant, body_a, "chat") is key_a
    assert ("chat", tenant, body_b) not in keys._keys


def test_large_bodies_are_not_remembered() -> None:
    keys = RecentKeys(max_body=64)
    request, body = chat("x" * 100)
    assert keys.get(request, (), body, "chat") == cache_key(request, ())
    assert not keys._keys
