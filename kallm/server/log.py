"""One log line per request, human-readable (rich) or JSON lines.

Handlers fill a ``RequestLog`` as they learn things (model, cache result,
tokens); the middleware writes it once the response is done, so every path,
errors included, logs the same fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kallm.accounts.pricing import Usage
from kallm.db.requestlog import RequestRow

access_log = logging.getLogger("kallm.access")
PROBE_LABELS = frozenset({"/health", "/stats", "/metrics"})


@dataclass(slots=True)
class RequestLog:
    method: str
    path: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    cache: str | None = None  # HIT / MISS; None where the cache does not apply
    similarity: float | None = None
    status: int = 0
    usage: Usage | None = None
    upstream_seconds: float | None = None
    first_token_seconds: float | None = None
    lookup_seconds: float | None = None
    embed_seconds: float | None = None
    provider: str | None = None
    upstream_model: str | None = None  # the name the provider knows the model by
    cost_usd: float = 0.0
    saved_usd: float = 0.0  # what the cached answer cost originally (hits only)
    key_id: str | None = None
    admission: Any = None  # kallm.server.admission.Admission, for /v1 routes
    request_body: str | None = None  # kept only when log.bodies is on
    response_body: str | None = None
    note: str | None = None
    settled: bool = False  # admission's reservation released (kallm.server.admission)
    route: str = "other"  # the route's label once the path is classified (kallm.server.routes)

    @property
    def path_group(self) -> str:
        """The route's path (``/v1/chat/completions``, ``/v1/files``, ``/health``; ``other``
        for anything else): a bounded set of metric label values, whatever paths clients
        invent."""
        return self.route

    def fields(self) -> dict[str, object]:
        latency_ms = round((time.perf_counter() - self.started) * 1000, 2)
        out: dict[str, object] = {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "cache": self.cache,
            "status": self.status,
            "latency_ms": latency_ms,
        }
        if self.similarity is not None:
            out["similarity"] = round(self.similarity, 4)
        if self.usage is not None:
            out |= {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            }
        if self.key_id:
            out["key_id"] = self.key_id
        if self.provider:
            out["provider"] = self.provider
            out["upstream_model"] = self.upstream_model
        if self.cost_usd:
            out["cost_usd"] = round(self.cost_usd, 8)
        if self.first_token_seconds is not None:
            out["ttft_ms"] = round(self.first_token_seconds * 1000, 2)
        if self.note:
            out["note"] = self.note
        return out


REQUEST_LOG_KEY = web.RequestKey("kallm.log", RequestLog)


def request_log(request: web.Request) -> RequestLog:
    return request[REQUEST_LOG_KEY]


def start_request_log(request: web.Request, request_id: str) -> RequestLog:
    record = RequestLog(request.method, request.path, request_id)
    request[REQUEST_LOG_KEY] = record
    return record


def emit(record: RequestLog, probes: bool = False) -> None:
    """The access line; health, stats and metrics probes only when asked (``log.probes``),
    since a liveness probe every few seconds would bury the requests that matter."""
    if record.route in PROBE_LABELS and not probes:
        return
    if access_log.isEnabledFor(logging.INFO):
        access_log.info("request", extra={"kallm_fields": record.fields()})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "kallm_fields", None)
        if fields is not None:
            payload |= fields
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``POST /v1/chat/completions gpt-4o-mini HIT 0.9731 200 0.4ms tokens=12+30``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "kallm_fields", None)
        if fields is None:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self.formatException(record.exc_info)
            return message
        parts = [str(fields["method"]), str(fields["path"])]
        if fields.get("model"):
            parts.append(str(fields["model"]))
        if fields.get("cache"):
            sim = fields.get("similarity")
            parts.append(f"{fields['cache']}" + (f" {sim:.4f}" if sim is not None else ""))
        parts += [str(fields["status"]), f"{fields['latency_ms']}ms"]
        if "total_tokens" in fields:
            parts.append(f"tokens={fields['prompt_tokens']}+{fields['completion_tokens']}")
        if fields.get("note"):
            parts.append(f"({fields['note']})")
        return "request " + " ".join(parts)


def rfc3339(created: float) -> str:
    """``2026-11-30T21:04:05.123Z``: what log collectors parse without configuration."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


# aiohttp logs its own errors (a protocol error, a handler that escaped) on these; they go
# through the same handler, so a JSON log stays JSON lines and a traceback stays one record.
_FOREIGN_LOGGERS = ("aiohttp", "asyncio")


def configure_logging(json_lines: bool, level: str = "info") -> None:
    """Human lines through rich on a terminal, JSON lines for machines."""
    root = logging.getLogger("kallm")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    if json_lines:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=False
        )
        handler.setFormatter(TextFormatter())
    else:
        # Off a terminal (docker logs, files) one record must stay one line: rich would
        # wrap at 80 columns or pad to its width.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PlainFormatter())
    root.addHandler(handler)
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers = [handler]
        foreign.setLevel(logging.WARNING)
        foreign.propagate = False


class PlainFormatter(TextFormatter):
    """``2026-11-26 01:55:33 INFO request POST ...``: the text format with time and level."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname:<7} {super().format(record)}"


def request_row(record: RequestLog, now: float, bodies: bool) -> RequestRow:
    """The request-log row of a finished request; text that came from a client is made
    storable first (a lone surrogate must not cost the batch it travels in)."""
    usage = record.usage
    return _storable(
        RequestRow(
            time=now,
            request_id=record.request_id,
            key_id=record.key_id,
            method=record.method,
            path=record.path,
            model=record.model,
            provider=record.provider,
            upstream_model=record.upstream_model,
            status=record.status,
            latency_ms=round((time.perf_counter() - record.started) * 1000, 3),
            ttft_ms=None
            if record.first_token_seconds is None
            else round(record.first_token_seconds * 1000, 3),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            cost_usd=record.cost_usd,
            saved_usd=record.saved_usd,
            cache=record.cache,
            similarity=record.similarity,
            request_body=record.request_body if bodies else None,
            response_body=record.response_body if bodies else None,
        )
    )


def _storable(row: RequestRow) -> RequestRow:
    changes = {
        name: value.encode("utf-8", "replace").decode("utf-8")
        for name, value in ((f, getattr(row, f)) for f in _TEXT_FIELDS)
        if isinstance(value, str) and not _encodes(value)
    }
    return row._replace(**changes) if changes else row


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# The text a client controls that no check has made valid UTF-8 already (request ids are
# checked, model names and prompts validated): the path, and bodies when they are logged.
_TEXT_FIELDS = ("path", "request_body", "response_body")
