"""The OpenAI-compatible upstream: one pooled HTTP client, errors mapped to ours.

Responses are handed back open so the caller can stream them without
buffering; the caller releases them. Connection failures become
``UpstreamError`` (502) and timeouts ``UpstreamTimeout`` (504).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp
from multidict import CIMultiDict

from kallm.errors import UpstreamError, UpstreamTimeout

# RFC 9110 §7.6.1 connection-specific headers, plus ones a proxy must set itself.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
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


class OpenAIUpstream:
    def __init__(self, base_url: str, connect_timeout: float, timeout: float,
                 name: str = "openai"):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> aiohttp.ClientSession:
        # auto_decompress off: passthrough relays encoded bytes untouched.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False,
        )
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def url(self, path: str, query: str = "") -> str:
        """``path`` is relative to the base URL's /v1 (e.g. ``/chat/completions``)."""
        return self.base_url + path + (f"?{query}" if query else "")

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], data: bytes | None
    ) -> aiohttp.ClientResponse:
        """Open a request upstream; the caller must release the response."""
        assert self.session is not None, "start() first"
        with self.errors():
            return await self.session.request(method, url, headers=headers, data=data)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn the client's exceptions, while sending or reading, into ours."""
        try:
            yield
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.base_url} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.base_url} failed: {exc}") from None
