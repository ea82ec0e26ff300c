"""OpenAI chat completions <-> Anthropic Messages API, as pure translations.

kallm speaks one API (OpenAI's) to its clients and its cache; this module lets
an Anthropic upstream sit behind it. Requests are rewritten into a Messages
body (system prompt hoisted, turns merged so roles alternate, tool calls and
results as ``tool_use`` / ``tool_result`` blocks), and answers, streams and
errors are rewritten back so that a streamed answer assembles to exactly the
completion the non-streamed call returns. Nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Any

from kallm.errors import RequestError, UpstreamError
from kallm.providers import translate as t

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI callers often omit it
API_VERSION = "2023-06-01"
PROVIDER = "Anthropic"

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error type -> (status to report, OpenAI type, OpenAI code)
_ERRORS: dict[str, tuple[int | None, str, str | None]] = {
    "invalid_request_error": (None, "invalid_request_error", None),
    "authentication_error": (None, "authentication_error", "invalid_api_key"),
    "permission_error": (None, "permission_error", None),
    "not_found_error": (None, "not_found_error", None),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (None, "rate_limit_error", "rate_limit_exceeded"),
    "billing_error": (None, "billing_error", "insufficient_quota"),
    "api_error": (None, "server_error", None),
    "overloaded_error": (503, "server_error", "overloaded"),
    "timeout_error": (504, "server_error", "timeout"),
}
_PARAM_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")
_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def request_headers(api_key: str) -> dict[str, str]:
    return {
        "x-api-key": api_key,
        "anthropic-version": API_VERSION,
        "content-type": "application/json",
    }


def chat_path() -> str:
    """Relative to the base URL ``https://api.anthropic.com``."""
    return "/v1/messages"


# ---------------------------------------------------------------- request


def build_request(request: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """OpenAI chat request -> Messages body; RequestError (400) for what cannot be expressed."""
    t.reject_unsupported(
        request,
        PROVIDER,
        {"n": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0)},
    )
    response_format = request.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise RequestError(
            f"'response_format' is not supported for {PROVIDER} models; "
            "ask for JSON in the prompt or use a tool",
            param="response_format",
        )
    thinking = _thinking(request)
    thinks = thinking is not None and thinking.get("type") == "enabled"
    system, messages = _messages(request.get("messages") or [], thinks)
    body: dict[str, Any] = {"model": model, "messages": messages}
    limit = t.max_tokens(request)
    if thinking is not None and thinks:
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise RequestError(
                "'thinking.budget_tokens' must be an integer", param="thinking.budget_tokens"
            )
        if limit is None:
            limit = budget + DEFAULT_MAX_TOKENS
        elif limit <= budget:
            raise RequestError(
                f"'max_tokens' must be greater than the thinking budget "
                f"({budget}) for {PROVIDER} models",
                param="max_tokens",
            )
    body["max_tokens"] = limit or DEFAULT_MAX_TOKENS
    if system:
        body["system"] = system
    if stops := t.stop_list(request):
        body["stop_sequences"] = stops
    for name in ("temperature", "top_p", "top_k"):
        if request.get(name) is not None:
            body[name] = request[name]
    if isinstance(request.get("user"), str) and request["user"]:
        body["metadata"] = {"user_id": request["user"]}
    if thinking is not None:
        body["thinking"] = thinking
    _add_tools(body, request)
    if stream:
        body["stream"] = True
    return body


def _thinking(request: dict[str, Any]) -> dict[str, Any] | None:
    """An explicit ``thinking`` object (sent via extra_body) wins; else ``reasoning_effort``."""
    if isinstance(request.get("thinking"), dict):
        return request["thinking"]
    effort = request.get("reasoning_effort")
    if effort is None or effort in ("none", "minimal"):
        return None
    if effort not in _THINKING_BUDGETS:
        raise RequestError(
            "'reasoning_effort' must be none, minimal, low, medium or high",
            param="reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": _THINKING_BUDGETS[effort]}


