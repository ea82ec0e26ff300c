"""POST /admin/cache/entries: put known answers into the cache without asking any model.

``kallm warm`` imports prompt/response pairs through it, and anyone can with curl.
Each entry goes through the same ``cache_key`` and ``SemanticCache.lookup`` as a chat
request, so an answer already cached (exactly, or by meaning past the hit guard) is
skipped rather than duplicated, and an imported entry is then served like any other.
Guarded by the admin key, exactly like the rest of /admin.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.cache.answers import stored_answer
from kallm.cache.scope import SERVER_TENANT, cache_key
from kallm.errors import KallmError, RequestError
from kallm.ids import random_hex
from kallm.server.request import json_object, parse_chat_request
from kallm.server.runtime import Runtime, runtime_of

MAX_ENTRIES = 1000  # per request: one bad client should not hold the event loop for long


def _words(text: str) -> int:
    return len(text.split())


def message_text(message: Any) -> str:
    """The text of a message's content (a string, or the text parts of a list)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def as_completion(response: Any, request: dict[str, Any]) -> dict[str, Any]:
    """A valid chat.completion from plain text or a (possibly partial) completion.

    Text becomes one assistant choice with finish_reason "stop"; usage is estimated as
    words, since no tokenizer knows every model and the number only feeds "saved" stats.
    """
    model = str(request.get("model", ""))
    prompt_words = sum(_words(message_text(m)) for m in request.get("messages", []))
    if isinstance(response, str):
        if not response.strip():
            raise RequestError("'response' is empty", param="response")
        message = {"role": "assistant", "content": response, "refusal": None}
        completion: dict[str, Any] = {
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ],
        }
        answer_words = _words(response)
    elif isinstance(response, dict):
        choices = response.get("choices")
        if (
            not isinstance(choices, list)
            or not choices
            or not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)
        ):
            raise RequestError(
                "'response' must be text or a chat.completion whose choices each have a 'message'",
                param="response",
            )
        completion = json.loads(json.dumps(response))  # a copy we may fill in
        for index, choice in enumerate(completion["choices"]):
            choice.setdefault("index", index)
            choice["finish_reason"] = choice.get("finish_reason") or "stop"
        answer_words = sum(_words(message_text(c["message"])) for c in completion["choices"])
    else:
        raise RequestError("'response' must be text or a chat.completion object", param="response")
    completion.setdefault("id", "chatcmpl-kallm" + random_hex(24))
    completion["object"] = "chat.completion"
    completion.setdefault("created", int(time.time()))
    completion["model"] = completion.get("model") or model
    if not isinstance(completion.get("usage"), dict):
        completion["usage"] = {
            "prompt_tokens": prompt_words,
            "completion_tokens": answer_words,
            "total_tokens": prompt_words + answer_words,
        }
    return completion


def import_tenant(runtime: Runtime, namespace: str) -> tuple[str, ...]:
    """Who imported answers are for: keys of ``namespace`` with virtual keys on; with auth off,
    callers relying on the server's own upstream key (see ``kallm.server.admission``)."""
    if runtime.virtual_keys:
        return ("key", namespace)
    return SERVER_TENANT


async def _import_one(runtime: Runtime, entry: Any, tenant: tuple[str, ...]) -> dict[str, Any]:
    """Store one entry unless its question is already answered; never raises KallmError."""
    try:
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise RequestError("each entry needs a 'request' object", param="request")
        request = parse_chat_request(json.dumps(entry["request"]).encode())
        runtime.router.resolve(request["model"])  # an unroutable model is a mistake, say so
        completion = as_completion(entry.get("response"), request)
    except KallmError as exc:
        return {"status": "failed", "error": exc.message}
    cache = runtime.semantic_cache
    lookup = await cache.lookup(
        cache_key(request, tenant), use_guard=runtime.settings.guard, count=False
    )
    if lookup.hit is not None:
        return {"status": "cached", "similarity": round(lookup.hit.similarity, 4)}
    usage = Usage.from_openai(completion["usage"])
    cost = runtime.prices.cost(completion["model"], usage)
    body = stored_answer(completion)
    await cache.store(lookup, body, cost_usd=cost, tokens=usage.total_tokens)
    return {"status": "imported"}


async def import_entries(request: web.Request) -> web.Response:
    """Body ``{"entries": [{"request", "response"}], "namespace"?}``; one result per entry."""
    runtime = runtime_of(request)
    body = json_object(await request.read() or b"null", "body")
    entries = body.get("entries")
    if not isinstance(entries, list):
        raise RequestError("'entries' is required and must be an array", param="entries")
    if len(entries) > MAX_ENTRIES:
        raise RequestError(f"at most {MAX_ENTRIES} entries per request", param="entries")
    namespace = body.get("namespace") or ""
    if not isinstance(namespace, str):
        raise RequestError("'namespace' must be a string", param="namespace")
    tenant = import_tenant(runtime, namespace.strip())
    results = [await _import_one(runtime, entry, tenant) for entry in entries]
    counts = {
        status: sum(r["status"] == status for r in results)
        for status in ("imported", "cached", "failed")
    }
    return web.json_response({**counts, "results": results})
