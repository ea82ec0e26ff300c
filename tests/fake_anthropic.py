"""A strict fake of Anthropic's Messages API (``POST /v1/messages`` and ``/count_tokens``).

kallm translates OpenAI requests into Messages bodies; a lenient fake would
let a translation bug through that the real API answers with a 400. So this
fake checks what the real API checks (headers, required and unknown fields,
alternating roles, block types, tool_use / tool_result pairing, tool schemas,
thinking rules) with Anthropic's own error shape, and answers with the real
response and SSE event sequence. Steering mirrors ``tests.fake_upstream``.

Prompt caching is simulated deterministically: a request carrying ``cache_control``
writes its prefix (up to the last breakpoint) to the cache the first time
(``cache_creation_input_tokens``) and reads it every later time
(``cache_read_input_tokens``); ``input_tokens`` counts only the rest, as Anthropic's does.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from tests.fake_base import FakeServer, start
from tests.fake_upstream import count_tokens

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "cache_control",
        "output_config",
        "context_management",
    }
)
# count_tokens takes the prompt, not the sampling parameters.
_COUNT_TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "cache_control",
        "output_config",
        "context_management",
    }
)
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result", "search_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_TEXT = {
    401: "invalid x-api-key",
    403: "Your API key does not have permission.",
    429: "Number of request tokens has exceeded your per-minute rate limit.",
    500: "Internal server error",
    529: "Overloaded",
}


class AnthropicError(Exception):
    """Raised anywhere in a handler; becomes Anthropic's ``{"type": "error", ...}`` answer."""

    def __init__(self, status: int, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type = type_ or _ERROR_TYPES.get(status, "api_error")

    def body(self) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.type, "message": self.message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }


def _invalid(message: str) -> AnthropicError:
    return AnthropicError(400, message)


