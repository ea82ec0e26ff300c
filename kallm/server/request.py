"""What a request means to kallm: its JSON body, checked; its credentials; its cache controls.

Validation is strict only where kallm reads the request (model, messages, roles,
numbers it computes with, stream options); everything else is the upstream's to
judge, so new OpenAI parameters pass through untouched. Whatever the bytes, the
answer is a 400 naming the problem, never a 500: bodies are strict UTF-8, numbers
finite, nesting bounded, strings free of lone surrogates, headers printable.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kallm.cache.scope import CacheKey, RecentKeys, cache_key
from kallm.errors import RequestError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_DEPTH = 64  # JSON nesting: real requests stay under 20; Python's own limit is ~1000
MAX_MODEL_NAME = 256
MAX_HEADER_VALUE = 256  # for the X-Kallm-* values kallm reads
_LIMITS = {
    "max_tokens": 10_000_000,
    "max_completion_tokens": 10_000_000,
    "n": 128,
    "best_of": 128,
}
_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9@][A-Za-z0-9._:@+=-]*")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


# ---------------------------------------------------------------- JSON bodies


LARGE_BODY = 256 * 1024


def parse_json(body: bytes, what: str = "request body") -> Any:
    """A JSON document from untrusted bytes, or a 400 saying what is wrong with it."""
    value = _loads(_decoded(body, what), what)
    _checked_structure(body, value, what)
    return value


async def parse_json_yielding(body: bytes, what: str = "request body") -> Any:
    """``parse_json`` for a large body, letting other requests run between its steps."""
    text = _decoded(body, what)
    await breathe(body)
    value = _loads(text, what)
    await breathe(body)
    _checked_structure(body, value, what)
    return value


async def breathe(body: bytes) -> None:
    """Between the CPU-heavy steps of a large request, let other requests run: each step
    on a 10 MB body takes ~5-25 ms of the event loop, back to back they took 100+ ms. A
    short sleep, not a bare yield: another request needs several loop turns to finish."""
    if len(body) > LARGE_BODY:
        await asyncio.sleep(0.002)


_RECENT_KEYS = RecentKeys(max_body=8 * 1024)  # < LARGE_BODY: only keys made on the loop


async def cache_key_of(
    view: dict[str, Any], tenant: tuple[str, ...], body: bytes, route: str
) -> CacheKey:
    """The key of ``view``, the ``route``'s reading of ``body``; for a large body computed in
    a worker thread, where hashing megabytes of text leaves the event loop free (hashlib
    releases the GIL), for a small one remembered (an exact repeat is the usual hit)."""
    if len(body) > LARGE_BODY:
        return await asyncio.to_thread(cache_key, view, tenant)
    return _RECENT_KEYS.get(view, tenant, body, route)


def _decoded(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{what} is not UTF-8 text") from None


def _loads(text: str, what: str) -> Any:
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise RequestError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise RequestError(f"{what} is not valid JSON: {exc}") from None


def _checked_structure(body: bytes, value: Any, what: str) -> None:
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(body):
        _check_structure(value, what)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique: ``{"model": "a", ..., "model": "b"}`` means one
    model to this parser (the last) and another to a parser that keeps the first, and the
    body may be forwarded as sent. (~4 us a request; re-encoding cost twice that.)"""
    value = dict(pairs)
    if len(value) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicate = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise ValueError(f"the key {duplicate[:40]!r} appears twice in one object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


# one decoder for every body (json.loads with options builds one per call)
_DECODER = json.JSONDecoder(
    parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


def _check_structure(value: Any, what: str) -> None:
    """Depth within ``MAX_DEPTH`` and no lone surrogate in any string (iteratively: a
    recursive walk is what a deep document is built to break)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _LONE_SURROGATE.search(node):
                raise RequestError(f"{what} has a string with an unpaired surrogate (\\ud800)")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise RequestError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def json_object(body: bytes, what: str = "request body") -> dict[str, Any]:
    payload = parse_json(body, what)
    if not isinstance(payload, dict):
        raise RequestError(f"{what} must be a JSON object")
    return payload


# ---------------------------------------------------------------- fields kallm reads


def check_model(value: Any, param: str = "model") -> str:
    """A model name that can only ever name a model: no path characters, no dot segments.

    ``provider/model`` and names with slashes (``meta-llama/Llama-3.1-8B``) pass; every
    ``/``-separated part must start with a letter, digit or ``@`` and hold only letters,
    digits and ``. _ : @ + = -``. ``gemini-2.5-flash/../gemini-2.5-pro`` does not.
    """
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"'{param}' is required and must be a non-empty string", param=param)
    if len(value) > MAX_MODEL_NAME or not all(
        _MODEL_SEGMENT.fullmatch(part) for part in value.split("/")
    ):
        raise RequestError(
            f"'{param}' is not a model name: use letters, digits and . _ : @ + = - "
            "(and / between a provider and its model)",
            param=param,
        )
    return value


def check_limits(payload: Mapping[str, Any]) -> None:
    """The numbers kallm computes with (reservations, replays) are whole and in range."""
    for name, high in _LIMITS.items():
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise RequestError(f"'{name}' must be a whole number from 1 to {high:,}", param=name)
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    if "stream" in payload and not isinstance(payload["stream"], bool | None):
        raise RequestError("'stream' must be true or false", param="stream")


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """The chat request as a dict, or a 400 naming the first field that is wrong."""
    return check_chat_request(json_object(body))


def check_chat_request(payload: dict[str, Any]) -> dict[str, Any]:
    """A parsed chat request's fields kallm reads, checked (a 400 naming the first)."""
    check_model(payload.get("model"))
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' is required and must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        _check_message(message, i)
    check_limits(payload)
    return payload


def _check_message(message: Any, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise RequestError(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role"
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise RequestError(
            f"{where}.content must be a string or an array of parts", param=f"{where}.content"
        )
    if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
        raise RequestError(f"{where}.content parts must be objects", param=f"{where}.content")


# ---------------------------------------------------------------- headers


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>``, or "" when there is none."""
    supplied = headers.get("Authorization", "")
    return supplied[7:].strip() if supplied[:7].lower() == "bearer " else ""


def header_text(headers: Mapping[str, str], name: str) -> str | None:
    """A header kallm reads, as printable text, or a 400 naming it."""
    raw = headers.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if len(value) > MAX_HEADER_VALUE or not value.isprintable() or _LONE_SURROGATE.search(value):
        raise RequestError(
            f"{name} must be printable UTF-8 text of at most {MAX_HEADER_VALUE} characters",
            param=name,
        )
    return value


@dataclass(frozen=True, slots=True)
class CacheControls:
    """Per-request cache behaviour from headers."""

    lookup: bool = True  # Cache-Control: no-cache turns this off (still stores)
    store: bool = True  # Cache-Control: no-store turns this off
    threshold: float | None = None  # X-Kallm-Threshold
    namespace: str = ""  # X-Kallm-Namespace
    guard: bool = True  # X-Kallm-Guard: off

    @classmethod
    def from_headers(cls, headers: Any) -> CacheControls:
        if not any(name in headers for name in _CONTROL_HEADERS):
            return _DEFAULT_CONTROLS  # the usual request sets none of them
        directives = {
            part.strip().lower()
            for value in headers.getall("Cache-Control", [])
            for part in value.split(",")
        }
        return cls(
            lookup="no-cache" not in directives,
            store="no-store" not in directives,
            threshold=_threshold(header_text(headers, "X-Kallm-Threshold")),
            namespace=header_text(headers, "X-Kallm-Namespace") or "",
            guard=_switch(header_text(headers, "X-Kallm-Guard"), "X-Kallm-Guard"),
        )


_CONTROL_HEADERS = ("Cache-Control", "X-Kallm-Threshold", "X-Kallm-Namespace", "X-Kallm-Guard")
_DEFAULT_CONTROLS = CacheControls()


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
