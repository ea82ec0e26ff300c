"""Issue 15's speed targets measured with wrk: kallm's misses and exact hits against the
upstream called directly and through a bare relay, in req/s and added latency.

Why wrk: ``kallm bench run`` and ``scripts/bench_core.py`` drive the load from
Python, and on a 2-core machine that load generator takes a large share of the
CPU the servers it measures need. wrk is C (epoll, one thread here), so it costs
less per request and leaves more of the machine to the upstream, the relay and
kallm; its req/s figures are the closer ones to what kallm can do, and the
ratios the targets use compare servers measured under the same load generator.

One run starts four servers, each in its own process on a free loopback port
(``kallm.bench.procs``): the simulated upstream answering at once, the bare
aiohttp relay (``scripts/bare_relay.py``, the floor for any Python proxy), the
floor cache (``scripts/floor_cache.py``: the relay plus only the parsing, embedding,
search and storing any semantic cache must do, with kallm's embedder and index) and
kallm (``python -m kallm serve``, an empty cache, the local embedder). Then,
in ``--rounds`` interleaved rounds, one ``wrk -t1 -cC -dD --latency`` per cell
and concurrency, with ``scripts/bench_wrk.lua`` building the requests:

- direct: POST the upstream's /v1/chat/completions, a new random prompt each;
- relay: the same traffic through the bare relay;
- kallm miss: the same traffic through kallm (a new prompt is always a miss);
- kallm exact hit: one prompt, cached before the cell, through kallm;
- floor miss, floor exact hit: the same two through the floor cache;

at each ``--concurrency`` (default 10,32), and direct, relay and both misses at
c=1 for the latency kallm adds. The floor cells say how much of kallm's distance
from the relay is the job itself and how much is kallm. Any non-200 answer, socket
error or unexpected X-Kallm-Cache header fails the run (exit 1); a missed target is
only reported, since speed on a shared machine is noisy.

    python scripts/bench_wrk.py                        # ~1.5 minutes: 16 cells of 5 s
    python scripts/bench_wrk.py --rounds 3 --json bench-results/wrk.json
    python scripts/bench_wrk.py --duration 1s --concurrency 2 --warmup 0s   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kallm.bench import MODEL, procs  # noqa: E402
from kallm.bench.run import (  # noqa: E402
    SIMULATED_KEY,
    cancel_on_sigterm,
    write_kallm_config,
)
from kallm.config import parse_duration  # noqa: E402

LUA = ROOT / "scripts" / "bench_wrk.lua"
JSON_MARKER = "WRK_JSON "
LATENCY_LEVEL = 1  # added latency is read where nothing queues
LATENCY_CELLS = ("direct", "relay", "kallm miss", "floor miss")
CELL_ORDER = ("direct", "relay", "kallm miss", "kallm exact hit", "floor miss", "floor exact hit")
DATA_FILES = ("cache.kallm", "cache.kallm.journal", "kallm.db", "kallm.db-wal", "kallm.db-shm")
HIT_PROMPT = "How do I rotate the logs of a service that never closes its files?"
WARMUP_CONNECTIONS = 10
WRK_GRACE = 20.0  # seconds past --duration before a wrk run counts as hung
START_ESTIMATE = 10.0  # seconds the servers usually take to answer (the embedders load)
RATIO_TARGET = 0.8
ADDED_P50_TARGET_MS = 0.5
MISS_VS_RELAY_LEVELS = (10, 32)  # where issue 15 sets miss req/s >= 0.8 x relay req/s
HIT_VS_DIRECT_LEVELS = (32,)  # where it sets exact hit req/s >= 0.8 x direct req/s


@dataclass(frozen=True)
class Cell:
    """One kind of traffic: where it goes, how prompts are chosen, what kallm should say."""

    name: str
    url: str
    mode: str  # "random" (a new prompt each request) or "fixed" (HIT_PROMPT)
    expect: str  # X-Kallm-Cache on every answer: HIT, MISS, or "-" (no such header)


@dataclass(frozen=True)
class Options:
    concurrency: list[int]
    duration: int  # seconds per wrk run
    rounds: int
    warmup: int  # seconds of unmeasured load per cell before round 1; 0: none
    seed: int
    json_path: Path | None


def find_wrk() -> str:
    """wrk's path, or exit with how to get it: nothing is started without it."""
    path = shutil.which("wrk")
    if path is None:
        sys.exit("bench_wrk: wrk is not installed; install wrk: apt-get install wrk")
    return path


