"""What a run measured, as one JSON-ready dict and as the table printed from it.

Speed is reported, never judged: the same figures mean different things on a
laptop and on a loaded CI runner, so the report also says what else was using
the machine while it ran.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from rich.console import Console
from rich.table import Table

from kallm import __version__
from kallm.bench.load import Cell, Schedule
from kallm.bench.plan import Plan
from kallm.bench.stats import rounded
from kallm.cli.tables import folded

HIT_CELLS = ("kallm exact hit", "kallm paraphrase hit")


def build_report(
    cells: list[Cell],
    plan: Plan,
    kallm_stats: dict[str, Any],
    *,
    embedder: str,
    threshold: float | None,
    entries: int,
    upstream: dict[str, Any],
    model: str,
    schedule: Schedule,
    duration: float,
    log_dir: Path,
    kallm_env: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    """Every cell with its latency compared to the direct call at the same concurrency."""
    direct = {c.concurrency: c.p(50) for c in cells if c.name == "direct" and c.latencies}
    cell_rows = [c.to_json(direct.get(c.concurrency)) for c in cells]
    by = {(c.name, c.concurrency): c for c in cells}
    summary: dict[str, dict[str, Any]] = {}
    for level in schedule.concurrency:
        base = direct.get(level)
        row: dict[str, Any] = {
            "direct_p50_ms": rounded(base),
            "direct_rps": _rps(by.get(("direct", level))),
        }
        miss = by.get(("kallm miss", level))
        if miss is not None and miss.latencies and base is not None:
            row["miss_added_p50_ms"] = rounded(miss.p(50) - base)
            row["miss_rps"] = _rps(miss)
        for name in HIT_CELLS:
            cell = by.get((name, level))
            if cell is not None and cell.latencies:
                short = name.removeprefix("kallm ").replace(" ", "_")
                row[f"{short}_p50_ms"] = rounded(cell.p(50))
                row[f"{short}_rps"] = _rps(cell)
                if base is not None:
                    row[f"{short}_speedup"] = rounded(base / cell.p(50), 2)
        summary[str(level)] = row
    return {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "kallm": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "aiohttp": aiohttp.__version__,
            "numpy": np.__version__,
            "embedder": embedder,
            "threshold": threshold,
            "entries": entries,
            "entries_after_run": kallm_stats.get("total_entries"),
            "upstream": upstream,
            "model": model,
            "concurrency": schedule.concurrency,
            "rounds": schedule.rounds,
            "warmup_per_round": schedule.warmup,
            "requests_per_cell": {
                str(c): schedule.measured(c) * schedule.rounds for c in schedule.concurrency
            },
            "duration_cap_per_cell_s": duration,
            "kallm_env": kallm_env,
            "paraphrase_threshold_header": plan.paraphrase_threshold,
            "paraphrase_scores_vs_cache": plan.paraphrase_scores,
            "paraphrase_probe": plan.paraphrase_probe,
            "miss_prompts_screened_out": plan.misses_screened_out,
            "server_logs": str(log_dir),
            "seconds": round(seconds, 1),
            "note": "the load generator, the upstream and kallm share this machine's cores; "
            "each runs in its own process",
        },
        "cells": cell_rows,
        "summary": summary,
        "kallm_stats": kallm_stats,
    }


def _rps(cell: Cell | None) -> float | None:
    return round(cell.rps, 1) if cell is not None and cell.latencies else None


def print_report(result: dict[str, Any], console: Console) -> None:
    """The cells as a table, grouped by concurrency, then what to read them with."""
    meta = result["meta"]
    upstream = meta["upstream"]
    where = (
        f"simulated upstream ({upstream['latency_ms']:g} ms)"
        if upstream["kind"] == "simulated"
        else upstream["url"]
    )
    table = Table(
        title=f"kallm bench — {where}, {meta['embedder']} embedder, "
        f"{meta['entries']:,} entries cached, {meta['cpus']} CPUs shared"
    )
    for column in (
        "cell",
        "c",
        "requests",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p50 vs direct",
        "cache",
    ):
        table.add_column(column, justify="left" if column in ("cell", "cache") else "right")
    last = None
    for cell in result["cells"]:
        if last is not None and cell["concurrency"] != last:
            table.add_section()
        last = cell["concurrency"]
        if cell.get("skipped"):
            table.add_row(
                cell["name"],
                str(cell["concurrency"]),
                "0",
                "",
                "",
                "",
                "",
                "",
                "[red]skipped: nothing to send[/]"
                + (f" ({cell['first_error']})" if cell.get("first_error") else ""),
            )
            continue
        table.add_row(
            cell["name"],
            str(cell["concurrency"]),
            f"{cell['requests']:,}",
            f"{cell['rps']:,.0f}",
            _ms(cell["p50_ms"]),
            _ms(cell["p90_ms"]),
            _ms(cell["p99_ms"]),
            _versus(cell),
            _cache_text(cell),
        )
    console.print(folded(table))
    notes = [f"threshold {meta['threshold']}"]
    if meta["paraphrase_threshold_header"] is not None:
        notes.append(
            f"paraphrase cell sent X-Kallm-Threshold: {meta['paraphrase_threshold_header']}"
        )
    probe = meta["paraphrase_probe"]
    if probe:
        notes.append(
            f"{probe.get('hit', 0)} of {probe['probed']} paraphrase candidates were hits in kallm"
        )
    notes.append(
        f"{meta['miss_prompts_screened_out']} candidate miss prompts left out: they "
        "would have hit a neighbour"
    )
    if any(c.get("truncated") for c in result["cells"]):
        notes.append(
            f"[yellow]some cells stopped at the {meta['duration_cap_per_cell_s']:g} s "
            "--duration cap[/]"
        )
    if "other_cpu_seconds" in meta:
        notes.append(
            f"CPU used by other processes during the {meta['seconds']} s run: "
            f"{meta['other_cpu_seconds']} s"
        )
    notes.append(meta["note"])
    console.print("[dim]" + "; ".join(notes) + "[/]")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.3f}"


def _versus(cell: dict[str, Any]) -> str:
    """A miss says what kallm added; a hit says how many times faster than the upstream it was."""
    added = cell.get("added_p50_ms")
    if added is None:
        return ""
    speedup = cell.get("speedup_vs_direct")
    text = f"{added:+,.3f} ms"
    if speedup is None or speedup < 1.5:
        return text
    return f"{text} ({speedup:.0f}× faster)" if speedup >= 10 else f"{text} ({speedup:.1f}× faster)"


def _cache_text(cell: dict[str, Any]) -> str:
    text = ", ".join(f"{k} {v:,}" for k, v in cell["cache_headers"].items() if k != "-")
    similarity = cell.get("similarity") or {}
    if similarity.get("min") is not None and similarity["min"] < 1.0:
        text += f" (sim {similarity['min']:.3f}–{similarity['max']:.3f})"
    if cell["unexpected_cache_header"]:
        text += f" [yellow]{cell['unexpected_cache_header']} unexpected[/]"
    if cell["errors"]:
        text += f" [red]{cell['errors']} errors[/]"
    return text


class MachineWatch:
    """Load average and CPU time used by other processes over a run, for the report's notes."""

    def __init__(self) -> None:
        self.load_before = _loadavg()
        self.busy_before = machine_cpu_seconds()
        self.ours_before = own_cpu_seconds()

    def finish(self) -> dict[str, Any]:
        """Call after the servers were stopped and reaped (their CPU time counts as ours)."""
        found: dict[str, Any] = {"loadavg_before": self.load_before, "loadavg_after": _loadavg()}
        busy = machine_cpu_seconds()
        if busy is not None and self.busy_before is not None:
            others = (busy - self.busy_before) - (own_cpu_seconds() - self.ours_before)
            found["other_cpu_seconds"] = round(max(others, 0.0), 1)
        return found


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_cpu_seconds() -> float | None:
    """CPU time every process on the machine has used (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of the servers it started (once they are reaped)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
