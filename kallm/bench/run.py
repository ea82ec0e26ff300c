"""One benchmark run: start the servers, choose the prompts, load every cell, stop the servers.

kallm is measured as users run it, ``python -m kallm serve`` from a config
file, against an upstream that is either the simulated one in this package
(its own process, a fixed delay per answer) or a real one. Beside it, the same
upstream is called directly with the very same miss prompts, so what kallm
adds to a miss and what it saves on a hit are read off one run on one machine.

    async with BenchSession(options, console) as session:
        cells = await session.measure()
        stats = await session.kallm_stats()
    result = session.report(cells, stats)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kallm.bench import procs
from kallm.bench.load import Cell, Schedule, Target, run_cells
from kallm.bench.plan import Plan, make_plan, probe_paraphrases
from kallm.bench.prefill import embed_keys, keys_of, make_entries, write_cache_file
from kallm.bench.prompts import MODEL, Prompt, corpus
from kallm.bench.report import MachineWatch, build_report
from kallm.embed import Embedder, local_embedder

SIMULATED_KEY = "sk-bench"  # the simulated upstream wants a bearer token, any will do
MISS_CANDIDATES_PER_MISS = 6  # prompts generated per miss needed (most get screened out)


@dataclass
class RunOptions:
    """What to measure and how much; every load loop is bounded by count and by time."""

    concurrency: list[int] = field(default_factory=lambda: [1, 32])
    requests: int | None = None  # measured per cell per level; None: 600 at c=1, 2400 above
    warmup: int = 100  # unmeasured requests per cell per round
    rounds: int = 3
    entries: int = 10_000  # answers in kallm's cache before the run
    embedder: str = "local"
    seed: int = 7
    duration: float = 30.0  # most seconds one cell may take, all its rounds together
    upstream: str | None = None  # None: the simulated upstream
    upstream_latency: float = 0.0  # the simulated upstream's delay per answer, seconds
    api_key: str = SIMULATED_KEY
    model: str = MODEL
    kallm_env: dict[str, str] = field(default_factory=dict)  # extra env for kallm (A/B runs)
    min_prompts: int = 0  # prompts to generate and embed at least (for in-process extras)

    def schedule(self) -> Schedule:
        requests = {c: self.requests or (600 if c == 1 else 2400) for c in self.concurrency}
        return Schedule(
            self.concurrency, self.rounds, self.warmup, requests, self.duration / self.rounds
        )

    @property
    def simulated(self) -> bool:
        return self.upstream is None


class BenchSession:
    """The servers and prompts of one run; the servers are stopped on exit, whatever happened."""

    def __init__(self, options: RunOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.schedule = options.schedule()
        self.log_dir = Path(tempfile.mkdtemp(prefix="kallm-bench-"))
        self.children: list[procs.Child] = []
        self.embedder: Embedder
        self.prompts: list[Prompt] = []
        self.vectors: Any = None
        self.upstream_url = ""
        self.kallm_url = ""
        self.kallm_info: dict[str, Any] = {}
        self.plan: Plan
        self.started = time.perf_counter()

    async def __aenter__(self) -> BenchSession:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._stop()

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.options.api_key}",
        }

    async def spawn(
        self,
        name: str,
        args: Sequence[str],
        ready_path: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> procs.Child:
        """Start a server process that this session will stop (by its PID) on exit."""
        child = await procs.start(
            name, args, self.log_dir, ready_path=ready_path, env=procs.hermetic_env(env), cwd=cwd
        )
        self.children.append(child)
        return child

    async def _start(self) -> None:
        options, console = self.options, self.console
        embedder = local_embedder(options.embedder)
        if embedder is None:
            raise ValueError(f"unknown embedder {options.embedder!r}: use local or hash")
        self.embedder = embedder
        upstream: asyncio.Task[procs.Child] | None = None
        if options.simulated:  # starts while the prompts are embedded below
            upstream = asyncio.create_task(
                self.spawn(
                    "upstream",
                    [
                        "-m",
                        "kallm.bench.upstream",
                        "--port",
                        "{port}",
                        "--latency",
                        f"{options.upstream_latency}s",
                    ],
                    "/v1/models",
                )
            )
        try:
            count = max(
                options.min_prompts,
                options.entries + MISS_CANDIDATES_PER_MISS * self.schedule.misses_needed(),
            )
            console.print(
                f"embedder [bold]{embedder.name}[/] (dim {embedder.dim}, default "
                f"threshold {embedder.default_threshold}); {count:,} prompts, "
                f"{options.entries:,} of them cached before the run"
            )
            self.prompts = corpus(count, options.seed)
            keys = keys_of([p.text for p in self.prompts], options.model)
            self.vectors = await embed_keys(embedder, keys)
            cached = options.entries
            entries = make_entries(
                keys[:cached],
                self.vectors[:cached],
                [p.text for p in self.prompts[:cached]],
                options.model,
            )
            cache_file = self.log_dir / "cache.kallm"
            write_cache_file(cache_file, entries, embedder.name)
        finally:
            if upstream is not None:
                self.upstream_url = (await upstream).root + "/v1"
        if not options.simulated:
            self.upstream_url = (options.upstream or "").rstrip("/")
        config = self._kallm_config(cache_file)
        kallm = await self.spawn(
            "kallm",
            ["-m", "kallm", "serve", "--config", str(config), "--port", "{port}"],
            "/health",
            # the server holds the upstream key, as a deployment would: every caller shares
            # the cache (see kallm.server.admission), and the pre-filled entries are theirs
            env={"OPENAI_API_KEY": options.api_key, **options.kallm_env},
        )
        self.kallm_url = kallm.root + "/v1"
        self.kallm_info = await self.kallm_stats()
        if self.kallm_info.get("embedder") != embedder.name:
            raise RuntimeError(
                f"kallm uses {self.kallm_info.get('embedder')}, this process "
                f"{embedder.name}: their vectors would not agree"
            )
        if self.kallm_info.get("total_entries") != options.entries:
            raise RuntimeError(
                f"kallm loaded {self.kallm_info.get('total_entries')} entries "
                f"of {options.entries}; see {kallm.log}"
            )
        threshold = float(self.kallm_info["similarity_threshold"])
        console.print(
            f"kallm (pid {kallm.pid}) ready with {options.entries:,} entries; "
            f"upstream {self._upstream_label()}"
        )
        self.plan = await make_plan(
            self.prompts,
            self.vectors,
            options.entries,
            self.schedule.misses_needed(),
            embedder,
            threshold,
            options.model,
        )
        probe_limit = max(
            50,
            max(
                self.schedule.warmup + self.schedule.measured(c) for c in self.schedule.concurrency
            ),
        )
        await probe_paraphrases(self.plan, self.kallm_url, self.headers, probe_limit)
        probe = self.plan.paraphrase_probe
        console.print(
            f"paraphrase probe: {probe.get('hit', 0)} of {probe['probed']} "
            "candidates are hits in kallm"
            + (
                f" (X-Kallm-Threshold {self.plan.paraphrase_threshold})"
                if self.plan.paraphrase_threshold is not None
                else ""
            )
        )

    def _kallm_config(self, cache_file: Path) -> Path:
        """The cache may hold every miss the run stores, so none evicts an entry a hit
        cell asks for."""
        options = self.options
        return write_kallm_config(
            self.log_dir,
            self.upstream_url,
            cache_file,
            embedder=options.embedder,
            max_entries=max(1_000_000, 2 * options.entries),
        )

    def _upstream_label(self) -> str:
        if self.options.simulated:
            return (
                f"simulated at {self.upstream_url}, "
                f"{self.options.upstream_latency * 1000:g} ms per answer"
            )
        return self.upstream_url

    def targets(self) -> list[Target]:
        """The four cells users care about: the upstream alone, and kallm missing and hitting."""
        return [
            Target("direct", self.upstream_url, "miss", None, self.headers),
            Target("kallm miss", self.kallm_url, "miss", "MISS", self.headers),
            Target("kallm exact hit", self.kallm_url, "exact", "HIT", self.headers),
            Target(
                "kallm paraphrase hit",
                self.kallm_url,
                "paraphrase",
                "HIT",
                self.plan.paraphrase_headers(self.headers),
            ),
        ]

    async def measure(self, targets: Sequence[Target] | None = None) -> list[Cell]:
        """Load every target at every concurrency level, with a progress bar."""
        targets = list(targets or self.targets())
        total = self.schedule.total_requests(len(targets))
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task("requests", total=total)
            return await run_cells(
                targets,
                self.plan.bodies(),
                self.schedule,
                tick=lambda n: progress.advance(task, n),
                note=lambda line: progress.console.print("  " + line, highlight=False),
            )

    async def kallm_stats(self) -> dict[str, Any]:
        """kallm's own counters (``GET /stats``): hits, misses, guard refusals, entries."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.kallm_url.removesuffix("/v1") + "/stats") as response,
        ):
            return dict(await response.json())

    def report(self, cells: list[Cell], kallm_stats: dict[str, Any]) -> dict[str, Any]:
        options = self.options
        upstream = {
            "kind": "simulated" if options.simulated else "real",
            "url": self.upstream_url,
            "latency_ms": options.upstream_latency * 1000 if options.simulated else None,
        }
        return build_report(
            cells,
            self.plan,
            kallm_stats,
            embedder=self.embedder.name,
            threshold=self.kallm_info.get("similarity_threshold"),
            entries=options.entries,
            upstream=upstream,
            model=options.model,
            schedule=self.schedule,
            duration=options.duration,
            log_dir=self.log_dir,
            kallm_env=options.kallm_env,
            seconds=time.perf_counter() - self.started,
        )

    async def _stop(self) -> None:
        """Stop every server started here, by PID, newest first; drop the big data files."""
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                await procs.stop(child)
        self.children.clear()
        for name in ("cache.kallm", "kallm.db", "kallm.db-wal", "kallm.db-shm"):
            with contextlib.suppress(OSError):
                (self.log_dir / name).unlink()
        if not any(self.log_dir.glob("*.log")):
            shutil.rmtree(self.log_dir, ignore_errors=True)


