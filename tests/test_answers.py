"""Cached answers are kept so that a hit is a byte splice, and read back exactly."""

from __future__ import annotations

import json

from kallm.cache.answers import served_answer, stored_answer, stored_usage

COMPLETION = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": 'say "usage":'},
            "finish_reason": "stop",
        }
    ],
}


def test_a_stored_answer_is_served_with_a_fresh_id_and_the_same_content() -> None:
    stored = stored_answer(COMPLETION)
    assert b"chatcmpl-upstream" not in stored and stored.endswith(b"}}")
    served = json.loads(served_answer(stored, "chatcmpl-new", 42))
    assert served == {**COMPLETION, "id": "chatcmpl-new", "created": 42}
    assert stored_usage(stored) == COMPLETION["usage"]


def test_an_answer_kept_whole_by_an_older_kallm_is_still_served() -> None:
    older = json.dumps(COMPLETION).encode()
    served = json.loads(served_answer(older, "chatcmpl-new", 7))
    assert served["id"] == "chatcmpl-new" and served["created"] == 7
    assert served["choices"] == COMPLETION["choices"]
    assert stored_usage(older) == COMPLETION["usage"]
