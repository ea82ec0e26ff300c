"""Small pieces shared by the OpenAI <-> native-API translators (Anthropic, Gemini).

Everything here is pure: dicts in, dicts out, no I/O. The translators speak
OpenAI's chat-completions shapes to the rest of kallm, so the shapes are built
in one place and cannot drift between providers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from kallm.errors import RequestError
from kallm.ids import random_hex

# OpenAI parameters no native API can express; each maps to the value that means "not used".
_NEUTRAL: dict[str, Any] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "functions": (None, []),
    "function_call": (None,),
    "audio": (None,),
    "prediction": (None,),
}


def new_id(prefix: str = "chatcmpl-") -> str:
    """A fresh id in OpenAI's style (prefix + 24 hex digits)."""
    return prefix + random_hex(24)


def now() -> int:
    return int(time.time())


def chunk(
    completion_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``usage`` only on the final, choice-less chunk."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def delta_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def completion(
    completion_id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A ``chat.completion`` body with ``created`` = now."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage(
    prompt: int, completion_tokens: int, cached: int = 0, reasoning: int = 0, written: int = 0
) -> dict:
    """OpenAI's usage object; cached (read) and cache-written tokens are part of ``prompt``,
    reasoning of completion. ``cache_write_tokens`` is kallm's own detail (OpenAI has no
    cache writes), kept so that translated Anthropic answers price their writes."""
    details = {"cached_tokens": cached}
    if written:
        details["cache_write_tokens"] = written
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": details,
    }
    if reasoning:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body


def arguments_json(value: Any) -> str:
    """Tool-call arguments as OpenAI sends them: a JSON string, UTF-8 kept readable."""
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def parse_arguments(raw: Any, param: str) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` string as the object native APIs want."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise RequestError(f"'{param}' must be a JSON object string", param=param) from None
    if not isinstance(value, dict):
        raise RequestError(f"'{param}' must be a JSON object string", param=param)
    return value


_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL
)


def parse_data_url(url: str, param: str) -> tuple[str, str] | None:
    """``data:`` URL -> (media type, base64 data); None for any other URL.

    Non-base64 data URLs are re-encoded, because both native APIs take base64 only.
    """
    if not url.startswith("data:"):
        return None
    match = _DATA_URL.match(url)
    if match is None:
        raise RequestError(f"'{param}' is not a valid data: URL", param=param)
    mime = (match["mime"] or "text/plain").lower()
    data = match["data"]
    if ";base64" in match["params"].lower():
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"'{param}' has invalid base64 data", param=param) from None
        return mime, data
    return mime, base64.b64encode(unquote_to_bytes(data)).decode()


def text_of(content: Any, param: str) -> str:
    """Message content (a string or text parts) as one string, for system and tool messages."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise RequestError(
                    f"'{param}[{j}]' must be a text part here", param=f"{param}[{j}]"
                )
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise RequestError(f"'{param}' must be a string or an array of content parts", param=param)


def content_parts(content: Any, param: str) -> list[dict[str, Any]]:
    """User/assistant content as a list of OpenAI parts (a string becomes one text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    raise RequestError(f"'{param}' must be a string or an array of content parts", param=param)


def stop_list(request: dict[str, Any]) -> list[str]:
    stop = request.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise RequestError("'stop' must be a string or an array of strings", param="stop")


def max_tokens(request: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` wins over the older ``max_tokens``, as in OpenAI."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RequestError(f"'{name}' must be a positive integer", param=name)
        return value
    return None


def reject_unsupported(
    request: dict[str, Any], provider: str, neutral: dict[str, tuple[Any, ...]] | None = None
) -> None:
    """400 for parameters the provider cannot honour, rather than silently dropping them.

    A dropped ``n`` or ``logprobs`` would return an answer the caller did not ask
    for (and kallm would cache it as if it were one), so these fail loudly.
    A neutral value (``logprobs: false``, ``n: 1``) is accepted. ``neutral`` adds
    provider-specific parameters with the values that mean "not used".
    """
    for name, allowed in {**_NEUTRAL, **(neutral or {})}.items():
        if name in request and request[name] not in allowed:
            raise RequestError(f"'{name}' is not supported for {provider} models", param=name)
    for i, message in enumerate(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "function":
            raise RequestError(
                f"messages[{i}]: role 'function' is deprecated and not supported for "
                f"{provider} models; use tools and role 'tool'",
                param=f"messages[{i}].role",
            )


def tool_functions(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of ``tools``, checked enough to translate."""
    tools = request.get("tools") or []
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array", param="tools")
    functions = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise RequestError(
                f"'tools[{i}]' must be a function tool with a name", param=f"tools[{i}]"
            )
        functions.append(function)
    return functions


def tool_choice(request: dict[str, Any]) -> tuple[str, str | None] | None:
    """``tool_choice`` as (mode, function name): mode is auto / none / required / function."""
    choice = request.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return choice, None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") == "function" and isinstance(name, str):
            return "function", name
    raise RequestError(
        "'tool_choice' must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (HTML from a gateway, say)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def raw_error_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    snippet = " ".join(text.split())[:200]
    return f"upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")
