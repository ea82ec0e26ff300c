"""POST /v1/responses: the OpenAI Responses API, as Codex CLI and the Agents SDK speak it.

Relayed natively to OpenAI-compatible providers. For Anthropic and Gemini providers it is
translated (input items, instructions, function tools, calls and their outputs,
reasoning summaries, streamed events) to chat and back; what has no meaning there
(``previous_response_id``, ``conversation``, stored prompts, ``background``, hosted
tools) is refused with a 400 naming the field. Only stateless requests are cached
(``kallm.dialects.scope``). See ``kallm.server.dialect`` for the flow.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.dialects import responses as r
from kallm.dialects.common import sse
from kallm.dialects.responses_stream import (
    ResponsesAssembler,
    ResponsesStreamFromChat,
    fresh_response,
    replay_response_events,
)
from kallm.dialects.scope import responses_view
from kallm.providers.base import CLIENT_BODY, HttpCall, client_headers, encode_payload
from kallm.providers.openai import authorization
from kallm.providers.router import Route
from kallm.server.dialect import ChatTranslator, NativeAssembler, serve
from kallm.server.runtime import Runtime

_NOT_FORWARDED = frozenset({"authorization", "accept-encoding", "content-type"}) | CLIENT_BODY


class ResponsesDialect:
    name = "responses"
    native_kind = "openai"

    def view(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        return responses_view(payload)

    def native_call(
        self, runtime: Runtime, route: Route, payload: dict[str, Any], body: bytes, headers: Any
    ) -> HttpCall:
        out = dict(client_headers(headers, runtime.virtual_keys, _NOT_FORWARDED))
        client: Any = {} if runtime.virtual_keys else headers  # a virtual key is ours
        out["Authorization"] = authorization(route.provider, client)
        out["Content-Type"] = "application/json"
        out["Accept-Encoding"] = "identity"  # kallm reads the answer to price and cache it
        return HttpCall(
            route.provider.url("/responses"), out, encode_payload(payload, route.model, body)
        )

    def is_answer(self, answer: Any) -> bool:
        return isinstance(answer, dict) and isinstance(answer.get("output"), list)

    def usage(self, answer: dict[str, Any]) -> Usage:
        return Usage.from_openai(answer.get("usage"))

    def assembler(self) -> NativeAssembler:
        return ResponsesAssembler()

    def assembled(self, assembler: NativeAssembler) -> dict[str, Any]:
        assert isinstance(assembler, ResponsesAssembler)
        return assembler.response or {}

    def replay(self, answer: dict[str, Any]) -> list[bytes]:
        return replay_response_events(answer, fresh_ids=True)

    def refreshed(self, answer: dict[str, Any]) -> dict[str, Any]:
        return fresh_response(answer)

    def to_chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return r.chat_request_from_responses(payload)

    def from_chat(self, completion: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return r.response_from_chat(completion, payload)

    def translator(self, payload: dict[str, Any], body: bytes) -> ChatTranslator:
        return ResponsesStreamFromChat(payload)

    def chat_error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, body  # the chat error is already OpenAI's shape

    def stream_error(self, message: str, translator: ChatTranslator | None) -> bytes:
        if isinstance(translator, ResponsesStreamFromChat) and translator.started:
            return b"".join(translator.fail(message))
        return sse("error", {"type": "error", "code": "server_error", "message": message})


DIALECT = ResponsesDialect()


async def responses(request: web.Request) -> web.StreamResponse:
    return await serve(request, DIALECT)
