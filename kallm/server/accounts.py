"""Who is calling and what they may spend: virtual keys, rate limits, budgets, request log.

The chat and passthrough routes call ``admit`` before any upstream work; the
middleware calls ``finish`` once the response is done, whatever happened, so a
reservation is always settled or released and every request gets its log row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kallm.accounts.budget import MemoryLedger, Reservation
from kallm.accounts.keys import KeyRecord, KeyStore, hash_secret
from kallm.accounts.keysdir import KeysDirectory
from kallm.accounts.pricing import PriceTable, Usage
from kallm.accounts.ratelimit import MemoryRateLimits
from kallm.config import Settings
from kallm.db import DatabaseWriter, RequestRow, connect
from kallm.errors import (
    AuthenticationError,
    ConfigError,
    KallmError,
    ModelNotAllowed,
    RateLimited,
)
from kallm.server.log import RequestLog
from kallm.server.request import bearer_token

log = logging.getLogger("kallm.accounts")

DEFAULT_RESERVE_OUTPUT_TOKENS = 1024  # reserved when a request sets no max_tokens
REFRESH_SECONDS = 2.0
OPS = frozenset({"/health", "/stats", "/metrics"})  # probes would flood the request log


@dataclass(slots=True)
class Admission:
    key: KeyRecord
    reservation: Reservation | None
    rate_headers: dict[str, str]


class Accounts:
    def __init__(self, settings: Settings, prices: PriceTable):
        self.settings = settings
        self.prices = prices
        self.enabled = settings.auth == "virtual-keys"
        self.conn: sqlite3.Connection | None = None
        self.writer: DatabaseWriter | None = None
        self.store: KeyStore | None = None
        self.limits = MemoryRateLimits()
        self.ledger = MemoryLedger(self._persist_spend)
        self.keys_dir = KeysDirectory(settings.keys_dir) if settings.keys_dir else None
        self._by_hash: dict[str, KeyRecord] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        path = self.settings.db_path
        if path is None:
            if self.enabled:
                raise KallmError("auth = virtual-keys needs a database (db.path / --db)")
            return
        try:
            self.conn = connect(path)
        except (sqlite3.Error, OSError, KallmError) as exc:
            if self.enabled:
                raise ConfigError(
                    f"database {path} cannot be opened ({exc}); virtual keys need it"
                ) from None
            log.warning(
                "database %s cannot be opened (%s): serving without a request log", path, exc
            )
            return
        self.store = KeyStore(self.conn)
        self.writer = DatabaseWriter(path)
        self.writer.start()
        self.refresh()
        self._tasks.append(asyncio.create_task(self._refresh_forever()))
        if self.settings.log_retention > 0:
            self._tasks.append(asyncio.create_task(self._prune_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.conn is not None:
            self.conn.close()

    def refresh(self) -> None:
        """Reload key policies: from mounted Secrets into the DB, then from the DB."""
        assert self.store is not None
        if self.keys_dir is not None:
            for record in self.keys_dir.changed():
                try:
                    self.store.upsert_policy(record)
                except sqlite3.IntegrityError as exc:  # one bad file must not stop the rest
                    log.warning("key file for %r (%s) not loaded: %s", record.name, record.id, exc)
            for key_id in self.keys_dir.removed():
                with contextlib.suppress(KallmError):
                    self.store.revoke(key_id)
        self._by_hash = {r.hash: r for r in self.store.list()}

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await asyncio.to_thread(self.refresh)
            except (sqlite3.Error, OSError, ValueError) as exc:
                log.warning("could not reload keys: %s", exc)

    async def _prune_forever(self) -> None:
        while True:
            assert self.writer is not None
            self.writer.prune(time.time() - self.settings.log_retention)
            await asyncio.sleep(3600)

    # ------------------------------------------------------------ the request path

    def authenticate(self, headers: Any) -> KeyRecord:
        """The caller's key; one answer for missing, unknown, revoked and expired keys."""
        secret = bearer_token(headers)
        record = self._by_hash.get(hash_secret(secret)) if secret else None
        if record is None or record.status() != "active":
            raise AuthenticationError(
                "Invalid API key: pass a kallm virtual key as 'Authorization: Bearer sk-kallm-...'."
            )
        return record

    async def admit(
        self,
        request: web.Request,
        model: str | None,
        payload: dict[str, Any] | None,
        record: RequestLog,
    ) -> Admission | None:
        """Key, model allow-list, rate limits and a budget reservation, in that order."""
        if not self.enabled:
            return None
        key = self.authenticate(request.headers)
        record.key_id = key.id
        if model is not None and not key.allows(model):
            raise ModelNotAllowed(f"This key may not use the model '{model}'.", param="model")
        now = time.time()
        state = await self.limits.admit(key, now)
        if state.retry_after is not None:
            raise RateLimited(
                f"Rate limit reached: {state.reason} for this key. Retry in "
                f"{state.retry_after:.0f}s.",
                headers=state.headers(),
            )
        estimate = self.estimate(model, payload) if model and payload else 0.0
        reservation = await self.ledger.reserve(key, estimate, now)
        admission = Admission(key, reservation, state.headers())
        record.admission = admission
        return admission

    def estimate(self, model: str, payload: dict[str, Any]) -> float:
        """The most this request can cost: its prompt, and all the output it may ask for."""
        prompt = len(json.dumps(payload.get("messages", ""))) // 3 + 8
        output = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if not isinstance(output, int) or output <= 0:
            output = DEFAULT_RESERVE_OUTPUT_TOKENS
        choices = payload.get("n") if isinstance(payload.get("n"), int) else 1
        return self.prices.cost(model, Usage(prompt, output * max(choices, 1)))

    async def finish(self, record: RequestLog) -> None:
        """Settle or release the reservation, count tokens, queue the log row."""
        admission = record.admission
        now = time.time()
        if admission is not None and admission.reservation is not None:
            # whatever the status: a stream cut after the upstream billed still cost money
            await self.ledger.settle(admission.reservation, record.cost_usd)
            if record.usage is not None and record.cache != "HIT":
                await self.limits.add_tokens(admission.key, record.usage.total_tokens, now)
            if record.saved_usd:
                await self.ledger.add_saved(admission.key, record.saved_usd, now)
        if self.writer is not None and self.settings.log_requests and record.path not in OPS:
            self.writer.log(_row(record, now, self.settings.log_bodies))

    def _persist_spend(self, key_id: str, spend: float, saved: float, period_start: float) -> None:
        if self.writer is not None:
            self.writer.execute(
                "UPDATE keys SET spend_usd = ?, saved_usd = saved_usd + ?, period_start = ?, "
                "last_used = ? WHERE id = ?",
                (spend, saved, period_start, time.time(), key_id),
            )

    @property
    def dropped_rows(self) -> int:
        return self.writer.dropped if self.writer is not None else 0


def _row(record: RequestLog, now: float, bodies: bool) -> RequestRow:
    usage = record.usage
    return RequestRow(
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
