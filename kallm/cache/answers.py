"""How a chat answer is kept in the cache, so that serving it costs almost nothing.

A hit must go out with a fresh ``id`` and ``created``: parsing the stored completion and
encoding it again cost more than everything else a hit does. So a completion is stored
without those two fields and with ``usage`` last; a hit is the stored bytes with the new
``id`` and ``created`` put in front, and its usage read from the end. Entries stored
before this layout (they start with ``{"id"``) are served the long way.
"""

from __future__ import annotations

import json
from typing import Any

_FRESH_FIELDS = ("id", "created")
_USAGE = b'"usage":'
_DECODER = json.JSONDecoder()  # one for every hit: making one cost as much as the decoding


def stored_answer(completion: dict[str, Any]) -> bytes:
    """The bytes to keep for ``completion``: no id or created, usage last, compact."""
    kept = {k: v for k, v in completion.items() if k not in _FRESH_FIELDS and k != "usage"}
    if "usage" in completion:
        kept["usage"] = completion["usage"]
    return json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()


def served_answer(stored: bytes, answer_id: str, created: int) -> bytes:
    """The stored answer as a new response: a fresh id and creation time in front."""
    if stored.startswith(b'{"id"') or not stored.startswith(b"{") or stored == b"{}":
        completion = json.loads(stored)  # an entry kept whole (an older layout)
        completion.update(id=answer_id, created=created)
        return json.dumps(completion, separators=(",", ":"), ensure_ascii=False).encode()
    head = b'{"id":' + json.dumps(answer_id).encode() + b',"created":' + str(created).encode()
    return head + b"," + stored[1:]


def stored_usage(stored: bytes) -> Any:
    """The answer's usage object, read from its end (where ``stored_answer`` put it)."""
    at = stored.rfind(_USAGE)
    if at == -1:
        return None
    try:
        tail = stored[at + len(_USAGE) :].decode().lstrip()
        usage, _ = _DECODER.raw_decode(tail)
    except (ValueError, UnicodeDecodeError):
        return None
    return usage
