"""Anthropic Messages streams: translated from chat, assembled from native, replayed.

Three small state machines, no I/O:

- ``MessagesStreamFromChat``: OpenAI chat chunks (from a non-Anthropic provider)
  in, Anthropic SSE events out, ending with ``message_delta`` + ``message_stop``
  only once the chat stream is whole (a finish_reason, then its usage chunk or
  the end of the stream).
- ``MessagesAssembler``: a native Anthropic stream in, the ``message`` it amounts
  to out (for the cache), complete only after ``message_stop``.
- ``replay_message_events``: a stored ``message`` out as the event sequence a
  real stream gives, so the assembler fed the replay returns an equal message.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kallm.dialects.common import json_text, pieces, refreshed, sse
from kallm.dialects.messages import (
    message_id,
    reasoning_text,
    stop_reason,
    tool_input,
    tool_use_id,
    usage_from_chat,
)
from kallm.errors import UpstreamError

PING = sse("ping", {"type": "ping"})


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def error_event(error_body: dict[str, Any]) -> bytes:
    """An ``error`` event (mid-stream failure) from an ``anthropic_error`` body."""
    return sse("error", {"type": "error", "error": error_body.get("error", error_body)})


# ---------------------------------------------------------------- chat -> Messages


class MessagesStreamFromChat:
    """Chat chunks in, Anthropic SSE events (bytes) out; one instance per stream.

    ``input_tokens`` is what ``message_start`` reports before the provider's
    usage arrives (an estimate, say); ``message_delta`` then carries the real
    usage, which Anthropic's SDKs merge over it. Only choice 0 is translated.
    """

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.completion_id = ""
        self.started = False
        self.complete = False
        self._index = -1  # the open block's index, -1 when none is open
        self._open_kind: str | None = None  # "text", "thinking" or "tool:<chat index>"
        self._tools: dict[int, int] = {}  # chat tool-call index -> block index
        self._signature = ""
        self._refused = False
        self._text_seen = False
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self._start(chunk) if not self.started else []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out + self._end(closing=False)

    def close(self) -> list[bytes]:
        """The chat stream ended ([DONE]): finish the message if the answer was whole."""
        return self._end(closing=True)

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        self.started = True
        self.completion_id = str(chunk.get("id") or "")
        message = {
            "id": message_id(self.completion_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return [sse("message_start", {"type": "message_start", "message": message})]

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        delta = choice.get("delta") or {}
        out: list[bytes] = []
        if reasoning := reasoning_text(delta):
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(_block_delta(self._index, {"type": "thinking_delta", "thinking": reasoning}))
        if isinstance(delta.get("reasoning_signature"), str):
            self._signature += delta["reasoning_signature"]
        for name in ("content", "refusal"):  # a refusal is text too, with its own stop_reason
            text = delta.get(name)
            if isinstance(text, str) and text:
                self._refused = name == "refusal" and not self._text_seen
                self._text_seen = self._text_seen or name == "content"
                out += self._open("text", {"type": "text", "text": ""})
                out.append(_block_delta(self._index, {"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        if self._open_kind == kind:
            return []
        out = self._close_block()
        self._index += 1
        self._open_kind = kind
        return [*out, _block_start(self._index, block)]

    def _close_block(self) -> list[bytes]:
        if self._open_kind is None:
            return []
        out = []
        if self._open_kind == "thinking" and self._signature:
            delta = {"type": "signature_delta", "signature": self._signature}
            out.append(_block_delta(self._index, delta))
            self._signature = ""
        self._open_kind = None
        return [*out, _block_stop(self._index)]

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        """Tool calls stream one after another, as every provider sends them; a delta for a
        call whose block was already closed cannot be expressed in Anthropic's stream."""
        position = call.get("index", 0)
        kind = f"tool:{position}"
        function = call.get("function") or {}
        out: list[bytes] = []
        if position not in self._tools:
            block = {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(self.completion_id, len(self._tools)),
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open(kind, block)
            self._tools[position] = self._index
        elif self._open_kind != kind:
            raise UpstreamError("provider interleaved the arguments of parallel tool calls")
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_block_delta(self._index, delta))
        return out

    def _end(self, closing: bool) -> list[bytes]:
        """message_delta + message_stop once finished and usage came (or the stream ended)."""
        if self.complete or self._finish is None or (self._usage is None and not closing):
            return []
        self.complete = True
        usage = usage_from_chat(self._usage)
        if self._usage is None:
            usage["input_tokens"] = self.input_tokens
        delta = {"stop_reason": stop_reason(self._finish, self._refused), "stop_sequence": None}
        return [
            *self._close_block(),
            sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            sse("message_stop", {"type": "message_stop"}),
        ]


# ---------------------------------------------------------------- native assembly