class FakeAnthropic(FakeServer):
    """Steering (``reset()`` clears it): ``fail_status`` / ``fail_times`` / ``fail_message``
    as in the OpenAI fake; ``stall_seconds`` before headers; ``cut_stream_after`` N SSE
    events then drop the socket (never reaching message_delta / message_stop);
    ``stream_error_after`` N events then an ``error`` event; ``reply`` fixed text;
    ``api_key`` the one key accepted (None: any); ``cache_read_tokens`` /
    ``cache_creation_tokens`` reported in usage (when set, instead of the simulated
    prompt cache). Observation: ``calls``, ``requests``, ``anthropic_versions`` and
    ``anthropic_betas`` (the headers of each API request, betas split at commas),
    ``signatures`` (thinking signatures issued).
    """

    def reset(self) -> None:
        super().reset()
        self.raw_paths: list[str] = []
        self.stream_error_after: int | None = None
        self.api_key: str | None = None
        self.cache_read_tokens = 0
        self.cache_creation_tokens = 0
        self.signatures: set[str] = set()
        self.anthropic_versions: list[str | None] = []
        self.anthropic_betas: list[list[str]] = []
        self._cached_prefixes: set[str] = set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.raw_paths.append(request.raw_path)  # the target exactly as it arrived
        _raw, parsed = await self.record(request)
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        try:
            await self.pause(self.stall_seconds)
            if request.method != "POST" or request.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
                raise AnthropicError(404, "Not Found")
            self._check_headers(request)
            self._maybe_fail()
            if not isinstance(parsed, dict):
                raise _invalid("There was an issue with your request body: invalid JSON")
            if request.path == COUNT_TOKENS_PATH:
                return web.json_response(self._count_tokens(parsed), headers=headers)
            validate(parsed, self.signatures)
            turn = self._answer(parsed)
        except AnthropicError as err:
            return web.json_response(err.body(), status=err.status, headers=headers)
        if parsed.get("stream") is True:
            return await self._stream(request, turn, headers)
        return web.json_response(turn, headers=headers)

    def _check_headers(self, request: web.Request) -> None:
        self.anthropic_versions.append(request.headers.get("anthropic-version"))
        betas = request.headers.get("anthropic-beta") or ""
        self.anthropic_betas.append([b.strip() for b in betas.split(",") if b.strip()])
        key = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if not key and bearer.lower().startswith("bearer "):  # OAuth-style tokens (Claude Code)
            key = bearer[7:].strip()
        if not key:
            raise AnthropicError(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            raise AnthropicError(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise _invalid("anthropic-version: header is required")

    def _maybe_fail(self) -> None:
        status = self.armed_failure()
        if status is not None:
            raise AnthropicError(status, self.fail_message or _ERROR_TEXT.get(status, "Injected"))

    # -- the fake "model" ---------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """A whole Message: thinking if enabled, then a tool call or a text answer."""
        messages, model = body["messages"], body["model"]
        if not model.startswith("claude"):
            raise AnthropicError(404, f"model: {model}")
        last_user = next(m for m in reversed(messages) if m["role"] == "user")
        blocks = _as_blocks(last_user["content"])
        text = " ".join(b["text"] for b in blocks if b["type"] == "text")
        results = [b for b in blocks if b["type"] == "tool_result"]
        content: list[dict[str, Any]] = []
        if (body.get("thinking") or {}).get("type") == "enabled":
            signature = uuid.uuid4().hex
            self.signatures.add(signature)
            content.append(
                {"type": "thinking", "thinking": f"The user asks: {text}", "signature": signature}
            )
        choice = body.get("tool_choice") or {"type": "auto"}
        tools = body.get("tools") or []
        forced = choice["type"] in ("any", "tool")
        stop_reason, stop_sequence = "end_turn", None
        if (
            tools
            and not results
            and (forced or (choice["type"] == "auto" and "weather" in text.lower()))
        ):
            tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
            if not forced:
                content.append({"type": "text", "text": "Let me check the weather."})
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": tool["name"],
                    "input": _tool_input(tool, text),
                }
            )
            stop_reason = "tool_use"
        else:
            if results:
                answer = "The tool said: " + " ".join(_result_text(r) for r in results)
            else:
                answer = self.reply if self.reply is not None else f"Answer to: {text}"
            for stop in body.get("stop_sequences") or []:
                if stop in answer:
                    answer, stop_reason, stop_sequence = (
                        answer[: answer.index(stop)],
                        "stop_sequence",
                        stop,
                    )
            words = answer.split(" ")
            if len(words) > body["max_tokens"]:
                answer, stop_reason = " ".join(words[: body["max_tokens"]]), "max_tokens"
            content.append({"type": "text", "text": answer})
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": self._usage(body, content),
        }

    def _usage(self, body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, Any]:
        prompt = _prompt_tokens(body)
        written, read = self.cache_creation_tokens, self.cache_read_tokens
        if not (written or read):
            written, read = self._prompt_cache(body)
            prompt -= written + read
        return {
            "input_tokens": prompt,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": sum(_block_tokens(b) for b in content) or 1,
            "service_tier": "standard",
        }

    def _prompt_cache(self, body: dict[str, Any]) -> tuple[int, int]:
        """(tokens written, tokens read): the prefix up to the last ``cache_control``
        breakpoint (in order tools, system, messages; a top-level one caches it all)."""
        system = body.get("system") or []
        blocks = [("system", b) for b in _as_blocks(system)] if system else []
        blocks += [("message", b) for m in body["messages"] for b in _as_blocks(m["content"])]
        marked = [i for i, (_, b) in enumerate(blocks) if isinstance(b.get("cache_control"), dict)]
        if body.get("cache_control"):
            marked.append(len(blocks) - 1)
        tools_marked = any(
            isinstance(t.get("cache_control"), dict) for t in body.get("tools") or []
        )
        if not marked and not tools_marked:
            return 0, 0
        prefix = blocks[: max(marked) + 1] if marked else []
        tokens = sum(_block_tokens(b) for _, b in prefix)
        key = json.dumps([body.get("tools") or [], prefix], sort_keys=True)
        if key in self._cached_prefixes:
            return 0, tokens
        self._cached_prefixes.add(key)
        return tokens, 0

    def _count_tokens(self, body: dict[str, Any]) -> dict[str, int]:
        """``/v1/messages/count_tokens``: validated like a message, answered with the prompt."""
        for name in body:
            if name not in _COUNT_TOP_LEVEL:
                raise _invalid(f"{name}: Extra inputs are not permitted")
        validate({**body, "max_tokens": 1_000_000}, self.signatures)
        if not body["model"].startswith("claude"):
            raise AnthropicError(404, f"model: {body['model']}")
        tools = sum(count_tokens(json.dumps(t)) for t in body.get("tools") or [])
        return {"input_tokens": _prompt_tokens(body) + tools}

    # -- SSE ---------------------------------------------------------------------

    async def _stream(
        self, request: web.Request, message: dict[str, Any], headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        sent = 0
        try:
            for name, data, terminal in _events(message):
                if self.stream_error_after is not None and sent >= self.stream_error_after:
                    error = AnthropicError(529, "Overloaded").body()
                    await response.write(_sse("error", {"type": "error", "error": error["error"]}))
                    return response
                cut = self.cut_stream_after
                if cut is not None and (sent >= cut or terminal):
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await response.write(_sse(name, data))
                sent += 1
        except ConnectionError:
            pass
        return response


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """The real sequence: message_start, per block start/ping/deltas/stop, message_delta, stop."""
    usage = message["usage"]
    head = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    yield "message_start", {"type": "message_start", "message": head}, False
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {
            "text": {"type": "text", "text": ""},
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
            "tool_use": {**block, "input": {}},
        }[kind]
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": empty},
            False,
        )
        if index == 0:
            yield "ping", {"type": "ping"}, False
        if kind == "text":
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            raw = json.dumps(block["input"], ensure_ascii=False)
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [
                {"type": "input_json_delta", "partial_json": raw[i : i + 7]}
                for i in range(0, len(raw) if block["input"] else 0, 7)
            ]
        for delta in deltas:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
                False,
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}, False
    final_usage = {k: v for k, v in usage.items() if k != "service_tier"}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": final_usage,
        },
        True,
    )
    yield "message_stop", {"type": "message_stop"}, True


