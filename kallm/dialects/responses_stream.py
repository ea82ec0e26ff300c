"""OpenAI Responses streams: translated from chat, assembled from native, replayed.

- ``ResponsesStreamFromChat``: chat chunks (from an Anthropic or Gemini provider,
  already in OpenAI's shape) in, Responses SSE events out, ``sequence_number``
  from 0. The last event, ``response.completed`` (or ``response.incomplete``
  when the token limit cut the answer, as OpenAI does), carries the whole
  response and is sent only once the chat stream is whole.
- ``ResponsesAssembler``: a native Responses stream in; its result is the
  response object of ``response.completed``; complete only then.
- ``replay_response_events``: a stored response out as the full event sequence,
  which the assembler turns back into an equal response.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

from kallm.dialects.common import pieces, refreshed, sse
from kallm.dialects.messages import reasoning_text
from kallm.dialects.responses import (
    call_id,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_id,
    response_object,
    status_of,
    usage_from_chat,
)
from kallm.errors import UpstreamError

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class _Sequencer:
    """Numbers events from 0, as OpenAI does, and frames them."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.next, **fields}
        self.next += 1
        return sse(kind, data)


# ---------------------------------------------------------------- chat -> Responses


class ResponsesStreamFromChat:
    """Chat chunks in, Responses SSE events (bytes) out; one instance per stream.

    ``request`` is the client's Responses request (its fields are echoed in the
    response objects). Items open as the answer goes (reasoning, message, function
    calls); an item closes when the next kind of content starts. Only choice 0 is read.
    """

    def __init__(self, request: Mapping[str, Any]) -> None:
        self.request = request
        self.started = False
        self.complete = False
        self.response: dict[str, Any] | None = None  # the final object, once sent
        self._event = _Sequencer()
        self._resp = ""
        self._completion_id = ""
        self._created: float = 0
        self._items: list[dict[str, Any]] = []  # final shapes, in output order
        self._open: str | None = None  # "reasoning", "text", "refusal", "tool:<chat index>"
        self._text = ""
        self._signature = ""
        self._tools: dict[int, int] = {}  # chat tool-call index -> output index
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    # -- feeding ----------------------------------------------------------------

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self._start(chunk) if not self.started else []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out + self._end(closing=False)

    def close(self) -> list[bytes]:
        """The chat stream ended ([DONE]): finish the response if the answer was whole."""
        return self._end(closing=True)

    def fail(self, message: str, code: str = "server_error") -> list[bytes]:
        """``response.failed`` for an error after the stream began (never after the end)."""
        if self.complete or not self.started:
            return []
        out = self._close_item("incomplete")
        self.response = self._response("failed", None, {"code": code, "message": message})
        self.complete = False
        return [*out, self._event("response.failed", response=self.response)]

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        self.started = True
        self._completion_id = str(chunk.get("id") or "")
        self._resp = response_id(self._completion_id)
        created = chunk.get("created")
        self._created = created if isinstance(created, int | float) else int(time.time())
        head = self._response("in_progress", None)
        return [
            self._event("response.created", response=head),
            self._event("response.in_progress", response=head),
        ]

    def _response(
        self, status: str, details: dict[str, Any] | None, error: dict | None = None
    ) -> dict[str, Any]:
        usage = usage_from_chat(self._usage) if status != "in_progress" else None
        output = copy.deepcopy(self._items) if status != "in_progress" else []
        return response_object(
            self.request, self._resp, self._created, status, output, usage, details, error
        )

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        delta = choice.get("delta") or {}
        out: list[bytes] = []
        if reasoning := reasoning_text(delta):
            out += self._open_reasoning()
            out += self._text_delta("response.reasoning_summary_text.delta", reasoning)
        if isinstance(delta.get("reasoning_signature"), str):
            self._signature += delta["reasoning_signature"]
        for kind, name in (("text", "content"), ("refusal", "refusal")):
            text = delta.get(name)
            if isinstance(text, str) and text:
                out += self._open_message(kind)
                event = "response.output_text.delta" if kind == "text" else "response.refusal.delta"
                out += self._text_delta(event, text)
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    # -- items ------------------------------------------------------------------

    @property
    def _index(self) -> int:
        return len(self._items) - 1

    @property
    def _item_id(self) -> str:
        return self._items[-1]["id"]

    def _add(self, kind: str, item: dict[str, Any]) -> list[bytes]:
        out = self._close_item("completed")
        self._items.append(item)
        self._open, self._text = kind, ""
        return [
            *out,
            self._event("response.output_item.added", output_index=self._index, item=item),
        ]

    def _open_reasoning(self) -> list[bytes]:
        if self._open == "reasoning":
            return []
        item = reasoning_item(item_id("rs_", self._resp, len(self._items)), "", None)
        out = self._add("reasoning", item)
        part = {"type": "summary_text", "text": ""}
        return [*out, self._event("response.reasoning_summary_part.added", **self._at(), part=part)]

    def _open_message(self, kind: str) -> list[bytes]:
        if self._open == kind:
            return []
        item = message_item(item_id("msg_", self._resp, len(self._items)), kind, "", "in_progress")
        part = item["content"][0]
        item = {**item, "content": []}
        out = self._add(kind, item)
        return [*out, self._event("response.content_part.added", **self._at(), part=part)]

    def _at(self) -> dict[str, Any]:
        """Where the open item's events point: item_id, output_index and its part index."""
        where: dict[str, Any] = {"item_id": self._item_id, "output_index": self._index}
        if self._open == "reasoning":
            where["summary_index"] = 0
        elif self._open in ("text", "refusal"):
            where["content_index"] = 0
        return where

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        self._text += text
        extra = {"logprobs": []} if kind == "response.output_text.delta" else {}
        return [self._event(kind, **self._at(), delta=text, **extra)]

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        """Calls stream one after another (every provider sends them so); a delta for a
        call already closed cannot be expressed in a Responses stream."""
        position = call.get("index", 0)
        function = call.get("function") or {}
        out: list[bytes] = []
        if position not in self._tools:
            item = function_call_item(
                item_id("fc_", self._resp, len(self._items)),
                call.get("id") or call_id(self._completion_id, len(self._tools)),
                function.get("name") or "",
                "",
                "in_progress",
            )
            out += self._add(f"tool:{position}", item)
            self._tools[position] = self._index
        elif self._open != f"tool:{position}":
            raise UpstreamError("provider interleaved the arguments of parallel tool calls")
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._text += arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._item_id,
                    output_index=self._index,
                    delta=arguments,
                )
            )
        return out

    def _close_item(self, status: str) -> list[bytes]:
        """The done events of the open item; its final shape replaces the placeholder."""
        kind, text = self._open, self._text
        if kind is None:
            return []
        self._open = None
        where = {"item_id": self._item_id, "output_index": self._index}
        if kind == "reasoning":
            item = reasoning_item(self._item_id, text, self._signature or None)
            part = {"type": "summary_text", "text": text}
            out = [
                self._event(
                    "response.reasoning_summary_text.done", **where, summary_index=0, text=text
                ),
                self._event(
                    "response.reasoning_summary_part.done", **where, summary_index=0, part=part
                ),
            ]
            self._signature = ""
        elif kind in ("text", "refusal"):
            item = message_item(self._item_id, kind, text, status)
            part = item["content"][0]
            done = (
                self._event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
                if kind == "text"
                else self._event("response.refusal.done", **where, content_index=0, refusal=text)
            )
            out = [
                done,
                self._event("response.content_part.done", **where, content_index=0, part=part),
            ]
        else:
            item = {**self._items[-1], "arguments": text, "status": "completed"}
            out = [
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=text,
                )
            ]
        self._items[-1] = item
        return [*out, self._event("response.output_item.done", output_index=self._index, item=item)]

    def _end(self, closing: bool) -> list[bytes]:
        """Close the open item, then the terminal event with the whole response."""
        if self.complete or self._finish is None or (self._usage is None and not closing):
            return []
        self.complete = True
        status, details = status_of(self._finish)
        out = self._close_item(status)
        self.response = self._response(status, details)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=self.response)]


