"""Stream assembly and replay: every field a streamed answer carried survives the cache."""

from __future__ import annotations

import json

from kallm.providers.sse import StreamAssembler, replay_events


def chunk(delta: dict, finish: str | None = None, **extra: object) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def test_round_trip_keeps_reasoning_tool_calls_and_usage() -> None:
    assembler = StreamAssembler()
    for part in (
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think "}),
        chunk({"reasoning_content": "first."}),
        chunk({"content": "Calling the tool. " * 8}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"loc'},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '": "Paris"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
        },
    ):
        assembler.feed(part)
    assert assembler.complete
    completion = assembler.completion()
    message = completion["choices"][0]["message"]
    assert message["reasoning_content"] == "Think first."
    assert message["tool_calls"][0]["function"]["arguments"] == '{"loc": "Paris"}'

    events = replay_events(completion, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    replayed = [json.loads(e[6:]) for e in events[:-1]]
    content_chunks = [
        c for c in replayed if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert len(content_chunks) > 1  # a real stream, not one aggregated blob
    again = StreamAssembler()
    for part in replayed:
        again.feed(part)
    assert again.completion()["choices"] == completion["choices"]
    assert replayed[-1]["usage"]["total_tokens"] == 14
    without_usage = replay_events(completion, include_usage=False)
    assert all(b'"usage"' not in e for e in without_usage)