def chat_body(prompt: str) -> bytes:
    """The body bench_wrk.lua sends for ``prompt``, byte for byte, so priming caches its key."""
    request = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    return json.dumps(request, separators=(",", ":")).encode()


async def start_servers(
    work: Path, children: list[procs.Child], console: Console
) -> dict[str, str]:
    """Upstream, bare relay, floor cache and kallm; each is in ``children`` once it runs."""

    async def spawn(
        name: str, args: list[str], ready: str, env: dict[str, str] | None = None
    ) -> procs.Child:
        child = await procs.start(
            name, args, work, ready_path=ready, env=procs.hermetic_env(env), cwd=work
        )
        children.append(child)
        return child

    upstream = await spawn(
        "upstream",
        ["-m", "kallm.bench.upstream", "--port", "{port}", "--latency", "0s"],
        "/v1/models",
    )
    base = upstream.root + "/v1"
    relay_args = [str(ROOT / "scripts" / "bare_relay.py"), "--upstream", base, "--port", "{port}"]
    relay = await spawn("bare-relay", relay_args, "/v1/models")  # any answer, a 405 too
    floor_args = [str(ROOT / "scripts" / "floor_cache.py"), "--upstream", base, "--port", "{port}"]
    floor = await spawn("floor-cache", floor_args, "/v1/models")
    # every miss of the run fits in the cache: none evicts the hit prompt
    config = write_kallm_config(work, base, work / "cache.kallm")
    kallm = await spawn(
        "kallm",
        ["-m", "kallm", "serve", "--config", str(config), "--port", "{port}"],
        "/health",
        env={"OPENAI_API_KEY": SIMULATED_KEY},
    )
    for child in children:
        console.print(f"  {child.name}: pid {child.pid}, {child.root}")
    path = "/v1/chat/completions"
    return {
        "upstream": upstream.root + path,
        "relay": relay.root + path,
        "kallm": kallm.root + path,
        "floor": floor.root + path,
    }


def cells_for(urls: dict[str, str]) -> list[Cell]:
    """The kinds of traffic, in CELL_ORDER: the same misses go direct, relayed, to kallm and
    to the floor cache."""
    return [
        Cell(CELL_ORDER[0], urls["upstream"], "random", "-"),
        Cell(CELL_ORDER[1], urls["relay"], "random", "-"),
        Cell(CELL_ORDER[2], urls["kallm"], "random", "MISS"),
        Cell(CELL_ORDER[3], urls["kallm"], "fixed", "HIT"),
        Cell(CELL_ORDER[4], urls["floor"], "random", "MISS"),
        Cell(CELL_ORDER[5], urls["floor"], "fixed", "HIT"),
    ]


async def prime_exact_hit(url: str, attempts: int = 40) -> None:
    """Send HIT_PROMPT until kallm answers it from the cache, so the hit cell is all hits.

    kallm (and the floor cache) may store a miss's answer just after replying, so the second
    call can still miss.
    """
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {SIMULATED_KEY}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(attempts):
            async with session.post(url, data=chat_body(HIT_PROMPT), headers=headers) as response:
                text = await response.text()
                if response.status != 200:
                    raise RuntimeError(f"priming the hit: {response.status} {text[:200]}")
                if response.headers.get("X-Kallm-Cache") == "HIT":
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} never answered the primed prompt with X-Kallm-Cache: HIT")


