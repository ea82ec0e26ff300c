"""OpenAI chat completions <-> Gemini generateContent, as pure translations.

The Gemini API differs from OpenAI's in shape more than in meaning: turns are
``contents`` with ``parts``, the assistant is "model", tool results are
``functionResponse`` parts that name the function (not a call id), and
settings live in ``generationConfig``. Streams are plain ``data:`` events, each
a partial GenerateContentResponse, with no end marker: the caller tells the
translator when the stream ended (``close``). Nothing here does I/O.

Gemini 3 models sign their function calls (``thoughtSignature``) and reject a
history whose calls come back unsigned. The signature travels to OpenAI
clients as ``tool_calls[i].extra_content.google.thought_signature`` (the field
Google's own OpenAI-compatible endpoint uses) and is sent back from there;
when a client dropped it, the documented "skip" signature keeps the request valid.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from kallm.errors import RequestError, UpstreamError
from kallm.providers import translate as t

PROVIDER = "Gemini"
# The documented stand-in (ai.google.dev/gemini-api/docs/thought-signatures).
SKIP_SIGNATURE = "skip_thought_signature_validator"

_FILTERED = (
    "SAFETY",
    "RECITATION",
    "LANGUAGE",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
)
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", **dict.fromkeys(_FILTERED, "content_filter")}
_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
# google.rpc status -> (OpenAI type, OpenAI code)
_ERRORS: dict[str, tuple[str, str | None]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", None),
    "FAILED_PRECONDITION": ("invalid_request_error", None),
    "OUT_OF_RANGE": ("invalid_request_error", None),
    "UNAUTHENTICATED": ("authentication_error", "invalid_api_key"),
    "PERMISSION_DENIED": ("permission_error", None),
    "NOT_FOUND": ("not_found_error", None),
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded"),
    "INTERNAL": ("server_error", None),
    "UNAVAILABLE": ("server_error", "overloaded"),
    "DEADLINE_EXCEEDED": ("server_error", "timeout"),
}
_GENERATION = re.compile(r"gemini-(\d+)")


def request_headers(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key, "content-type": "application/json"}


def chat_path(model: str, stream: bool) -> str:
    """Relative to ``https://generativelanguage.googleapis.com``; SSE framing for streams.

    The model name becomes part of the URL path, so it is one encoded segment there
    (``gemini-2.5-flash/../gemini-2.5-pro`` can never name another model).
    """
    collection, _, bare = (
        model.rpartition("/")
        if model.startswith(("models/", "tunedModels/"))
        else ("models", "/", model)
    )
    name = f"{collection}/{quote(bare, safe='-._~')}"
    if stream:
        return f"/v1beta/{name}:streamGenerateContent?alt=sse"
    return f"/v1beta/{name}:generateContent"


def _signs_calls(model: str) -> bool:
    match = _GENERATION.search(model)
    return match is not None and int(match.group(1)) >= 3


# ---------------------------------------------------------------- request


def build_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """OpenAI chat request -> GenerateContentRequest; RequestError (400) for the inexpressible."""
    t.reject_unsupported(request, PROVIDER)
    system, contents = _contents(request.get("messages") or [], _signs_calls(model))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config = _generation_config(request, model)
    if config:
        body["generationConfig"] = config
    _add_tools(body, request)
    return body


def _generation_config(request: dict[str, Any], model: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, native in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if request.get(name) is not None:
            config[native] = request[name]
    if (limit := t.max_tokens(request)) is not None:
        config["maxOutputTokens"] = limit
    if stops := t.stop_list(request):
        config["stopSequences"] = stops
    n = request.get("n")
    if n is not None and n != 1:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RequestError("'n' must be a positive integer", param="n")
        config["candidateCount"] = n
    config.update(_response_format(request.get("response_format")))
    if thinking := _thinking(request, model):
        config["thinkingConfig"] = thinking
    return config


def _response_format(value: Any) -> dict[str, Any]:
    """json_schema uses responseJsonSchema: it takes JSON Schema as OpenAI clients write it
    (additionalProperties, type unions), where the older responseSchema rejects those."""
    if value is None or value == {"type": "text"}:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise RequestError(
                "'response_format.json_schema' is required", param="response_format.json_schema"
            )
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(spec.get("schema"), dict):
            out["responseJsonSchema"] = spec["schema"]
        return out
    raise RequestError(
        "'response_format.type' must be text, json_object or json_schema", param="response_format"
    )


def _thinking(request: dict[str, Any], model: str) -> dict[str, Any] | None:
    """Google's own OpenAI layer takes extra_body {"google": {"thinking_config": {...}}}."""
    google = request.get("google")
    if isinstance(google, dict) and isinstance(google.get("thinking_config"), dict):
        return {_camel(k): v for k, v in google["thinking_config"].items()}
    effort = request.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in _BUDGETS:
        raise RequestError(
            "'reasoning_effort' must be none, minimal, low, medium or high",
            param="reasoning_effort",
        )
    if _signs_calls(model):  # Gemini 3 thinks in levels, not budgets
        return {
            "thinkingLevel": "minimal" if effort == "none" else effort,
            "includeThoughts": effort != "none",
        }
    return {"thinkingBudget": _BUDGETS[effort], "includeThoughts": effort != "none"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _contents(messages: list[dict[str, Any]], signs: bool) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for functionResponse
    for i, message in enumerate(messages):
        role, param = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            if text := t.text_of(message.get("content"), f"{param}.content"):
                system.append(text)
        elif role == "user":
            _append(contents, "user", _user_parts(message.get("content"), f"{param}.content"))
        elif role == "assistant":
            _append(contents, "model", _model_parts(message, param, names, signs))
        elif role == "tool":
            _append(contents, "user", [_function_response(message, param, names)])
        else:
            raise RequestError(
                f"'{param}.role' {role!r} is not supported for {PROVIDER} models",
                param=f"{param}.role",
            )
    if not contents or contents[0]["role"] != "user":
        contents.insert(0, {"role": "user", "parts": [{"text": "."}]})
    return "\n\n".join(system), contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:  # Gemini rejects empty parts lists and empty text
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(t.content_parts(content, param)):
        kind, where = part.get("type"), f"{param}[{j}]"
        if kind in ("text", "input_text"):
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_inline(url, f"{where}.image_url.url", "image URLs"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            fmt = audio.get("format")
            if fmt not in ("wav", "mp3") or not isinstance(audio.get("data"), str):
                raise RequestError(
                    "'input_audio' needs base64 'data' and format wav or mp3", param=where
                )
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") or {}
            parts.append(_inline(file.get("file_data"), f"{where}.file.file_data", "files"))
        else:
            raise RequestError(
                f"content part type {kind!r} is not supported for {PROVIDER} models", param=where
            )
    return parts


def _inline(url: Any, param: str, what: str) -> dict[str, Any]:
    data = t.parse_data_url(url, param) if isinstance(url, str) else None
    if data is None:  # Gemini fetches no arbitrary URLs; callers must inline the bytes
        raise RequestError(f"{what} must be base64 data: URLs for {PROVIDER} models", param=param)
    return {"inlineData": {"mimeType": data[0], "data": data[1]}}


def _model_parts(
    message: dict[str, Any], param: str, names: dict[str, str], signs: bool
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(t.content_parts(message.get("content"), f"{param}.content")):
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if not isinstance(text, str):
            raise RequestError(
                f"'{param}.content[{j}]' must be a text part", param=f"{param}.content[{j}]"
            )
        if text:
            parts.append({"text": text})
    for k, call in enumerate(message.get("tool_calls") or []):
        where = f"{param}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RequestError(f"'{where}.function.name' is required", param=where)
        if isinstance(call.get("id"), str):
            names[call["id"]] = function["name"]
        native: dict[str, Any] = {
            "functionCall": {
                "name": function["name"],
                "args": t.parse_arguments(function.get("arguments"), f"{where}.function.arguments"),
            }
        }
        google = (call.get("extra_content") or {}).get("google") or {}
        if isinstance(google.get("thought_signature"), str):
            native["thoughtSignature"] = google["thought_signature"]
        elif signs and k == 0:  # only the first call of a step carries the signature
            native["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(native)
    return parts


def _function_response(
    message: dict[str, Any], param: str, names: dict[str, str]
) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    name = name or message.get("name")
    if not isinstance(name, str):
        raise RequestError(
            f"'{param}.tool_call_id' does not match a tool call of an earlier assistant message",
            param=f"{param}.tool_call_id",
        )
    text = t.text_of(message.get("content"), f"{param}.content")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"result": text}  # must be an object
    return {"functionResponse": {"name": name, "response": response}}


def _add_tools(body: dict[str, Any], request: dict[str, Any]) -> None:
    functions = t.tool_functions(request)
    choice = t.tool_choice(request)
    if not functions:
        return
    declarations = []
    for function in functions:
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters"):  # JSON Schema as written, like responseJsonSchema
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    body["tools"] = [{"functionDeclarations": declarations}]
    if choice is None:
        return
    mode, name = choice
    if mode == "function" and name not in {f["name"] for f in functions}:
        raise RequestError(
            f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice"
        )
    config: dict[str, Any] = {
        "mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[mode]
    }
    if name is not None:
        config["allowedFunctionNames"] = [name]
    body["toolConfig"] = {"functionCallingConfig": config}


# ---------------------------------------------------------------- response


def _tool_call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    out: dict[str, Any] = {
        "id": call.get("id") or t.new_id("call_"),
        "type": "function",
        "function": {"name": call.get("name", ""), "arguments": t.arguments_json(call.get("args"))},
    }
    if part.get("thoughtSignature"):
        out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return out


def _finish(reason: str | None, has_calls: bool) -> str:
    if has_calls and reason in (None, "STOP"):
        return "tool_calls"
    return _FINISH.get(reason or "", "stop")


def translate_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    """GenerateContentResponse -> chat.completion; a blocked prompt is a content_filter choice."""
    choices = []
    for position, candidate in enumerate(body.get("candidates") or []):
        texts, thoughts, calls = [], [], []
        for part in (candidate.get("content") or {}).get("parts") or []:
            if "functionCall" in part:
                calls.append(_tool_call(part))
            elif isinstance(part.get("text"), str):
                (thoughts if part.get("thought") else texts).append(part["text"])
        text = "".join(texts)
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": candidate.get("index", position),
                "message": message,
                "logprobs": None,
                "finish_reason": _finish(candidate.get("finishReason"), bool(calls)),
            }
        )
    if not choices:  # promptFeedback.blockReason: the prompt itself was refused
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        ]
    response_id = body.get("responseId")
    completion_id = "chatcmpl-" + response_id if response_id else t.new_id()
    return t.completion(completion_id, model, choices, _usage(body.get("usageMetadata")))


