"""``kallm stats``: what the cache saved and who spent what, from the database or a server.

The database (``--db``, the default) has the request log: totals, spend by key
and by model over ``--since``, and the last requests. A running server
(``--url``) has only its live cache counters (``GET /stats``), so that view shows
those. ``--watch`` redraws until Ctrl-C; ``--json`` prints one document for scripts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import typer
from rich.console import Console, Group, RenderableType
from rich.text import Text

from kallm.accounts import usage
from kallm.cli.common import CONFIG_OPTION, duration_flag, fail, settings_from
from kallm.cli.keyclient import env_or, http_json
from kallm.cli.keys import span, usd, when
from kallm.cli.tables import folded
from kallm.errors import KallmError

if TYPE_CHECKING:  # imported where used: see kallm/cli/__init__.py
    from rich.table import Table

DEFAULT_SINCE = 24 * 3600.0
DEFAULT_LAST = 10


class Report(Protocol):
    def snapshot(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class DatabaseReport:
    """Reads the request log through a read-only connection: a report never changes the file,
    and the server's writer keeps going while it reads (WAL)."""

    def __init__(self, path: Path, period: float, last: int):
        if not path.exists():
            raise KallmError(
                f"no database at {path}: `kallm serve` creates it; or pass --db "
                "PATH / KALLM_DB, or --url for a running server"
            )
        from kallm.db import connect

        self.path, self.period, self.last = path, period, last
        self.conn = connect(path, readonly=True)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        since = now - self.period
        return {
            "source": {"db": str(self.path)},
            "generated_at": now,
            "since": since,
            "period_seconds": self.period,
            **usage.report(self.conn, since, self.last),
        }

    def close(self) -> None:
        self.conn.close()


class ServerReport:
    """A running server: its cache counters (``GET /stats``) and, with the admin key, its
    spend and usage by key and model (``GET /admin/usage``), as on Kubernetes where nobody
    should exec into a pod to read a database."""

    def __init__(self, url: str, admin_key: str | None, period: float, last: int):
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        self.period, self.last = period, last

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "source": {"url": self.url},
            "generated_at": time.time(),
            "server": http_json("GET", f"{self.url}/stats"),
        }
        if self.admin_key:
            query = f"since={int(self.period)}s&last={self.last}"
            snap["usage"] = http_json(
                "GET",
                f"{self.url}/admin/usage?{query}",
                headers={"Authorization": f"Bearer {self.admin_key}"},
            )
        return snap

    def close(self) -> None:
        """Nothing held between requests."""


# ---------------------------------------------------------------- rendering


def _table(*columns: str, title: str | Text) -> Table:
    """Compact tables: a report must fit an 80-column terminal."""
    from rich import box
    from rich.table import Table

    return folded(
        Table(
            *columns,
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
            title_style="bold",
        )
    )


def _clock(stamp: float) -> str:
    """The time of day for today's requests, else the date as well."""
    today = time.strftime("%Y-%m-%d") == time.strftime("%Y-%m-%d", time.localtime(stamp))
    return time.strftime("%H:%M:%S" if today else "%m-%d %H:%M", time.localtime(stamp))


def _rate(value: float) -> str:
    return f"{value:.1%}"


def _measures(row: dict[str, Any]) -> list[str]:
    return [
        f"{row['requests']:,}",
        f"{row['hits']:,}",
        _rate(row["hit_rate"]),
        f"{row['prompt_tokens'] + row['completion_tokens']:,}",
        usd(row["spend_usd"]),
        usd(row["saved_usd"]),
    ]


_MEASURE_COLUMNS = ("requests", "hits", "hit rate", "tokens", "spend", "saved")


def _grouped(title: str, label: str, rows: list[dict[str, Any]], name_of: Any) -> Table:
    table = _table(label, *_MEASURE_COLUMNS, title=title)
    for row in rows:
        table.add_row(Text(name_of(row)), *_measures(row))  # names are data, not markup
    return table


def _key_label(row: dict[str, Any]) -> str:
    return row.get("name") or row.get("key_name") or row.get("key_id") or "(no key)"


def _recent(rows: list[dict[str, Any]]) -> Table:
    table = _table(
        "time",
        "key",
        "model",
        "provider",
        "status",
        "cache",
        "similarity",
        "latency",
        "cost",
        title=f"last {len(rows)} requests",
    )
    for r in rows:
        similarity = "" if r["similarity"] is None else f"{r['similarity']:.4f}"
        ms = r["latency_ms"]
        latency = "" if ms is None else f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"
        status = r["status"] or ""
        style = "red" if isinstance(status, int) and status >= 400 else ""
        table.add_row(
            _clock(r["time"]),
            Text(_key_label(r)),
            Text(r["model"] or ""),
            Text(r["provider"] or ""),
            Text(str(status), style=style),
            r["cache"] or "",
            similarity,
            latency,
            usd(r["cost_usd"]),
        )
    return table


def render_database(snap: dict[str, Any]) -> RenderableType:
    t = snap["totals"]
    head = _table(
        "requests",
        "hits",
        "misses",
        "hit rate",
        "errors",
        "spend",
        "saved",
        title=Text(
            f"last {span(snap['period_seconds'])} (since {when(snap['since'])}) · {_source(snap)}",
            style="bold",
        ),
    )
    head.add_row(
        f"{t['requests']:,}",
        f"{t['hits']:,}",
        f"{t['misses']:,}",
        _rate(t["hit_rate"]),
        f"{t['errors']:,}",
        usd(t["spend_usd"]),
        usd(t["saved_usd"]),
    )
    parts: list[RenderableType] = [
        head,
        _grouped("by key", "key", snap["by_key"], _key_label),
        _grouped("by model", "model", snap["by_model"], lambda r: r["model"] or "—"),
    ]
    if snap["recent"]:
        parts.append(_recent(snap["recent"]))
    return Group(*parts)