def wrk_command(wrk: str, cell: Cell, level: int, seconds: int, seed: int) -> list[str]:
    """One wrk run: one thread (the machine's other core is the servers'), ``level`` connections."""
    args = [cell.mode, str(seed), cell.expect] + ([HIT_PROMPT] if cell.mode == "fixed" else [])
    return [
        wrk,
        "-t1",
        f"-c{level}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(LUA),
        cell.url,
        "--",
        *args,
    ]


async def run_wrk(command: list[str], seconds: int, log: Path) -> dict[str, Any]:
    """Run wrk, append its output to ``log``, return the figures its Lua ``done`` wrote.

    wrk is stopped by its own PID if this is cancelled (Ctrl-C) or it hangs.
    """
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds + WRK_GRACE)
    except BaseException:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        raise
    text = output.decode(errors="replace")
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(command)}\n{text}\n")
    for line in text.splitlines():
        if line.startswith(JSON_MARKER):
            return dict(json.loads(line[len(JSON_MARKER) :]))
    raise RuntimeError(f"wrk exited {process.returncode} without results:\n{text[-1500:]}")


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """wrk's counts as this report states them: req/s, milliseconds, errors by kind."""
    socket_errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "socket_errors": socket_errors,
        "non_2xx": raw["non_200"],
        "wrong_cache_header": raw["wrong_cache"],
        "first_non_2xx": raw["first_non_200"],
    }


def plan(cells: list[Cell], concurrency: list[int]) -> list[tuple[Cell, int]]:
    """One round: every cell at every level, c=1 (latency) first; rounds repeat it."""
    steps = []
    for level in sorted({LATENCY_LEVEL, *concurrency}):
        for cell in cells:
            if level in concurrency or cell.name in LATENCY_CELLS:
                steps.append((cell, level))
    return steps


def problems(name: str, level: int, row: dict[str, Any]) -> list[str]:
    """What makes a wrk run's figures untrustworthy: errors, or answers of the wrong kind."""
    found = []
    if row["non_2xx"]:
        found.append(
            f"{name} c={level}: {row['non_2xx']} non-2xx answers (first: {row['first_non_2xx']})"
        )
    if row["socket_errors"]:
        found.append(f"{name} c={level}: {row['socket_errors']} socket errors")
    if row["wrong_cache_header"]:
        found.append(
            f"{name} c={level}: {row['wrong_cache_header']} answers without the expected "
            "X-Kallm-Cache header"
        )
    return found


async def warm_up(
    wrk: str, cells: list[Cell], opts: Options, seeds: Iterator[int], log: Path
) -> None:
    """Unmeasured load on each cell first (pools, kallm's embedder); fail fast on errors."""
    for cell in cells:
        command = wrk_command(wrk, cell, WARMUP_CONNECTIONS, opts.warmup, next(seeds))
        row = figures(await run_wrk(command, opts.warmup, log))
        found = problems(cell.name + " (warm-up)", WARMUP_CONNECTIONS, row)
        if found:
            raise RuntimeError("; ".join(found) + f"; see {log}")


async def measure(
    wrk: str, cells: list[Cell], opts: Options, log: Path, console: Console
) -> list[dict[str, Any]]:
    """Every step of the plan in every round, interleaved; the median round per cell."""
    seeds = itertools.count(opts.seed * 100_000)  # a new seed per wrk run: misses stay misses
    if opts.warmup:
        console.print(f"warm-up: {opts.warmup} s per cell at c={WARMUP_CONNECTIONS}")
        await warm_up(wrk, cells, opts, seeds, log)
    steps = plan(cells, opts.concurrency)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(c.name, lv): [] for c, lv in steps}
    for round_no in range(1, opts.rounds + 1):
        for cell, level in steps:
            command = wrk_command(wrk, cell, level, opts.duration, next(seeds))
            row = figures(await run_wrk(command, opts.duration, log))
            runs[cell.name, level].append(row)
            console.print(
                f"  round {round_no}/{opts.rounds} {cell.name:<15} c={level:<3} "
                f"{row['rps']:8,.0f} req/s  p50 {row['p50_ms']:.2f} ms",
                highlight=False,
            )
    return [summarize(name, level, rows) for (name, level), rows in runs.items()]


