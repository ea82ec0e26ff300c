"""Anthropic Messages (``POST /v1/messages``, what Claude Code speaks) <-> kallm's chat.

A Messages request for an Anthropic provider is relayed as it is; this module
is for the other case: a Messages request routed to an OpenAI-compatible or a
Gemini provider. The request becomes an OpenAI chat request (which the chat
adapters already know how to send anywhere) and the chat answer becomes an
Anthropic ``message``. Streams, native stream assembly and replay live in
``messages_stream``. Nothing here does I/O.

What cannot be carried across is refused with a 400 naming the field
(server tools, MCP servers, code-execution containers, Files-API sources);
what only tunes Anthropic's own service is dropped (``cache_control`` — other
providers cache prompts by themselves or not at all —, ``service_tier``,
``context_management``, ``inference_geo``, ``speed``); thinking blocks in the
history are dropped because their signatures only mean something to Anthropic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from kallm.dialects.common import (
    derived_id,
    fresh_id,
    image_part,
    int_field,
    json_text,
    number_field,
    require_string,
    safe_id_part,
    tool_message,
)
from kallm.errors import BudgetExceeded, KallmError, RequestError

# Server-side Anthropic features a translated provider cannot run.
_REFUSED = {
    "mcp_servers": "MCP servers run inside Anthropic's API",
    "container": "code-execution containers run inside Anthropic's API",
}
# Thinking budget (tokens) -> OpenAI reasoning effort: the inverse of what
# kallm.providers.anthropic sends for an effort (low 1024, medium 4096, high 16384).
_EFFORT_BY_BUDGET = ((2048, "low"), (8192, "medium"))
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and code
IMAGE_TOKENS = 1600  # Anthropic: about (width x height) / 750; ~1.2 megapixels is typical


# ---------------------------------------------------------------- request


def chat_request_from_messages(
    body: Any, *, max_tokens_field: str = "max_completion_tokens"
) -> dict[str, Any]:
    """A Messages request body -> an OpenAI chat request; RequestError (400) naming the field.

    ``max_tokens_field`` is where Anthropic's (required) ``max_tokens`` goes: OpenAI's
    reasoning models accept only ``max_completion_tokens``; an old local server that only
    knows ``max_tokens`` can be given that name instead.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = require_string(body.get("model"), "model")
    limit = int_field(body, "max_tokens", required=True)
    for name, why in _REFUSED.items():
        if body.get(name):
            raise RequestError(
                f"'{name}' is not supported for this model: {why}; use a Claude model",
                param=name,
            )
    request: dict[str, Any] = {"model": model, "messages": _messages(body), max_tokens_field: limit}
    if stops := _stop_sequences(body.get("stop_sequences")):
        request["stop"] = stops
    for name in ("temperature", "top_p", "top_k"):
        # top_k has no OpenAI name; Gemini, vLLM, Ollama and llama.cpp take it as it is,
        # OpenAI itself answers with its own 400, relayed.
        if (value := number_field(body, name)) is not None:
            request[name] = value
    if effort := _effort(body):
        request["reasoning_effort"] = effort
    if response_format := _response_format(body):
        request["response_format"] = response_format
    _add_tools(request, body)
    if user := _user(body.get("metadata")):
        request["user"] = user
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    out: list[dict[str, Any]] = []
    if system := _system(body.get("system")):
        out.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        out += _turn(turn, f"messages[{i}]")
    return out


def _system(system: Any) -> str:
    """A string, or text blocks (their ``cache_control`` dropped) joined by blank lines."""
    if system is None or isinstance(system, str):
        return system or ""
    if isinstance(system, list):
        texts = []
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise RequestError(f"'system[{j}]' must be a text block", param=f"system[{j}]")
            texts.append(_text(block, f"system[{j}]"))
        return "\n\n".join(t for t in texts if t)
    raise RequestError("'system' must be a string or an array of text blocks", param="system")


