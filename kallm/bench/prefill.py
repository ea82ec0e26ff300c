"""Filling a cache before measuring it: what thousands of earlier misses would have left.

A lookup in an empty cache is not the lookup users get, so every measured
kallm starts with ``entries`` answers already cached. They are embedded here,
once, with the same embedder and the same key derivation the server uses, and
handed to kallm as its own cache file: the server loads it at start-up exactly
as it would after a restart, and the benchmark keeps the vectors to choose
prompts that will really hit or really miss.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kallm.bench.prompts import MODEL, chat_request, completion_body
from kallm.cache.scope import SERVER_TENANT, CacheKey, cache_key
from kallm.cache.snapshot import encode, write_atomic
from kallm.cache.store import Entry, MemoryBackend
from kallm.embed import Embedder

TTL = 24 * 3600.0
COST_USD = 0.00002  # what one small answer would have cost; only feeds kallm's savings counter
TOKENS = 40


async def embed_texts(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """One vector per text, through the same ``embed`` call the request path uses."""
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        vectors[i] = await embedder.embed(text)
    return vectors


def keys_of(
    texts: Sequence[str], model: str = MODEL, tenant: tuple[str, ...] = SERVER_TENANT
) -> list[CacheKey]:
    """The cache keys kallm derives for these prompts sent as ``chat_request`` bodies, by
    callers relying on the server's own upstream key (how the benchmark runs kallm)."""
    return [cache_key(chat_request(text, model), tenant) for text in texts]


async def embed_keys(embedder: Embedder, keys: Sequence[CacheKey]) -> np.ndarray:
    """Vectors of the compared texts (normalised as kallm normalises them)."""
    return await embed_texts(embedder, [k.text or "" for k in keys])


def make_entries(
    keys: Sequence[CacheKey],
    vectors: np.ndarray,
    texts: Sequence[str],
    model: str = MODEL,
    now: float | None = None,
) -> list[Entry]:
    """Cache entries for these prompts, each answered the way the simulated upstream would."""
    now = time.time() if now is None else now
    return [
        Entry(
            key.scope,
            key.exact,
            key.text,
            vectors[i],
            completion_body(text, i, model),
            now,
            now + TTL,
            cost_usd=COST_USD,
            tokens=TOKENS,
        )
        for i, (key, text) in enumerate(zip(keys, texts, strict=True))
    ]


def fill(backend: MemoryBackend, entries: Sequence[Entry]) -> None:
    """Put entries straight into an in-process backend (for timing lookups in-process)."""
    for entry in entries:
        backend.add(entry)


def write_cache_file(path: Path, entries: list[Entry], embedder_name: str) -> int:
    """Write ``entries`` as kallm's cache file (the format ``kallm serve`` loads at start-up)."""
    write_atomic(path, encode(entries, embedder_name))
    return path.stat().st_size
