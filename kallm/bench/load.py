"""The load generator: closed-loop workers on one aiohttp client, every request timed.

A cell is one (target, concurrency) pair: ``concurrency`` workers share one list
of request bodies and each sends the next one as soon as its previous answer
has been read in full, so a cell measures latency *and* the throughput that
latency allows. Bodies are encoded before any timing starts, so the client
spends as little as it can per request; the client still shares the machine
with the servers it measures, which the reports say.

Cells run in interleaved rounds with the order rotated per round, so slow drift
(CPU frequency, a growing cache, a noisy neighbour) spreads over every cell
instead of favouring whichever ran first. Every round is bounded twice: by its
number of requests and by a time limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kallm.bench.stats import PERCENTILES, percentile_ms, rounded, summary

CACHE_HEADER = "X-Kallm-Cache"
SIMILARITY_HEADER = "X-Kallm-Similarity"
REQUEST_TIMEOUT = 120.0  # seconds for one request; a real upstream may take long to answer

Tick = Callable[[int], None]


@dataclass
class Sample:
    """What one batch of requests saw."""

    latencies: list[float] = field(default_factory=list)  # seconds, one per answered request
    elapsed: float = 0.0
    errors: int = 0
    truncated: bool = False  # the time limit stopped it before every body was sent
    cache: Counter[str] = field(default_factory=Counter)
    similarities: list[float] = field(default_factory=list)
    first_error: str | None = None


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    concurrency: int,
    headers: Mapping[str, str],
    deadline: float,
    tick: Tick | None = None,
) -> Sample:
    """Send every body once from ``concurrency`` workers; each request timed end to end."""
    sample = Sample()
    indices: Iterator[int] = iter(range(len(bodies)))  # shared: each body is sent once
    request_headers = dict(headers)

    async def worker() -> None:
        for i in indices:
            if time.monotonic() > deadline:
                sample.truncated = True
                return
            started = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i], headers=request_headers) as response:
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                sample.errors += 1
                sample.first_error = sample.first_error or repr(exc)
                continue
            sample.latencies.append(time.perf_counter() - started)
            if response.status != 200:
                sample.errors += 1
                sample.first_error = sample.first_error or f"{response.status} {body[:300]!r}"
            sample.cache[response.headers.get(CACHE_HEADER, "-")] += 1
            similarity = response.headers.get(SIMILARITY_HEADER)
            if similarity is not None:
                sample.similarities.append(float(similarity))
            if tick is not None:
                tick(1)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    sample.elapsed = time.perf_counter() - started
    return sample


async def run_batch(
    url: str,
    warmup: Sequence[bytes],
    measured: Sequence[bytes],
    concurrency: int,
    headers: Mapping[str, str],
    time_limit: float,
    tick: Tick | None = None,
) -> Sample:
    """Warm connections and code paths, then measure; one connection pool of ``concurrency``."""
    deadline = time.monotonic() + time_limit
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await drive(session, url, warmup, concurrency, headers, deadline, tick)
        return await drive(session, url, measured, concurrency, headers, deadline, tick)


@dataclass
class Cell:
    """One (target, concurrency) pair, pooled over rounds."""

    name: str
    concurrency: int
    expect: str | None  # the X-Kallm-Cache value every answer should carry, if any
    rounds: list[Sample] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [x for s in self.rounds for x in s.latencies]

    def p(self, q: float) -> float:
        """Pooled percentile over every round, in ms (NaN when nothing was measured)."""
        return percentile_ms(self.latencies, q)

    def last_p50(self) -> float:
        return percentile_ms(self.rounds[-1].latencies if self.rounds else [], 50)

    @property
    def rps(self) -> float:
        elapsed = sum(s.elapsed for s in self.rounds)
        return sum(len(s.latencies) for s in self.rounds) / elapsed if elapsed else 0.0

    @property
    def cache(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.rounds:
            total.update(s.cache)
        return total

    @property
    def unexpected(self) -> int:
        """Answers whose cache header was not the one this cell is about (a MISS in 'hit')."""
        if self.expect is None:
            return 0
        return sum(n for value, n in self.cache.items() if value != self.expect)

    def to_json(self, direct_p50_ms: float | None = None) -> dict[str, Any]:
        latencies = self.latencies
        errors = sum(s.errors for s in self.rounds)
        first_error = next((s.first_error for s in self.rounds if s.first_error), None)
        if not latencies:
            return {
                "name": self.name,
                "concurrency": self.concurrency,
                "requests": 0,
                "skipped": True,
                "errors": errors,
                "first_error": first_error,
            }
        p50 = self.p(50)
        result: dict[str, Any] = {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": len(latencies),
            "rps": round(self.rps, 1),
            **{f"p{q}_ms": rounded(self.p(q)) for q in PERCENTILES},
            "mean_ms": rounded(sum(latencies) / len(latencies) * 1000),
            "p50_ms_by_round": [
                rounded(percentile_ms(s.latencies, 50)) for s in self.rounds if s.latencies
            ],
            "errors": errors,
            "first_error": first_error,
            "truncated": any(s.truncated for s in self.rounds),
            "cache_headers": dict(self.cache),
            "unexpected_cache_header": self.unexpected,
            "similarity": summary([x for s in self.rounds for x in s.similarities]),
        }
        if direct_p50_ms is not None and self.name != "direct":
            result["added_p50_ms"] = rounded(p50 - direct_p50_ms)
            result["speedup_vs_direct"] = rounded(direct_p50_ms / p50, 2) if p50 > 0 else None
        return result


@dataclass(frozen=True)
class Target:
    """Something to load: where, which bodies, and what cache header its answers should carry.

    ``source`` is ``miss`` (prompts nobody asked before; every such target gets the
    same bodies, so direct and proxied calls do identical upstream work), ``exact``
    (cached prompts, verbatim) or ``paraphrase`` (cached prompts, reworded).
    """

    name: str
    url: str  # base URL ending in /v1
    source: str
    expect: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Schedule:
    """How much each cell sends: per concurrency level, ``rounds`` x (warmup + measured)."""

    concurrency: list[int]
    rounds: int
    warmup: int
    requests: dict[int, int]  # measured requests per cell at each concurrency, all rounds
    round_seconds: float  # time limit of one round of one cell, warm-up included

    def measured(self, concurrency: int) -> int:
        return max(1, self.requests[concurrency] // self.rounds)

    def misses_needed(self) -> int:
        """Fresh prompts the miss cells use up: each round at each level needs new ones."""
        return sum(self.rounds * (self.warmup + self.measured(c)) for c in self.concurrency)

    def total_requests(self, targets: int) -> int:
        return targets * sum(
            self.rounds * (self.warmup + self.measured(c)) for c in self.concurrency
        )


def cycle(bodies: Sequence[bytes], start: int, count: int) -> list[bytes]:
    """``count`` bodies from ``start`` on, wrapping; none if there are none to send."""
    return [bodies[(start + i) % len(bodies)] for i in range(count)] if bodies else []


async def run_cells(
    targets: Sequence[Target],
    bodies: Mapping[str, Sequence[bytes]],
    schedule: Schedule,
    tick: Tick | None = None,
    note: Callable[[str], None] | None = None,
) -> list[Cell]:
    """Every target at every concurrency level, round by round, the order rotated per round."""
    cells: list[Cell] = []
    miss_cursor = hit_cursor = 0
    for concurrency in schedule.concurrency:
        row = [Cell(t.name, concurrency, t.expect) for t in targets]
        cells += row
        measured, warmup = schedule.measured(concurrency), schedule.warmup
        for round_no in range(schedule.rounds):
            misses = bodies["miss"]
            work: dict[str, tuple[list[bytes], list[bytes]]] = {
                # every miss target sends the very same (never cached) bodies this round
                "miss": (
                    list(misses[miss_cursor : miss_cursor + warmup]),
                    list(misses[miss_cursor + warmup : miss_cursor + warmup + measured]),
                ),
            }
            for source in ("exact", "paraphrase"):
                work[source] = (
                    cycle(bodies[source], hit_cursor, warmup),
                    cycle(bodies[source], hit_cursor + warmup, measured),
                )
            miss_cursor += warmup + measured
            hit_cursor += warmup + measured
            shift = round_no % len(row)
            for target, cell in (
                list(zip(targets, row, strict=True))[shift:]
                + list(zip(targets, row, strict=True))[:shift]
            ):
                warm_bodies, measured_bodies = work[target.source]
                if not measured_bodies:  # nothing usable to send (reported as skipped)
                    continue
                cell.rounds.append(
                    await run_batch(
                        target.url + "/chat/completions",
                        warm_bodies,
                        measured_bodies,
                        concurrency,
                        target.headers,
                        schedule.round_seconds,
                        tick,
                    )
                )
            if note is not None:
                note(
                    f"c={concurrency} round {round_no + 1}/{schedule.rounds}: "
                    + ", ".join(f"{c.name} {c.last_p50():.2f}" for c in row)
                    + " ms p50"
                )
    return cells
