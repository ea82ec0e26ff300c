"""Core speed of kallm: what the proxy adds to a call, what a hit costs, what a lookup costs.

The measuring itself is ``kallm bench run`` (``kallm.bench``: prompts, pre-fill,
load generator, statistics, the simulated upstream); this script adds the two
cells a kallm developer needs and a user does not:

- the same miss traffic through ``scripts/bare_relay.py``, the floor for any
  Python proxy, so kallm's overhead is judged against the least an aiohttp
  relay must spend, not against zero;
- ``SemanticCache.lookup`` alone, in-process (exact tier, embed, search, guard),
  at each ``--lookup-sizes`` cache size, with the CPU caches warm and flushed.

It also checks the figures against the project's targets. Overhead is reported
as peers report it: p50 through the proxy minus p50 direct.

    python scripts/bench_core.py                 # full run, about a minute or two
    python scripts/bench_core.py --quick         # smoke run, under 20 s
    python scripts/bench_core.py --concurrency 1,8,32 --json bench-results/c8.json
    python scripts/bench_core.py --kallm-env OPENBLAS_NUM_THREADS=1   # A/B one setting
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kallm.bench.load import Target  # noqa: E402
from kallm.bench.prefill import TTL, fill, keys_of, make_entries  # noqa: E402
from kallm.bench.prompts import Prompt  # noqa: E402
from kallm.bench.report import MachineWatch, print_report  # noqa: E402
from kallm.bench.run import BenchSession, RunOptions, cancel_on_sigterm  # noqa: E402
from kallm.bench.stats import percentile_ms  # noqa: E402
from kallm.cache.semantic import HitGuard, SemanticCache  # noqa: E402
from kallm.cache.store import MemoryBackend  # noqa: E402
from kallm.embed import Embedder  # noqa: E402

EVICT_BYTES = 64 * 1024 * 1024  # streamed through the CPU caches before a "cold" lookup
COLD_LOOKUPS = 300


def server_guard() -> tuple[HitGuard | None, str]:
    """The hit guard kallm's server installs, if this checkout has a working one.

    A paraphrase hit pays for the guard too, so the in-process lookup includes it.
    """
    try:
        from kallm.cache.guard import hit_guard
    except ImportError:
        return None, "none (no kallm.cache.guard)"
    try:
        hit_guard("How do I parse JSON in Go?", "In Go, how can I parse JSON?")
    except Exception as exc:  # a half-installed guard must not stop the bench
        return None, f"off: the guard failed ({exc!r})"
    return hit_guard, f"{hit_guard.__module__}.{hit_guard.__name__}"


async def bench_lookup(
    embedder: Embedder,
    prompts: list[Prompt],
    vectors: np.ndarray,
    size: int,
    lookups: int,
    threshold: float,
    guard: HitGuard | None,
) -> dict[str, Any]:
    """``await cache.lookup(key)`` on paraphrases of cached prompts: exact miss, embed, search.

    Also times the two halves alone, so a slow lookup says whether to blame the
    embedder or the matrix scan.
    """
    backend = MemoryBackend(size + 1)
    cache = SemanticCache(backend, embedder, threshold=threshold, ttl=TTL, guard=guard)
    texts = [p.text for p in prompts[:size]]
    fill(backend, make_entries(keys_of(texts), vectors[:size], texts))
    stride = next(s for s in (7919, 7907, 7901, 1) if size % s)
    queries = keys_of([prompts[(i * stride) % size].paraphrase for i in range(lookups + 50)])
    scope = queries[0].scope
    for key in queries[:50]:  # warm-up: caches, branch predictors, lazily loaded tables
        await cache.lookup(key)
    total, embed, search = [], [], []
    hits = 0
    for key in queries[50:]:
        t0 = time.perf_counter()
        result = await cache.lookup(key)
        t1 = time.perf_counter()
        vector = await embedder.embed(key.text or "")
        t2 = time.perf_counter()
        await backend.nearest(scope, vector, time.time(), 1)
        t3 = time.perf_counter()
        total.append(t1 - t0)
        embed.append(t2 - t1)
        search.append(t3 - t2)
        hits += result.hit is not None

    # Back to back, the index stays in the CPU cache. In a server, parsing, sockets and
    # the other processes on the machine evict it between requests, so also time
    # lookups that start with the cache flushed (by streaming 2x a typical L3 through it).
    flush = np.ones(EVICT_BYTES // 8, dtype=np.float64)
    cold = []
    for key in queries[50 : 50 + min(lookups, COLD_LOOKUPS)]:
        flush.sum()
        t0 = time.perf_counter()
        await cache.lookup(key)
        cold.append(time.perf_counter() - t0)

    def ms(values: list[float], q: float) -> float:
        return round(percentile_ms(values, q), 4)

    return {
        "entries": size,
        "lookups": lookups,
        "hit_rate": round(hits / lookups, 3),
        "p50_ms": ms(total, 50),
        "p99_ms": ms(total, 99),
        "embed_p50_ms": ms(embed, 50),
        "search_p50_ms": ms(search, 50),
        "search_p99_ms": ms(search, 99),
        "cold_p50_ms": ms(cold, 50),
        "cold_p99_ms": ms(cold, 99),
        "index_mb": round(size * vectors.shape[1] * 4 / 1e6, 1),
    }


async def run(
    options: RunOptions, lookup_sizes: list[int], lookups: int, console: Console
) -> dict[str, Any]:
    """``kallm bench run`` plus a bare-relay cell, then the in-process lookups."""
    watch = MachineWatch()
    with cancel_on_sigterm():
        async with BenchSession(options, console) as session:
            relay = await session.spawn(
                "bare-relay",
                [
                    str(ROOT / "scripts" / "bare_relay.py"),
                    "--upstream",
                    session.upstream_url,
                    "--port",
                    "{port}",
                ],
                "/v1/models",
            )
            targets = session.targets()
            targets.insert(
                1, Target("bare relay", relay.root + "/v1", "miss", None, session.headers)
            )
            cells = await session.measure(targets)
            stats = await session.kallm_stats()
    result = session.report(cells, stats)
    result["meta"].update(watch.finish())
    guard, guard_name = server_guard()
    console.print(f"servers stopped; timing lookups in-process (guard: {guard_name})")
    threshold = float(session.kallm_info["similarity_threshold"])
    result["lookup"] = [
        await bench_lookup(
            session.embedder, session.prompts, session.vectors, size, lookups, threshold, guard
        )
        for size in lookup_sizes
    ]
    result["meta"]["lookup_guard"] = guard_name
    add_targets(result)
    return result


def add_targets(result: dict[str, Any]) -> None:
    """Overhead against the bare relay, and each figure against the project's target."""
    p50 = {(c["name"], c["concurrency"]): c.get("p50_ms") for c in result["cells"]}
    levels = result["meta"]["concurrency"]
    overhead = {}
    for level in levels:
        direct, relay, miss = (p50.get((n, level)) for n in ("direct", "bare relay", "kallm miss"))
        if None in (direct, relay, miss):
            continue
        relay_added, miss_added = relay - direct, miss - direct
        overhead[str(level)] = {
            "direct_p50_ms": direct,
            "bare_relay_added_ms": round(relay_added, 3),
            "kallm_miss_added_ms": round(miss_added, 3),
            "ratio": round(miss_added / relay_added, 2) if relay_added > 0 else None,
        }
    targets: dict[str, dict[str, Any]] = {}
    first = overhead.get(str(min(levels)), {})
    ratio = first.get("ratio")
    targets["miss_added_vs_relay_added"] = {
        "value": ratio,
        "target": "<= 1.5",
        "ok": ratio is not None and ratio <= 1.5,
    }
    if 1 in levels:
        for name in ("kallm exact hit", "kallm paraphrase hit"):
            value = p50.get((name, 1))
            targets[f"{name.split()[1]}_hit_p50_ms_c1"] = {
                "value": value,
                "target": "< 1 ms",
                "ok": value is not None and value < 1.0,
            }
    for row in result["lookup"]:
        limit = {10_000: 0.5, 100_000: 5.0}.get(row["entries"])
        if limit is not None:
            targets[f"lookup_p50_ms_{row['entries']}"] = {
                "value": row["p50_ms"],
                "target": f"< {limit} ms",
                "ok": row["p50_ms"] < limit,
            }
    result["overhead"], result["targets"] = overhead, targets


