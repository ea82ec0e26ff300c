"""POST /v1/messages and /v1/messages/count_tokens: Anthropic Messages, as Claude Code sends.

To an Anthropic provider the request goes natively and losslessly (``cache_control``,
thinking blocks and their signatures, tool-use ids, and the client's
``anthropic-version`` and ``anthropic-beta`` headers); to any other provider it is
translated to chat and the answer back to a Messages answer, streams included. Errors on
these routes are Anthropic's error shape. See ``kallm.server.dialect`` for the flow.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.dialects import messages as m
from kallm.dialects.common import refreshed
from kallm.dialects.messages_stream import (
    MessagesAssembler,
    MessagesStreamFromChat,
    error_event,
    replay_message_events,
)
from kallm.dialects.scope import messages_view
from kallm.providers import anthropic
from kallm.providers.base import CLIENT_BODY, HttpCall, client_headers, encode_payload
from kallm.providers.native import provider_key
from kallm.providers.router import Route
from kallm.server.admission import admission
from kallm.server.dialect import ChatTranslator, NativeAssembler, serve
from kallm.server.passthrough import relay
from kallm.server.runtime import Runtime, runtime_of

_NOT_FORWARDED = (
    frozenset({"authorization", "x-api-key", "accept-encoding", "content-type"}) | CLIENT_BODY
)


class MessagesDialect:
    name = "messages"
    native_kind = "anthropic"

    def view(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        return messages_view(payload)

    def native_call(
        self, runtime: Runtime, route: Route, payload: dict[str, Any], body: bytes, headers: Any
    ) -> HttpCall:
        out = dict(client_headers(headers, runtime.virtual_keys, _NOT_FORWARDED))
        out.update(anthropic_auth(runtime, route, headers))
        out.setdefault("anthropic-version", anthropic.API_VERSION)
        out["content-type"] = "application/json"
        out["accept-encoding"] = "identity"  # kallm reads the answer to price and cache it
        return HttpCall(
            route.provider.url(anthropic.chat_path()),
            out,
            encode_payload(payload, route.model, body),
        )

    def is_answer(self, answer: Any) -> bool:
        return isinstance(answer, dict) and isinstance(answer.get("content"), list)

    def usage(self, answer: dict[str, Any]) -> Usage:
        return Usage.from_anthropic(answer.get("usage"))

    def assembler(self) -> NativeAssembler:
        return MessagesAssembler()

    def assembled(self, assembler: NativeAssembler) -> dict[str, Any]:
        assert isinstance(assembler, MessagesAssembler)
        return assembler.message

    def replay(self, answer: dict[str, Any]) -> list[bytes]:
        return replay_message_events(answer, fresh_ids=True)

    def refreshed(self, answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "id": refreshed(answer.get("id"), "msg_")}

    def to_chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return m.chat_request_from_messages(payload)

    def from_chat(self, completion: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return m.message_from_chat(completion, str(payload["model"]))

    def translator(self, payload: dict[str, Any], body: bytes) -> ChatTranslator:
        return MessagesStreamFromChat(str(payload["model"]), m.estimate_input_tokens(payload))

    def chat_error(self, status: int, body: bytes) -> tuple[int, bytes]:
        status, error = m.error_from_openai(status, body)
        return status, json.dumps(error).encode()

    def stream_error(self, message: str, translator: ChatTranslator | None) -> bytes:
        return error_event(m.anthropic_error(502, message))


DIALECT = MessagesDialect()


async def messages(request: web.Request) -> web.StreamResponse:
    return await serve(request, DIALECT)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Anthropic counts its own models' tokens; for any other model, an estimate."""
    runtime = runtime_of(request)
    admitted = admission(request)
    payload = admitted.payload
    assert payload is not None
    route = admitted.routes[0]
    if route.provider.kind != "anthropic":
        return web.json_response(m.count_tokens_response(payload))
    body = encode_payload(payload, route.model, admitted.body)
    headers = {
        **anthropic_auth(runtime, route, request.headers),
        "anthropic-version": request.headers.get("anthropic-version", anthropic.API_VERSION),
    }
    if "anthropic-beta" in request.headers:
        headers["anthropic-beta"] = request.headers["anthropic-beta"]
    return await relay(request, route.provider, "/v1/messages/count_tokens", body, headers=headers)


def anthropic_auth(runtime: Runtime, route: Route, headers: Any) -> dict[str, str]:
    """With auth off a caller's own Anthropic credential (x-api-key, or an OAuth bearer
    token as Claude Code sends) is used; otherwise the provider's key. A virtual key is
    kallm's and never leaves it."""
    if not runtime.virtual_keys:
        if headers.get("x-api-key"):
            return {"x-api-key": headers["x-api-key"]}
        if headers.get("Authorization"):
            return {"Authorization": headers["Authorization"]}
    return {"x-api-key": provider_key(route.provider)}