class MessagesAssembler:
    """Builds the ``message`` a native Anthropic stream amounts to, event by event.

    Text, thinking (with its signature), tool inputs (from the concatenated
    ``partial_json``), citations, and any other block exactly as it started
    (redacted thinking, server tool results); usage is message_start's with
    message_delta's counts over it. ``complete`` only after ``message_stop``.
    """

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self.complete = False
        self.error: dict[str, Any] | None = None

    def feed(self, event: str | None, data: dict[str, Any]) -> None:
        kind = data.get("type") or event
        if kind == "message_start":
            self._message = copy.deepcopy(data.get("message") or {})
            self._message.setdefault("usage", {})
            for i, block in enumerate(self._message.pop("content", None) or []):
                self._blocks[i] = block
        elif kind == "content_block_start":
            self._blocks[data.get("index", 0)] = copy.deepcopy(data.get("content_block") or {})
        elif kind == "content_block_delta":
            self._delta(data.get("index", 0), data.get("delta") or {})
        elif kind == "content_block_stop":
            self._finish_input(data.get("index", 0))
        elif kind == "message_delta" and self._message is not None:
            self._message.update(data.get("delta") or {})
            usage = {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            self._message["usage"].update(usage)
        elif kind == "message_stop" and self._message is not None:
            self.complete = self.error is None
        elif kind == "error":
            self.error = data.get("error") or {"type": "api_error", "message": "stream error"}

    @property
    def ended(self) -> bool:
        """``message_stop`` or an error came: the stream said how it ends."""
        return self.complete or self.error is not None

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = (block.get("signature") or "") + delta.get("signature", "")
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif kind == "citations_delta":
            block["citations"] = [*(block.get("citations") or []), delta.get("citation")]

    def _finish_input(self, index: int) -> None:
        raw = "".join(self._json.pop(index, []))
        if raw.strip():
            self._blocks[index]["input"] = tool_input(raw)

    @property
    def message(self) -> dict[str, Any]:
        """The message so far (whole once ``complete``); reading it changes nothing."""
        message = copy.deepcopy(self._message or {})
        content = []
        for index in sorted(self._blocks):
            block = copy.deepcopy(self._blocks[index])
            raw = "".join(self._json.get(index, []))
            if raw.strip():  # a tool block still streaming its input
                block["input"] = tool_input(raw)
            content.append(block)
        message["content"] = content
        return message


# ---------------------------------------------------------------- replay

# message_delta carries these top-level fields in a real stream (message_start has them null).
_DELTA_FIELDS = ("stop_reason", "stop_sequence", "stop_details", "container")
# message_delta's usage carries the counts; the rest (service_tier...) stays in message_start.
_DELTA_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "server_tool_use",
)


def replay_message_events(message: dict[str, Any], fresh_ids: bool = False) -> list[bytes]:
    """The SSE events that stream ``message`` as Anthropic would (text in several deltas,
    signatures as signature_delta, tool input as input_json_delta). ``fresh_ids`` gives the
    message a new id (tool_use ids stay: the client's tool_results name them)."""
    message = copy.deepcopy(message)
    if fresh_ids:
        message["id"] = refreshed(message.get("id"), "msg_")
    usage = message.get("usage") or {}
    delta = {name: message[name] for name in _DELTA_FIELDS if name in message}
    head = {**message, "content": [], **{name: None for name in delta}}
    head["usage"] = {**usage, "output_tokens": min(1, usage.get("output_tokens") or 0)}
    events = [sse("message_start", {"type": "message_start", "message": head})]
    for index, block in enumerate(message.get("content") or []):
        start, deltas = _replay_block(block)
        events.append(_block_start(index, start))
        if index == 0:
            events.append(PING)
        events += [_block_delta(index, d) for d in deltas]
        events.append(_block_stop(index))
    delta_usage = {name: usage[name] for name in _DELTA_USAGE if name in usage}
    delta_usage.setdefault("output_tokens", 0)
    events.append(
        sse("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage})
    )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def _replay_block(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(content_block_start's block, the deltas that complete it)."""
    kind = block.get("type")
    if kind == "text":
        start = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in pieces(block.get("text") or "")]
        citations = block.get("citations")
        if isinstance(citations, list) and citations:
            start["citations"] = []
            deltas += [{"type": "citations_delta", "citation": c} for c in citations]
        return start, deltas
    if kind == "thinking":
        start = {**block, "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": p} for p in pieces(block.get("thinking") or "")
        ]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return start, deltas
    if isinstance(kind, str) and kind.endswith("tool_use") and isinstance(block.get("input"), dict):
        raw = json_text(block["input"]) if block["input"] else ""
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(raw)]
        return {**block, "input": {}}, deltas
    return block, []


def parse_event_data(data: bytes) -> dict[str, Any]:
    """An SSE data payload as the dict the assembler takes (UpstreamError if not JSON)."""
    try:
        value = json.loads(data)
    except ValueError:
        raise UpstreamError(f"provider sent an event that is not JSON: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise UpstreamError("provider sent an event that is not a JSON object")
    return value
