"""A strict fake of the Gemini API's generateContent and streamGenerateContent.

Like the real API it rejects unknown fields (proto JSON: camelCase or
snake_case), roles other than user/model, empty or many-valued parts,
function responses that do not answer the function call turn before them,
OpenAPI-subset ``parameters`` carrying JSON-Schema-only keywords, and, for
Gemini 3 models, unsigned function calls in the current turn; errors come in
Google's ``{"error": {"code", "message", "status"}}`` shape. Streams are
``data:`` events (``alt=sse``) or one JSON array. Steering mirrors
``tests.fake_upstream``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any

from aiohttp import web

from tests.fake_base import FakeServer, start
from tests.fake_upstream import count_tokens

SKIP_SIGNATURE = "skip_thought_signature_validator"
_PATH = re.compile(
    r"^/v1beta/((?:models|tunedModels)/[^/:]+):(generateContent|"
    r"streamGenerateContent)$"
)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_TEXT = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
_FIELDS = {
    "request": {
        "model",
        "contents",
        "systemInstruction",
        "generationConfig",
        "tools",
        "toolConfig",
        "safetySettings",
        "cachedContent",
    },
    "content": {"role", "parts"},
    "part": {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
        "thought",
        "thoughtSignature",
        "videoMetadata",
    },
    "generationConfig": {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "thinkingConfig",
        "speechConfig",
        "mediaResolution",
    },
    "thinkingConfig": {"includeThoughts", "thinkingBudget", "thinkingLevel"},
    "tool": {
        "functionDeclarations",
        "googleSearch",
        "googleSearchRetrieval",
        "codeExecution",
        "urlContext",
    },
    "functionDeclaration": {
        "name",
        "description",
        "parameters",
        "parametersJsonSchema",
        "response",
        "responseJsonSchema",
        "behavior",
    },
    "schema": {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    },
}
_DATA_FIELDS = (
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
)
_FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")


class GeminiError(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details

    def body(self) -> dict[str, Any]:
        error = {
            "code": self.status,
            "message": self.message,
            "status": _STATUS.get(self.status, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _invalid(message: str) -> GeminiError:
    return GeminiError(400, message)


class FakeGemini(FakeServer):
    """Steering (``reset()`` clears it): ``fail_status`` / ``fail_times`` / ``fail_message``,
    ``stall_seconds``, ``cut_stream_after`` (N events, then the socket drops before any
    finishReason), ``reply``, ``api_key`` (None: any), ``cached_tokens`` (reported as
    cachedContentTokenCount), ``finish_reason`` (e.g. "SAFETY": no content) and
    ``block_prompt`` (promptFeedback.blockReason, no candidates). Observation:
    ``calls``, ``requests``, ``signatures`` (thought signatures handed out).
    """

    def reset(self) -> None:
        super().reset()
        self.raw_paths: list[str] = []
        self.api_key: str | None = None
        self.cached_tokens = 0
        self.finish_reason: str | None = None
        self.block_prompt: str | None = None
        self.signatures: set[str] = set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.raw_paths.append(request.raw_path)  # the target exactly as it arrived
        _raw, parsed = await self.record(request)
        try:
            await self.pause(self.stall_seconds)
            match = _PATH.match(request.path)
            if request.method != "POST" or match is None:
                raise GeminiError(404, f"Method not found: {request.method} {request.path}")
            self._check_key(request)
            model = match.group(1).split("/", 1)[1]
            if not model.startswith("gemini"):
                raise GeminiError(
                    404,
                    f"models/{model} is not found for API version v1beta, "
                    "or is not supported for generateContent.",
                )
            self._maybe_fail()
            if not isinstance(parsed, dict):
                raise _invalid("Invalid JSON payload received. Expected an object.")
            body = validate(parsed, model, self.signatures)
            turns = [self._turn(body, model, i) for i in range(_candidates(body))]
        except GeminiError as err:
            return web.json_response(err.body(), status=err.status)
        if match.group(2) == "streamGenerateContent":
            return await self._stream(request, body, model, turns)
        return web.json_response(self._response(body, model, turns))

    def _check_key(self, request: web.Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            raise GeminiError(
                403,
                "Method doesn't allow unregistered callers (callers without "
                "established identity). Please use API Key or other form of API "
                "consumer identity to call this API.",
            )
        if self.api_key is not None and key != self.api_key:
            raise GeminiError(
                400,
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )

    def _maybe_fail(self) -> None:
        status = self.armed_failure()
        if status is not None:
            raise GeminiError(status, self.fail_message or _TEXT.get(status, "Injected failure."))

    # -- the fake "model" ---------------------------------------------------------

    def _turn(self, body: dict[str, Any], model: str, index: int) -> dict[str, Any]:
        """One candidate: thought (if asked), then a function call or text; finishReason."""
        config = body.get("generationConfig") or {}
        last = body["contents"][-1]
        text = " ".join(p["text"] for p in last["parts"] if "text" in p)
        responses = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        parts: list[dict[str, Any]] = []
        if (config.get("thinkingConfig") or {}).get("includeThoughts"):
            parts.append({"text": f"The user asks: {text}", "thought": True})
        declarations = [
            d for tool in body.get("tools") or [] for d in tool.get("functionDeclarations") or []
        ]
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        mode = calling.get("mode", "AUTO")
        finish = "STOP"
        if (
            declarations
            and not responses
            and mode != "NONE"
            and (mode == "ANY" or "weather" in text.lower())
        ):
            allowed = calling.get("allowedFunctionNames") or [declarations[0]["name"]]
            declaration = next(d for d in declarations if d["name"] == allowed[0])
            call: dict[str, Any] = {
                "functionCall": {"name": declaration["name"], "args": _args(declaration, text)}
            }
            if _signs(model):
                signature = base64.b64encode(uuid.uuid4().bytes).decode()
                self.signatures.add(signature)
                call["thoughtSignature"] = signature
            parts.append(call)
        else:
            if responses:
                answer = "The tool said: " + " ".join(
                    str(r["response"].get("result", json.dumps(r["response"]))) for r in responses
                )
            else:
                answer = self.reply if self.reply is not None else f"Answer to: {text}"
            answer += f" [{index}]" if index else ""
            for stop in config.get("stopSequences") or []:
                answer = answer.split(stop, 1)[0]
            words = answer.split(" ")
            if config.get("maxOutputTokens") and len(words) > config["maxOutputTokens"]:
                answer, finish = " ".join(words[: config["maxOutputTokens"]]), "MAX_TOKENS"
            parts.append({"text": answer})
        if self.finish_reason is not None:
            finish = self.finish_reason
            if finish != "STOP":
                parts = []  # a filtered candidate comes back without content
        return {"parts": parts, "finish": finish, "index": index}

    def _usage(self, body: dict[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any]:
        prompt = sum(_part_tokens(p) for c in body["contents"] for p in c["parts"])
        prompt += sum(
            _part_tokens(p) for p in (body.get("systemInstruction") or {}).get("parts", [])
        )
        output = sum(_part_tokens(p) for t in turns for p in t["parts"] if not p.get("thought"))
        thoughts = sum(_part_tokens(p) for t in turns for p in t["parts"] if p.get("thought"))
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = min(self.cached_tokens, prompt)
        return usage

    def _response(
        self, body: dict[str, Any], model: str, turns: list[dict[str, Any]]
    ) -> dict[str, Any]:
        blocked = self.block_prompt is not None
        out: dict[str, Any] = {
            "usageMetadata": self._usage(body, [] if blocked else turns),
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22],
        }
        if blocked:
            out["promptFeedback"] = {"blockReason": self.block_prompt}
            return out
        out["candidates"] = [_candidate(t["parts"], t["index"], t["finish"]) for t in turns]
        return out

    # -- streaming ---------------------------------------------------------------------

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, turns: list[dict[str, Any]]
    ) -> web.StreamResponse:
        whole = self._response(body, model, turns)
        head = {k: whole[k] for k in ("modelVersion", "responseId")}
        prompt_usage = {
            k: v
            for k, v in whole["usageMetadata"].items()
            if k in ("promptTokenCount", "promptTokensDetails")
        }
        events: list[tuple[dict[str, Any], bool]] = []
        if self.block_prompt is not None:
            events.append((whole, True))
        for turn in [] if self.block_prompt is not None else turns:
            pieces = [
                {"text": p}
                for part in turn["parts"]
                if "text" in part and not part.get("thought")
                for p in _pieces(part["text"])
            ]
            others = [p for p in turn["parts"] if "text" not in p or p.get("thought")]
            steps = [[p] for p in others] + [[p] for p in pieces] or [[]]
            for k, parts in enumerate(steps):
                final = k == len(steps) - 1
                candidate = _candidate(parts, turn["index"], turn["finish"] if final else None)
                if not turn["index"]:
                    candidate.pop("index")  # proto3 JSON leaves out a zero index
                usage = (
                    whole["usageMetadata"]
                    if final
                    else {**prompt_usage, "totalTokenCount": prompt_usage["promptTokenCount"]}
                )
                events.append(({"candidates": [candidate], "usageMetadata": usage, **head}, final))
        if request.query.get("alt") != "sse":  # without alt=sse: one JSON array
            return web.json_response([payload for payload, _ in events])
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            for sent, (payload, terminal) in enumerate(events):
                cut = self.cut_stream_after
                if cut is not None and (sent >= cut or terminal):
                    if request.transport is not None:
                        request.transport.close()
                    return response
                data = json.dumps(payload, ensure_ascii=False)
                await response.write(f"data: {data}\r\n\r\n".encode())
        except ConnectionError:
            pass
        return response


def _candidate(parts: list[dict[str, Any]], index: int, finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": index}
    if parts or not finish:
        candidate["content"] = {"parts": parts, "role": "model"}
    if finish:
        candidate["finishReason"] = finish
    return candidate


def _candidates(body: dict[str, Any]) -> int:
    return (body.get("generationConfig") or {}).get("candidateCount") or 1


def _signs(model: str) -> bool:
    match = re.search(r"gemini-(\d+)", model)
    return match is not None and int(match.group(1)) >= 3


def _pieces(text: str) -> list[str]:
    pieces = re.findall(r"\s*\S+", text)
    if pieces:
        pieces[-1] += text[len("".join(pieces)) :]
    return pieces or ([text] if text else [])


def _part_tokens(part: dict[str, Any]) -> int:
    if "text" in part:
        return count_tokens(part["text"])
    if "functionCall" in part:
        return count_tokens(json.dumps(part["functionCall"].get("args") or {}))
    if "functionResponse" in part:
        return count_tokens(json.dumps(part["functionResponse"]["response"]))
    return 258  # what Gemini charges for a small image


def _args(declaration: dict[str, Any], text: str) -> dict[str, Any]:
    schema = declaration.get("parametersJsonSchema") or declaration.get("parameters") or {}
    properties = list(schema.get("properties") or {})
    if not properties:
        return {}
    match = re.search(r"\bin ([A-Z][\w-]*(?: [A-Z][\w-]*)*)", text)
    name = "location" if "location" in properties else properties[0]
    return {name: match.group(1) if match else "Paris"}


# -- request validation ----------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _fields(value: Any, kind: str, where: str) -> dict[str, Any]:
    """``value`` with camelCase keys, or Google's error for an unknown one."""
    if not isinstance(value, dict):
        raise _invalid(f"Invalid value at '{where}', expected an object.")
    out = {}
    for key, item in value.items():
        name = _camel(key)
        if name not in _FIELDS[kind]:
            raise _invalid(
                f'Invalid JSON payload received. Unknown name "{key}" at '
                f"'{where}': Cannot find field."
            )
        out[name] = item
    return out


