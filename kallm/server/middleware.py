"""Middleware every request passes: request id, OpenAI-shaped errors, the access log line."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler

from kallm.errors import KallmError, PayloadTooLarge, UpstreamLoop
from kallm.server.app import RUNTIME, Runtime
from kallm.server.log import RequestLog, emit, start_request_log
from kallm.server.loop import came_from

log = logging.getLogger("kallm.server")


def error_response(error: KallmError) -> web.Response:
    return web.json_response(error.to_body(), status=error.status, headers=error.headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and a log line; turn every failure into OpenAI's error JSON."""
    request_id = request.headers.get("X-Request-Id") or secrets.token_hex(8)
    record = start_request_log(request, request_id)
    runtime = request.app[RUNTIME]
    try:
        response = await _answer(request, handler, record, runtime)
    finally:
        await runtime.accounts.finish(record)
    return response


async def _answer(
    request: web.Request, handler: Handler, record: RequestLog, runtime: Runtime
) -> web.StreamResponse:
    try:
        if came_from(request.headers, runtime.instance_id):
            raise UpstreamLoop(
                "kallm received its own upstream call: its upstream URL (OPENAI_BASE_URL or a "
                "provider's base_url) points back at this kallm"
            )
        response = await handler(request)
    except KallmError as exc:
        response = error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = runtime.settings.max_body_bytes
        response = error_response(
            PayloadTooLarge(f"request body is over the {limit:,}-byte limit (server.max_body_size)")
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_http_error(exc))
    except ConnectionResetError:
        record.status, record.note = 499, "client disconnected"
        emit(record)
        runtime.metrics.observe(record)
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = error_response(KallmError("internal error in kallm; see the server log"))
    response.headers.setdefault("X-Request-Id", record.request_id)
    if record.admission is not None and not response.prepared:
        response.headers.update(record.admission.rate_headers)
    record.status = response.status
    emit(record)
    runtime.metrics.observe(record)
    return response


def _http_error(exc: web.HTTPException) -> KallmError:
    """aiohttp's own 404/405/... in OpenAI's shape."""
    error = KallmError(f"{exc.reason}")
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error
