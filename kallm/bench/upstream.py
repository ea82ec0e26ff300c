"""A simulated OpenAI upstream that ships with kallm, so ``kallm bench`` needs no API key.

The test-suite's fake upstream can misbehave on cue but is not installed with
the package; a benchmark needs the opposite: something that always answers,
correctly shaped, as fast as it can, with an optional fixed delay standing in
for the model's thinking time (``--latency 800ms`` makes hits' savings
visible). It answers ``POST /v1/chat/completions`` (JSON, or SSE when
``stream`` is true, usage chunk included when asked) so that both kallm and
the ``openai`` SDK accept it, and ``GET /v1/models``. The answer echoes the last
user message, so a wrong cached answer would be visible.

    python -m kallm.bench.upstream --port 8081 --latency 500ms
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
import uuid
from typing import Any

from aiohttp import web

from kallm.config import parse_duration

MODELS = ("gpt-4o-mini", "gpt-4o")
LATENCY = web.AppKey("latency", float)
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    """OpenAI's error envelope, so clients raise their usual exceptions."""
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return web.json_response(body, status=status)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _usage(messages: list[Any], content: str) -> dict[str, int]:
    """Word counts stand in for tokens: cheap, deterministic, and enough for kallm's accounting."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    completion = len(content.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _event(payload: Any) -> bytes:
    return (
        b"data: "
        + (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        + b"\n\n"
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """One choice echoing the question; streamed word by word when ``stream`` is true."""
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return _error(401, "You didn't provide an API key.", code="invalid_api_key")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array", param="messages")
    latency = request.app[LATENCY]
    if latency > 0:
        await asyncio.sleep(latency)
    content = f"Answer to: {_last_user_text(messages)}"
    usage = _usage(messages, content)
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_bench",
    }
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if body.get("stream") is True:
        return await _stream(
            request,
            base,
            content,
            usage,
            headers,
            bool((body.get("stream_options") or {}).get("include_usage")),
        )
    answer = {
        **base,
        "object": "chat.completion",
        "usage": usage,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
            }
        ],
    }
    return web.Response(
        body=json.dumps(answer, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


async def _stream(
    request: web.Request,
    base: dict[str, Any],
    content: str,
    usage: dict[str, int],
    headers: dict[str, str],
    include_usage: bool,
) -> web.StreamResponse:
    """The chunk sequence OpenAI sends: role, content pieces, finish_reason, [usage], [DONE]."""
    response = web.StreamResponse(headers={**_SSE_HEADERS, **headers})
    await response.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **chunk,
            **extra,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    words = content.split(" ")
    pieces = [words[0], *(" " + w for w in words[1:])]
    events = [choice({"role": "assistant", "content": "", "refusal": None})]
    events += [choice({"content": piece}) for piece in pieces]
    events.append(choice({}, "stop"))
    if include_usage:
        events.append({**chunk, "choices": [], "usage": usage})
    with contextlib.suppress(ConnectionError):
        await response.write(b"".join(_event(e) for e in events) + _event(b"[DONE]"))
    return response


async def models(_: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "kallm-bench"}
                for m in MODELS
            ],
        }
    )


def create_upstream(latency: float = 0.0) -> web.Application:
    """The simulated upstream as an aiohttp app (``latency`` seconds before each answer)."""
    app = web.Application()
    app[LATENCY] = latency
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app


async def start_upstream(
    host: str = "127.0.0.1", port: int = 0, latency: float = 0.0
) -> tuple[web.AppRunner, str]:
    """Serve in this event loop; returns the runner (``await runner.cleanup()`` to stop)
    and the base URL, ending in /v1 like an OpenAI base URL."""
    runner = web.AppRunner(create_upstream(latency), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}/v1"


async def _serve(host: str, port: int, latency: float) -> None:
    """Serve until SIGTERM/SIGINT; print the base URL first so a parent can read it."""
    runner, url = await start_upstream(host, port, latency)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick")
    parser.add_argument(
        "--latency", default="0ms", help="delay before each answer: 0ms, 250ms, 1.5s (default 0ms)"
    )
    args = parser.parse_args(argv)
    try:
        latency = parse_duration(args.latency)
    except ValueError as exc:
        parser.error(f"--latency {args.latency!r}: expected {exc}")
    asyncio.run(_serve(args.host, args.port, latency))


if __name__ == "__main__":
    main()