# ---------------------------------------------------------------- native assembly


class ResponsesAssembler:
    """Keeps the response a native Responses stream ends with.

    ``complete`` only after ``response.completed``; ``response.incomplete``,
    ``response.failed`` and ``error`` leave it False (``status`` says which).
    Items seen in ``output_item.done`` fill in a terminal response whose output is empty.
    """

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None
        self.status: str | None = None  # the terminal event type seen, or "error"
        self.complete = False
        self.error: dict[str, Any] | None = None
        self._items: dict[int, dict[str, Any]] = {}

    def feed(self, event: str | None, data: dict[str, Any]) -> None:
        kind = data.get("type") or event
        if kind in ("response.created", "response.in_progress", *TERMINAL):
            self.response = copy.deepcopy(data.get("response") or {})
        if kind == "response.output_item.done":
            self._items[data.get("output_index", len(self._items))] = copy.deepcopy(
                data.get("item") or {}
            )
        elif kind in TERMINAL:
            self.status = kind
            self.complete = kind == "response.completed" and self.error is None
            if self.response is not None and not self.response.get("output") and self._items:
                self.response["output"] = [self._items[i] for i in sorted(self._items)]
        elif kind == "error":
            self.status, self.complete = "error", False
            self.error = {k: v for k, v in data.items() if k not in ("type", "sequence_number")}

    @property
    def ended(self) -> bool:
        """A terminal event or an error came: the stream said how it ends."""
        return self.status is not None