def render_server(snap: dict[str, Any]) -> RenderableType:
    from rich.table import Table

    s = snap["server"]
    latency = s.get("lookup_latency_ms") or {}
    table = Table.grid(padding=(0, 2))
    rows = [
        ("entries", f"{s.get('total_entries', 0):,}"),
        (
            "hits",
            f"{s.get('total_hits', 0):,} ({s.get('exact_hits', 0):,} exact, "
            f"{s.get('semantic_hits', 0):,} semantic)",
        ),
        ("misses", f"{s.get('total_misses', 0):,}"),
        ("hit rate", _rate(s.get("hit_rate", 0))),
        ("refused by the guard", f"{s.get('guarded', 0):,}"),
        ("saved (estimated)", usd(s.get("estimated_saved_usd", 0.0))),
        ("tokens saved", f"{s.get('tokens_saved', 0):,}"),
        ("lookup p50 / p99", f"{latency.get('p50')} / {latency.get('p99')} ms"),
        ("embedder", f"{s.get('embedder')} (threshold {s.get('similarity_threshold')})"),
        ("uptime", span(round(s.get("uptime_seconds", 0)))),
    ]
    for name, value in rows:
        table.add_row(Text(name, style="bold"), Text(value))
    parts: list[RenderableType] = [Text(f"kallm at {snap['source']['url']}", style="bold"), table]
    if "usage" in snap:
        parts.append(render_database(snap["usage"]))
    else:
        parts.append(
            Text("Spend by key and model: add --admin-key (or KALLM_ADMIN_KEY)", style="dim")
        )
    return Group(*parts)


def _source(snap: dict[str, Any]) -> str:
    source = snap.get("source", {})
    return str(source.get("db") or source.get("url") or "")


def render(snap: dict[str, Any]) -> RenderableType:
    return render_server(snap) if "server" in snap else render_database(snap)


def _frame(report: Report) -> RenderableType:
    """One redraw of --watch: a failed read is shown, not fatal (the server may restart)."""
    try:
        return render(report.snapshot())
    except (KallmError, sqlite3.Error) as exc:
        return Text(f"error: {getattr(exc, 'message', exc)} (retrying)", style="red")


def watch(console: Console, report: Report, interval: float) -> None:
    """Redraw every ``interval`` seconds until Ctrl-C, which ends it cleanly."""
    from rich.live import Live

    try:
        with Live(_frame(report), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_frame(report), refresh=True)
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- the command


def _seconds(text: str, flag: str) -> float:
    seconds = duration_flag(flag, text)
    if seconds <= 0:
        fail(f"{flag} {text!r}: expected a duration above zero")
    return seconds


def open_report(
    config: Path | None,
    db: Path | None,
    url: str | None,
    since: str | None,
    last: int | None,
    admin_key: str | None = None,
) -> Report:
    """The report the flags ask for; bad combinations end with one line. The database is
    the one the settings name (defaults < kallm.toml < KALLM_DB < --db), as for serve."""
    url = env_or(url, "KALLM_URL")
    if url and db is not None:
        fail("--db and --url (or KALLM_URL) both given: pick one")
    if last is not None and last < 0:
        fail(f"--last {last}: expected zero or more")
    period = DEFAULT_SINCE if since is None else _seconds(since, "--since")
    count = DEFAULT_LAST if last is None else last
    settings = settings_from(config, db_path=db, admin_key=admin_key).settings
    if url:
        return ServerReport(url, settings.admin_key, period, count)
    path = settings.db_path
    if path is None:
        fail("db.path is off, so there is no request log: pass --db PATH or --url")
    return DatabaseReport(path, period, count)


def stats(
    config: Path | None = CONFIG_OPTION,
    db: Path | None = typer.Option(
        None,
        "--db",
        help="SQLite file (env KALLM_DB, db.path in kallm.toml; default: the file "
        "`kallm serve` uses).",
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        help="A running kallm, e.g. http://127.0.0.1:8080 (env KALLM_URL): its GET /stats, "
        "and spend by key and model with --admin-key.",
    ),
    admin_key: str | None = typer.Option(
        None, "--admin-key", help="The server's admin key, with --url (env KALLM_ADMIN_KEY)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Period of the totals: 24h, 7d, 1mo (default 24h)."
    ),
    last: int | None = typer.Option(
        None,
        "--last",
        help="How many recent requests to list (default 10; 0 for none).",
    ),
    live: bool = typer.Option(False, "--watch", "-w", help="Redraw until Ctrl-C."),
    interval: str = typer.Option("2s", "--interval", help="Time between redraws with --watch."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document, for scripts."),
) -> None:
    """Cache hits, savings and spend: totals, by key, by model, and the last requests."""
    if live and as_json:
        fail("--watch and --json: pick one (--json prints a single document)")
    every = _seconds(interval, "--interval")
    report: Report | None = None
    try:
        report = open_report(config, db, url, since, last, admin_key)
        if as_json:
            print(json.dumps(report.snapshot(), indent=2))
        elif live:
            watch(Console(), report, every)
        else:
            Console().print(render(report.snapshot()), highlight=False)
    except KallmError as exc:
        fail(exc.message, 2 if exc.status == 400 else 1)
    except sqlite3.Error as exc:
        fail(f"database: {exc}", 1)
    finally:
        if report is not None:
            report.close()


def register(root: typer.Typer) -> None:
    root.command("stats")(stats)