def validate(raw: dict[str, Any], model: str, signatures: set[str]) -> dict[str, Any]:
    """The request with camelCase keys; GeminiError(400) for what the real API refuses."""
    body = _fields(raw, "request", "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified")
    body["contents"] = [_content(c, f"contents[{i}]") for i, c in enumerate(contents)]
    if "systemInstruction" in body:
        body["systemInstruction"] = _content(body["systemInstruction"], "system_instruction")
    _validate_turns(body["contents"], model, signatures)
    body["generationConfig"] = _generation_config(body.get("generationConfig") or {})
    tools = body.get("tools") or []
    body["tools"] = [_tool(t, f"tools[{k}]") for k, t in enumerate(tools)]
    _tool_config(body)
    return body


def _content(value: Any, where: str) -> dict[str, Any]:
    content = _fields(value, "content", where)
    if content.get("role", "user") not in ("user", "model"):
        raise _invalid("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    content["parts"] = [_part(p, f"{where}.parts[{j}]") for j, p in enumerate(parts)]
    content.setdefault("role", "user")
    return content


def _part(value: Any, where: str) -> dict[str, Any]:
    part = _fields(value, "part", where)
    data = [name for name in _DATA_FIELDS if name in part and part[name] not in ("", None)]
    if not data:
        raise _invalid(
            f"* GenerateContentRequest.{where}.data: required oneof field 'data' "
            "must have one initialized field"
        )
    if len(data) > 1:
        raise _invalid(
            f"Invalid value at '{where}' (oneof), oneof field 'data' is already "
            f"set. Cannot set '{data[1]}'"
        )
    if "inlineData" in part:
        inline = part["inlineData"]
        if not isinstance(inline, dict) or not inline.get("mimeType"):
            raise _invalid(
                f"* GenerateContentRequest.{where}.inline_data.mime_type: "
                "required field is not specified"
            )
        try:
            base64.b64decode(inline.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(
                f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
            ) from None
    call = part.get("functionCall")
    if call is not None and (
        not isinstance(call, dict)
        or not isinstance(call.get("name"), str)
        or not isinstance(call.get("args", {}), dict)
    ):
        raise _invalid(
            f"* GenerateContentRequest.{where}.function_call: name and args (an "
            "object) are required"
        )
    response = part.get("functionResponse")
    if response is not None and (
        not isinstance(response, dict)
        or not isinstance(response.get("name"), str)
        or not isinstance(response.get("response"), dict)
    ):
        raise _invalid(
            f"* GenerateContentRequest.{where}.function_response: name and response "
            "(an object) are required"
        )
    return part


def _validate_turns(contents: list[dict[str, Any]], model: str, signatures: set[str]) -> None:
    """Function calls and responses must pair up turn by turn; Gemini 3 calls must be signed."""
    current = max(
        (
            i
            for i, c in enumerate(contents)
            if c["role"] == "user" and any("text" in p for p in c["parts"])
        ),
        default=0,
    )
    for i, content in enumerate(contents):
        calls = [p for p in content["parts"] if "functionCall" in p]
        responses = [p for p in content["parts"] if "functionResponse" in p]
        if (calls and content["role"] != "model") or (responses and content["role"] != "user"):
            raise _invalid(
                "Please ensure that function calls come from the model and function "
                "responses from the user."
            )
        if calls and (i == 0 or contents[i - 1]["role"] != "user"):
            raise _invalid(
                "Please ensure that function call turn comes immediately after a user "
                "turn or after a function response turn."
            )
        if responses:
            previous = [p for p in contents[i - 1]["parts"] if "functionCall" in p] if i else []
            if not previous:
                raise _invalid(
                    "Please ensure that function response turn comes immediately "
                    "after a function call turn."
                )
            if len(previous) != len(responses):
                raise _invalid(
                    "Please ensure that the number of function response parts is "
                    "equal to the number of function call parts of the function "
                    "call turn."
                )
            if sorted(p["functionCall"]["name"] for p in previous) != sorted(
                p["functionResponse"]["name"] for p in responses
            ):
                raise _invalid(
                    "Please ensure that function response names match the function "
                    "call names of the function call turn."
                )
        for part in content["parts"]:
            signature = part.get("thoughtSignature")
            if (
                signature is not None
                and signature != SKIP_SIGNATURE
                and signature not in signatures
            ):
                raise _invalid("Corrupted thought signature.")
        if calls and i > current and _signs(model) and "thoughtSignature" not in calls[0]:
            raise _invalid(
                "Function call is missing a thought_signature in functionCall parts. This is "
                "required for tools to work correctly, and missing thought_signature may lead "
                "to degraded model performance. Additional data, function call "
                f"`default_api:{calls[0]['functionCall']['name']}` , position {i + 1}. Please "
                "refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more "
                "details."
            )


def _generation_config(value: Any) -> dict[str, Any]:
    config = _fields(value, "generationConfig", "generation_config")
    stops = config.get("stopSequences") or []
    if not isinstance(stops, list) or len(stops) > 5:
        raise _invalid(
            "* GenerateContentRequest.generation_config.stop_sequences: at most 5 "
            "stop sequences are allowed"
        )
    if "responseSchema" in config and "responseJsonSchema" in config:
        raise _invalid("response_schema and response_json_schema cannot both be set.")
    if ("responseSchema" in config or "responseJsonSchema" in config) and config.get(
        "responseMimeType"
    ) != "application/json":
        raise _invalid("response_mime_type must be application/json when a response schema is set.")
    if "responseSchema" in config:
        _schema(config["responseSchema"], "generation_config.response_schema")
    temperature = config.get("temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise _invalid(
            "* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]"
        )
    count = config.get("candidateCount")
    if count is not None and (not isinstance(count, int) or not 1 <= count <= 8):
        raise _invalid(
            "* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8"
        )
    if "thinkingConfig" in config:
        thinking = _fields(
            config["thinkingConfig"], "thinkingConfig", "generation_config.thinking_config"
        )
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            raise _invalid("You can only set either thinking budget or thinking level.")
        config["thinkingConfig"] = thinking
    return config


def _schema(value: Any, where: str) -> None:
    """The OpenAPI-subset Schema: JSON-Schema-only keywords are unknown fields."""
    schema = _fields(value, "schema", where)
    for name, item in (schema.get("properties") or {}).items():
        _schema(item, f"{where}.properties[{name}].value")
    if "items" in schema:
        _schema(schema["items"], f"{where}.items")
    for k, item in enumerate(schema.get("anyOf") or []):
        _schema(item, f"{where}.any_of[{k}]")


def _tool(value: Any, where: str) -> dict[str, Any]:
    tool = _fields(value, "tool", where)
    declarations = []
    for k, raw in enumerate(tool.get("functionDeclarations") or []):
        at = f"{where}.function_declarations[{k}]"
        declaration = _fields(raw, "functionDeclaration", at)
        if not _FUNCTION_NAME.match(str(declaration.get("name", ""))):
            raise _invalid(
                f"* GenerateContentRequest.{at}.name: Invalid function name. Must "
                "start with a letter or an underscore. Must be alphameric (a-z, A-Z, "
                "0-9), underscores (_), dots (.), colons (:), or dashes (-), with a "
                "maximum length of 64."
            )
        if "parameters" in declaration and "parametersJsonSchema" in declaration:
            raise _invalid(
                f"* GenerateContentRequest.{at}: parameters and "
                "parameters_json_schema are mutually exclusive"
            )
        if "parameters" in declaration:
            _schema(declaration["parameters"], f"{at}.parameters")
        declarations.append(declaration)
    if declarations:
        tool["functionDeclarations"] = declarations
    return tool


def _tool_config(body: dict[str, Any]) -> None:
    config = body.get("toolConfig")
    if config is None:
        return
    if not isinstance(config, dict) or set(config) - {
        "functionCallingConfig",
        "function_calling_config",
    }:
        raise _invalid("Invalid JSON payload received. Unknown name at 'tool_config'.")
    calling = config.get("functionCallingConfig") or config.get("function_calling_config") or {}
    calling = {_camel(k): v for k, v in calling.items()}
    if set(calling) - {"mode", "allowedFunctionNames"}:
        raise _invalid(
            "Invalid JSON payload received. Unknown name at 'tool_config.function_calling_config'."
        )
    if calling.get("mode", "AUTO") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        raise _invalid(
            f"Invalid value at 'tool_config.function_calling_config.mode', "
            f'"{calling.get("mode")}"'
        )
    names = {d["name"] for t in body["tools"] for d in t.get("functionDeclarations") or []}
    allowed = calling.get("allowedFunctionNames")
    if allowed is not None:
        if calling.get("mode") not in ("ANY", "VALIDATED"):
            raise _invalid("allowed_function_names can only be set when mode is ANY.")
        if not set(allowed) <= names:
            raise _invalid("allowed_function_names must name declared functions.")
    body["toolConfig"] = {"functionCallingConfig": calling}


async def start_fake_gemini(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[FakeGemini, web.AppRunner, str]:
    """Start on ``port`` (0: the OS picks); return (fake, runner, base URL without /v1beta)."""
    fake = FakeGemini()
    runner, base_url = await start(fake, host, port)
    return fake, runner, base_url
