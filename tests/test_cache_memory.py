"""The in-memory cache is capped by bytes as well as entries, and counts its bytes honestly."""

from __future__ import annotations

import gc
import hashlib
import logging
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from kallm.cache.store import (
    DEFAULT_MAX_BYTES,
    SCOPE_OVERHEAD,
    Entry,
    MemoryBackend,
    entry_bytes,
)
from kallm.config import Settings, load_settings

MB = 1024**2


def entry(i: int, *, response: bytes | None = None, text: str | None = None, dim: int = 0) -> Entry:
    """An entry shaped like the ones SemanticCache stores (hex keys, a float32 vector)."""
    now = time.time()
    vector = None
    if dim:
        vector = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
        vector /= np.linalg.norm(vector)
    return Entry(
        hashlib.blake2b(f"scope{i % 7}".encode(), digest_size=16).hexdigest(),
        hashlib.blake2b(f"exact{i}".encode(), digest_size=16).hexdigest(),
        f"question number {i}" if text is None else text,
        vector,
        response if response is not None else b'{"answer": %d}' % i,
        now,
        now + 3600,
    )


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def counted(backend: MemoryBackend) -> int:
    """What the backend should be counting: its entries plus one charge per vector scope."""
    entries = list(backend.entries())
    scopes = {e.scope for e in entries if e.vector is not None}
    return sum(entry_bytes(e) for e in entries) + SCOPE_OVERHEAD * len(scopes)


def test_default_cap_and_the_setting() -> None:
    assert Settings().cache_max_bytes == DEFAULT_MAX_BYTES == 512 * MB
    assert MemoryBackend(10).max_bytes == DEFAULT_MAX_BYTES
    loaded = load_settings(environ={"KALLM_CACHE_MAX_BYTES": "64MiB"})
    assert loaded.settings.cache_max_bytes == 64 * MB
    assert loaded.sources["cache_max_bytes"] == "env KALLM_CACHE_MAX_BYTES"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_big_entries_stay_under_the_byte_cap_and_rss_follows() -> None:
    """30 answers and prompts of 9 MB under a 64 MB cap: at most 64 MB counted, and the
    process grows by less than twice the cap (a count cap alone kept all 270 MB)."""
    cap = 64 * MB
    backend = MemoryBackend(10_000, max_bytes=cap)
    gc.collect()
    before = peak = rss_bytes()
    for i in range(30):
        big = b"x" * (9 * MB)  # written, so every page is really resident
        if i % 2:
            assert backend.add(entry(i, response=big, dim=256))
        else:  # a 9 MB prompt: the compared text is the big part
            assert backend.add(entry(i, text="y" * (9 * MB), dim=256))
        del big
        assert backend.bytes <= cap
        peak = max(peak, rss_bytes())
    assert 6 <= len(backend) <= 7
    assert backend.counters().evictions == 30 - len(backend)
    assert backend.bytes == counted(backend)
    growth = peak - before
    print(f"RSS grew by {growth / MB:.0f} MB at most, {backend.bytes / MB:.1f} MB counted")
    assert growth < 2 * cap


def test_an_entry_over_a_quarter_of_the_cap_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend(100, max_bytes=4 * MB)
    kept = [entry(i, response=b"a" * 1000) for i in range(3)]
    for item in kept:
        assert backend.add(item)
    with caplog.at_level(logging.WARNING, logger="kallm.cache"):
        assert not backend.add(entry(99, response=b"b" * MB))  # 1 MB + overhead > 4 MB / 4
        assert not backend.add(entry(98, response=b"b" * MB))
    assert backend.counters().oversized == 2
    assert backend.counters().evictions == 0
    assert list(backend.entries()) == kept
    assert len([r for r in caplog.records if "not stored" in r.message]) == 1  # logged once
    assert backend.add(entry(97, response=b"c" * (MB - 4096)))  # just under a quarter


async def test_lru_by_bytes_keeps_the_recently_used() -> None:
    size = entry_bytes(entry(0, response=b"x" * MB))
    backend = MemoryBackend(100, max_bytes=4 * size + size // 2)  # room for four
    first, second, *others = (entry(i, response=b"x" * MB) for i in range(4))
    for item in (first, second, *others):
        assert backend.add(item)
    await backend.touch(first, time.time())  # first is now the most recently used
    assert backend.add(entry(4, response=b"x" * MB))
    held = list(backend.entries())
    assert second not in held and first in held and all(o in held for o in others)
    assert backend.counters().evictions == 1
    assert backend.add(entry(5))  # a small one still fits beside them
    assert len(backend) == 5 and backend.bytes <= backend.max_bytes
    backend.add(entry(6, response=b"x" * MB))  # the oldest use goes first: others[0]
    assert others[0] not in list(backend.entries()) and first in list(backend.entries())


def test_both_caps_hold_together() -> None:
    backend = MemoryBackend(5, max_bytes=100 * MB)
    for i in range(8):
        backend.add(entry(i))
    assert len(backend) == 5 and backend.counters().evictions == 3


def test_bytes_come_back_on_replace_expiry_and_eviction() -> None:
    backend = MemoryBackend(1_000, max_bytes=64 * MB)
    for i in range(50):
        backend.add(entry(i, response=b"r" * 5000, dim=64))
    replacement = entry(7, response=b"s" * 100, dim=64)  # same exact key as entry 7
    backend.add(replacement)
    assert len(backend) == 50
    assert backend.bytes == counted(backend)
    assert backend.sweep(time.time() + 7200) == 50
    assert backend.bytes == 0 and len(backend) == 0


@pytest.mark.parametrize(("dim", "scopes"), [(0, 7), (256, 7), (384, 10_000)])
def test_counted_bytes_match_what_python_allocates(dim: int, scopes: int) -> None:
    """The count is what tracemalloc sees the entries and the backend take, within 20%."""
    count = 5_000
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        backend = MemoryBackend(count, max_bytes=10**12)
        for i in range(count):
            item = entry(i, response=b'{"choices": [%d]}' % i * 20, dim=dim)
            item.scope = hashlib.blake2b(str(i % scopes).encode(), digest_size=16).hexdigest()
            backend.add(item)
        gc.collect()
        allocated = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert 0.85 < backend.bytes / allocated < 1.25, (backend.bytes, allocated)