def _prompt_tokens(body: dict[str, Any]) -> int:
    system = body.get("system") or ""
    prompt = count_tokens(
        system if isinstance(system, str) else " ".join(b["text"] for b in system)
    )
    return prompt + sum(
        _block_tokens(b) for m in body["messages"] for b in _as_blocks(m["content"])
    )


def _pieces(text: str) -> list[str]:
    pieces = re.findall(r"\s*\S+", text)
    if pieces:
        pieces[-1] += text[len("".join(pieces)) :]
    return pieces or ([text] if text else [])


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    return " ".join(b.get("text", "") for b in _as_blocks(content) if b["type"] == "text")


def _block_tokens(block: dict[str, Any]) -> int:
    kind = block["type"]
    if kind == "text":
        return count_tokens(block["text"])
    if kind == "thinking":
        return count_tokens(block["thinking"])
    if kind == "tool_use":
        return count_tokens(json.dumps(block["input"]))
    if kind == "tool_result":
        return count_tokens(_result_text(block))
    return 1


def _tool_input(tool: dict[str, Any], text: str) -> dict[str, Any]:
    """{"location": <city>} when the schema has properties; {} for an argument-less tool."""
    properties = list(tool["input_schema"].get("properties") or {})
    if not properties:
        return {}
    match = re.search(r"\bin ([A-Z][\w-]*(?: [A-Z][\w-]*)*)", text)
    name = "location" if "location" in properties else properties[0]
    return {name: match.group(1) if match else "Paris"}


# -- request validation (wording follows Anthropic's) -------------------------------


