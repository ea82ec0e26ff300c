"""Which requests may share an answer.

A chat request splits into a *scope* and a *compared text*. The scope is a hash
of everything that can change the answer apart from the last user message: the
model, the whole conversation before it (system prompt, earlier turns), tools,
response format, sampling parameters and the tenant. Only requests with equal
scopes are ever compared, and within a scope only the last user message is
compared by meaning. Parameters are in the scope unless they are known not to
change the answer, so a new OpenAI parameter is safe by default.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# Request fields that change how an answer is delivered or billed, never what it says.
DELIVERY_ONLY_FIELDS = frozenset(
    {
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)


# The tenant of callers relying on the server's own upstream key (auth off): see
# kallm.server.admission for who shares answers with whom.
SERVER_TENANT = ("credential", "server")


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a request lives in the cache.

    ``text`` is None when the conversation does not end with a plain user text
    (a tool result, an image): such requests are matched exactly or not at all.
    """

    scope: str
    exact: str
    text: str | None


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _user_text(message: dict[str, Any]) -> str | None:
    """The message's text if it is a user turn made only of text, else None."""
    if message.get("role") != "user":
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    return None


NORMALISED_UP_TO = 64_000  # characters: past this, only the ends' whitespace is trimmed


def normalise_text(text: str) -> str:
    """Collapse whitespace so that an exact repeat survives a trailing newline. A very long
    text is only stripped: splitting 10 MB into words held the event loop for 150 ms."""
    if len(text) > NORMALISED_UP_TO:
        return text.strip()
    return " ".join(text.split())


def cache_key(request: dict[str, Any], tenant: tuple[str, ...] = ()) -> CacheKey:
    """Split a validated chat request into its scope and compared text.

    ``tenant`` lists who may share the answer (a key's namespace, an upstream credential's
    digest, a client's sub-namespace); it is hashed as a list, so no choice of names can
    make two tenants collide (``team-a|`` and ``team-a`` + ``|`` are different lists).
    """
    namespace = list(tenant)
    messages: list[Any] = request["messages"]
    params = {k: v for k, v in request.items() if k not in DELIVERY_ONLY_FIELDS}
    last_text = _user_text(messages[-1]) if messages else None
    last = messages[-1] if messages else None
    extras = {k: v for k, v in last.items() if k not in ("role", "content")} if last else {}
    if last_text is None or extras:
        scope = _digest({"ns": namespace, "params": params, "messages": messages})
        return CacheKey(scope=scope, exact=scope, text=None)
    text = normalise_text(last_text)
    scope = _digest({"ns": namespace, "params": params, "history": messages[:-1]})
    exact = hashlib.blake2b(f"{scope}\x00{text}".encode(), digest_size=16).hexdigest()
    return CacheKey(scope=scope, exact=exact, text=text)


class RecentKeys:
    """The cache keys of recently seen request bodies, so an exact repeat (the usual cache
    hit) skips re-encoding and hashing its whole request: that was ~9% of a hit's CPU.

    A key is a function of the body, the route that reads it and the tenant, and all
    three are the memo's key; bodies larger than ``max_body`` bytes are not remembered
    (their keys may be computed off the event loop, and the memo holds the bodies and
    the compared texts: at most ``size * max_body`` bytes of each). Least recently used
    bodies go first, so hot prompts stay while a stream of new ones passes through.
    """

    def __init__(self, size: int = 512, max_body: int = 8 * 1024) -> None:
        self.size, self.max_body = size, max_body
        self._keys: OrderedDict[tuple[str, tuple[str, ...], bytes], CacheKey] = OrderedDict()

    def get(
        self, request: dict[str, Any], tenant: tuple[str, ...], body: bytes, route: str
    ) -> CacheKey:
        """``cache_key(request, tenant)`` for ``request``, the route's reading of ``body``."""
        if len(body) > self.max_body:
            return cache_key(request, tenant)
        memo = (route, tenant, body)
        key = self._keys.get(memo)
        if key is not None:
            self._keys.move_to_end(memo)
            return key
        key = self._keys[memo] = cache_key(request, tenant)
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return key
