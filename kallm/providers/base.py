"""A provider: one upstream API with its own pooled HTTP client, timeouts and adapter.

The adapter is the only kind-specific part: how a chat request is sent
(``chat_call``), and how the answer, an error or a stream comes back in
OpenAI's format. Everything else — sessions, timeouts, error mapping,
pattern matching on model names — is shared here.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from kallm.errors import UpstreamError, UpstreamTimeout, blamed_on_request
from kallm.providers.config import ProviderConfig

log = logging.getLogger("kallm.providers")
VIA_HEADER = "X-Kallm-Via"  # see kallm.server.loop

# RFC 9110 §7.6.1 connection-specific headers, plus ones a proxy must set itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


# One SSE line may be this long (aiohttp allows twice its read buffer): a tool call's whole
# arguments can come as one event.
READ_BUFFER = 1024 * 1024

# What describes the client's body as it arrived: kallm has decoded it (or re-encoded it).
CLIENT_BODY = frozenset({"content-encoding"})
# Headers that name or choose the account a call is paid from and whose stored state it
# reads: under virtual keys that account is the server's, shared by every key, so no
# client may name it (an OpenAI-Organization of the client's choosing next to the
# server's key picks which organisation pays), and the client's own key stays here.
ACCOUNT_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "x-goog-api-key"}
    | {"openai-organization", "openai-project"}
)


def forwardable(headers: Mapping[str, str], drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones and our own X-Kallm-* controls."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in drop or lower.startswith("x-kallm-"):
            continue
        out.add(name, value)
    return out


def client_headers(
    headers: Mapping[str, str], virtual_keys: bool, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The client's headers as they may go upstream: under virtual keys, none that names
    an account (``ACCOUNT_HEADERS``); with auth off the caller's own key and organisation
    are theirs to send."""
    return forwardable(headers, drop | ACCOUNT_HEADERS if virtual_keys else drop)


@dataclass(frozen=True, slots=True)
class HttpCall:
    url: str
    headers: Mapping[str, str]
    data: bytes


def encode_payload(payload: dict[str, Any], model: str, sent: bytes | None = None) -> bytes:
    """The body for upstream: the client's own bytes when they say exactly what was checked
    (the JSON parser refuses duplicate keys, so they cannot say two things) and the model
    keeps its name; otherwise the checked request, re-encoded."""
    if sent is not None and payload.get("model") == model:
        return sent
    return json.dumps(
        {**payload, "model": model}, separators=(",", ":"), ensure_ascii=False
    ).encode()


@dataclass(frozen=True, slots=True)
class ChatCall:
    """What the chat route hands a provider: the request and its caller's headers."""

    payload: dict[str, Any]
    model: str  # the upstream model name for this route
    stream: bool
    client_headers: Mapping[str, str]
    sent: bytes | None = None  # the client's body, forwardable as is (see encode_payload)


class StreamRelay(Protocol):
    """Turns the upstream's SSE events into OpenAI ``chat.completion.chunk`` events."""

    def feed(self, raw: bytes, event: str | None, data: bytes | None) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class Adapter(Protocol):
    kind: str

    def chat_call(self, provider: Provider, call: ChatCall) -> HttpCall: ...

    def answer(self, status: int, body: bytes, model: str) -> bytes:
        """The upstream's whole (non-stream) answer or error, as OpenAI JSON bytes."""
        ...

    def error_status(self, status: int) -> int: ...

    def stream(self, model: str) -> StreamRelay: ...


class Provider:
    def __init__(
        self,
        config: ProviderConfig,
        adapter: Adapter,
        connect_timeout: float,
        timeout: float,
        via: str = "",
    ):
        self.config = config
        self.via = via  # this server's id, sent upstream so a loop back to us is caught
        self.name = config.name
        self.kind = config.kind
        self.base_url = config.base_url.rstrip("/")
        self.adapter = adapter
        connect = config.connect_timeout or connect_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=config.timeout or timeout
        )
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> aiohttp.ClientSession:
        # auto_decompress off: passthrough relays encoded bytes untouched.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            read_bufsize=READ_BUFFER,
        )
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.config.models)

    def url(self, path: str, query: str = "") -> str:
        return self.base_url + path + (f"?{query}" if query else "")

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], data: bytes | None
    ) -> aiohttp.ClientResponse:
        """Open a request upstream; the caller must release the response."""
        assert self.session is not None, "start() first"
        if self.via:
            headers = CIMultiDict(headers)
            headers[VIA_HEADER] = self.via
        with self.errors():  # the URL is sent as built: kallm encoded its path, not yarl
            return await self.session.request(
                method, URL(url, encoded=True), headers=headers, data=data
            )

    async def open_chat(self, call: ChatCall) -> aiohttp.ClientResponse:
        with blamed_on_request():
            http = self.adapter.chat_call(self, call)
        return await self.send("POST", http.url, http.headers, http.data)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn the client's exceptions, while sending or reading, into ours. What the caller
        sees names the provider, never its internal address; the log has the detail."""
        try:
            yield
        except TimeoutError:
            log.warning("provider %s (%s) did not answer in time", self.name, self.base_url)
            raise UpstreamTimeout(f"provider {self.name} did not answer in time") from None
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            log.warning("provider %s (%s) failed: %s", self.name, self.base_url, exc)
            raise UpstreamError(
                f"provider {self.name} failed ({_kind_of(exc)}); see the server log"
            ) from None


def _kind_of(exc: Exception) -> str:
    """``connection refused``, ``connection reset``...: what happened, without addresses."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        return os.strerror(code).lower() if code else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError | HttpProcessingError):
        return "broken answer"
    return type(exc).__name__
