"""Pieces both inbound dialects share: SSE framing, ids, text splitting, chat shapes.

Both dialects end up as an OpenAI chat request (kallm's internal language) and
come back from chat answers, so the few chat shapes they build (a tool message,
an image part, a tool result that carries images) are built here once.
Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from kallm.errors import RequestError
from kallm.ids import random_hex

_PIECE_CHARS = 48  # replayed text per delta: several deltas, like a real stream, not one blob
_ID_SAFE = re.compile(r"[^A-Za-z0-9]")


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One named SSE event (``event: X`` + ``data: {...}``), as Anthropic and Responses send."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


def derived_id(prefix: str, *seed: Any) -> str:
    """A stable id from a seed (same answer -> same id), so a translated stream and the
    translated whole answer name their objects alike; ``prefix`` like ``msg_``."""
    digest = hashlib.sha256("\x1f".join(str(s) for s in seed).encode()).hexdigest()
    return prefix + digest[:32]


def fresh_id(prefix: str) -> str:
    """A new random id in the provider's style (prefix + 32 hex digits)."""
    return prefix + random_hex(32)


def refreshed(old: Any, default_prefix: str) -> str:
    """A new id that keeps the old one's prefix (``msg_``, ``fc_``, ``rs_``, ``toolu_``...)."""
    if isinstance(old, str) and "_" in old:
        return fresh_id(old.split("_", 1)[0] + "_")
    return fresh_id(default_prefix)


def pieces(text: str, size: int = _PIECE_CHARS) -> list[str]:
    """Split text into several pieces at spaces that join back exactly (for replayed deltas)."""
    out, start = [], 0
    while start < len(text):
        end = start + size
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        out.append(text[start:end])
        start = end
    return out


def int_field(body: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    """A positive integer field, or None when absent (and not required)."""
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(f"'{name}' is required", param=name)
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(f"'{name}' must be a positive integer", param=name)
    return value


def number_field(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RequestError(f"'{name}' must be a number", param=name)
    return value


def require_string(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(f"'{param}' is required and must be a string", param=param)
    return value


def image_part(url: str, detail: Any = None) -> dict[str, Any]:
    """A chat ``image_url`` content part (a data: URL or an http(s) URL)."""
    image: dict[str, Any] = {"url": url}
    if detail in ("low", "high", "auto"):
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def tool_message(call_id: str, texts: list[str], with_images: bool) -> dict[str, Any]:
    """A tool result as a chat ``tool`` message (text only).

    Chat ``tool`` messages carry text, but agents return screenshots and image
    files as tool results; the translators put such images in a user message
    right after the tool messages of that turn (the usual way to show a model
    an image a tool produced), and the tool message says so when it has no text.
    """
    text = "\n".join(t for t in texts if t)
    if not text and with_images:
        text = "(the tool returned the image(s) that follow)"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def json_text(value: Any) -> str:
    """JSON as tool-call arguments are written: compact separators kept readable (UTF-8)."""
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def safe_id_part(value: Any) -> str:
    """The alphanumerics of an id, for building another id from it."""
    return _ID_SAFE.sub("", str(value or ""))
