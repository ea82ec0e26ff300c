"""``kallm warm FILE``: fill the cache from a file of prompts, or of prompt/response pairs.

Thin on purpose: options, a progress bar and the summary. Parsing and sending live in
``kallm.warm`` so they can be tested and reused without a terminal.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from kallm.cli.common import CONFIG_OPTION, fail, settings_from

if TYPE_CHECKING:  # the implementation (aiohttp, the server) loads only when a command runs
    from rich.progress import Progress

    from kallm.config import Settings
    from kallm.warm import Counts, Parsed, Problem, Target


def _read(file: str) -> str:
    """The file's text, or exit 2 with the reason: a missing file is bad usage, not a crash."""
    if file == "-":
        return sys.stdin.read()
    path = Path(file).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{file}: no such file")
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text")
    except OSError as exc:
        fail(f"{file}: cannot read it ({exc.strerror or exc})")


def _root(url: str) -> str:
    """The server root from --url; an OpenAI-style base URL ending in /v1 is accepted too."""
    root = url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        fail(f"--url {url!r}: expected http://HOST:PORT")
    return root[:-3] if root.endswith("/v1") else root


def _problems(console: Console, title: str, shown: list[Problem], total: int) -> None:
    if not total:
        return
    console.print(f"[bold yellow]{title}:[/] {total}", highlight=False)
    for problem in shown:
        console.print(f"  line {problem.line}: {problem.reason}", highlight=False, soft_wrap=True)
    if total > len(shown):
        console.print(f"  … and {total - len(shown)} more", highlight=False)


def _summary(console: Console, counts: Counts, where: str) -> None:
    from rich.table import Table

    _problems(console, "bad lines (skipped)", counts.bad_lines, counts.bad)
    _problems(console, "failed", counts.failures, counts.failed)
    console.print(f"warmed {where}", highlight=False, soft_wrap=True)
    table = Table("", "", show_header=False)
    for name, value in (
        ("lines read", counts.lines),
        ("already cached", counts.cached),
        ("added", counts.added),
        ("imported", counts.imported),
        ("failed", counts.failed),
        ("bad lines", counts.bad),
        ("estimated cost", f"${counts.cost_usd:.6f}"),
        ("elapsed", f"{counts.elapsed:.1f}s"),
    ):
        table.add_row(name, str(value))
    console.print(table)


def _dry_run(console: Console, parsed: Parsed, as_json: bool, config: Path | None) -> None:
    from rich.table import Table

    from kallm.accounts.pricing import PriceTable
    from kallm.warm import SHOWN, estimate_cost

    imports = parsed.imports
    sends = len(parsed.items) - imports
    prices = PriceTable(overrides=dict(settings_from(config).settings.prices))
    cost = estimate_cost(parsed.items, prices)
    if as_json:
        print(
            json.dumps(
                {
                    "lines": parsed.lines,
                    "to_send": sends,
                    "to_import": imports,
                    "bad": len(parsed.bad),
                    "estimated_cost_usd": cost,
                    "bad_lines": [vars(p) for p in parsed.bad[:SHOWN]],
                }
            )
        )
    else:
        _problems(console, "bad lines (skipped)", parsed.bad[:SHOWN], len(parsed.bad))
        table = Table("", "", title="kallm warm --dry-run (nothing sent)", show_header=False)
        for name, value in (
            ("lines read", parsed.lines),
            ("would send", sends),
            ("would import", imports),
            ("bad lines", len(parsed.bad)),
            ("estimated cost (at most)", f"${cost:.6f}"),
        ):
            table.add_row(name, str(value))
        console.print(table)
    raise typer.Exit(1 if parsed.bad else 0)


