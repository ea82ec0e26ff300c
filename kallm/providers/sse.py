"""Server-sent events for chat completions: read them, assemble them, replay them.

A streamed answer is stored only when the assembler has seen every choice
finish; what it assembles is an ordinary ``chat.completion`` so one entry can
serve streaming and non-streaming callers alike. Replay splits content at word
boundaries into several chunks, like a real stream, and carries every field
the original message had (tool calls, reasoning, refusal, logprobs).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

DONE = b"data: [DONE]\n\n"
_PIECE_CHARS = 48  # replayed content per chunk: several chunks, not one blob, not per byte


async def iter_events(
    content: aiohttp.StreamReader,
) -> AsyncIterator[tuple[bytes, str | None, bytes | None]]:
    """Yield (raw event bytes to relay, event name or None, data payload or None) per event."""
    buffer: list[bytes] = []
    data: list[bytes] = []
    event: str | None = None
    async for line in content:
        buffer.append(line)
        stripped = line.rstrip(b"\r\n")
        if stripped:
            if stripped.startswith(b"data:"):
                data.append(stripped[5:].lstrip(b" "))
            elif stripped.startswith(b"event:"):
                event = stripped[6:].strip().decode(errors="replace")
            continue
        yield b"".join(buffer), event, (b"\n".join(data) if data else None)
        buffer, data, event = [], [], None
    if buffer:  # a last event without its blank line: relay it, it cannot be trusted
        yield b"".join(buffer), event, None


def event_data(raw: bytes) -> bytes | None:
    """The data payload of one whole SSE event (the lines after "data:")."""
    lines = [line[5:].lstrip(b" ") for line in raw.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class StreamAssembler:
    """Builds the chat.completion a stream amounts to, chunk by chunk."""

    def __init__(self) -> None:
        self.top: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> None:
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name) is not None:
                self.top.setdefault(name, chunk[name])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._feed_choice(choice)

    def _feed_choice(self, choice: dict[str, Any]) -> None:
        state = self.choices.setdefault(
            choice.get("index", 0), {"message": {"role": "assistant"}, "finish_reason": None}
        )
        message = state["message"]
        for name, value in (choice.get("delta") or {}).items():
            if value is None:
                continue
            if name == "tool_calls":
                _merge_tool_calls(message.setdefault("tool_calls", []), value)
            elif name == "role":
                message["role"] = value
            elif isinstance(value, str):
                message[name] = message.get(name, "") + value
            else:
                message[name] = value
        if choice.get("logprobs"):
            logprobs = state.setdefault("logprobs", {})
            for name, items in choice["logprobs"].items():
                if isinstance(items, list):
                    logprobs.setdefault(name, []).extend(items)
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    @property
    def complete(self) -> bool:
        return bool(self.choices) and all(c["finish_reason"] for c in self.choices.values())

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message = state["message"]
            message.setdefault("content", None)
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": state.get("logprobs"),
                    "finish_reason": state["finish_reason"],
                }
            )
        body = {
            "id": self.top.get("id", ""),
            "object": "chat.completion",
            "created": self.top.get("created", 0),
            "model": self.top.get("model", ""),
            "choices": choices,
        }
        for name in ("system_fingerprint", "service_tier"):
            if name in self.top:
                body[name] = self.top[name]
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        index = delta.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        for name in ("name", "arguments"):
            if function.get(name):
                call["function"][name] += function[name]
        for name, value in delta.items():  # provider extras (Gemini's thought signatures)
            if name not in ("index", "id", "type", "function") and value is not None:
                call[name] = value


# ---------------------------------------------------------------- replay


def _split_text(text: str) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        end = start + _PIECE_CHARS
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def encode_chunk(payload: dict[str, Any]) -> bytes:
    """One SSE ``data:`` event holding a chunk (or any JSON object)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def replay_events(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """The SSE events (ending in [DONE]) that stream ``completion`` to a client."""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion.get("model", ""),
    }
    if "system_fingerprint" in completion:
        base["system_fingerprint"] = completion["system_fingerprint"]
    events = []
    for choice in completion.get("choices", []):
        index = choice.get("index", 0)
        for delta, logprobs in _choice_deltas(choice):
            events.append(
                encode_chunk(
                    {
                        **base,
                        "choices": [
                            {
                                "index": index,
                                "delta": delta,
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        events.append(
            encode_chunk(
                {
                    **base,
                    "choices": [
                        {
                            "index": index,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": choice.get("finish_reason"),
                        }
                    ],
                }
            )
        )
    if include_usage and completion.get("usage") is not None:
        events.append(encode_chunk({**base, "choices": [], "usage": completion["usage"]}))
    events.append(DONE)
    return events


def _choice_deltas(choice: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    message = dict(choice.get("message") or {})
    role = message.pop("role", "assistant")
    content = message.pop("content", None)
    tool_calls = message.pop("tool_calls", None)
    logprobs = choice.get("logprobs")
    deltas: list[tuple[dict[str, Any], Any]] = [({"role": role, "content": ""}, None)]
    extras = {k: v for k, v in message.items() if v is not None}
    if extras:
        deltas.append((extras, None))
    if content:
        pieces = [content] if logprobs else _split_text(content)
        deltas += [({"content": piece}, logprobs) for piece in pieces[:1]]
        deltas += [({"content": piece}, None) for piece in pieces[1:]]
    if tool_calls:
        deltas.append(
            ({"tool_calls": [{"index": i, **call} for i, call in enumerate(tool_calls)]}, None)
        )
    return deltas
