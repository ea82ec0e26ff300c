#!/usr/bin/env python3
"""Soak: does kallm's memory stay flat under sustained, varied load?

Starts the simulated upstream and ``kallm serve`` (a small cache, so eviction runs all the
time; request log on) in their own processes, sends a bounded number of requests — new
prompts, repeats, paraphrases, streams, unknown models — and samples the server's RSS
after each slice. Prints RSS per slice and the growth after warm-up.

    python scripts/soak.py [--requests 30000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kallm.bench.procs import start, stop


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def body(i: int, rng: random.Random) -> dict:
    kind = i % 5
    text = f"question {i} about topic {rng.randrange(10_000)}"
    if kind == 1:
        text = f"question {i - 1} about topic 7"  # near a recent one
    model = "gpt-4o-mini" if kind != 4 else f"invented-model-{i}"
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": kind == 3}


async def load(url: str, requests: int, concurrency: int, pid: int, slices: int) -> list[float]:
    rng = random.Random(7)
    samples = [rss_mb(pid)]
    queue = iter(range(requests))
    per_slice = requests // slices
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for i in queue:
                async with session.post(url, json=body(i, rng)) as response:
                    await response.read()

        for _ in range(slices):
            queue = iter(range(len(samples) * per_slice, (len(samples) + 1) * per_slice))
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            samples.append(rss_mb(pid))
            print(f"  {len(samples) - 1:>2}/{slices}: RSS {samples[-1]:.1f} MB", flush=True)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slices", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        upstream = await start(
            "upstream",
            ["-m", "kallm.bench.upstream", "--port", "{port}"],
            work,
            ready_path="/v1/models",
        )
        config = work / "kallm.toml"
        config.write_text(
            f'[upstream]\nbase_url = "{upstream.root}/v1"\napi_key = "sk-soak"\n'
            f'[[providers]]\nname = "openai"\nbase_url = "{upstream.root}/v1"\n'
            f'api_key = "sk-soak"\nmodels = ["gpt-*"]\n'
            f'[cache]\nmax_entries = 2000\nfile = "{work / "cache.kallm"}"\n'
            f'[db]\npath = "{work / "kallm.db"}"\n[log]\nlevel = "warning"\n'
        )
        kallm = await start(
            "kallm",
            ["-m", "kallm", "serve", "--config", str(config), "--port", "{port}"],
            work,
            ready_path="/health",
        )
        try:
            samples = await load(
                kallm.root + "/v1/chat/completions",
                args.requests,
                args.concurrency,
                kallm.pid,
                args.slices,
            )
        finally:
            await stop(kallm)
            await stop(upstream)
    warm = samples[2] if len(samples) > 2 else samples[0]
    print(
        f"RSS at start {samples[0]:.1f} MB, after warm-up {warm:.1f} MB, at the end "
        f"{samples[-1]:.1f} MB: growth after warm-up {samples[-1] - warm:+.1f} MB "
        f"over {args.requests - 2 * (args.requests // args.slices):,} requests"
    )


if __name__ == "__main__":
    asyncio.run(main())