async def _run(
    parsed: Parsed,
    target: Target | None,
    settings: Settings | None,
    namespace: str,
    concurrency: int,
    progress: Progress,
) -> Counts:
    """Warm ``target``, or (without one) a kallm started here with ``settings``."""
    from kallm.warm import embedded_server, warm

    task = progress.add_task("warming", total=len(parsed.items))

    def advance(n: int) -> None:
        progress.advance(task, n)

    if settings is None:
        assert target is not None
        return await warm(parsed, target, concurrency=concurrency, progress=advance)
    async with embedded_server(settings, namespace) as embedded:
        return await warm(parsed, embedded, concurrency=concurrency, progress=advance)


def warm_command(
    file: str = typer.Argument(
        ...,
        help="Prompts, one a line (# comments), or JSONL: "
        "chat requests, or prompt/response pairs. '-' reads stdin.",
    ),
    url: str | None = typer.Option(
        None,
        help="A running kallm, e.g. http://127.0.0.1:8080. "
        "Without it kallm runs in-process with your settings and "
        "saves its cache file at the end.",
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model for lines that name none (every plain-text line)."
    ),
    fmt: str = typer.Option(
        "auto", "--format", help="auto (per line: '{' starts JSON), text or jsonl."
    ),
    concurrency: int = typer.Option(
        4, "--concurrency", "-j", min=1, max=256, help="Requests in flight at once."
    ),
    api_key: str | None = typer.Option(
        None,
        envvar=["KALLM_API_KEY", "OPENAI_API_KEY"],
        help="With --url: the key chat requests carry (a virtual key when auth is on).",
    ),
    admin_key: str | None = typer.Option(
        None,
        envvar="KALLM_ADMIN_KEY",
        help="With --url: the server's admin key, needed to import pairs.",
    ),
    namespace: str = typer.Option("", help="Warm this tenant (X-Kallm-Namespace)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Parse, count and estimate the cost; send nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    config: Path | None = CONFIG_OPTION,
    cache_file: str | None = typer.Option(
        None, help="Cache file for the in-process server (env KALLM_CACHE_FILE)."
    ),
) -> None:
    """Fill the cache before users arrive. Safe to re-run: what is cached is skipped, free.

    Exit 0 when every line was cached, added or imported; 1 if some failed or were bad;
    2 on bad usage.
    """
    import asyncio

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from kallm.errors import KallmError
    from kallm.warm import FORMATS, NO_MODEL, Target, WarmError, parse_lines

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    parsed = parse_lines(_read(file).splitlines(), fmt, model)
    no_model = [p.line for p in parsed.bad if p.reason == NO_MODEL]
    if no_model:
        fail(f"{len(no_model)} line(s) name no model (first: line {no_model[0]}); pass --model")
    console = Console(stderr=as_json)
    if dry_run:
        _dry_run(console, parsed, as_json, config)
    target: Target | None = None
    settings: Settings | None = None
    if url is not None:
        target = Target(_root(url), api_key, admin_key, namespace)
        if parsed.imports and not admin_key:
            fail(
                f"{parsed.imports} line(s) are prompt/response pairs: importing them needs "
                "--admin-key or KALLM_ADMIN_KEY"
            )
        where = target.root
    else:
        loaded = settings_from(config, cache_file=cache_file)
        if loaded.settings.cache_file is None:
            fail(
                "cache.file is off, so an in-process run would keep nothing: set a cache "
                "file, or warm a running server with --url"
            )
        settings = loaded.settings
        where = f"in-process kallm, cache file {settings.cache_file}"
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, disable=as_json) as progress:
            counts = asyncio.run(_run(parsed, target, settings, namespace, concurrency, progress))
    except WarmError as exc:
        fail(str(exc))
    except (KallmError, OSError) as exc:  # the in-process server could not start
        fail(f"cannot start kallm in-process: {getattr(exc, 'message', exc)}")
    if as_json:
        print(json.dumps({**asdict(counts), "target": where}))
    else:
        _summary(console, counts, where)
    raise typer.Exit(0 if counts.ok else 1)


def register(app: typer.Typer) -> None:
    app.command("warm")(warm_command)
