"""The hit guard: near neighbours that ask a different question are refused, paraphrases are not.

The labelled pairs in tests/data/guard_pairs.jsonl go through the real HTTP path:
every must-not-hit pair is a MISS even at X-Kallm-Threshold 0.85, and no must-hit
pair that the embedder alone would serve at 0.85 is refused by the guard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kallm.cache.guard import REASONS, refusal_reason
from tests.harness import Http, Proxy, Upstream

PAIRS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "guard_pairs.jsonl").read_text().splitlines()
    if line.strip()
]
MUST_NOT = [p for p in PAIRS if p["label"] == "must_not_hit"]
MUST_HIT = [p for p in PAIRS if p["label"] == "must_hit"]
CHAT = "/v1/chat/completions"


def chat(http: Http, text: str, namespace: str, **headers: str) -> Any:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return http.post(CHAT, body, headers={"X-Kallm-Namespace": namespace, **headers})


def test_the_pair_set_is_broad() -> None:
    assert len(PAIRS) >= 150
    assert {p["domain"] for p in PAIRS} >= {
        "smart_home",
        "banking",
        "travel",
        "maths",
        "health",
        "coding",
    }
    for reason in ("negation", "opposite", "numbers", "roles", "subject"):
        assert sum(p["reason"] == reason for p in MUST_NOT) >= 10, reason


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        ("Is parking allowed here?", "Is parking not allowed here?", "negation"),
        ("Can I pay by card?", "Can't I pay by card?", "negation"),
        ("Set the thermostat to 20 degrees", "Set the thermostat to 22 degrees", "numbers"),
        ("Set a timer for ten minutes", "Set a timer for 12 minutes", "numbers"),
        ("What is 15% of 80?", "What is 15% of 90?", "numbers"),
        ("Lock the front door", "Unlock the front door", "opposite"),
        ("turn on the kitchen lights", "turn the kitchen lights off", "opposite"),
        ("Show me flights from Boston to Denver", "Show me flights from Denver to Boston", "roles"),
        ("Convert celsius to fahrenheit", "Convert fahrenheit to celsius", "roles"),
        ("What's the weather in Tokyo?", "What's the weather in Osaka?", "subject"),
        ("What is the population of Peru?", "What is the population of Chile?", "subject"),
    ],
)
def test_each_reason(a: str, b: str, reason: str) -> None:
    assert refusal_reason(a, b) == reason
    assert refusal_reason(b, a) == reason


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is the capital city of France?", "What is the capital of France?"),
        ("How do I reset my PIN?", "How do I change my PIN?"),
        ("the opening hours of the museum", "the museum's opening hours"),
        (
            "How do I get from the airport to downtown?",
            "How do I get to downtown from the airport?",
        ),
        ("Set a timer for one minute", "Set a timer for 1 minute"),
        ("Set a timer for twenty two minutes", "set a timer for 22 minutes"),
        ("turn on the lights", "switch on the lights"),
    ],
)
def test_paraphrases_pass(a: str, b: str) -> None:
    assert refusal_reason(a, b) is None


def test_must_not_hit_pairs_miss_through_http(proxy: Proxy, http: Http, upstream: Upstream) -> None:
    served = []
    for i, pair in enumerate(MUST_NOT):
        chat(http, pair["a"], f"nh{i}")
        reply = chat(http, pair["b"], f"nh{i}", **{"X-Kallm-Threshold": "0.85"})
        if reply.headers["x-kallm-cache"] != "MISS":
            served.append((pair["a"], pair["b"], reply.headers.get("x-kallm-similarity")))
    assert served == []
    stats = http.get("/stats").json()
    assert stats["guarded"] > 0 and set(stats["guarded_by_reason"]) <= set(REASONS)


def test_guard_refuses_no_must_hit_pair_the_embedder_serves(proxy: Proxy, http: Http) -> None:
    served_by_embedder = refused = 0
    wrongly_refused = []
    for i, pair in enumerate(MUST_HIT):
        chat(http, pair["a"], f"h{i}")
        alone = chat(
            http,
            pair["b"],
            f"h{i}",
            **{"X-Kallm-Threshold": "0.85", "X-Kallm-Guard": "off", "Cache-Control": "no-store"},
        )
        if alone.headers["x-kallm-cache"] != "HIT":
            continue
        served_by_embedder += 1
        guarded = chat(
            http, pair["b"], f"h{i}", **{"X-Kallm-Threshold": "0.85", "Cache-Control": "no-store"}
        )
        if guarded.headers["x-kallm-cache"] != "HIT":
            refused += 1
            wrongly_refused.append((pair["a"], pair["b"]))
    assert served_by_embedder >= len(MUST_HIT) // 2  # the test exercises real hits
    assert wrongly_refused == []


def test_guard_can_be_switched_off_per_request(proxy: Proxy, http: Http) -> None:
    chat(http, "Lock the front door", "off")
    reply = chat(
        http, "Unlock the front door", "off", **{"X-Kallm-Threshold": "0.8", "X-Kallm-Guard": "off"}
    )
    assert reply.headers["x-kallm-cache"] == "HIT"


def test_guard_off_in_settings(make_proxy: Any) -> None:
    proxy: Proxy = make_proxy(guard=False)
    http = Http(proxy.root)
    chat(http, "Lock the front door", "s")
    reply = chat(http, "Unlock the front door", "s", **{"X-Kallm-Threshold": "0.8"})
    assert reply.headers["x-kallm-cache"] == "HIT"


def test_guard_never_raises_on_odd_text() -> None:
    import random

    rng = random.Random(7)
    alphabet = "abs s'’ 0123456789%.,:-+#$€ AIOé漢😀\n\t"
    texts = ["", "s", "'s", "s s", "1st", "%", "#", "c++", "A", "I", "a b c"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    for a, b in zip(texts, reversed(texts), strict=True):
        assert refusal_reason(a, b) in {None, *REASONS}
