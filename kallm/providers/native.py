"""Adapters for providers with their own API: Anthropic Messages and Gemini generateContent.

The translation itself lives in ``anthropic.py`` and ``gemini.py`` as pure
functions; this module is the glue that sends the translated request with the
provider's key and turns answers, errors and streams into OpenAI's format.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from kallm.errors import AuthenticationError, UpstreamError
from kallm.providers import anthropic, gemini
from kallm.providers.base import ChatCall, HttpCall, Provider
from kallm.providers.sse import DONE, encode_chunk


def provider_key(provider: Provider) -> str:
    if provider.config.api_key:
        return provider.config.api_key
    raise AuthenticationError(
        f"provider {provider.name} has no API key: set {provider.config.api_key_env} "
        "(or api_key_env in kallm.toml)"
    )


class Translator(Protocol):
    @property
    def finished(self) -> bool: ...

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]: ...


class TranslatingRelay:
    """Native SSE events in, OpenAI chunk events out, ending in [DONE] once the answer is whole."""

    def __init__(self, translator: Translator):
        self._translator = translator
        self._done = False

    def feed(self, raw: bytes, event: str | None, data: bytes | None) -> list[bytes]:
        if data is None or data == b"[DONE]":
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            raise UpstreamError(f"provider sent an event that is not JSON: {data[:80]!r}") from None
        events = [encode_chunk(c) for c in self._translator.feed(event, payload)]
        return events + self._finish()

    def close(self) -> list[bytes]:
        return []

    def _finish(self) -> list[bytes]:
        """[DONE] only after the provider said the answer is complete (and only once)."""
        if self._done or not self._translator.finished:
            return []
        self._done = True
        return [DONE]


class _NativeAdapter:
    module: Any

    def answer(self, status: int, body: bytes, model: str) -> bytes:
        if status == 200:
            try:
                native = json.loads(body)
            except ValueError:
                raise UpstreamError("provider answered 200 with a body that is not JSON") from None
            return json.dumps(self.module.translate_response(native, model)).encode()
        return json.dumps(self.module.translate_error(status, body)[1]).encode()

    def error_status(self, status: int) -> int:
        return status if status == 200 else self.module.translate_error(status, b"")[0]


class AnthropicAdapter(_NativeAdapter):
    kind = "anthropic"
    module = anthropic

    def chat_call(self, provider: Provider, call: ChatCall) -> HttpCall:
        body = anthropic.build_request(call.payload, call.model, call.stream)
        return HttpCall(
            provider.url(anthropic.chat_path()),
            anthropic.request_headers(provider_key(provider)),
            json.dumps(body).encode(),
        )

    def stream(self, model: str) -> TranslatingRelay:
        return TranslatingRelay(anthropic.StreamTranslator(model))


class GeminiAdapter(_NativeAdapter):
    kind = "gemini"
    module = gemini

    def chat_call(self, provider: Provider, call: ChatCall) -> HttpCall:
        body = gemini.build_request(call.payload, call.model)
        return HttpCall(
            provider.url(gemini.chat_path(call.model, call.stream)),
            gemini.request_headers(provider_key(provider)),
            json.dumps(body).encode(),
        )

    def stream(self, model: str) -> GeminiRelay:
        return GeminiRelay(gemini.StreamTranslator(model))


class GeminiRelay(TranslatingRelay):
    """Gemini has no end event: the answer is whole when the stream ends with every choice
    finished, so usage and [DONE] are emitted on close, not on the first finishReason."""

    def _finish(self) -> list[bytes]:
        return []

    def close(self) -> list[bytes]:
        events = [encode_chunk(c) for c in self._translator.close()]  # type: ignore[attr-defined]
        return events + ([DONE] if self._translator.finished else [])