def _usage(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """Thoughts are output tokens in OpenAI's accounting (reasoning_tokens), so they count."""
    if not isinstance(meta, dict):
        return None
    prompt = (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0)
    thoughts = meta.get("thoughtsTokenCount") or 0
    out = t.usage(
        prompt,
        (meta.get("candidatesTokenCount") or 0) + thoughts,
        cached=meta.get("cachedContentTokenCount") or 0,
        reasoning=thoughts,
    )
    if meta.get("totalTokenCount"):
        out["total_tokens"] = meta["totalTokenCount"]
    return out


class StreamTranslator:
    """Gemini SSE data objects in, OpenAI chunks out; ``close()`` at the end of the stream."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = t.new_id()
        self.created = t.now()
        self._started = False
        self._choices: dict[int, dict[str, Any]] = {}  # index -> {"tools", "content", "finish"}
        self._usage: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """True once every candidate seen has a finishReason."""
        return bool(self._choices) and all(s["finish"] for s in self._choices.values())

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict:
        return t.chunk(self.id, self.created, self.model, [t.delta_choice(index, delta, finish)])

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(data.get("error"), dict):
            error = data["error"]
            raise UpstreamError(
                f"{PROVIDER} stream error: {error.get('message') or error.get('status')}",
                code=str(error.get("status") or "upstream_error").lower(),
            )
        if not self._started:
            self._started = True
            if data.get("responseId"):
                self.id = "chatcmpl-" + data["responseId"]
        if isinstance(data.get("usageMetadata"), dict):
            self._usage = data["usageMetadata"]  # cumulative; the last one is the total
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            candidates = [{"index": 0, "finishReason": "PROHIBITED_CONTENT"}]
        chunks: list[dict[str, Any]] = []
        for position, candidate in enumerate(candidates):
            chunks += self._candidate(candidate.get("index", position), candidate)
        return chunks

    def _candidate(self, index: int, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        chunks = []
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = {"tools": 0, "content": False, "finish": None}
            chunks.append(self._chunk(index, {"role": "assistant"}))
        for part in (candidate.get("content") or {}).get("parts") or []:
            if "functionCall" in part:
                call = {"index": state["tools"], **_tool_call(part)}
                state["tools"] += 1
                chunks.append(self._chunk(index, {"tool_calls": [call]}))
            elif isinstance(part.get("text"), str) and part["text"]:
                if part.get("thought"):
                    chunks.append(self._chunk(index, {"reasoning_content": part["text"]}))
                else:
                    state["content"] = True
                    chunks.append(self._chunk(index, {"content": part["text"]}))
        reason = candidate.get("finishReason")
        if reason and state["finish"] is None:
            state["finish"] = _finish(reason, state["tools"] > 0)
            delta = {} if state["content"] or state["tools"] else {"content": ""}
            chunks.append(self._chunk(index, delta, state["finish"]))
        return chunks

    def close(self) -> list[dict[str, Any]]:
        """The final usage chunk (empty choices), if the stream reported usage."""
        usage = _usage(self._usage)
        return [] if usage is None else [t.chunk(self.id, self.created, self.model, [], usage)]


# ---------------------------------------------------------------- errors


def translate_error(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """``{"error": {"code", "message", "status"}}`` (JSON or not) -> (status, OpenAI envelope)."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, list) and parsed:  # the non-SSE stream endpoint answers with an array
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    code_status = status if 400 <= status <= 599 else 502
    if not isinstance(error, dict):
        kind = "server_error" if code_status >= 500 else "invalid_request_error"
        return code_status, t.error_body(t.raw_error_message(status, body), kind)
    native = str(error.get("status") or "")
    message = str(error.get("message") or native or f"upstream returned HTTP {status}")
    kind, code = _ERRORS.get(
        native, ("server_error" if code_status >= 500 else "invalid_request_error", None)
    )
    reasons = {d.get("reason") for d in error.get("details") or [] if isinstance(d, dict)}
    if "API_KEY_INVALID" in reasons:  # Gemini says 400; every OpenAI client expects 401
        return 401, t.error_body(message, "authentication_error", None, "invalid_api_key")
    return code_status, t.error_body(message, kind, None, code)
