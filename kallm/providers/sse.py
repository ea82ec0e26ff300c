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


MAX_CHOICES = 128  # OpenAI allows n <= 128
MAX_TOOL_CALLS = 128  # per choice; an index of 1,000,000 is an upstream lying, not a call


class StreamAssembler:
    """Builds the chat.completion a stream amounts to, chunk by chunk.

    Bounded whatever the upstream sends: indices past ``MAX_CHOICES``/``MAX_TOOL_CALLS`` and
    chunks that are not chunk-shaped raise ``ValueError`` (the stream is cut with an error
    event and nothing is stored); past ``max_chars`` of assembled text the assembler stops
    keeping it (``overflow``: relayed to the client, never cached) but keeps counting what
    was relayed, which is what an abandoned stream is billed from when no usage came.
    """

    def __init__(self, max_chars: int = 64 * 1024 * 1024) -> None:
        self.top: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.max_chars = max_chars
        self.relayed_chars = 0  # text, reasoning and tool arguments seen, kept or not
        self.overflow = False

    def feed(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise ValueError("a stream event that is not a JSON object")
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(name) is not None:
                self.top.setdefault(name, chunk[name])
        if chunk.get("usage"):
            if not isinstance(chunk["usage"], dict):
                raise ValueError("usage that is not an object")
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError("choices that are not an array")
        for choice in choices:
            if not isinstance(choice, dict):
                raise ValueError("a choice that is not an object")
            self._feed_choice(choice)

    def _feed_choice(self, choice: dict[str, Any]) -> None:
        index = _index(choice.get("index", 0), MAX_CHOICES, "choice")
        state = self.choices.setdefault(
            index, {"message": {"role": "assistant"}, "finish_reason": None}
        )
        message = state["message"]
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise ValueError("a delta that is not an object")
        for name, value in delta.items():
            if value is None:
                continue
            if name == "tool_calls":
                self._count(_tool_call_chars(value))
                if not self.overflow:
                    _merge_tool_calls(message.setdefault("tool_calls", []), value)
            elif name == "role":
                message["role"] = value
            elif isinstance(value, str):
                self._count(len(value))
                if not self.overflow:
                    message[name] = message.get(name, "") + value
            elif not self.overflow:
                message[name] = value
        if choice.get("logprobs") and not self.overflow:
            logprobs = state.setdefault("logprobs", {})
            if isinstance(choice["logprobs"], dict):
                for name, items in choice["logprobs"].items():
                    if isinstance(items, list):
                        logprobs.setdefault(name, []).extend(items)
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    def _count(self, chars: int) -> None:
        self.relayed_chars += chars
        if self.relayed_chars > self.max_chars and not self.overflow:
            self.overflow = True
            self.choices.clear()  # let the big answer go: it will not be stored

    @property
    def complete(self) -> bool:
        return (
            not self.overflow
            and bool(self.choices)
            and all(c["finish_reason"] for c in self.choices.values())
        )

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


def _index(value: Any, limit: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"a {what} index that is not a whole number from 0 to {limit - 1}")
    return value


def _tool_call_chars(deltas: Any) -> int:
    if not isinstance(deltas, list):
        raise ValueError("tool_calls that are not an array")
    total = 0
    for delta in deltas:
        function = delta.get("function") if isinstance(delta, dict) else None
        if isinstance(function, dict):
            total += sum(len(v) for v in function.values() if isinstance(v, str))
    return total


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        if not isinstance(delta, dict):
            raise ValueError("a tool call delta that is not an object")
        index = _index(delta.get("index", len(calls)), MAX_TOOL_CALLS, "tool call")
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        for name in ("name", "arguments"):
            if isinstance(function, dict) and isinstance(function.get(name), str):
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
