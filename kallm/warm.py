"""Cache warming: turn a file of prompts into cache entries before users arrive.

The library half of ``kallm warm``, usable without the CLI: ``parse_lines`` turns
lines into work items (chat requests to send, or prompt/response pairs to import),
``warm`` sends them to a running kallm over HTTP with bounded concurrency, and
``embedded_server`` runs kallm in-process for the length of a run. Everything goes
through kallm's public HTTP surface, so a warmed entry is exactly what a client
would have produced, and a re-run is free: what is cached comes back as a HIT.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from kallm.accounts.pricing import PriceTable, Usage
from kallm.config import Settings
from kallm.errors import KallmError
from kallm.server.cacheadmin import as_completion, message_text

FORMATS = ("auto", "text", "jsonl")
DEFAULT_OUTPUT_TOKENS = 256  # the dry run's guess when a request sets no max_tokens
IMPORT_BATCH = 50  # pairs per POST /admin/cache/entries
SHOWN = 10  # bad lines and failures listed one by one; the rest are counted
READ_TIMEOUT = 600.0
NO_MODEL = 'no model: pass --model or give the line a "model"'
_DELIVERY = ("stream", "stream_options")  # warm wants one JSON answer; the cache key ignores them


class WarmError(Exception):
    """The run cannot go on at all (server unreachable, not kallm): one line, exit 2."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    line: int
    request: dict[str, Any]
    response: dict[str, Any] | None = None  # set: import this answer, call no model

    @property
    def is_import(self) -> bool:
        return self.response is not None


@dataclass(frozen=True, slots=True)
class Problem:
    """A line that was bad or failed, and why: the user fixes their file from this."""

    line: int
    reason: str


@dataclass
class Parsed:
    items: list[WorkItem] = field(default_factory=list)
    bad: list[Problem] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.items) + len(self.bad)

    @property
    def imports(self) -> int:
        return sum(item.is_import for item in self.items)


@dataclass
class Counts:
    """What a run did; ``ok`` is what the exit code says."""

    lines: int = 0
    cached: int = 0
    added: int = 0
    imported: int = 0
    failed: int = 0
    bad: int = 0
    cost_usd: float = 0.0
    elapsed: float = 0.0
    failures: list[Problem] = field(default_factory=list)
    bad_lines: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.bad == 0

    def fail(self, line: int, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < SHOWN:
            self.failures.append(Problem(line, reason))


# ---------------------------------------------------------------- parsing


def _request_from(obj: dict[str, Any], model: str | None) -> dict[str, Any]:
    """A chat request from a JSON line: ``messages`` or ``prompt``, other keys are params."""
    request = {k: v for k, v in obj.items() if k not in ("prompt", "response", *_DELIVERY)}
    if "messages" not in obj:
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError('needs "messages" or a "prompt" string')
        request["messages"] = [{"role": "user", "content": prompt}]
    messages = request["messages"]
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
    ):
        raise ValueError('"messages" must be a non-empty array of objects with a "role"')
    request["model"] = request.get("model") or model
    if not isinstance(request["model"], str) or not request["model"].strip():
        raise ValueError(NO_MODEL)
    return request


def parse_line(
    text: str, number: int, fmt: str = "auto", model: str | None = None
) -> WorkItem | None:
    """One line to a work item; None for blank and ``#`` lines; ValueError says what is wrong."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if fmt == "text" or (fmt == "auto" and not stripped.startswith("{")):
        if not model:
            raise ValueError(NO_MODEL)
        return WorkItem(
            number, {"model": model, "messages": [{"role": "user", "content": stripped}]}
        )
    try:
        obj = json.loads(stripped)
    except ValueError as exc:
        raise ValueError(f"invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("a JSON line must be an object")
    request = _request_from(obj, model)
    if "response" not in obj:
        return WorkItem(number, request)
    try:
        return WorkItem(number, request, as_completion(obj["response"], request))
    except KallmError as exc:
        raise ValueError(exc.message) from None


def parse_lines(lines: Iterable[str], fmt: str = "auto", model: str | None = None) -> Parsed:
    """Every line, numbered from 1; bad ones are kept aside with their reason, never fatal."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    parsed = Parsed()
    for number, text in enumerate(lines, 1):
        try:
            item = parse_line(text, number, fmt, model)
        except ValueError as exc:
            parsed.bad.append(Problem(number, str(exc)))
            continue
        if item is not None:
            parsed.items.append(item)
    return parsed


def estimate_cost(items: Iterable[WorkItem], prices: PriceTable) -> float:
    """What sending the chat items could cost: prompt ≈ chars/4, output = max_tokens or 256.

    An upper bound, since whatever is already cached costs nothing; imports are free.
    """
    total = 0.0
    for item in items:
        if item.is_import:
            continue
        request = item.request
        prompt = sum(len(message_text(m)) for m in request["messages"]) // 4
        output = request.get("max_completion_tokens") or request.get("max_tokens")
        output = output if isinstance(output, int) and output > 0 else DEFAULT_OUTPUT_TOKENS
        choices = request.get("n") if isinstance(request.get("n"), int) else 1
        total += prices.cost(request["model"], Usage(prompt, output * max(choices, 1)))
    return total


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class Target:
    """A kallm to warm: its root URL and the keys and tenant to use there."""

    root: str
    api_key: str | None = None  # chat: a virtual key, or the upstream key to forward
    admin_key: str | None = None  # imports
    namespace: str = ""

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if self.namespace:
            headers["X-Kallm-Namespace"] = self.namespace
        return headers


