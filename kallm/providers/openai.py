"""OpenAI and every OpenAI-compatible server (Ollama, vLLM, llama.cpp, Groq...): relayed.

The request goes out as the client sent it whenever the model name is the
same, and answers and stream events come back byte for byte.
"""

from __future__ import annotations

from typing import Any

from kallm.errors import AuthenticationError
from kallm.providers.base import (
    CLIENT_BODY,
    ChatCall,
    HttpCall,
    Provider,
    encode_payload,
    forwardable,
)

_NOT_FORWARDED = frozenset({"authorization", "accept-encoding", "content-type"}) | CLIENT_BODY


def authorization(provider: Provider, client_headers: Any) -> str:
    """The client's own key for an OpenAI-kind upstream, else the configured one."""
    supplied = client_headers.get("Authorization", "").strip()
    if supplied:
        return supplied
    if provider.config.api_key:
        return f"Bearer {provider.config.api_key}"
    env = provider.config.api_key_env or "OPENAI_API_KEY"
    raise AuthenticationError(
        f"No API key: send 'Authorization: Bearer <key>' or start kallm with {env} set."
    )


class PassThroughRelay:
    """OpenAI's own events need no translation."""

    def feed(self, raw: bytes, event: str | None, data: bytes | None) -> list[bytes]:
        return [raw]

    def close(self) -> list[bytes]:
        return []


class OpenAIAdapter:
    kind = "openai"

    def chat_call(self, provider: Provider, call: ChatCall) -> HttpCall:
        headers = dict(forwardable(call.client_headers, _NOT_FORWARDED))
        headers["Authorization"] = authorization(provider, call.client_headers)
        headers["Accept-Encoding"] = "identity"  # we read the answer to cache it
        headers["Content-Type"] = "application/json"
        body: dict[str, Any] = call.payload
        sent = call.sent
        if call.stream:  # ask for usage so the answer can be priced and replayed
            options = {**(call.payload.get("stream_options") or {}), "include_usage": True}
            body, sent = {**body, "stream_options": options}, None
        return HttpCall(
            provider.url("/chat/completions"), headers, encode_payload(body, call.model, sent)
        )

    def answer(self, status: int, body: bytes, model: str) -> bytes:
        return body

    def error_status(self, status: int) -> int:
        return status

    def stream(self, model: str) -> PassThroughRelay:
        return PassThroughRelay()
