"""``kallm bench run | quality``: how fast kallm is on this machine, and which threshold to use.

``kallm bench`` with options only (or nothing) means ``kallm bench run``: the
question most people bring is "what does the proxy cost me and save me", and
it should not need a subcommand to ask.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from kallm.bench import MODEL
from kallm.cli.common import duration_flag, fail

QUICK = {"entries": 300, "requests": 30, "warmup": 5, "rounds": 1, "duration": 10.0}
# A real upstream bills every miss: small counts unless the user asks for more.
REAL = {"entries": 10_000, "requests": 40, "warmup": 3, "rounds": 1, "duration": 120.0}
FULL = {"entries": 10_000, "requests": None, "warmup": 100, "rounds": 3, "duration": 30.0}


class BuiltinEmbedder(StrEnum):
    """The embedders a benchmark can pre-fill for: both run in-process, offline."""

    local = "local"
    hash = "hash"


class RunByDefault(TyperGroup):
    """A group that treats ``kallm bench [--options]`` as ``kallm bench run [--options]``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=RunByDefault,
    help="Measure kallm: speed against a direct call "
    "(`run`, the default), or the threshold to use (`quality`).",
)


def _console() -> Console:
    """Wide enough for the tables when piped or captured (rich assumes 80 columns then)."""
    return Console(width=None if sys.stdout.isatty() else 140)


def _concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        fail(f"--concurrency {text!r}: expected positive integers such as 1,32")
    return levels


def _show(result: dict[str, Any], as_json: bool, save: Path, console: Console, report: Any) -> None:
    """The table (or, with --json, the JSON on stdout), and the JSON saved to ``save``."""
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        report(result, console)
    _write_json(save, result, Console(stderr=True) if as_json else console)


def _write_json(path: Path, result: dict[str, Any], console: Console) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {path}", highlight=False)


@app.command()
def run(
    upstream: str | None = typer.Option(
        None,
        help="A real upstream base URL ending in /v1 (default: the built-in simulated upstream).",
    ),
    api_key: str | None = typer.Option(
        None,
        envvar="OPENAI_API_KEY",
        show_envvar=True,
        help="Key for --upstream (sent by the load generator, forwarded by kallm).",
    ),
    model: str = typer.Option(MODEL, help="Model named in every request."),
    upstream_latency: str = typer.Option(
        "0ms", help="The simulated upstream's delay per answer: 0ms, 300ms, 1.5s."
    ),
    concurrency: str = typer.Option("1,32", help="Concurrency levels, comma-separated."),
    entries: int | None = typer.Option(
        None, min=1, help="Answers cached before the run [default: 10000; --quick 300]."
    ),
    requests: int | None = typer.Option(
        None,
        min=1,
        help="Measured requests per cell per "
        "level [default: 600 at c=1, 2400 above; 40 with "
        "--upstream; --quick 30].",
    ),
    warmup: int | None = typer.Option(
        None,
        min=0,
        help="Unmeasured requests per cell per round [default: 100; 3 with --upstream; --quick 5].",
    ),
    rounds: int | None = typer.Option(
        None, min=1, help="Interleaved rounds per cell [default: 3; 1 with --upstream or --quick]."
    ),
    duration: str | None = typer.Option(
        None,
        help="Most time one cell may take, all rounds "
        "together [default: 30s; 120s with --upstream; "
        "--quick 10s].",
    ),
    embedder: BuiltinEmbedder = typer.Option(
        BuiltinEmbedder.local, help="The embedder kallm runs with."
    ),
    seed: int = typer.Option(7, help="Seed of the prompt stream."),
    save: Path = typer.Option(
        Path("kallm-bench.json"), "--save", help="Where to write the results as JSON."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead."),
    quick: bool = typer.Option(False, help="Tiny counts: a smoke run of a few seconds."),
) -> None:
    """Requests/s and p50/p90/p99 of kallm (miss, exact hit, paraphrase hit) vs a direct call."""
    import asyncio

    from kallm.bench.report import print_report
    from kallm.bench.run import SIMULATED_KEY, RunOptions, run_bench

    if upstream is not None and not upstream.startswith(("http://", "https://")):
        fail(f"--upstream {upstream!r}: expected a base URL such as http://localhost:11434/v1")
    preset = QUICK if quick else (REAL if upstream else FULL)
    options = RunOptions(
        concurrency=_concurrency(concurrency),
        requests=requests if requests is not None else preset["requests"],
        warmup=warmup if warmup is not None else preset["warmup"],
        rounds=rounds if rounds is not None else preset["rounds"],
        entries=entries if entries is not None else preset["entries"],
        embedder=embedder.value,
        seed=seed,
        duration=duration_flag("--duration", duration) if duration else preset["duration"],
        upstream=upstream,
        upstream_latency=duration_flag("--upstream-latency", upstream_latency),
        api_key=(api_key or SIMULATED_KEY) if upstream else SIMULATED_KEY,
        model=model,
    )
    console = _console()
    if upstream:
        calls = 2 * options.schedule().misses_needed()
        console.print(
            f"[yellow]about {calls:,} requests (direct and kallm misses) will reach {upstream}[/]",
            highlight=False,
        )
    try:
        result = asyncio.run(run_bench(options, console))
    except (RuntimeError, ValueError, OSError) as exc:
        fail(str(exc), code=1)
    except (KeyboardInterrupt, asyncio.CancelledError):
        fail("interrupted; the servers it started were stopped", code=130)
    _show(result, as_json, save, console, print_report)


@app.command()
def quality(
    pairs: Path = typer.Option(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        help="JSONL of labelled pairs: {text_a, text_b, label: 0|1} or "
        "{a, b, label: must_hit|must_not_hit}.",
    ),
    thresholds: str = typer.Option(
        "0.80:0.99:0.01", help="start:stop:step (stop included), or a list such as 0.9,0.95."
    ),
    target_precision: float = typer.Option(
        0.97, min=0.0, max=1.0, help="Precision the recommended threshold must reach."
    ),
    guard: bool = typer.Option(
        True, "--guard/--no-guard", help="Apply kallm's hit guard, as the server does by default."
    ),
    embedder: BuiltinEmbedder = typer.Option(BuiltinEmbedder.local, help="The embedder to judge."),
    save: Path = typer.Option(
        Path("kallm-bench-quality.json"), "--save", help="Where to write the results as JSON."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead."),
) -> None:
    """Precision and recall per threshold on labelled pairs, and the threshold to use."""
    import asyncio

    from kallm.bench.quality import PairsError, evaluate, parse_thresholds, print_quality

    try:
        levels = parse_thresholds(thresholds)
        result = asyncio.run(evaluate(pairs, embedder.value, levels, guard, target_precision))
    except (PairsError, ValueError) as exc:
        fail(str(exc))
    _show(result, as_json, save, _console(), print_quality)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")
