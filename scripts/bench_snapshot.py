#!/usr/bin/env python3
"""How long the cache file takes to write and to load, at 100,000 entries by default.

python scripts/bench_snapshot.py [--entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kallm.cache.persistence import SnapshotKeeper
from kallm.cache.store import Entry, MemoryBackend


def fill(backend: MemoryBackend, count: int, dim: int = 256) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = time.time()
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
        backend.add(
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    source = MemoryBackend(args.entries)
    fill(source, args.entries)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cache.kallm"
        started = time.perf_counter()
        await SnapshotKeeper(source, path, "bench").save()
        saved = time.perf_counter() - started
        target = MemoryBackend(args.entries)
        started = time.perf_counter()
        loaded = SnapshotKeeper(target, path, "bench").load()
        load_seconds = time.perf_counter() - started
        size = path.stat().st_size
    print(
        f"{args.entries:,} entries, file {size / 1e6:.1f} MB: save {saved:.2f} s, "
        f"load {load_seconds:.2f} s ({loaded:,} entries back)"
    )


if __name__ == "__main__":
    asyncio.run(main())
