"""The cache file and its journal: nothing unreadable stops start-up, nothing is overwritten
that another embedder could use, and a crash loses at most the last moment of stores."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from kallm.cache.journal import encode_record, header_bytes, journal_path
from kallm.cache.persistence import SnapshotKeeper
from kallm.cache.snapshot import MAGIC, encode, meta_of
from kallm.cache.store import Entry, MemoryBackend, Snapshottable
from tests.harness import Http, Upstream
from tests.test_errors import free_port

EMBEDDER = "test-embedder-v1"


def entry(i: int, dim: int = 8) -> Entry:
    now = time.time()
    vector = np.full(dim, ((i % 5) + 1) / np.sqrt(dim), dtype=np.float32)
    return Entry(
        f"scope{i % 3}",
        f"exact{i}",
        f"question {i} — ünïcode",
        vector,
        json.dumps({"answer": i}).encode(),
        now,
        now + 3600,
        0.001,
        12,
    )


def keeper_for(path: Path, embedder: str = EMBEDDER, **kwargs: Any) -> SnapshotKeeper:
    return SnapshotKeeper(MemoryBackend(10_000), path, embedder, **kwargs)


def crafted(header: Any, meta: Any, blob: bytes = b"", vectors: bytes = b"") -> bytes:
    """A snapshot whose checksum is right whatever its fields say (a buggy writer's file)."""
    count = len(meta) if isinstance(meta, list) else 0
    parts = [MAGIC]
    for section in (json.dumps(header).encode(), json.dumps(meta).encode()):
        parts += [struct.pack("<Q", len(section)), section]
    offsets = np.zeros(count + 1, dtype="<u8")
    offsets[1:] = len(blob)  # every body is the whole blob's end: valid if count is 1
    parts += [offsets.tobytes(), blob, vectors]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def header(count: int = 1, **changes: Any) -> dict[str, Any]:
    return {"format": 1, "embedder": EMBEDDER, "dim": 0, "count": count, **changes}


ROW = ["scope", "exact", "text", 1.0, 4e9, 0.0, 1, 0, False]
INVALID_FILES = {
    "time as string": crafted(header(), [[*ROW[:4], "tomorrow", *ROW[5:]]]),
    "text as number": crafted(header(), [[*ROW[:2], 42, *ROW[3:]]]),
    "row too short": crafted(header(), [ROW[:5]]),
    "meta not a list": crafted(header(), {"scope": "x"}),
    "count as string": crafted(header(count="1"), [ROW]),
    "count too high": crafted(header(count=2), [ROW]),
    "negative dim": crafted(header(dim=-4), [ROW]),
    "header a list": crafted([1, 2], [ROW]),
    "vector flag, no vectors": crafted(header(dim=4), [[*ROW[:8], True]]),
    "embedder a number": crafted(header(embedder=7), [ROW]),
}


@pytest.mark.parametrize("content", INVALID_FILES.values(), ids=INVALID_FILES.keys())
def test_structurally_invalid_file_is_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.kallm"
    path.write_bytes(content)
    keeper = keeper_for(path)
    with caplog.at_level(logging.DEBUG):
        assert keeper.load() == 0
    assert not path.exists()
    assert (tmp_path / "cache.kallm.corrupt").read_bytes() == content
    assert all(record.exc_info is None for record in caplog.records)
    assert "Traceback" not in caplog.text
    assert len([r for r in caplog.records if "moved to" in r.message]) == 1


def test_real_server_starts_empty_on_wrong_field_types(
    make_proxy: Any, proxy_settings: Any
) -> None:
    path: Path = proxy_settings.cache_file
    bad = crafted(header(embedder="local-minilm-static-v1"), [[*ROW[:3], "noon", *ROW[4:]]])
    path.write_bytes(bad)
    proxy = make_proxy()
    assert Http(proxy.root).get("/health").json()["cache_entries"] == 0
    assert path.with_name("cache.kallm.corrupt").read_bytes() == bad


async def test_file_of_another_embedder_is_kept_aside_and_never_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.kallm"
    theirs = encode([entry(1), entry(2)], "remote:their-model")
    path.write_bytes(theirs)
    keeper = keeper_for(path)
    with caplog.at_level(logging.INFO, logger="kallm.cache"):
        assert keeper.load() == 0
    aside = tmp_path / "cache.kallm.remote_their-model"
    assert aside.read_bytes() == theirs
    lines = [r.getMessage() for r in caplog.records if "their-model" in r.getMessage()]
    assert len(lines) == 1 and str(aside) in lines[0]
    keeper.backend.add(entry(3))
    assert await keeper.save() == 1
    assert aside.read_bytes() == theirs  # the next snapshot went to cache.kallm, not there
    assert keeper_for(path).load() == 1
    # the same embedder's file turns up again: a second aside name, the first one untouched
    second = encode([entry(4)], "remote:their-model")
    path.write_bytes(second)
    assert keeper_for(path).load() == 0
    assert aside.read_bytes() == theirs
    assert (tmp_path / "cache.kallm.remote_their-model.1").read_bytes() == second


def test_leftover_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    path = tmp_path / "cache.kallm"
    leftovers = [
        tmp_path / "cache.kallm.k3j_x9a2.tmp",
        tmp_path / "cache.kallm.journal.a1b2c3d4.tmp",
    ]
    unrelated = [
        tmp_path / "cache.kallm.notes.tmp",  # not a name mkstemp makes
        tmp_path / "other.kallm.k3j_x9a2.tmp",
        tmp_path / "cache.kallm.corrupt",
    ]
    for file in leftovers + unrelated:
        file.write_bytes(b"half a snapshot")
    keeper_for(path).load()
    assert not any(file.exists() for file in leftovers)
    assert all(file.exists() for file in unrelated)


async def test_journal_brings_back_what_no_snapshot_holds(tmp_path: Path) -> None:
    """Stores after the last snapshot, then a crash (no save, no close): all come back."""
    path = tmp_path / "cache.kallm"
    keeper = keeper_for(path)
    keeper.load()
    for i in range(10):
        keeper.backend.add(entry(i))
    assert await keeper.save() == 10
    stored = [entry(i) for i in range(10, 60)]
    for item in stored:
        keeper.backend.add(item)
    assert keeper.journal is not None
    keeper.journal.flush()  # what the writer thread does within milliseconds
    # crash: the process is gone; a new one opens the same files
    again = keeper_for(path)
    assert again.load() == 60
    back = {e.exact: e for e in again.backend.entries()}  # type: ignore[attr-defined]
    for item in stored:
        found = back[item.exact]
        assert (found.response, found.text, found.scope) == (item.response, item.text, item.scope)
        assert found.created_at == item.created_at and found.expires_at == item.expires_at
        assert np.array_equal(found.vector, item.vector)


async def test_snapshot_cuts_the_journal_to_what_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "cache.kallm"
    keeper = keeper_for(path)
    keeper.load()
    for i in range(20):
        keeper.backend.add(entry(i))
    journal = keeper.journal
    assert journal is not None
    journal.flush()
    grown = journal.size
    await keeper.save()
    assert journal.size < grown and journal_path(path).stat().st_size == journal.size
    # a cut in the middle keeps the later records (stores made while a snapshot was written)
    for i in range(20, 30):
        keeper.backend.add(entry(i))
    journal.flush()
    journal.checkpoint(journal.seq - 4)
    again = keeper_for(path, journal=True)
    assert again.load() == 24  # 20 in the snapshot, 4 from the journal


async def test_torn_journal_tail_is_ignored_and_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.kallm"
    keeper = keeper_for(path)
    keeper.load()
    for i in range(5):
        keeper.backend.add(entry(i))
    assert keeper.journal is not None
    keeper.journal.flush()
    whole = journal_path(path).stat().st_size
    with journal_path(path).open("ab") as handle:  # a record the crash cut short
        handle.write(struct.pack("<II", 500, 0) + b"partial record")
    again = keeper_for(path)
    with caplog.at_level(logging.WARNING, logger="kallm.cache"):
        assert again.load() == 5
    assert "ignored 22 bytes" in caplog.text
    assert journal_path(path).stat().st_size == whole
    again.backend.add(entry(5))  # appended after the whole records, so it is found again
    assert again.journal is not None
    again.journal.flush()
    assert keeper_for(path).load() == 6


def test_a_record_with_wrong_field_types_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its checksum holds, so the records after it are still read; it alone is left out."""
    path = tmp_path / "cache.kallm"
    bad = entry(1)
    bad.created_at = "yesterday"  # type: ignore[assignment]
    records = [encode_record(1, entry(0)), encode_record(2, bad), encode_record(3, entry(2))]
    journal_path(path).write_bytes(header_bytes(EMBEDDER) + b"".join(records))
    keeper = keeper_for(path)
    with caplog.at_level(logging.WARNING, logger="kallm.cache"):
        assert keeper.load() == 2
    assert "skipped 1 records" in caplog.text
    assert {e.exact for e in keeper.backend.entries()} == {"exact0", "exact2"}  # type: ignore[attr-defined]


def test_journal_of_another_embedder_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "cache.kallm"
    keeper = keeper_for(path, embedder="theirs")
    keeper.load()
    keeper.backend.add(entry(1))
    assert keeper.journal is not None
    keeper.journal.flush()
    content = journal_path(path).read_bytes()
    assert keeper_for(path).load() == 0
    assert (tmp_path / "cache.kallm.journal.theirs").read_bytes() == content


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_full_disk_never_fails_a_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal on a full device: stores go on, the failure is counted and logged once,
    and the snapshot still holds everything."""
    path = tmp_path / "cache.kallm"
    journal_path(path).symlink_to("/dev/full")
    keeper = keeper_for(path)
    keeper.load()
    with caplog.at_level(logging.WARNING, logger="kallm.cache"):
        for i in range(30):
            assert keeper.backend.add(entry(i))
            if i % 10 == 0:
                assert keeper.journal is not None
                keeper.journal.flush()
        assert keeper.journal is not None
        keeper.journal.flush()
    counters = keeper.journal.counters
    assert counters.errors >= 1 and counters.dropped == 30 and counters.records == 0
    assert len([r for r in caplog.records if "failed" in r.message]) == 1
    assert await keeper.save() == 30
    journal_path(path).unlink()
    assert keeper_for(path).load() == 30


async def test_a_journal_past_its_limit_triggers_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "cache.kallm"
    keeper = keeper_for(path, journal_min_bytes=4096)
    keeper.load()
    task = asyncio.create_task(keeper.run_periodically(3600))
    try:
        for i in range(100):
            keeper.backend.add(entry(i))
        assert keeper.journal is not None
        keeper.journal.flush()
        assert keeper.journal.size > 4096
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert path.exists()
        await asyncio.sleep(0.2)
        assert keeper.journal.size < 4096
    finally:
        task.cancel()
    assert keeper_for(path).load() == 100


def test_kill_9_under_load_loses_at_most_a_moment(upstream: Upstream, tmp_path: Path) -> None:
    """A real ``kallm serve``, stores from a client thread, SIGKILL, restart: every entry
    whose MISS answer the client got more than a second before the kill comes back, and
    hardly any of the rest is lost (snapshots every hour: only the journal saves them)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KALLM_", "OPENAI_"))},
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_API_KEY": "sk-up",
        "KALLM_CACHE_FILE": str(tmp_path / "cache.kallm"),
        "KALLM_EMBEDDING_MODEL": "hash",
        "KALLM_SNAPSHOT_INTERVAL": "1h",
        "KALLM_DB": "off",
    }
    log = tmp_path / "serve.log"
    first, root = serve(env, log)
    answered: list[tuple[float, str]] = []  # (when the MISS answer came, prompt)
    stop = threading.Event()

    def client() -> None:
        api = openai.OpenAI(base_url=root + "/v1", api_key="k", max_retries=0, timeout=5)
        i = 0
        while not stop.is_set():
            prompt = f"kill test question number {i}: what is {i} times {i + 7}?"
            try:
                raw = ask(api, prompt)
            except openai.APIConnectionError:
                return  # the server is gone
            if raw.headers.get("x-kallm-cache") == "MISS":
                answered.append((time.monotonic(), prompt))
            i += 1

    thread = threading.Thread(target=client, daemon=True)
    try:
        thread.start()
        time.sleep(2.5)
        killed_at = time.monotonic()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        stop.set()
        thread.join(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    second, root = serve(env, log)
    try:
        back = Http(root).get("/health").json()["cache_entries"]
        api = openai.OpenAI(base_url=root + "/v1", api_key="k", max_retries=0, timeout=5)
        lost = [(at, p) for at, p in answered if ask(api, p).headers.get("x-kallm-cache") != "HIT"]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    print(f"kill -9: {len(answered)} MISS answers, {back} entries back, {len(lost)} lost")
    assert len(answered) > 50  # there was load
    assert all(at > killed_at - 1.0 for at, _ in lost)  # nothing older than a second
    assert len(lost) <= max(5, len(answered) // 10)  # of ~2.5 s of stores: < 0.25 s worth
    assert "Traceback" not in log.read_text()


def ask(api: openai.OpenAI, prompt: str) -> Any:
    return api.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m kallm serve`` on a free port, its output appended to ``log``."""
    port = free_port()
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "kallm", "serve"],
            env={**env, "KALLM_PORT": str(port)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if Http(root).get("/health", timeout=1).status == 200:
                return process, root
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"kallm did not start: {log.read_text()[-2000:]}")


