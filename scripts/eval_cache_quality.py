#!/usr/bin/env python3
"""How often the cache answers a paraphrase, and how often it answers wrongly.

Runs two labelled sets from ../shared/eval through kallm's own SemanticCache (scope,
exact tier, embedder, index, hit guard), the code the server calls, with the
simulation in ``kallm.bench.quality``:

- Banking77 (CC BY 4.0, Casanueva et al. 2020): 10,003 queries fill the cache, 3,080
  ask it; a hit is right when the entry has the asker's intent. Novel traffic: the
  same queries with every cached query of the asker's intent taken out first, so every
  hit is wrong: what users see for questions the cache has never seen.
- SNIPS (CC0, Coucke et al. 2018): 10,182 voice-assistant requests fill the cache,
  3,395 ask it; a hit is right in detail when intent and details (slots: artist, city,
  time range, rating...) match, exactly and normalised (number words, plurals,
  articles, contractions).

Reports per threshold, guard on and off; a threshold chosen by cross-fitting (pick on
one random half of the traffic, report on the other half) on both sets (the highest
hit rate with SNIPS detail precision (normalised) >= 97% and Banking77 precision >= 97%
and novel false hits <= 1%) and on the Banking77 bars alone; per half, the thresholds
near that choice; the guard's refusals by reason with a sample to judge and every wrong
hit to read, at the default and at the choice; and the guard's cost per hit.

    python scripts/eval_cache_quality.py [--embedder local] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kallm.bench.quality import (
    Query,
    Served,
    read_traffic,
    refusals,
    score_traffic,
    simulate,
    wrong_hits,
)
from kallm.cache import guard as guard_module
from kallm.embed import local_embedder

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)]
TARGET_PRECISION, TARGET_NOVEL = 0.97, 0.01
console = Console(width=160)


class Run:
    """One data set through the cache at every threshold (and, for Banking77, novel)."""

    def __init__(self, name: str, queries: list[Query], served: list[Served], novel=None):
        self.name = name
        self.queries = queries
        self.served = served
        self.novel: list[Served] | None = novel
        self.size = len(served)

    def score(self, threshold: float, only: list[int] | None = None) -> dict[str, Any]:
        return score_traffic(self.queries, self.served, threshold, self.novel, only)

    def halves(self) -> list[list[int]]:
        order = list(range(self.size))
        random.Random(77).shuffle(order)
        return [sorted(order[: self.size // 2]), sorted(order[self.size // 2 :])]


async def run_set(embedder: Any, name: str, path: Path, guard: bool, novel: bool) -> Run:
    queries = read_traffic(path)
    served = await simulate(queries, embedder, THRESHOLDS[0], guard)
    unseen = await simulate(queries, embedder, THRESHOLDS[0], guard, novel=True) if novel else None
    return Run(name, queries, served, unseen)


def meets_bars(row: dict[str, Any]) -> bool:
    """SNIPS rows are judged by detail (normalised), Banking77 rows by intent and novelty."""
    if "detail_normalised" in row:
        return row["detail_normalised"] >= TARGET_PRECISION
    return row["precision"] >= TARGET_PRECISION and row["novel_false_hits"] <= TARGET_NOVEL


def choose(runs: list[Run], parts: list[list[int]]) -> float:
    """The threshold with the highest hit rate (the lowest one) at which every set,
    scored on its part, meets its bars; 1.0 when none does."""
    ok = [
        t
        for t in THRESHOLDS
        if all(meets_bars(r.score(t, p)) for r, p in zip(runs, parts, strict=True))
    ]
    return min(ok) if ok else 1.0


def cross_fit(runs: list[Run]) -> list[dict[str, Any]]:
    folds = []
    halves = [r.halves() for r in runs]
    for pick, report in ((0, 1), (1, 0)):
        threshold = choose(runs, [h[pick] for h in halves])
        row: dict[str, Any] = {"chosen_on": f"half {pick + 1}", "threshold": threshold}
        for run, h in zip(runs, halves, strict=True):
            row[run.name] = run.score(threshold, h[report])
        folds.append(row)
    return folds


def fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    view = Table(title=title)
    for column in columns:
        view.add_column(column, justify="right")
    for row in rows:
        view.add_row(*[fmt(row.get(c, "")) for c in columns])
    console.print(view)


def columns_of(run: Run) -> list[str]:
    base = ["threshold", "hit_rate", "precision", "wrong_per_request"]
    if run.novel is not None:
        base.append("novel_false_hits")
    if run.queries[0].details is not None:
        base += ["detail_exact", "detail_normalised"]
    return base


def print_cross_fit(folds: list[dict[str, Any]], runs: list[Run]) -> None:
    rows = []
    for fold in folds:
        for run in runs:
            rows.append({"chosen_on": fold["chosen_on"], "set": run.name, **fold[run.name]})
    cols = ["chosen_on", "set", "threshold", "hit_rate", "precision", "novel_false_hits"]
    table("cross-fitted choice, reported on the other half", rows, [*cols, "detail_normalised"])


def per_half(runs: list[Run], around: float) -> list[dict[str, Any]]:
    """The thresholds near the choice, on each half of each set: does a default hold?"""
    rows = []
    for t in sorted({round(around + d, 2) for d in (-0.01, 0.0, 0.01)} & set(THRESHOLDS)):
        for run in runs:
            for h, part in enumerate(run.halves()):
                rows.append({"set": run.name, "half": h + 1, **run.score(t, part)})
    return rows


def guard_cost(pairs: list[tuple[str, str]], rounds: int = 3) -> dict[str, float]:
    """Microseconds of CPU per guard call on real candidates, each timed on its own, the
    best of ``rounds``: with both wordings cached; with the candidate's wording cold
    (the query's was parsed for the lookup's first candidate; this is the usual hit);
    and with both cold. Word-level caches (ranks, word vectors, stems) stay warm, as in
    a running server."""
    check, wording = guard_module.refusal_reason, guard_module.wording
    clock = time.process_time_ns
    best: dict[str, float] = {}
    for mode in ("cached", "candidate_cold", "both_cold"):
        runs = []
        for _ in range(rounds):
            total = 0
            for query, candidate in pairs:
                if mode == "cached":
                    check(query, candidate)
                else:
                    wording.cache_clear()
                    if mode == "candidate_cold":
                        wording(query)
                started = clock()
                check(query, candidate)
                total += clock() - started
            runs.append(total / len(pairs) / 1000)
        best[f"{mode}_us"] = min(runs)
    return {"pairs": len(pairs), **best}


def hit_pairs(run: Run, threshold: float) -> list[tuple[str, str]]:
    asked = [q for q in run.queries if not q.cached]
    return [
        (q.text, run.queries[entry].text)
        for q, outcome in zip(asked, run.served, strict=True)
        if (entry := outcome.hit(threshold)) is not None
    ]


def print_refusals(run: Run, threshold: float) -> dict[str, Any]:
    found = refusals(run.queries, run.served, threshold)
    rows = []
    for reason, tally in found.items():
        for sample in tally["sample"][:4]:
            rows.append(
                {
                    "reason": reason,
                    "refused": tally["refused"],
                    "right_answers": tally["right_answer"],
                    "query": sample["query"],
                    "cached": sample["cached"],
                    "right?": "yes" if sample["refused_a_right_answer"] else "no",
                }
            )
    cols = ["reason", "refused", "right_answers", "query", "cached", "right?"]
    table(f"{run.name}: refused by the guard at {threshold}", rows, cols)
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", default="local")
    parser.add_argument("--data", type=Path, default=EVAL)
    parser.add_argument("--json", type=Path, default=Path("bench-results/cache-quality.json"))
    args = parser.parse_args()
    embedder = local_embedder(args.embedder)
    if embedder is None:
        sys.exit(f"unknown built-in embedder {args.embedder!r}: use local or hash")
    default = embedder.default_threshold
    console.print(f"embedder {embedder.name}, default threshold {default}")
    report: dict[str, Any] = {"embedder": embedder.name, "default_threshold": default}
    runs_on: list[Run] = []
    for use_guard in (False, True):
        label = "guard on" if use_guard else "guard off"
        runs = [
            await run_set(embedder, "snips", args.data / "snips_cache.jsonl", use_guard, False),
            await run_set(
                embedder, "banking77", args.data / "banking77_cache.jsonl", use_guard, True
            ),
        ]
        report[label] = {}
        for run in runs:
            rows = [run.score(t) for t in THRESHOLDS]
            table(f"{run.name}, {label}", rows, columns_of(run))
            report[label][run.name] = {"simulation": rows}
        if use_guard:
            runs_on = runs
    folds = cross_fit(runs_on)
    print_cross_fit(folds, runs_on)
    banking_folds = cross_fit(runs_on[1:])
    table(
        "cross-fitted on the Banking77 bars alone, reported on the other half",
        [{"chosen_on": f["chosen_on"], **f["banking77"]} for f in banking_folds],
        ["chosen_on", *columns_of(runs_on[1])],
    )
    report["cross_fit_banking77_alone"] = banking_folds
    chosen = min(f["threshold"] for f in banking_folds)
    halves = per_half(runs_on, chosen)
    table(
        "thresholds near the choice, per half (guard on)",
        halves,
        ["set", "half", *columns_of(runs_on[1]), "detail_normalised"],
    )
    report["cross_fit"] = folds
    report["per_half"] = halves
    for t in sorted({default, chosen}):
        for run in runs_on:
            found = print_refusals(run, t)
            wrong = wrong_hits(run.queries, run.served, t, limit=100)
            console.print(f"{run.name}: wrong hits at {t}, most similar first")
            for row in wrong:
                console.print(f"  {row}", highlight=False)
            report["guard on"][run.name][f"at {t}"] = {
                "score": run.score(t),
                "refused_by_reason": found,
                "wrong_hits": wrong,
            }
    pairs = [p for run in runs_on for p in hit_pairs(run, 0.9)]
    report["guard_cost_per_hit"] = guard_cost(pairs)
    console.print(f"guard cost per hit: {report['guard_cost_per_hit']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"written {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