def _text(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise RequestError(f"'{param}.text' must be a string", param=f"{param}.text")
    return text


def _blocks(turn: dict[str, Any], param: str) -> list[dict[str, Any]]:
    content = turn.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise RequestError(
        f"'{param}.content' must be a string or an array of content blocks",
        param=f"{param}.content",
    )


def _turn(turn: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(turn, dict):
        raise RequestError(f"'{param}' must be an object with role and content", param=param)
    role = turn.get("role")
    if role == "user":
        return _user_turn(_blocks(turn, param), param)
    if role == "assistant":
        return [_assistant_turn(_blocks(turn, param), param)]
    raise RequestError(
        f"'{param}.role' must be 'user' or 'assistant' (got {role!r}); "
        "a system prompt goes in the top-level 'system'",
        param=f"{param}.role",
    )


def _user_turn(blocks: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages (first, as chat wants), the rest one user message."""
    tools: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind, where = block.get("type"), f"{param}.content[{j}]"
        if kind == "text":
            if text := _text(block, where):
                parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_image(block.get("source"), f"{where}.source"))
        elif kind == "document":
            parts.append(_document(block, where))
        elif kind == "tool_result":
            message, images = _tool_result(block, where)
            tools.append(message)
            tool_images += images
        else:
            raise RequestError(
                f"content block type {kind!r} is not supported for this model", param=where
            )
    out = tools
    content = tool_images + parts
    if len(content) == 1 and content[0]["type"] == "text":
        out.append({"role": "user", "content": content[0]["text"]})
    elif content or not tools:  # an empty turn stays a turn, as "" (chat refuses [])
        out.append({"role": "user", "content": content or ""})
    return out


def _image(source: Any, param: str) -> dict[str, Any]:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media = require_string(source.get("media_type"), f"{param}.media_type")
        data = require_string(source.get("data"), f"{param}.data")
        return image_part(f"data:{media};base64,{data}")
    if kind == "url":
        return image_part(require_string(source.get("url"), f"{param}.url"))
    raise RequestError(
        f"'{param}.type' must be 'base64' or 'url' for this model "
        "(Files API ids belong to Anthropic)",
        param=f"{param}.type",
    )


def _document(block: dict[str, Any], param: str) -> dict[str, Any]:
    """A PDF as a chat ``file`` part; a plain-text document as text."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and source.get("media_type") == "application/pdf":
        data = require_string(source.get("data"), f"{param}.source.data")
        title = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {
            "type": "file",
            "file": {"file_data": f"data:application/pdf;base64,{data}", "filename": title},
        }
    if kind == "text":
        return {"type": "text", "text": require_string(source.get("data"), f"{param}.source.data")}
    raise RequestError(
        f"'{param}.source' must be a base64 PDF or a text source for this model",
        param=f"{param}.source",
    )


def _tool_result(block: dict[str, Any], param: str) -> tuple[dict[str, Any], list[dict]]:
    """(the ``tool`` message, images the result carried). ``is_error`` says so in the text,
    as chat has no error flag on tool messages."""
    call_id = require_string(block.get("tool_use_id"), f"{param}.tool_use_id")
    content = block.get("content")
    if content is None or isinstance(content, str):
        texts, images = [content or ""], []
    elif isinstance(content, list):
        texts, images = [], []
        for k, item in enumerate(content):
            where = f"{param}.content[{k}]"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                texts.append(_text(item, where))
            elif kind == "image":
                images.append(_image(item.get("source"), f"{where}.source"))
            else:
                raise RequestError(
                    f"tool_result content type {kind!r} is not supported for this model",
                    param=where,
                )
    else:
        raise RequestError(
            f"'{param}.content' must be a string or an array of blocks", param=f"{param}.content"
        )
    if block.get("is_error") is True:
        texts = ["Error: " + "\n".join(t for t in texts if t)]
    return tool_message(call_id, texts, bool(images)), images


def _assistant_turn(blocks: list[dict[str, Any]], param: str) -> dict[str, Any]:
    """Text and tool_use blocks; thinking blocks are dropped (their signatures are Anthropic's)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind, where = block.get("type"), f"{param}.content[{j}]"
        if kind == "text":
            if text := _text(block, where):
                texts.append(text)
        elif kind == "tool_use":
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise RequestError(f"'{where}.input' must be an object", param=f"{where}.input")
            calls.append(
                {
                    "id": require_string(block.get("id"), f"{where}.id"),
                    "type": "function",
                    "function": {
                        "name": require_string(block.get("name"), f"{where}.name"),
                        "arguments": json_text(arguments),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise RequestError(
                f"assistant content block type {kind!r} is not supported for this model "
                "(server tool blocks only make sense to Anthropic)",
                param=where,
            )
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    return message


def _stop_sequences(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise RequestError("'stop_sequences' must be an array of strings", param="stop_sequences")


def _effort(body: dict[str, Any]) -> str | None:
    """``output_config.effort`` wins; else an enabled thinking budget as an effort.

    Adaptive (or disabled) thinking sets nothing: the provider's default is the
    nearest thing to "the model decides".
    """
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("effort") is not None:
        if config["effort"] not in _EFFORTS:
            raise RequestError(
                "'output_config.effort' must be low, medium, high, xhigh or max",
                param="output_config.effort",
            )
        return _EFFORTS[config["effort"]]
    thinking = body.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise RequestError(
                "'thinking.budget_tokens' must be a positive integer",
                param="thinking.budget_tokens",
            )
        return next((effort for top, effort in _EFFORT_BY_BUDGET if budget <= top), "high")
    if kind in ("disabled", "adaptive"):
        return None
    raise RequestError(
        "'thinking.type' must be enabled, adaptive or disabled", param="thinking.type"
    )


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Structured output (``output_config.format``, or the older beta ``output_format``).

    Sent without ``strict``: OpenAI's strict mode demands every property be
    required, which Anthropic's schemas do not, so a valid schema would be refused.
    """
    config = body.get("output_config")
    param = "output_config.format"
    spec = config.get("format") if isinstance(config, dict) else None
    if spec is None:
        spec, param = body.get("output_format"), "output_format"
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        raise RequestError(f"'{param}.type' must be 'json_schema'", param=f"{param}.type")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise RequestError(f"'{param}.schema' must be an object", param=f"{param}.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def _add_tools(request: dict[str, Any], body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array", param="tools")
    functions = [_function(tool, f"tools[{k}]") for k, tool in enumerate(tools)]
    if not functions:
        return
    request["tools"] = [{"type": "function", "function": f} for f in functions]
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        name = choice.get("name")
        if name not in {f["name"] for f in functions}:
            raise RequestError(
                f"'tool_choice.name' {name!r} is not one of the tools", param="tool_choice.name"
            )
        request["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif kind in ("auto", "any", "none"):
        request["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise RequestError(
            "'tool_choice.type' must be auto, any, tool or none", param="tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        request["parallel_tool_calls"] = False


def _function(tool: Any, param: str) -> dict[str, Any]:
    """A custom tool as a chat function; Anthropic-defined and server tools are refused."""
    if not isinstance(tool, dict):
        raise RequestError(f"'{param}' must be an object", param=param)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise RequestError(
            f"'{param}' is an Anthropic tool of type {kind!r}, which only Claude models run; "
            "only custom tools (name, input_schema) can be sent to this model",
            param=f"{param}.type",
        )
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise RequestError(
            f"'{param}.input_schema' must be an object", param=f"{param}.input_schema"
        )
    function: dict[str, Any] = {
        "name": require_string(tool.get("name"), f"{param}.name"),
        "parameters": schema,
    }
    if isinstance(tool.get("description"), str) and tool["description"]:
        function["description"] = tool["description"]
    return function


def _user(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise RequestError("'metadata' must be an object", param="metadata")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise RequestError("'metadata.user_id' must be a string", param="metadata.user_id")
    return user or None


# ---------------------------------------------------------------- response


def message_from_chat(completion: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` (its first choice) -> an Anthropic ``message`` object.

    The id is derived from the completion's, so the streamed translation of the
    same answer (``MessagesStreamFromChat``) names it alike.
    """
    completion_id = str(completion.get("id") or "")
    choices = completion.get("choices") or [{}]
    choice = next((c for c in choices if c.get("index", 0) == 0), choices[0])
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = reasoning_text(message)
    if reasoning:
        signature = message.get("reasoning_signature")
        content.append(
            {
                "type": "thinking",
                "thinking": reasoning,
                "signature": signature if isinstance(signature, str) else "",
            }
        )
    text, refusal = message.get("content"), message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for k, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or tool_use_id(completion_id, k),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    return {
        "id": message_id(completion_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), bool(refusal and not text)),
        "stop_sequence": None,
        "usage": usage_from_chat(completion.get("usage")),
    }


def message_id(completion_id: str) -> str:
    """``msg_`` + the completion id's last 24 alphanumerics (fresh when it has none)."""
    return "msg_" + (safe_id_part(completion_id)[-24:] or fresh_id("")[:24])


def tool_use_id(completion_id: str, index: int) -> str:
    """For a provider that sent a tool call without an id (Anthropic requires one)."""
    return derived_id("toolu_", completion_id, index)[:30]


def reasoning_text(message: Mapping[str, Any]) -> str:
    """Reasoning as OpenAI-compatible servers send it: ``reasoning_content`` (kallm, DeepSeek,
    vLLM) or ``reasoning`` (Ollama, OpenRouter)."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments as Anthropic's ``input`` object.

    A model that wrote arguments that are not a JSON object still gets its call
    through, as ``{"_raw_arguments": "..."}``: the client's tool then refuses the
    input and the model sees why and can try again, instead of a failed request.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": str(arguments)}


def stop_reason(finish_reason: Any, refused: bool = False) -> str:
    if refused:
        return "refusal"
    return _STOP_REASON.get(str(finish_reason or "stop"), "end_turn")


def usage_from_chat(usage: Any) -> dict[str, int]:
    """OpenAI usage -> Anthropic's: ``input_tokens`` excludes cached tokens, which OpenAI's
    ``prompt_tokens`` includes; OpenAI reports no cache writes, so those are 0."""
    usage = usage if isinstance(usage, Mapping) else {}
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    prompt = _count(usage.get("prompt_tokens"))
    return {
        "input_tokens": max(prompt - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": _count(usage.get("completion_tokens")),
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# ---------------------------------------------------------------- errors


def anthropic_error(status: int, message: str, type_: str | None = None) -> dict[str, Any]:
    """Anthropic's error body, ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": type_ or error_type(status), "message": message}}


def error_type(status: int) -> str:
    if status in _ERROR_TYPE:
        return _ERROR_TYPE[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_from_openai(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """An OpenAI error (the body as bytes, str or dict; JSON or not) -> (status, Anthropic body).

    The status is kept (clients retry on it); only the type is Anthropic's. A spent
    budget (OpenAI's ``insufficient_quota``) is a ``billing_error``: retrying it is futile.
    """
    parsed = _json_object(body)
    error = parsed.get("error") if parsed else None
    if isinstance(error, dict):
        message = str(error.get("message") or f"upstream returned HTTP {status}")
        quota = "insufficient_quota" in (error.get("code"), error.get("type"))
    else:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        snippet = " ".join(text.split())[:200]
        message = f"upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")
        quota = False
    return status, anthropic_error(status, message, "billing_error" if quota else None)


def error_from_kallm(error: KallmError) -> tuple[int, dict[str, Any]]:
    """kallm's own error (bad request, auth, budget, upstream unreachable...) for an
    Anthropic route."""
    kind = "billing_error" if isinstance(error, BudgetExceeded) else None
    return error.status, anthropic_error(error.status, error.message, kind)


def _json_object(body: Any) -> dict[str, Any] | None:
    if isinstance(body, dict):
        return body
    try:
        value = json.loads(body)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- count_tokens


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """A rough input-token count for ``/v1/messages/count_tokens`` on a non-Anthropic model.

    About 4 characters per token over the text of the system prompt, the
    messages (text, tool inputs and results) and the tools (name, description,
    schema), plus a flat 1,600 per image or PDF. Claude Code uses the number to
    decide when to compact a conversation, so it only needs to be near, never
    exact; it never fails on an odd shape (it counts what it recognises).
    """
    chars, media = _chars(body.get("system"))
    for turn in body.get("messages") or []:
        if isinstance(turn, dict):
            c, m = _chars(turn.get("content"))
            chars, media = chars + c, media + m
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            chars += len(str(tool.get("name") or "")) + len(str(tool.get("description") or ""))
            chars += len(json.dumps(tool.get("input_schema") or {}))
    return max(1, math.ceil(chars / CHARS_PER_TOKEN) + media * IMAGE_TOKENS)


def _chars(content: Any) -> tuple[int, int]:
    """(characters of text, images and documents) in a string or a list of blocks."""
    if isinstance(content, str):
        return len(content), 0
    if not isinstance(content, list):
        return 0, 0
    chars = media = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("image", "document"):
            media += 1
        elif kind == "tool_result":
            c, m = _chars(block.get("content"))
            chars, media = chars + c, media + m
        elif kind in ("tool_use", "server_tool_use"):
            chars += len(str(block.get("name") or "")) + len(json.dumps(block.get("input") or {}))
        else:
            for name in ("text", "thinking"):
                if isinstance(block.get(name), str):
                    chars += len(block[name])
    return chars, media


def count_tokens_response(body: Any) -> dict[str, int]:
    """The ``count_tokens`` answer for a non-Anthropic model: ``{"input_tokens": n}``."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    require_string(body.get("model"), "model")
    if not isinstance(body.get("messages"), list):
        raise RequestError("'messages' must be an array", param="messages")
    return {"input_tokens": estimate_input_tokens(body)}