def print_extras(result: dict[str, Any], console: Console) -> None:
    lookups = Table(
        title="SemanticCache.lookup in-process on a paraphrase (exact miss, embed, "
        "search, guard); cold = CPU caches flushed first"
    )
    for column in (
        "entries",
        "index MB",
        "p50 ms",
        "p99 ms",
        "embed p50",
        "search p50",
        "search p99",
        "cold p50",
        "cold p99",
        "hit rate",
    ):
        lookups.add_column(column, justify="right")
    for row in result["lookup"]:
        lookups.add_row(
            f"{row['entries']:,}",
            f"{row['index_mb']}",
            f"{row['p50_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['embed_p50_ms']:.3f}",
            f"{row['search_p50_ms']:.3f}",
            f"{row['search_p99_ms']:.3f}",
            f"{row['cold_p50_ms']:.3f}",
            f"{row['cold_p99_ms']:.3f}",
            f"{row['hit_rate']:.2f}",
        )
    console.print(lookups)
    summary = Table(title="overhead and targets")
    for column in ("measure", "value", "target", ""):
        summary.add_column(column)
    for level, row in result["overhead"].items():
        summary.add_row(
            f"added p50 c={level}: bare relay / kallm miss",
            f"{row['bare_relay_added_ms']} / {row['kallm_miss_added_ms']} ms",
            "",
            f"ratio {row['ratio']}",
        )
    for name, target in result["targets"].items():
        mark = "[green]ok[/]" if target["ok"] else "[red]MISSED[/]"
        summary.add_row(name, str(target["value"]), target["target"], mark)
    console.print(summary)
    console.print(f"[dim]in-process lookup guard: {result['meta']['lookup_guard']}[/]")