def summarize(name: str, level: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the rounds for the speed figures, the sum for counts and errors."""
    cell: dict[str, Any] = {"name": name, "concurrency": level}
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms"):
        cell[key] = round(statistics.median(r[key] for r in rows), 3)
    for key in ("requests", "socket_errors", "non_2xx", "wrong_cache_header"):
        cell[key] = sum(r[key] for r in rows)
    cell["rounds_rps"] = [round(r["rps"], 1) for r in rows]
    cell["problems"] = [p for r in rows for p in problems(name, level, r)]
    return cell


def targets(cells: list[dict[str, Any]], concurrency: list[int]) -> list[dict[str, Any]]:
    """Issue 15's ratios: miss/relay and exact hit/direct req/s, and the p50 kallm adds at c=1;
    beside them, kallm against the floor cache and the floor against the relay and direct.

    The ratios are given at every level measured; the target applies where the issue sets it.
    """
    by = {(c["name"], c["concurrency"]): c for c in cells}
    rows = []
    for level in sorted(concurrency):
        for num, den, label, levels in (
            ("kallm miss", "relay", "miss / relay req/s", MISS_VS_RELAY_LEVELS),
            ("kallm exact hit", "direct", "exact hit / direct req/s", HIT_VS_DIRECT_LEVELS),
            ("floor miss", "relay", "floor miss / relay req/s", ()),
            ("floor exact hit", "direct", "floor exact hit / direct req/s", ()),
            ("kallm miss", "floor miss", "kallm miss / floor miss req/s", ()),
            ("kallm exact hit", "floor exact hit", "kallm hit / floor hit req/s", ()),
        ):
            value = by[num, level]["rps"] / by[den, level]["rps"]
            applies = level in levels
            rows.append(
                {
                    "measure": f"{label} c={level}",
                    "value": round(value, 3),
                    "target": f">= {RATIO_TARGET}" if applies else None,
                    "ok": value >= RATIO_TARGET if applies else None,
                }
            )
    direct = by["direct", LATENCY_LEVEL]["p50_ms"]
    for name, applies in (("kallm miss", True), ("relay", False), ("floor miss", False)):
        added = by[name, LATENCY_LEVEL]["p50_ms"] - direct
        rows.append(
            {
                "measure": f"p50 added to direct c={LATENCY_LEVEL}, {name} (ms)",
                "value": round(added, 3),
                "target": f"<= {ADDED_P50_TARGET_MS}" if applies else None,
                "ok": added <= ADDED_P50_TARGET_MS if applies else None,
            }
        )
    return rows


def print_tables(result: dict[str, Any], console: Console) -> None:
    rounds = result["meta"]["rounds"]
    cells = Table(
        title=f"wrk -t1, {result['meta']['duration_s']} s per run, "
        f"median of {rounds} round{'s' * (rounds > 1)}"
    )
    for column in ("cell", "c", "req/s", "p50 ms", "p90 ms", "p99 ms", "requests", "errors"):
        cells.add_column(column, justify="left" if column == "cell" else "right")
    if rounds > 1:
        cells.add_column("req/s by round", justify="right")
    for cell in result["cells"]:  # in plan order: level, then CELL_ORDER
        errors = cell["socket_errors"] + cell["non_2xx"] + cell["wrong_cache_header"]
        row = [
            cell["name"],
            str(cell["concurrency"]),
            f"{cell['rps']:,.0f}",
            f"{cell['p50_ms']:.2f}",
            f"{cell['p90_ms']:.2f}",
            f"{cell['p99_ms']:.2f}",
            f"{cell['requests']:,}",
            str(errors) if not errors else f"[red]{errors}[/]",
        ]
        if rounds > 1:
            row.append(" ".join(f"{r:,.0f}" for r in cell["rounds_rps"]))
        cells.add_row(*row)
    console.print(cells)
    summary = Table(title="issue 15 targets")
    for column in ("measure", "value", "target", ""):
        summary.add_column(column)
    for row in result["targets"]:
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[dim]reference[/]"}
        summary.add_row(row["measure"], f"{row['value']:.3f}", row["target"] or "", mark[row["ok"]])
    console.print(summary)


async def run(opts: Options, wrk: str, console: Console) -> dict[str, Any]:
    """Servers up, warm-up, rounds of wrk runs, servers down (by PID, whatever happened)."""
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kallm-bench-wrk-"))
    children: list[procs.Child] = []
    with cancel_on_sigterm():
        try:
            console.print(f"starting upstream, bare relay and kallm (logs in {work})")
            urls = await start_servers(work, children, console)
            for name in ("kallm", "floor"):
                await prime_exact_hit(urls[name])
            cells = await measure(wrk, cells_for(urls), opts, work / "wrk.log", console)
        finally:
            for child in reversed(children):
                with contextlib.suppress(Exception):
                    await procs.stop(child)
            for name in DATA_FILES:
                with contextlib.suppress(OSError):
                    (work / name).unlink()  # the logs stay, the data files are large
    return {
        "meta": {
            "tool": "wrk",
            "duration_s": opts.duration,
            "rounds": opts.rounds,
            "warmup_s": opts.warmup,
            "concurrency": opts.concurrency,
            "cpus": os.cpu_count(),
            "upstream": "simulated, 0 ms per answer",
            "kallm_cache": "empty at start, local embedder",
            "floor_cache": "scripts/floor_cache.py, empty at start, the same embedder",
            "log_dir": str(work),
            "seconds": round(time.perf_counter() - started, 1),
        },
        "cells": cells,
        "targets": targets(cells, opts.concurrency),
    }


def estimate(opts: Options) -> float:
    """Seconds the run will take: the wrk runs are fixed-length, the start is a guess."""
    urls = dict.fromkeys(("upstream", "relay", "kallm", "floor"), "")
    steps = len(plan(cells_for(urls), opts.concurrency))
    return START_ESTIMATE + len(CELL_ORDER) * opts.warmup + steps * opts.rounds * opts.duration


def whole_seconds(text: str) -> int:
    """wrk takes whole seconds; 1s at least, so every run has requests to report."""
    seconds = parse_duration(text)
    if seconds < 1 or seconds != int(seconds):
        raise argparse.ArgumentTypeError("whole seconds, 1s or more (wrk's -d)")
    return int(seconds)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="10,32", help="comma-separated (default 10,32)")
    parser.add_argument("--duration", type=whole_seconds, default=5, help="per wrk run (5s)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument(
        "--warmup",
        type=lambda t: 0 if parse_duration(t) == 0 else whole_seconds(t),
        default=1,
        help="unmeasured load per cell before round 1 (1s; 0s: none)",
    )
    parser.add_argument("--seed", type=int, default=7, help="prompts' seed")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:
        concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error("--concurrency: comma-separated whole numbers")
    if not concurrency or min(concurrency) < 1 or args.rounds < 1:
        parser.error("--concurrency and --rounds: 1 or more")
    return Options(concurrency, args.duration, args.rounds, args.warmup, args.seed, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    wrk = find_wrk()
    console = Console(width=None if sys.stdout.isatty() else 132)
    console.print(f"bench_wrk: about {estimate(opts):.0f} s ({wrk})")
    result = asyncio.run(run(opts, wrk, console))
    print_tables(result, console)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {opts.json_path}")
    found = [p for cell in result["cells"] for p in cell["problems"]]
    for line in found:
        console.print(f"[red]error:[/] {line}", highlight=False)
    console.print(f"{result['meta']['seconds']} s; wrk output in {result['meta']['log_dir']}")
    return 1 if found else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM: servers stopped
        print("bench_wrk: interrupted; every server it started was stopped", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:  # a server that would not start, wrk that failed or hung
        sys.exit(f"bench_wrk: {exc}")
