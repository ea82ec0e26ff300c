"""What a chat request means to kallm: validation, auth, and the per-request cache controls.

Validation is strict only where kallm depends on the shape (model, messages,
roles, stream); everything else is the upstream's to judge, so new OpenAI
parameters pass through untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDictProxy

from kallm.errors import RequestError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def bearer_token(headers: CIMultiDictProxy[str]) -> str:
    """The token of ``Authorization: Bearer <token>``, or "" when there is none."""
    supplied = headers.get("Authorization", "")
    return supplied[7:].strip() if supplied[:7].lower() == "bearer " else ""


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """The request as a dict, or a 400 naming the first field that is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError("request body must be a JSON object with 'model' and 'messages'")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("'model' is required and must be a non-empty string", param="model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' is required and must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise RequestError(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
                param=f"messages[{i}].role",
            )
    if "stream" in payload and not isinstance(payload["stream"], bool | None):
        raise RequestError("'stream' must be true or false", param="stream")
    return payload


@dataclass(frozen=True, slots=True)
class CacheControls:
    """Per-request cache behaviour from headers."""

    lookup: bool = True  # Cache-Control: no-cache turns this off (still stores)
    store: bool = True  # Cache-Control: no-store turns this off
    threshold: float | None = None  # X-Kallm-Threshold
    namespace: str = ""  # X-Kallm-Namespace
    guard: bool = True  # X-Kallm-Guard: off

    @classmethod
    def from_headers(cls, headers: CIMultiDictProxy[str]) -> CacheControls:
        directives = {
            part.strip().lower()
            for value in headers.getall("Cache-Control", [])
            for part in value.split(",")
        }
        return cls(
            lookup="no-cache" not in directives,
            store="no-store" not in directives,
            threshold=_threshold(headers.get("X-Kallm-Threshold")),
            namespace=headers.get("X-Kallm-Namespace", "").strip(),
            guard=_switch(headers.get("X-Kallm-Guard"), "X-Kallm-Guard"),
        )


def _threshold(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise RequestError(
            f"X-Kallm-Threshold must be a number from 0.0 to 1.0, got {raw!r}",
            param="X-Kallm-Threshold",
        )
    return value


def _switch(raw: str | None, name: str) -> bool:
    if raw is None:
        return True
    value = raw.strip().lower()
    if value in {"on", "true", "1"}:
        return True
    if value in {"off", "false", "0"}:
        return False
    raise RequestError(f"{name} must be on or off, got {raw!r}", param=name)
