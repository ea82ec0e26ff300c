#!/usr/bin/env python3
"""How long the cache file takes to write and to load, what the journal costs, and what a
``kill -9`` under load loses.

    python scripts/bench_snapshot.py [--entries 100000] [--repeat 3]
    python scripts/bench_snapshot.py --kill9 [--seconds 10] [--concurrency 8]

The first form times, in this process: a snapshot save and load at ``--entries``
(best and median of ``--repeat`` runs: the machine's noise is larger than the
differences that matter), the journal's cost per store on the event loop, how fast
its writer drains, and how long replaying it takes.

``--kill9`` runs the simulated upstream and ``python -m kallm serve`` as processes,
stores distinct prompts from ``--concurrency`` clients for ``--seconds``, sends the
server SIGKILL, starts it again on the same cache file and asks every prompt whose
MISS answer a client received: each one that is not a HIT was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kallm.cache.journal as journal_module
from kallm.cache.persistence import SnapshotKeeper
from kallm.cache.store import Entry, MemoryBackend


def fill(backend: MemoryBackend, count: int, dim: int = 256) -> None:
    for entry in make_entries(count, dim):
        backend.add(entry)


def make_entries(count: int, dim: int = 256) -> list[Entry]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = time.time()
    entries = []
    for i in range(count):
        answer = {
            "id": f"chatcmpl-{i}",
            "object": "chat.completion",
            "created": int(now),
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"Answer number {i}. " * 20},
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 80, "total_tokens": 92},
        }
        entries.append(
            Entry(
                f"scope{i % 50}",
                f"exact{i}",
                f"question number {i} about things",
                vectors[i],
                json.dumps(answer).encode(),
                now,
                now + 86400,
                0.0001,
                92,
            )
        )
    return entries


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


def spread(seconds: list[float]) -> str:
    return f"best {min(seconds):.2f} s, median {statistics.median(seconds):.2f} s"


async def snapshot_times(count: int, repeat: int, folder: Path) -> None:
    source = MemoryBackend(count, max_bytes=1 << 40)
    fill(source, count)
    path = folder / "cache.kallm"
    saves, loads = [], []
    for _ in range(repeat):
        keeper = SnapshotKeeper(source, path, "bench", journal=False)
        saves.append(await timed(keeper.save))
        target = MemoryBackend(count, max_bytes=1 << 40)

        async def load(target: MemoryBackend = target) -> None:
            assert SnapshotKeeper(target, path, "bench").load() == count

        loads.append(await timed(load))
    size = path.stat().st_size
    print(f"snapshot, {count:,} entries, file {size / 1e6:.1f} MB:")
    print(f"  save {spread(saves)}; load {spread(loads)} ({repeat} runs)")


async def journal_times(count: int, folder: Path) -> None:
    """Stores with the journal on: the event loop's share, the writer's pace, the replay.

    Stores come as fast as a loop can add them (~100,000/s, far above any server's), so
    the writer's queue is allowed to grow without its usual 64 MiB limit here.
    """
    journal_module.MAX_QUEUED_BYTES = 1 << 40
    entries = make_entries(count)
    path = folder / "journal-bench.kallm"
    plain = MemoryBackend(count, max_bytes=1 << 40)
    started = time.perf_counter()
    for entry in entries:
        plain.add(entry)
    without = time.perf_counter() - started
    backend = MemoryBackend(count, max_bytes=1 << 40)
    keeper = SnapshotKeeper(backend, path, "bench", journal_min_bytes=1 << 40)  # no cap here
    keeper.load()
    entries = make_entries(count)
    started = time.perf_counter()
    for entry in entries:
        backend.add(entry)
    with_journal = time.perf_counter() - started
    assert keeper.journal is not None
    keeper.journal.flush()
    drained = time.perf_counter() - started
    size = keeper.journal.size
    await keeper.close()
    target = MemoryBackend(count, max_bytes=1 << 40)
    started = time.perf_counter()
    replayed = SnapshotKeeper(target, path, "bench").load()
    replay = time.perf_counter() - started
    per_store = (with_journal - without) / count * 1e6
    print(f"journal, {count:,} stores, file {size / 1e6:.1f} MB:")
    print(f"  on the event loop +{per_store:.1f} µs a store; all written and fsync'd")
    print(f"  {drained:.2f} s after the first store; replay {replay:.2f} s ({replayed:,} back)")


# ---------------------------------------------------------------- kill -9 under load


async def kill9(seconds: float, concurrency: int, embedder: str, interval: str) -> None:
    from kallm.bench.procs import hermetic_env, start, stop

    with tempfile.TemporaryDirectory() as folder:
        logs = Path(folder)
        upstream = await start(
            "upstream",
            ["-m", "kallm.bench.upstream", "--port", "{port}"],
            logs,
            ready_path="/v1/models",
        )
        env = hermetic_env(
            {
                "OPENAI_BASE_URL": upstream.root + "/v1",
                "OPENAI_API_KEY": "sk-bench",
                "KALLM_CACHE_FILE": str(logs / "cache.kallm"),
                "KALLM_SNAPSHOT_INTERVAL": interval,
                "KALLM_EMBEDDING_MODEL": embedder,
                "KALLM_DB": "off",
            }
        )
        serve = ["-m", "kallm", "serve", "--port", "{port}"]
        try:
            kallm = await start("kallm", serve, logs, ready_path="/health", env=env)
            async with aiohttp.ClientSession() as session:
                cpu = -cpu_seconds(kallm.pid)
                answered = await _store_until(session, kallm.root, seconds, concurrency)
                cpu += cpu_seconds(kallm.pid)
                kallm.process.send_signal(signal.SIGKILL)
                await kallm.process.wait()
                again = await start("kallm2", serve, logs, ready_path="/health", env=env)
                try:
                    async with session.get(again.root + "/health") as reply:
                        back = (await reply.json())["cache_entries"]
                    lost = await _count_misses(session, again.root, answered, concurrency)
                finally:
                    await stop(again)
        finally:
            await stop(upstream)
            if "kallm" in locals() and kallm.process.returncode is None:
                await stop(kallm)
    rate = len(answered) / seconds
    print(
        f"kill -9 after {seconds:.0f} s of stores ({rate:.0f}/s, {concurrency} clients, "
        f"snapshots every {interval}, embedder {embedder}): {len(answered):,} MISS answers "
        f"received, {back:,} entries came back, {lost} of the answered lost; kallm used "
        f"{cpu / max(len(answered), 1) * 1e6:.0f} µs of CPU a store"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _body(i: int) -> bytes:
    prompt = f"kill -9 bench question {i}: how many {i % 97} are in {i}?"
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    ).encode()


async def _store_until(
    session: aiohttp.ClientSession, root: str, seconds: float, concurrency: int
) -> list[int]:
    """Distinct prompts from ``concurrency`` workers; the ones answered MISS, in order."""
    answered: list[int] = []
    counter = iter(range(10**9))
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}

    async def worker() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            async with session.post(
                root + "/v1/chat/completions", data=_body(i), headers=headers
            ) as reply:
                await reply.read()
                if reply.status == 200 and reply.headers.get("X-Kallm-Cache") == "MISS":
                    answered.append(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


async def _count_misses(
    session: aiohttp.ClientSession, root: str, prompts: list[int], concurrency: int
) -> int:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    queue = iter(prompts)
    lost = 0

    async def worker() -> None:
        nonlocal lost
        for i in queue:
            async with session.post(
                root + "/v1/chat/completions", data=_body(i), headers=headers
            ) as reply:
                await reply.read()
                lost += reply.headers.get("X-Kallm-Cache") != "HIT"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lost


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kill9", action="store_true", help="measure a kill -9 under load")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--embedder", default="local")
    parser.add_argument("--snapshot-interval", default="1s")
    args = parser.parse_args()
    if args.kill9:
        await kill9(args.seconds, args.concurrency, args.embedder, args.snapshot_interval)
        return
    with tempfile.TemporaryDirectory() as folder:
        await snapshot_times(args.entries, args.repeat, Path(folder))
        await journal_times(args.entries, Path(folder))


if __name__ == "__main__":
    asyncio.run(main())