def write_kallm_config(
    directory: Path,
    upstream_url: str,
    cache_file: Path,
    *,
    embedder: str = "local",
    max_entries: int = 1_000_000,
) -> Path:
    """kallm.toml for a measured server: the user's defaults, but its data kept apart.

    Logging stays at warning: an INFO line per request would measure the terminal,
    not the proxy; no snapshot is written while the load runs.
    """
    document = {
        "server": {"host": "127.0.0.1"},  # the port is a free one, given as a flag
        "upstream": {"base_url": upstream_url},
        "cache": {
            "file": str(cache_file),
            "embedding_model": embedder,
            "max_entries": max_entries,
            "snapshot_interval": "0s",
        },
        "log": {"level": "warning"},
        "db": {"path": str(directory / "kallm.db")},
    }
    path = directory / "kallm.toml"
    path.write_text(tomli_w.dumps(document))
    return path


@contextlib.contextmanager
def cancel_on_sigterm() -> Iterator[None]:
    """SIGTERM cancels the current task, so the servers are stopped on the way out.

    Python's default for SIGTERM is to die on the spot, which would leave the
    kallm and upstream processes running with nobody to stop them. (SIGINT is
    already turned into a cancellation by ``asyncio.run``.)
    """
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    try:
        if task is None:
            raise RuntimeError("not in a task")
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, thread)
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_bench(options: RunOptions, console: Console) -> dict[str, Any]:
    """The whole ``kallm bench run``: servers up, four cells per level, servers down."""
    watch = MachineWatch()
    with cancel_on_sigterm():
        return await _run(options, console, watch)


async def _run(options: RunOptions, console: Console, watch: MachineWatch) -> dict[str, Any]:
    async with BenchSession(options, console) as session:
        cells = await session.measure()
        stats = await session.kallm_stats()
    result = session.report(cells, stats)
    result["meta"].update(watch.finish())  # after the servers were reaped
    return result