# ---------------------------------------------------------------- replay


def fresh_response(response: dict[str, Any]) -> dict[str, Any]:
    """A copy with new ids for the response and its items and ``created_at`` now (function
    call_ids stay: the client's outputs name them)."""
    response = copy.deepcopy(response)
    response["id"] = refreshed(response.get("id"), "resp_")
    response["created_at"] = int(time.time())
    for item in response.get("output") or []:
        if isinstance(item, dict) and "id" in item:
            item["id"] = refreshed(item["id"], "item_")
    return response


def replay_response_events(response: dict[str, Any], fresh_ids: bool = False) -> list[bytes]:
    """The event sequence that streams ``response``: created, in_progress, per item added /
    deltas / done, then the terminal event carrying the object.

    ``fresh_ids`` gives the response and its items new ids and ``created_at`` now
    (function call_ids stay: the client's outputs name them). Text is split into
    several deltas; annotations arrive with the finished part, not as their own events.
    """
    response = fresh_response(response) if fresh_ids else copy.deepcopy(response)
    event = _Sequencer()
    head = {
        **response,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "incomplete_details": None,
        "error": None,
    }
    events = [
        event("response.created", response=head),
        event("response.in_progress", response=head),
    ]
    for index, item in enumerate(response.get("output") or []):
        events += _replay_item(event, index, item)
    status = response.get("status")
    terminal = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(
        str(status), "response.completed"
    )
    events.append(event(terminal, response=response))
    return events


def _replay_item(event: _Sequencer, index: int, item: dict[str, Any]) -> list[bytes]:
    """added (the item as it starts), the deltas that fill it, done (the item whole)."""
    where = {"item_id": item.get("id", ""), "output_index": index}
    added = event("response.output_item.added", output_index=index, item=_item_start(item))
    body = _item_body(event, where, item)
    return [added, *body, event("response.output_item.done", output_index=index, item=item)]


def _item_start(item: dict[str, Any]) -> dict[str, Any]:
    kind = item.get("type")
    if kind == "message":
        return {**item, "status": "in_progress", "content": []}
    if kind == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    if kind == "reasoning":
        return {k: v for k, v in item.items() if k != "content"} | {"summary": []}
    return item  # hosted tool calls and items added later: whole, as added and done


def _item_body(event: _Sequencer, where: dict[str, Any], item: dict[str, Any]) -> list[bytes]:
    kind = item.get("type")
    if kind == "message":
        return [
            e
            for j, part in enumerate(item.get("content") or [])
            for e in _part(event, where, j, part)
        ]
    if kind == "function_call":
        arguments = item.get("arguments") or ""
        out = [
            event("response.function_call_arguments.delta", **where, delta=p)
            for p in pieces(arguments)
        ]
        done = {"name": item.get("name"), "arguments": arguments}
        return [*out, event("response.function_call_arguments.done", **where, **done)]
    if kind == "reasoning":
        return _reasoning(event, where, item)
    return []


def _part(event: _Sequencer, where: dict[str, Any], j: int, part: dict[str, Any]) -> list[bytes]:
    at = {**where, "content_index": j}
    refusal = part.get("type") == "refusal"
    start = {**part, "refusal": ""} if refusal else {**part, "text": "", "annotations": []}
    out = [event("response.content_part.added", **at, part=start)]
    if refusal:
        text = part.get("refusal") or ""
        out += [event("response.refusal.delta", **at, delta=p) for p in pieces(text)]
        out.append(event("response.refusal.done", **at, refusal=text))
    else:
        text = part.get("text") or ""
        out += [
            event("response.output_text.delta", **at, delta=p, logprobs=[]) for p in pieces(text)
        ]
        out.append(event("response.output_text.done", **at, text=text, logprobs=[]))
    return [*out, event("response.content_part.done", **at, part=part)]


def _reasoning(event: _Sequencer, where: dict[str, Any], item: dict[str, Any]) -> list[bytes]:
    out = []
    for j, summary in enumerate(item.get("summary") or []):
        at = {**where, "summary_index": j}
        text = summary.get("text") or ""
        out.append(
            event(
                "response.reasoning_summary_part.added",
                **at,
                part={"type": "summary_text", "text": ""},
            )
        )
        out += [event("response.reasoning_summary_text.delta", **at, delta=p) for p in pieces(text)]
        out.append(event("response.reasoning_summary_text.done", **at, text=text))
        out.append(event("response.reasoning_summary_part.done", **at, part=summary))
    for j, content in enumerate(item.get("content") or []):
        at = {**where, "content_index": j}
        text = content.get("text") or ""
        out += [event("response.reasoning_text.delta", **at, delta=p) for p in pieces(text)]
        out.append(event("response.reasoning_text.done", **at, text=text))
    return out
