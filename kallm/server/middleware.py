"""The request context every request passes: id, route, errors in the caller's dialect,
the access log line, metrics, and the settlement of what admission held.

Errors kallm produces are OpenAI's error JSON, or Anthropic's on Anthropic routes, so each
SDK shows them the way it shows its own provider's. Whatever ends a request (an answer,
an error, a client that left), its reservation is settled and its log row written.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from kallm.dialects.messages import error_from_kallm
from kallm.errors import (
    BudgetExceeded,
    KallmError,
    PayloadTooLarge,
    RequestError,
    UnsupportedEncoding,
    UpstreamLoop,
)
from kallm.ids import random_hex
from kallm.server.admission import set_path, settle_once
from kallm.server.log import (
    PROBE_LABELS,
    REQUEST_LOG_KEY,
    RequestLog,
    emit,
    request_row,
    start_request_log,
)
from kallm.server.loop import came_from
from kallm.server.routes import Dialect, classify
from kallm.server.runtime import Runtime, runtime_of

log = logging.getLogger("kallm.server")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


def error_response(error: KallmError, dialect: Dialect = Dialect.OPENAI) -> web.Response:
    if dialect is Dialect.ANTHROPIC:
        status, body = error_from_kallm(error)
        headers = dict(error.headers)
        if isinstance(error, BudgetExceeded):  # Anthropic's SDKs retry a 429 unless told not to
            headers["x-should-retry"] = "false"
        return web.json_response(body, status=status, headers=headers)
    return web.json_response(error.to_body(), status=error.status, headers=error.headers)


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's X-Request-Id when it is a sane token (it lands in logs and the database),
    else a new one."""
    supplied = headers.get("X-Request-Id")
    if supplied is not None and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return random_hex(16)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    record = start_request_log(request, request_id_of(request.headers))
    runtime = runtime_of(request)
    try:
        response = await _answer(request, handler, record, runtime)
    finally:
        await _finish(runtime, record)
    return response


async def _answer(
    request: web.Request, handler: Handler, record: RequestLog, runtime: Runtime
) -> web.StreamResponse:
    dialect = Dialect.OPENAI
    try:
        path = classify(request.raw_path, request.method)
        set_path(request, path)
        record.route, dialect = path.route.label, path.route.dialect
        if came_from(request.headers, runtime.instance_id):
            raise UpstreamLoop(
                "kallm received its own upstream call: its upstream URL (OPENAI_BASE_URL or a "
                "provider's base_url) points back at this kallm"
            )
        _check_encoding(request)
        response = await handler(request)
    except KallmError as exc:
        response = error_response(exc, dialect)
        if isinstance(exc, UnsupportedEncoding):
            response.force_close()  # the unread body cannot be drained: no lingering on it
    except web.HTTPRequestEntityTooLarge:
        limit = runtime.settings.max_body_bytes
        message = f"request body is over the {limit:,}-byte limit (server.max_body_size)"
        response = error_response(PayloadTooLarge(message), dialect)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_http_error(exc), dialect)
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # a body claiming gzip...
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        error = RequestError(f"the request body cannot be read: {' '.join(str(reason).split())}")
        response = error_response(error, dialect)
        response.force_close()
    except ConnectionResetError:
        # the client left (mid-body or mid-answer): one log line, never a traceback; the
        # response below is never sent
        record.status, record.note = 499, record.note or "client disconnected"
        return web.Response(status=499, reason="Client Closed Request")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = KallmError("internal error in kallm; see the server log")
        response = error_response(error, dialect)
    record.status = response.status
    return response


async def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, streamed, relayed or an error, carries the
    request id and the key's rate-limit headers, set in this one place."""
    record = request.get(REQUEST_LOG_KEY)
    if record is None:
        return
    response.headers["X-Request-Id"] = record.request_id
    if record.admission is not None:
        response.headers.update(record.admission.rate_headers)


async def _finish(runtime: Runtime, record: RequestLog) -> None:
    """Settle, log and count one request; never raises (the response is already decided)."""
    try:
        await settle_once(runtime, record)
    except Exception:
        log.exception("settling request %s failed", record.request_id)
    if record.status == 0:
        record.status = 499
    emit(record, runtime.settings.log_probes)
    if runtime.metrics is not None:
        runtime.metrics.observe(record)
    writer = runtime.request_log
    if writer is not None and runtime.settings.log_requests and record.route not in PROBE_LABELS:
        writer.log(request_row(record, time.time(), runtime.settings.log_bodies))


_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})


def _check_encoding(request: web.Request) -> None:
    """Request bodies in gzip or deflate are decoded (within the size limit); anything else
    is refused rather than relayed or parsed as if it were plain."""
    if "Content-Encoding" not in request.headers:
        return  # the usual request: nothing to check
    values = [
        part.strip().lower()
        for header in request.headers.getall("Content-Encoding", [])
        for part in header.split(",")
    ]
    if len(values) > 1 or any(value not in _ENCODINGS for value in values):
        shown = ", ".join(values)[:60]
        raise UnsupportedEncoding(
            f"Content-Encoding {shown!r} is not supported; send one of identity, gzip or deflate",
            param="Content-Encoding",
        )


def _http_error(exc: web.HTTPException) -> KallmError:
    """aiohttp's own 404/405/... as a KallmError."""
    error = KallmError(f"{exc.reason}")
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error