def _waves(items: list[WorkItem]) -> list[list[list[WorkItem]]]:
    """Jobs in three waves: imports (free, and may answer later prompts), chats, repeats.

    An exact repeat of an earlier line waits for the last wave, so it is answered from
    the cache instead of racing its twin upstream.
    """
    seen: set[str] = set()
    imports, chats, repeats = [], [], []
    for item in items:
        key = json.dumps([item.is_import, item.request], sort_keys=True)
        if key in seen:
            repeats.append(item)
            continue
        seen.add(key)
        (imports if item.is_import else chats).append(item)
    batches = [imports[i : i + IMPORT_BATCH] for i in range(0, len(imports), IMPORT_BATCH)]
    return [batches, [[c] for c in chats], [[r] for r in repeats]]


def _error_text(status: int, data: bytes) -> str:
    try:
        message = json.loads(data)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = data[:200].decode(errors="replace").strip()
    return f"HTTP {status}: {message}"


class _Run:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        prices: PriceTable,
        counts: Counts,
        progress: Callable[[int], None],
    ):
        self.session, self.target, self.prices = session, target, prices
        self.counts, self.progress = counts, progress

    async def job(self, batch: list[WorkItem]) -> None:
        try:
            if batch[0].is_import:
                await self._import(batch)
            else:
                await self._chat(batch[0])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            for item in batch:  # unreachable, or an answer not shaped like kallm's
                self.counts.fail(item.line, f"{type(exc).__name__}: {exc}")
        self.progress(len(batch))

    async def _chat(self, item: WorkItem) -> None:
        from kallm.server.chat import CACHE_HEADER

        url = self.target.root + "/v1/chat/completions"
        headers = self.target.headers(self.target.api_key)
        async with self.session.post(url, json=item.request, headers=headers) as response:
            data = await response.read()
            if response.status != 200:
                self.counts.fail(item.line, _error_text(response.status, data))
            elif response.headers.get(CACHE_HEADER) == "HIT":
                self.counts.cached += 1
            else:
                completion = json.loads(data)
                self.counts.added += 1
                model = str(completion.get("model") or item.request["model"])
                self.counts.cost_usd += self.prices.cost(
                    model, Usage.from_openai(completion.get("usage"))
                )

    async def _import(self, batch: list[WorkItem]) -> None:
        body = {
            "entries": [{"request": i.request, "response": i.response} for i in batch],
            "namespace": self.target.namespace,
        }
        url = self.target.root + "/admin/cache/entries"
        headers = self.target.headers(self.target.admin_key)
        async with self.session.post(url, json=body, headers=headers) as response:
            data = await response.read()
            if response.status != 200:
                for item in batch:
                    self.counts.fail(item.line, _error_text(response.status, data))
                return
            for item, result in zip(batch, json.loads(data)["results"], strict=True):
                if result["status"] == "imported":
                    self.counts.imported += 1
                elif result["status"] == "cached":
                    self.counts.cached += 1
                else:
                    self.counts.fail(item.line, str(result.get("error", "import failed")))


async def _check(session: aiohttp.ClientSession, root: str) -> None:
    try:
        async with session.get(root + "/health") as response:
            health = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise WarmError(f"cannot reach kallm at {root}: {exc}") from None
    if response.status != 200 or not isinstance(health, dict) or "cache_entries" not in health:
        raise WarmError(f"{root} does not answer /health like kallm (HTTP {response.status})")


async def _drain(
    jobs: list[list[WorkItem]], concurrency: int, handle: Callable[[list[WorkItem]], Any]
) -> None:
    """Run ``handle`` over the jobs with at most ``concurrency`` in flight."""
    shared = iter(jobs)  # each worker takes the next job when it is free

    async def worker() -> None:
        for job in shared:
            await handle(job)

    await asyncio.gather(*(worker() for _ in range(max(concurrency, 1))))


async def warm(
    parsed: Parsed,
    target: Target,
    *,
    concurrency: int = 4,
    prices: PriceTable | None = None,
    progress: Callable[[int], None] | None = None,
) -> Counts:
    """Send or import every item; counts per outcome. Raises WarmError only before starting."""
    counts = Counts(lines=parsed.lines, bad=len(parsed.bad), bad_lines=parsed.bad[:SHOWN])
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=READ_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _check(session, target.root)
        run = _Run(session, target, prices or PriceTable(), counts, progress or (lambda n: None))
        for wave in _waves(parsed.items):
            await _drain(wave, concurrency, run.job)
    counts.elapsed = time.perf_counter() - started
    return counts


@asynccontextmanager
async def embedded_server(settings: Settings, namespace: str = "") -> AsyncIterator[Target]:
    """kallm in this process on a free loopback port, stopped gracefully (snapshot saved).

    Auth is off and the admin key is a fresh random one: the server lives only as long
    as this run, and only this process knows its port and key. Chat requests carry no
    key, so the upstream key comes from the settings, as with ``kallm serve``.
    """
    from kallm.server import create_app
    from kallm.server.run import GRACE_SECONDS

    admin_key = secrets.token_urlsafe(24)
    app = create_app(
        settings.with_overrides(host="127.0.0.1", port=0, auth="off", admin_key=admin_key)
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=GRACE_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Target(f"http://127.0.0.1:{port}", admin_key=admin_key, namespace=namespace)
    finally:
        await runner.cleanup()
