"""Which API route a request is, decided once from its path, before anything else runs.

A limit that one spelling of a path forgets is no limit: ``/v1/chat/completions/``,
``/v1//chat/completions``, ``/v1/chat%2Fcompletions`` and ``/v1/x/../chat/completions``
must not reach the upstream's chat unchecked. So the raw path is split into segments and
refused (404) when it is not already in its one normal form: no empty segments (``//``, a
trailing ``/``), no dot segments, no encoded ``/ ? # \\`` or control characters, no ``;``
parameters. What remains is matched against a table of known routes; the path sent
upstream is built from the normalised segments, never from the client's bytes.

Routes come in groups. *Policed* routes name a model in their body: kallm checks the
model against a key's allow-list, prices the call and settles it (chat, completions,
embeddings, responses, messages). *Organisation* routes act on shared state or bill in
ways kallm cannot price (files, batches, fine-tuning, assistants, vector stores, audio,
images, ...): under virtual keys they are refused unless ``auth.open_routes`` opens them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, unquote

from kallm.errors import RouteNotFound

OPS_PATHS = frozenset({"/health", "/stats", "/metrics"})  # probes: no key, no request-log row
_FORBIDDEN_IN_SEGMENT = re.compile(r"[/?#\\;\x00-\x1f\x7f]")
_SEGMENT_SAFE = "-._~!$&'()*+,=:@"  # RFC 3986 pchar minus '%' and ';' (re-quoted segments)


class Group(Enum):
    POLICED = "policed"  # model in the body: allow-list, price, settle
    CATALOGUE = "catalogue"  # /v1/models: read-only, filtered by the key
    ORGANISATION = "organisation"  # shared state or unpriceable: closed under keys by default
    UNKNOWN = "unknown"  # a /v1 path kallm does not know: passed through only with auth off
    OPS = "ops"
    ADMIN = "admin"


class Dialect(Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True, slots=True)
class Route:
    """A known route: its name, group, error dialect and the path that labels its metrics
    (one per route, never a client's spelling or an id)."""

    name: str
    group: Group
    dialect: Dialect = Dialect.OPENAI
    label: str = "other"
    methods: frozenset[str] = frozenset()  # the methods that make it this route; empty: any


@dataclass(frozen=True, slots=True)
class RequestPath:
    """A request's path once normalised: the route it is and the path to send upstream."""

    route: Route
    segments: tuple[str, ...]  # decoded, after /v1

    @property
    def upstream_path(self) -> str:
        """``/chat/completions``: relative to a provider's ``/v1`` base URL, re-encoded."""
        return "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in self.segments)


_POST = frozenset({"POST"})
_GET = frozenset({"GET", "HEAD"})
CHAT = Route("chat", Group.POLICED, label="/v1/chat/completions", methods=_POST)
COMPLETIONS = Route("completions", Group.POLICED, label="/v1/completions", methods=_POST)
EMBEDDINGS = Route("embeddings", Group.POLICED, label="/v1/embeddings", methods=_POST)
RESPONSES = Route("responses", Group.POLICED, label="/v1/responses", methods=_POST)
MESSAGES = Route("messages", Group.POLICED, Dialect.ANTHROPIC, "/v1/messages", _POST)
COUNT_TOKENS = Route(
    "messages.count_tokens",
    Group.POLICED,
    Dialect.ANTHROPIC,
    "/v1/messages/count_tokens",
    _POST,
)
MODELS = Route("models", Group.CATALOGUE, label="/v1/models", methods=_GET)
USAGE = Route("usage", Group.CATALOGUE, label="/v1/kallm/usage", methods=_GET)  # a key's own
UNKNOWN = Route("other", Group.UNKNOWN)
ADMIN = Route("admin", Group.ADMIN, label="/admin")

# Exact /v1 paths of the policed and catalogue routes (segments after /v1).
_EXACT: dict[tuple[str, ...], Route] = {
    ("chat", "completions"): CHAT,
    ("completions",): COMPLETIONS,
    ("embeddings",): EMBEDDINGS,
    ("responses",): RESPONSES,
    ("messages",): MESSAGES,
    ("messages", "count_tokens"): COUNT_TOKENS,
    ("models",): MODELS,
    ("kallm", "usage"): USAGE,
}
# Organisation routes by their first segment; their sub-paths (ids, actions) belong to them.
# ``responses/{id}`` reads or deletes stored responses: shared state, so it is one of them.
ORGANISATION_ROUTES = frozenset(
    {
        "files",
        "uploads",
        "batches",
        "fine_tuning",
        "assistants",
        "threads",
        "vector_stores",
        "audio",
        "images",
        "moderations",
        "realtime",
        "containers",
        "conversations",
        "evals",
        "videos",
        "responses",
        "chat",  # chat/completions/{id}: stored completions
        "models",  # DELETE /v1/models/{id}: a fine-tuned model of the organisation
        "embeddings",
        "completions",
        "messages",
    }
)
_ORGANISATION = {
    name: Route(name, Group.ORGANISATION, label=f"/v1/{name}") for name in ORGANISATION_ROUTES
}


def segments_of(raw_path: str) -> tuple[str, ...] | None:
    """The decoded segments of a raw path (query removed), or None when the path is not in
    normal form: empty or dot segments, encoded separators, control characters, ';'."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or path == "/":
        return None
    out = []
    for raw in path[1:].split("/"):
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if not segment or segment in (".", "..") or _FORBIDDEN_IN_SEGMENT.search(segment):
            return None
        out.append(segment)
    return tuple(out)


@functools.lru_cache(maxsize=1_024)  # bounded: clients invent paths (ids, typos, attacks)
def classify(raw_path: str, method: str = "GET") -> RequestPath:
    """The route of a raw request path and method; ``RouteNotFound`` (404) for any other
    spelling. A route's path with another method is another endpoint upstream (``GET
    /v1/chat/completions`` lists stored completions, ``DELETE /v1/models/{id}`` deletes a
    fine-tuned model): the organisation route of its first segment.

    Paths already classified are remembered (the same few paths carry almost every
    request; decoding and checking each segment again cost ~3 us a request); a refused
    path raises each time (exceptions are not cached)."""
    segments = segments_of(raw_path)
    if segments is None:
        raise RouteNotFound(f"Unknown request URL: {_shown(raw_path)}")
    if segments[0] != "v1":
        name = "/" + "/".join(segments)
        if name in OPS_PATHS:
            return RequestPath(Route(name, Group.OPS, label=name), segments)
        if segments[0] == "admin":
            return RequestPath(ADMIN, segments)
        raise RouteNotFound(f"Unknown request URL: {_shown(raw_path)}")
    rest = segments[1:]
    if not rest:
        raise RouteNotFound(f"Unknown request URL: {_shown(raw_path)}")
    route = _EXACT.get(rest)
    if route is None and rest[0] == "models" and len(rest) == 2:
        route = MODELS
    if route is not None and route.methods and method.upper() not in route.methods:
        route = None
    if route is None:
        route = _ORGANISATION.get(rest[0], UNKNOWN)
    return RequestPath(route, rest)


def _shown(raw_path: str) -> str:
    """The path for an error message: bounded and printable."""
    text = raw_path[:200]
    return "".join(c if c.isprintable() else "?" for c in text)
