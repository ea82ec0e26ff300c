"""OpenAI Responses (``POST /v1/responses``: Codex CLI, the Agents SDK) <-> kallm's chat.

A Responses request for an OpenAI-kind provider is relayed as it is; this
module is for a Responses request routed to an Anthropic or Gemini provider.
The request becomes an OpenAI chat request (the chat adapters translate that
further) and the chat answer becomes a Responses ``response`` object. Streams,
native assembly and replay live in ``responses_stream``. Nothing here does I/O.

Refused with a 400 naming the field: what needs OpenAI's server-side state
(``previous_response_id``, ``conversation``, ``background``, stored ``prompt``
templates, ``item_reference`` items, file ids) and OpenAI's hosted tools
(web_search, file_search, computer use, code interpreter, MCP...): a translated
provider has neither. Dropped: foreign ``reasoning`` input items (their
``encrypted_content`` is sealed by, and only readable to, the provider that
wrote it), ``text.verbosity`` (a style hint with no equivalent), ``store``
(nothing is stored; the response says ``store: false``), ``truncation``,
``include``, ``prompt_cache_key``, ``service_tier``, ``context_management``.

Reasoning round trip: an Anthropic answer's thinking comes back as a
``reasoning`` item whose ``encrypted_content`` carries kallm's own sealed copy
of the thinking and its signature; when the client sends that item back (as
Codex and the Agents SDK do), the thinking is restored on the assistant turn,
which Anthropic requires for tool use with extended thinking.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from kallm.dialects.common import (
    derived_id,
    image_part,
    int_field,
    number_field,
    require_string,
    tool_message,
)
from kallm.dialects.messages import reasoning_text
from kallm.errors import RequestError

_STATEFUL = {
    "previous_response_id": "the conversation stored by OpenAI",
    "conversation": "a conversation stored by OpenAI",
    "prompt": "a prompt template stored by OpenAI",
}
_EFFORTS = {"none", "minimal", "low", "medium", "high", "xhigh"}
_SEALED = "kallm.r1."  # prefix of kallm's own reasoning encrypted_content
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


# ---------------------------------------------------------------- request


def chat_request_from_responses(body: Any) -> dict[str, Any]:
    """A Responses request body -> an OpenAI chat request; RequestError (400) naming the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = require_string(body.get("model"), "model")
    _refuse_stateful(body)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RequestError("'instructions' must be a string", param="instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += _input(body.get("input"))
    request: dict[str, Any] = {"model": model, "messages": messages}
    if (limit := int_field(body, "max_output_tokens")) is not None:
        request["max_completion_tokens"] = limit
    for name in ("temperature", "top_p"):
        if (value := number_field(body, name)) is not None:
            request[name] = value
    if effort := _effort(body.get("reasoning")):
        request["reasoning_effort"] = effort
    if response_format := _response_format(body.get("text")):
        request["response_format"] = response_format
    _add_tools(request, body)
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        request["user"] = user
    if body.get("top_logprobs"):
        raise RequestError("'top_logprobs' is not supported for this model", param="top_logprobs")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", param="stream")
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


def _refuse_stateful(body: dict[str, Any]) -> None:
    for name, what in _STATEFUL.items():
        if body.get(name) is not None:
            raise RequestError(
                f"'{name}' needs {what}, which this model's provider does not have; "
                "send the whole conversation in 'input' instead",
                param=name,
            )
    if body.get("background") is True:
        raise RequestError(
            "'background' responses are not supported for this model: its provider keeps "
            "no server-side responses to poll",
            param="background",
        )


def _input(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise RequestError("'input' must be a string or an array of input items", param="input")
    history = _History()
    for i, item in enumerate(value):
        history.add(item, f"input[{i}]")
    return history.finish()


class _History:
    """Builds chat messages from input items: a function_call joins the assistant message
    before it, consecutive tool outputs stay together with their images after them, and
    kallm's own reasoning items are restored onto the assistant turn that follows."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []  # from tool outputs, shown after them
        self._reasoning: tuple[str, str] | None = None  # (thinking, signature) to restore

    def finish(self) -> list[dict[str, Any]]:
        self._flush_images()
        return self.messages

    def add(self, item: Any, param: str) -> None:
        if not isinstance(item, dict):
            raise RequestError(f"'{param}' must be an object", param=param)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            self._message(item, param)
        elif kind == "function_call":
            self._function_call(item, param)
        elif kind == "function_call_output":
            self._function_output(item, param)
        elif kind == "reasoning":
            self._reasoning = unseal_reasoning(item.get("encrypted_content"))
        elif kind == "item_reference":
            raise RequestError(
                f"'{param}': item references need items stored by OpenAI; send the items "
                "themselves for this model",
                param=f"{param}.type",
            )
        else:
            raise RequestError(
                f"'{param}': input item type {kind!r} is not supported for this model "
                "(message, function_call, function_call_output and reasoning items are)",
                param=f"{param}.type",
            )

    def _message(self, item: dict[str, Any], param: str) -> None:
        role = item.get("role")
        if role == "assistant":
            self._flush_images()
            text = _assistant_text(item.get("content"), f"{param}.content")
            self._assistant({"role": "assistant", "content": text})
        elif role in ("user", "system", "developer"):
            self._flush_images()
            content = _user_content(item.get("content"), f"{param}.content")
            self.messages.append(
                {"role": "user" if role == "user" else "system", "content": content}
            )
        else:
            raise RequestError(
                f"'{param}.role' must be user, assistant, system or developer",
                param=f"{param}.role",
            )

    def _assistant(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._reasoning is not None:
            message["reasoning_content"], message["reasoning_signature"] = self._reasoning
            self._reasoning = None
        self.messages.append(message)
        return message

    def _function_call(self, item: dict[str, Any], param: str) -> None:
        self._flush_images()
        arguments = item.get("arguments", "")
        if not isinstance(arguments, str):
            raise RequestError(f"'{param}.arguments' must be a string", param=f"{param}.arguments")
        call = {
            "id": require_string(item.get("call_id"), f"{param}.call_id"),
            "type": "function",
            "function": {
                "name": require_string(item.get("name"), f"{param}.name"),
                "arguments": arguments or "{}",
            },
        }
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant" or self._reasoning is not None:
            last = self._assistant({"role": "assistant", "content": None})
        last.setdefault("tool_calls", []).append(call)

    def _function_output(self, item: dict[str, Any], param: str) -> None:
        call_id = require_string(item.get("call_id"), f"{param}.call_id")
        output = item.get("output")
        if isinstance(output, str):
            texts, images = [output], []
        elif isinstance(output, list):
            texts, images = _output_parts(output, f"{param}.output")
        else:
            raise RequestError(
                f"'{param}.output' must be a string or an array of content parts",
                param=f"{param}.output",
            )
        self.messages.append(tool_message(call_id, texts, bool(images)))
        self._images += images

    def _flush_images(self) -> None:
        if self._images:
            self.messages.append({"role": "user", "content": self._images})
            self._images = []


def _part(part: Any, param: str) -> dict[str, Any]:
    """One input content part as a chat part (text, image or PDF file)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"'{param}.text' must be a string", param=f"{param}.text")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise RequestError(
                f"'{param}.image_url' is required for this model (file ids are OpenAI's)",
                param=f"{param}.image_url",
            )
        return image_part(url, part.get("detail"))
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise RequestError(
                f"'{param}.file_data' is required for this model (file ids and URLs are OpenAI's)",
                param=f"{param}.file_data",
            )
        if not data.startswith("data:"):
            data = f"data:application/pdf;base64,{data}"
        filename = part.get("filename") if isinstance(part.get("filename"), str) else "file.pdf"
        return {"type": "file", "file": {"file_data": data, "filename": filename}}
    raise RequestError(f"content part type {kind!r} is not supported for this model", param=param)


def _user_content(content: Any, param: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"'{param}' must be a string or an array of content parts", param=param)
    parts = [_part(p, f"{param}[{j}]") for j, p in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _assistant_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"'{param}' must be a string or an array of content parts", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        field = "refusal" if kind == "refusal" else "text"
        if kind not in ("output_text", "input_text", "refusal") or not isinstance(
            part.get(field), str
        ):
            raise RequestError(
                f"'{param}[{j}]' must be an output_text or refusal part", param=f"{param}[{j}]"
            )
        texts.append(part[field])
    return "".join(texts)


def _output_parts(output: list[Any], param: str) -> tuple[list[str], list[dict[str, Any]]]:
    texts, images = [], []
    for j, part in enumerate(output):
        chat = _part(part, f"{param}[{j}]")
        if chat["type"] == "text":
            texts.append(chat["text"])
        elif chat["type"] == "image_url":
            images.append(chat)
        else:
            raise RequestError(
                "files in a function_call_output are not supported for this model",
                param=f"{param}[{j}]",
            )
    return texts, images


def _effort(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise RequestError("'reasoning' must be an object", param="reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise RequestError(
            "'reasoning.effort' must be none, minimal, low, medium, high or xhigh",
            param="reasoning.effort",
        )
    return "high" if effort == "xhigh" else effort


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise RequestError("'text' must be an object", param="text")
    spec = text.get("format")
    if spec is None or spec == {"type": "text"}:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise RequestError(
            "'text.format.type' must be text, json_object or json_schema",
            param="text.format.type",
        )
    schema = {
        "name": require_string(spec.get("name"), "text.format.name"),
        "schema": spec.get("schema"),
    }
    if not isinstance(schema["schema"], dict):
        raise RequestError("'text.format.schema' must be an object", param="text.format.schema")
    for name in ("strict", "description"):
        if spec.get(name) is not None:
            schema[name] = spec[name]
    return {"type": "json_schema", "json_schema": schema}


def _add_tools(request: dict[str, Any], body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array", param="tools")
    functions = [_function(tool, f"tools[{k}]") for k, tool in enumerate(tools)]
    if not functions:
        return
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        functions, choice = _allowed(functions, choice)
    request["tools"] = [{"type": "function", "function": f} for f in functions]
    if choice is not None:
        request["tool_choice"] = _tool_choice(choice, {f["name"] for f in functions})
    parallel = body.get("parallel_tool_calls")
    if isinstance(parallel, bool):
        request["parallel_tool_calls"] = parallel


def _function(tool: Any, param: str) -> dict[str, Any]:
    """A function tool (flat: name/description/parameters/strict at the top) as chat's."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise RequestError(
            f"'{param}' is a {kind!r} tool, which OpenAI runs on its own servers; only "
            "'function' tools can be sent to this model",
            param=f"{param}.type",
        )
    function: dict[str, Any] = {"name": require_string(tool.get("name"), f"{param}.name")}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return function


def _allowed(functions: list[dict[str, Any]], choice: dict[str, Any]) -> tuple[list, str]:
    """``allowed_tools``: only the listed functions are offered, in the given mode."""
    names = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise RequestError("'tool_choice.mode' must be auto or required", param="tool_choice.mode")
    return [f for f in functions if f["name"] in names], mode


def _tool_choice(choice: Any, names: set[str]) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if name not in names:
            raise RequestError(
                f"'tool_choice.name' {name!r} is not one of the function tools",
                param="tool_choice.name",
            )
        return {"type": "function", "function": {"name": name}}
    raise RequestError(
        "'tool_choice' must be auto, none, required, a function or allowed_tools for this model",
        param="tool_choice",
    )


# ---------------------------------------------------------------- reasoning seal


def seal_reasoning(thinking: str, signature: str) -> str:
    """Thinking and its signature as a reasoning item's ``encrypted_content``.

    Not encryption: the client only has to hand it back unchanged, and Anthropic
    verifies the signature itself.
    """
    raw = json.dumps({"thinking": thinking, "signature": signature}, ensure_ascii=False)
    return _SEALED + base64.urlsafe_b64encode(raw.encode()).decode()


def unseal_reasoning(content: Any) -> tuple[str, str] | None:
    """(thinking, signature) from kallm's sealed content; None for anyone else's."""
    if not isinstance(content, str) or not content.startswith(_SEALED):
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(content[len(_SEALED) :]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    thinking, signature = value.get("thinking"), value.get("signature")
    if isinstance(thinking, str) and isinstance(signature, str):
        return thinking, signature
    return None


# ---------------------------------------------------------------- response


def response_id(completion_id: str) -> str:
    """Derived from the chat completion's id: the stream and the whole answer agree."""
    return derived_id("resp_", "response", completion_id)


def item_id(prefix: str, resp_id: str, output_index: int) -> str:
    return derived_id(prefix, resp_id, output_index)


def call_id(completion_id: str, index: int) -> str:
    """For a provider that sent a tool call without an id."""
    return derived_id("call_", completion_id, index)[:29]


def reasoning_item(item: str, text: str, signature: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item, "type": "reasoning", "summary": []}
    if text:
        out["summary"] = [{"type": "summary_text", "text": text}]
    if signature:
        out["encrypted_content"] = seal_reasoning(text, signature)
    return out


def message_item(item: str, kind: str, text: str, status: str) -> dict[str, Any]:
    """An assistant message with one ``output_text`` (or ``refusal``) part."""
    part: dict[str, Any]
    if kind == "refusal":
        part = {"type": "refusal", "refusal": text}
    else:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item, "type": "message", "status": status, "role": "assistant", "content": [part]}


def function_call_item(item: str, call: str, name: str, arguments: str, status: str) -> dict:
    return {
        "id": item,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call,
        "name": name,
    }


def status_of(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details): cut by the token limit or a filter -> incomplete."""
    reason = _INCOMPLETE.get(str(finish_reason or ""))
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def response_from_chat(completion: Mapping[str, Any], request: Mapping[str, Any]) -> dict:
    """A ``chat.completion`` (first choice) -> a Responses ``response`` object.

    Output order: a reasoning item (summary = the provider's thinking), the
    message, then one function_call item per tool call.
    """
    completion_id = str(completion.get("id") or "")
    resp = response_id(completion_id)
    choices = completion.get("choices") or [{}]
    choice = next((c for c in choices if c.get("index", 0) == 0), choices[0])
    message = choice.get("message") or {}
    status, details = status_of(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    if reasoning := reasoning_text(message):
        signature = message.get("reasoning_signature")
        output.append(reasoning_item(item_id("rs_", resp, 0), reasoning, signature))
    calls = message.get("tool_calls") or []
    text, refusal = message.get("content"), message.get("refusal")
    kind, words = ("text", text) if isinstance(text, str) and text else ("refusal", refusal)
    if isinstance(words, str) and words:
        item_status = status if not calls else "completed"
        output.append(message_item(item_id("msg_", resp, len(output)), kind, words, item_status))
    for k, call in enumerate(calls):
        function = call.get("function") or {}
        output.append(
            function_call_item(
                item_id("fc_", resp, len(output)),
                call.get("id") or call_id(completion_id, k),
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    created = completion.get("created")
    return response_object(
        request,
        resp,
        created if isinstance(created, int | float) else 0,
        status,
        output,
        usage_from_chat(completion.get("usage")),
        details,
    )


def response_object(
    request: Mapping[str, Any],
    resp: str,
    created_at: float,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_details: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``response`` with the request fields a client expects echoed back."""
    return {
        "id": resp,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """OpenAI chat usage -> Responses usage (both count cached tokens inside the input)."""
    if not isinstance(usage, Mapping):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or {}
    prompt = _count(usage.get("prompt_tokens"))
    output = _count(usage.get("completion_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")),
            "cache_write_tokens": _count(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": output,
        "output_tokens_details": {
            "reasoning_tokens": _count(output_details.get("reasoning_tokens"))
        },
        "total_tokens": prompt + output,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