def _messages(messages: list[dict[str, Any]], thinks: bool) -> tuple[Any, list[dict[str, Any]]]:
    """(system, messages): system/developer hoisted, same-role turns merged, user first."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, param = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system += _text_blocks(message.get("content"), f"{param}.content")
        elif role == "user":
            _append(turns, "user", _user_blocks(message.get("content"), f"{param}.content"))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, param, thinks))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, param)])
        else:
            raise RequestError(
                f"'{param}.role' {role!r} is not supported for {PROVIDER} models",
                param=f"{param}.role",
            )
    for turn in turns:
        if turn["role"] == "user":  # tool results must open the user turn that answers them
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not turns or turns[0]["role"] != "user":
        # Anthropic needs a user turn first; chat UIs often open with an assistant greeting.
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "."}]})
    last = turns[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        last["content"][-1]["text"] = last["content"][-1]["text"].rstrip()  # prefill rule
        if not last["content"][-1]["text"]:
            last["content"].pop()
            if not last["content"]:
                turns.pop()
    if any("cache_control" in block for block in system):
        return system, turns
    return "\n\n".join(block["text"] for block in system), turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_block(part: dict[str, Any]) -> dict[str, Any] | None:
    text = part.get("text")
    if not isinstance(text, str) or not text:
        return None
    block: dict[str, Any] = {"type": "text", "text": text}
    if isinstance(part.get("cache_control"), dict):  # Anthropic prompt caching, passed through
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, list):
        t.text_of(content, param)  # validates: text parts only
        return [b for b in map(_text_block, content) if b is not None]
    text = t.text_of(content, param)
    return [{"type": "text", "text": text}] if text else []


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    blocks = []
    for j, part in enumerate(t.content_parts(content, param)):
        kind, where = part.get("type"), f"{param}[{j}]"
        if kind in ("text", "input_text"):
            block = _text_block(part)
            if block is not None:
                blocks.append(block)
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.image_url"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{where}.file"))
        else:
            raise RequestError(
                f"content part type {kind!r} is not supported for {PROVIDER} models", param=where
            )
    return blocks


def _image(image: Any, param: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise RequestError(f"'{param}.url' is required", param=f"{param}.url")
    data = t.parse_data_url(url, f"{param}.url")
    if data is not None:
        mime, b64 = data
        if mime not in _IMAGE_TYPES:
            raise RequestError(
                f"image type {mime!r} is not supported; use {', '.join(sorted(_IMAGE_TYPES))}",
                param=f"{param}.url",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": b64}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise RequestError(f"'{param}.url' must be a data: or http(s) URL", param=f"{param}.url")


def _document(file: Any, param: str) -> dict[str, Any]:
    raw = file.get("file_data") if isinstance(file, dict) else None
    data = t.parse_data_url(raw, f"{param}.file_data") if isinstance(raw, str) else None
    if data is None or data[0] != "application/pdf":
        raise RequestError(
            f"only PDF files sent as 'file_data' data: URLs are supported for {PROVIDER} models",
            param=param,
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": data[0], "data": data[1]},
    }


def _assistant_blocks(message: dict[str, Any], param: str, thinks: bool) -> list[dict[str, Any]]:
    """Text, tool_use, and (when thinking is on) the signed thinking block sent back.

    With thinking on, Anthropic refuses a tool loop whose assistant turn does not open
    with its signed thinking block; the signature travels as ``reasoning_signature``.
    """
    blocks = []
    reasoning, signature = message.get("reasoning_content"), message.get("reasoning_signature")
    if thinks and isinstance(reasoning, str) and reasoning and isinstance(signature, str):
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": signature})
    for j, part in enumerate(t.content_parts(message.get("content"), f"{param}.content")):
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if not isinstance(text, str):
            raise RequestError(
                f"'{param}.content[{j}]' must be a text part", param=f"{param}.content[{j}]"
            )
        if text:
            blocks.append({"type": "text", "text": text})
    for k, call in enumerate(message.get("tool_calls") or []):
        where = f"{param}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RequestError(f"'{where}.function.name' is required", param=where)
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id"), f"{where}.id"),
                "name": function["name"],
                "input": t.parse_arguments(
                    function.get("arguments"), f"{where}.function.arguments"
                ),
            }
        )
    return blocks


def _tool_result(message: dict[str, Any], param: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _tool_id(message.get("tool_call_id"), f"{param}.tool_call_id"),
    }
    text = t.text_of(message.get("content"), f"{param}.content")
    if text:
        block["content"] = text
    return block


def _tool_id(value: Any, param: str) -> str:
    """Anthropic ids match ^[a-zA-Z0-9_-]+$; map others the same way everywhere they occur."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"'{param}' is required", param=param)
    return _TOOL_ID_BAD.sub("_", value)