def parse_args(argv: Sequence[str] | None) -> tuple[RunOptions, list[int], int, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measured requests per cell (default 600 at c=1, 2400 above)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured requests per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per cell (default 5)")
    parser.add_argument(
        "--entries",
        type=int,
        default=None,
        help="answers in kallm's cache before the run (default 10000)",
    )
    parser.add_argument(
        "--lookup-sizes",
        default=None,
        help="cache sizes for the in-process lookup (default 10000,100000)",
    )
    parser.add_argument("--lookups", type=int, default=None, help="lookups timed per size")
    parser.add_argument("--embedder", default="local", choices=("local", "hash"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=300.0,
        help="seconds one cell (all rounds) may take before it stops early",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "core.json")
    parser.add_argument(
        "--kallm-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the kallm process only, for A/B runs "
        "(e.g. OPENBLAS_NUM_THREADS=1); repeatable",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a ~20 s smoke run")
    args = parser.parse_args(argv)

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if args.quick else full)

    lookup_sizes = [
        int(s) for s in pick(args.lookup_sizes, "10000,100000", "2000,10000").split(",")
    ]
    options = RunOptions(
        concurrency=[int(c) for c in args.concurrency.split(",") if c.strip()],
        requests=pick(args.requests, None, 150),
        warmup=pick(args.warmup, 100, 20),
        rounds=pick(args.rounds, 5, 1),
        entries=pick(args.entries, 10_000, 2_000),
        embedder=args.embedder,
        seed=args.seed,
        duration=args.cell_timeout,
        kallm_env=dict(item.split("=", 1) for item in args.kallm_env),
        min_prompts=max(lookup_sizes),
    )
    return options, lookup_sizes, pick(args.lookups, 2000, 300), args.json


def main(argv: Sequence[str] | None = None) -> None:
    options, lookup_sizes, lookups, json_path = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    result = asyncio.run(run(options, lookup_sizes, lookups, console))
    print_report(result, console)
    print_extras(result, console)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {json_path} ({result['meta']['seconds']} s)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