def test_meta_of_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.kallm"
    items = [entry(i) for i in range(3)]
    items[1].vector = None
    path.write_bytes(encode(items, EMBEDDER, journal_seq=7))
    keeper = keeper_for(path)
    assert keeper.load() == 3
    assert [meta_of(e)[:8] for e in keeper.backend.entries()] == [meta_of(e)[:8] for e in items]  # type: ignore[attr-defined]


class DictBackend:
    """A second Snapshottable that is not a MemoryBackend: the keeper needs nothing more."""

    def __init__(self) -> None:
        self.items: dict[str, Entry] = {}
        self.changes = 0
        self.on_store: Any = None

    def entries(self) -> Iterator[Entry]:
        return iter(list(self.items.values()))

    def add(self, entry: Entry) -> bool:
        self.items[entry.exact] = entry
        self.changes += 1
        if self.on_store is not None:
            self.on_store(entry)
        return True

    def sweep(self, now: float) -> int:
        return 0

    def listen(self, on_store: Any) -> None:
        self.on_store = on_store


async def test_keeper_needs_only_the_snapshottable_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryBackend(1), Snapshottable)
    assert isinstance(DictBackend(), Snapshottable)
    path = tmp_path / "cache.kallm"
    keeper = SnapshotKeeper(DictBackend(), path, EMBEDDER)
    keeper.load()
    for i in range(3):
        keeper.backend.add(entry(i))
    assert await keeper.save() == 3
    keeper.backend.add(entry(3))
    await keeper.close()  # writes what is queued, ends the writer
    keeper.backend.add(entry(4))  # after close: in memory only
    again = SnapshotKeeper(DictBackend(), path, EMBEDDER)
    assert again.load() == 4  # 0-2 from the snapshot, 3 from the journal, not 4


def test_unreadable_journal_is_kept_and_nothing_written(tmp_path: Path) -> None:
    """A journal we cannot read (here: a directory) is neither moved nor cut."""
    path = tmp_path / "cache.kallm"
    journal_path(path).mkdir()
    keeper = keeper_for(path)
    assert keeper.load() == 0
    keeper.backend.add(entry(1))
    assert asyncio.run(keeper.save()) == 0  # snapshots off for this run
    assert journal_path(path).is_dir() and not path.exists()