def _add_tools(body: dict[str, Any], request: dict[str, Any]) -> None:
    functions = t.tool_functions(request)
    choice = t.tool_choice(request)
    if not functions:
        return
    names = {f["name"] for f in functions}
    tools = []
    for function in functions:
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        tool: dict[str, Any] = {"name": function["name"], "input_schema": schema}
        if function.get("description"):
            tool["description"] = function["description"]
        tools.append(tool)
    body["tools"] = tools
    mode, name = choice or ("auto", None)
    if mode == "function" and name not in names:
        raise RequestError(
            f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice"
        )
    native: dict[str, Any] = {
        "type": {"auto": "auto", "none": "none", "required": "any", "function": "tool"}[mode]
    }
    if name is not None:
        native["name"] = name
    if request.get("parallel_tool_calls") is False and mode != "none":
        native["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in native:
        body["tool_choice"] = native


# ---------------------------------------------------------------- response


def translate_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Messages response -> chat.completion (id ``chatcmpl-<message id>``, model as asked)."""
    texts, reasoning, calls = [], [], []
    signature = None
    for block in body.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            signature = signature or block.get("signature")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": t.arguments_json(block.get("input")),
                    },
                }
            )
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
        if signature:  # the first block's: what a stream can carry too
            message["reasoning_signature"] = signature
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _FINISH.get(body.get("stop_reason") or "", "stop"),
    }
    return t.completion(
        "chatcmpl-" + str(body.get("id") or t.new_id("")),
        model,
        [choice],
        _usage(body.get("usage") or {}),
    )


def _usage(native: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's input_tokens excludes cached tokens; OpenAI's prompt_tokens includes them."""
    read = native.get("cache_read_input_tokens") or 0
    created = native.get("cache_creation_input_tokens") or 0
    prompt = (native.get("input_tokens") or 0) + read + created
    return t.usage(prompt, native.get("output_tokens") or 0, cached=read, written=created)


class StreamTranslator:
    """Anthropic SSE events in, OpenAI chunks out; one instance per stream."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = t.new_id()
        self.created = t.now()
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, dict[str, Any]] = {}  # block index -> {"index", "args"}
        self._content_sent = False
        self._thinking_blocks = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once message_stop was seen: the stream is whole."""
        return self._finished

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return t.chunk(self.id, self.created, self.model, [t.delta_choice(0, delta, finish)])

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message") or {}
            if message.get("id"):
                self.id = "chatcmpl-" + message["id"]
            self._usage.update(
                {k: v for k, v in (message.get("usage") or {}).items() if v is not None}
            )
            return [self._chunk({"role": "assistant"})]
        if kind == "content_block_start":
            return self._block_start(data.get("index", 0), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(data.get("index", 0), data.get("delta") or {})
        if kind == "content_block_stop":
            tool = self._tools.get(data.get("index", 0))
            if tool is not None and not tool["args"]:  # no input deltas: an argument-less call
                return [self._tool_delta(tool, {"arguments": "{}"})]
            return []
        if kind == "message_delta":
            self._usage.update(
                {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            )
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason is None:
                return []
            # A reply with neither text nor tool calls is "" (as non-streamed), not null.
            delta = {} if self._content_sent or self._tools else {"content": ""}
            return [self._chunk(delta, _FINISH.get(reason, "stop"))]
        if kind == "message_stop":
            self._finished = True
            return [t.chunk(self.id, self.created, self.model, [], _usage(self._usage))]
        if kind == "error":
            error = data.get("error") or {}
            raise UpstreamError(
                f"{PROVIDER} stream error: "
                f"{error.get('message') or error.get('type') or 'unknown'}",
                code=str(error.get("type") or "upstream_error"),
            )
        return []  # ping, and event types added after this was written

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            self._content_sent = True
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking":
            self._thinking_blocks += 1
            return (
                [self._chunk({"reasoning_content": block["thinking"]})]
                if block.get("thinking")
                else []
            )
        if kind == "tool_use":
            tool = {"index": len(self._tools), "args": False}
            self._tools[index] = tool
            head = {
                "index": tool["index"],
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            chunks = [self._chunk({"tool_calls": [head]})]
            if block.get("input"):
                chunks.append(
                    self._tool_delta(tool, {"arguments": t.arguments_json(block["input"])})
                )
            return chunks
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            self._content_sent = True
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "signature_delta" and delta.get("signature") and self._thinking_blocks == 1:
            return [self._chunk({"reasoning_signature": delta["signature"]})]
        tool = self._tools.get(index)
        if kind == "input_json_delta" and tool is not None and delta.get("partial_json"):
            return [self._tool_delta(tool, {"arguments": delta["partial_json"]})]
        return []  # citations_delta, later signatures: nothing OpenAI can carry

    def _tool_delta(self, tool: dict[str, Any], function: dict[str, Any]) -> dict[str, Any]:
        tool["args"] = True
        return self._chunk({"tool_calls": [{"index": tool["index"], "function": function}]})


# ---------------------------------------------------------------- errors


def translate_error(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """Anthropic error (JSON or not) -> (status for the client, OpenAI error envelope)."""
    parsed = t.json_object(body)
    error = parsed.get("error") if parsed else None
    if not isinstance(error, dict):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return _status(status), t.error_body(t.raw_error_message(status, body), kind)
    native = str(error.get("type") or "")
    message = str(error.get("message") or native or f"upstream returned HTTP {status}")
    override, kind, code = _ERRORS.get(
        native, (None, "server_error" if status >= 500 else "invalid_request_error", None)
    )
    if native == "not_found_error" and message.startswith("model:"):
        code = "model_not_found"
    match = _PARAM_PREFIX.match(message)
    param = match.group(1) if match and native == "invalid_request_error" else None
    return override or _status(status), t.error_body(message, kind, param, code)


def _status(status: int) -> int:
    """529 is Anthropic's own "overloaded"; clients and SDKs know 503."""
    if status == 529:
        return 503
    return status if 400 <= status <= 599 else 502