def validate(body: dict[str, Any], signatures: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise AnthropicError(400) for anything the real API refuses.

    ``signatures`` are the thinking signatures this fake issued; others are forged.
    """
    for name in body:
        if name not in _TOP_LEVEL:
            raise _invalid(f"{name}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _invalid(f"{name}: Field required")
    if not isinstance(body["model"], str):
        raise _invalid("model: Input should be a valid string")
    limit = body["max_tokens"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise _invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
    _validate_system(body.get("system"))
    _validate_messages(body["messages"])
    _validate_tools(body)
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= high):
            raise _invalid(f"{name}: Input should be a number between 0 and {high:g}")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) and s.strip() for s in stops)
    ):
        raise _invalid("stop_sequences: each stop sequence must contain non-whitespace")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise _invalid("metadata: only user_id is permitted")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _invalid("stream: Input should be a valid boolean")
    _validate_thinking(body, signatures)


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list) or not all(
        isinstance(b, dict)
        and b.get("type") == "text"
        and isinstance(b.get("text"), str)
        and b["text"]
        for b in system
    ):
        raise _invalid("system: Input should be a valid string or a list of non-empty text blocks")


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids of the previous assistant turn
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise _invalid(f"messages.{i}: Input should be an object with role and content")
        role = message.get("role")
        if role == "system":
            raise _invalid(
                'messages: Unexpected role "system". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _invalid('messages: first message must use the "user" role')
        if i and messages[i - 1].get("role") == role:
            raise _invalid(
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        blocks = _validate_content(message.get("content"), i, role, i == len(messages) - 1)
        if role == "user":
            answered = _validate_results(blocks, i, pending)
            if pending - answered:
                raise _invalid(
                    f"messages.{i - 1}: `tool_use` ids were found without "
                    f"`tool_result` blocks immediately after: "
                    f"{', '.join(sorted(pending - answered))}"
                )
            pending = set()
        else:
            pending = {b["id"] for b in blocks if b["type"] == "tool_use"}


def _validate_content(content: Any, i: int, role: str, last: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content and not (last and role == "assistant"):
            raise _invalid(
                f"messages.{i}: all messages must have non-empty content except "
                "for the optional final assistant message"
            )
        blocks = [{"type": "text", "text": content}] if content else []
    elif isinstance(content, list) and (content or (last and role == "assistant")):
        blocks = content
    else:
        raise _invalid(
            f"messages.{i}: all messages must have non-empty content except for "
            "the optional final assistant message"
        )
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    for j, block in enumerate(blocks):
        where = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            raise _invalid(
                f"{where}.type: Input tag '{kind}' found using 'type' does not match "
                f"any of the expected tags: {', '.join(sorted(allowed))}"
            )
        if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
            raise _invalid("messages: text content blocks must be non-empty")
        if kind == "image":
            _validate_source(block.get("source"), f"{where}.image.source", _IMAGE_TYPES)
        if kind == "document":
            _validate_source(
                block.get("source"), f"{where}.document.source", frozenset({"application/pdf"})
            )
        if kind == "tool_use" and not (
            isinstance(block.get("id"), str)
            and re.fullmatch(r"[a-zA-Z0-9_-]+", block["id"])
            and isinstance(block.get("name"), str)
            and isinstance(block.get("input"), dict)
        ):
            raise _invalid(
                f"{where}.tool_use: id (^[a-zA-Z0-9_-]+$), name and input (an object) are required"
            )
    if (
        last
        and role == "assistant"
        and blocks
        and blocks[-1]["type"] == "text"
        and blocks[-1]["text"] != blocks[-1]["text"].rstrip()
    ):
        raise _invalid("messages: final assistant content cannot end with trailing whitespace")
    return blocks


def _validate_source(source: Any, where: str, media_types: frozenset[str]) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        if source.get("media_type") not in media_types:
            raise _invalid(
                f"{where}.base64.media_type: Input should be {' or '.join(sorted(media_types))}"
            )
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise _invalid(f"{where}.base64.data: Field required")
    elif kind == "url":
        if not isinstance(source.get("url"), str) or not source["url"].startswith("http"):
            raise _invalid(f"{where}.url.url: Input should be a valid URL")
    else:
        raise _invalid(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of "
            "the expected tags: 'base64', 'url'"
        )


def _validate_results(blocks: list[dict[str, Any]], i: int, pending: set[str]) -> set[str]:
    answered: set[str] = set()
    seen_other = False
    for j, block in enumerate(blocks):
        if block["type"] != "tool_result":
            seen_other = True
            continue
        if seen_other:
            raise _invalid(
                f"messages.{i}: tool_result blocks must come first in the user "
                "message content, before any other blocks"
            )
        use_id = block.get("tool_use_id")
        if use_id not in pending:
            raise _invalid(
                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                f"`tool_result` blocks: {use_id}. Each `tool_result` block must "
                "have a corresponding `tool_use` block in the previous message."
            )
        content = block.get("content", "")
        if not isinstance(content, str | list):
            raise _invalid(
                f"messages.{i}.content.{j}.content: Input should be a string or a list of blocks"
            )
        answered.add(use_id)
    return answered


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("tools: Input should be a valid list")
    names = set()
    for k, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or "name" not in tool:
            raise _invalid(f"tools.{k}.name: Field required")
        if not isinstance(tool["name"], str) or not _TOOL_NAME.match(tool["name"]):
            raise _invalid(
                f"tools.{k}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _invalid(f"tools.{k}.custom.input_schema: Field required")
        if schema.get("type") != "object":
            raise _invalid(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
        if set(tool) - {"name", "description", "input_schema", "cache_control", "type"}:
            raise _invalid(f"tools.{k}.custom: Extra inputs are not permitted")
        if tool["name"] in names:
            raise _invalid("tools: Tool names must be unique.")
        names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid(
            "tool_choice: Input tag found using 'type' does not match any of the "
            "expected tags: 'auto', 'any', 'tool', 'none'"
        )
    if not names:
        raise _invalid("tool_choice: tool_choice may only be specified while providing tools.")
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise _invalid(f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in tools")


def _validate_thinking(body: dict[str, Any], signatures: set[str] | frozenset[str]) -> None:
    messages = body["messages"]
    for i, message in enumerate(messages):
        for block in _as_blocks(message["content"]):
            if block["type"] == "thinking" and (
                not isinstance(block.get("thinking"), str)
                or block.get("signature") not in signatures
            ):
                raise _invalid(f"messages.{i}.content: Invalid `signature` in `thinking` block")
    thinking = body.get("thinking")
    if thinking is None or thinking == {"type": "disabled"}:
        return
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is not None and last + 1 < len(messages):
        blocks = _as_blocks(messages[last]["content"])
        answered = any(
            b["type"] == "tool_result" for b in _as_blocks(messages[last + 1]["content"])
        )
        if blocks and answered and blocks[0]["type"] not in ("thinking", "redacted_thinking"):
            raise _invalid(
                f"messages.{last}.content.0.type: Expected `thinking` or "
                f"`redacted_thinking`, but found `{blocks[0]['type']}`. When "
                "`thinking` is enabled, a final `assistant` message must start with "
                "a thinking block (preceeding the lastmost set of `tool_use` and "
                "`tool_result` blocks)."
            )
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if (
        not isinstance(thinking, dict)
        or thinking.get("type") != "enabled"
        or not isinstance(budget, int)
    ):
        raise _invalid("thinking: Input should be {type: enabled, budget_tokens} or disabled")
    if budget < 1024:
        raise _invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if body["max_tokens"] <= budget:
        raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if body.get("temperature") not in (None, 1):
        raise _invalid("`temperature` may only be set to 1 when thinking is enabled.")


async def start_fake_anthropic(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[FakeAnthropic, web.AppRunner, str]:
    """Start on ``port`` (0: the OS picks); return (fake, runner, base URL without /v1)."""
    fake = FakeAnthropic()
    runner, base_url = await start(fake, host, port)
    return fake, runner, base_url
