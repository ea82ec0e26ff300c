#!/usr/bin/env python3
"""How often the cache answers a paraphrase, and how often it answers wrongly.

Runs the Banking77 data (../shared/eval, CC BY 4.0, Casanueva et al. 2020) through
kallm's own SemanticCache (scope, exact tier, embedder, index, hit guard), the
same code the server calls:
- cache simulation: fill the cache with the `cache` split, ask it each `traffic`
  query; a hit is correct when the entry has the same intent;
- novel traffic: ask again with every cached query of the asker's intent removed,
  so every hit is wrong — what users see for questions the cache has never seen;
- pairs: store text_a, ask text_b, per labelled pair.
Reports hit rate, precision of hits, wrong hits per request and novel false hits
per threshold, with and without the guard, and a cross-fitted threshold choice.

    python scripts/eval_cache_quality.py [--embedder local] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kallm.cache.guard import hit_guard
from kallm.cache.scope import cache_key
from kallm.cache.semantic import Lookup, SemanticCache
from kallm.cache.store import MemoryBackend
from kallm.embed import local_embedder

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)]
TARGET_PRECISION, TARGET_NOVEL = 0.97, 0.01
console = Console()


def request(text: str) -> dict[str, Any]:
    return {"model": "eval", "messages": [{"role": "user", "content": text}]}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Outcome:
    """What one query got at one threshold: the intent of the entry served, or None."""

    served: dict[float, str | None] = field(default_factory=dict)
    refused: dict[float, tuple[str, str, float] | None] = field(default_factory=dict)


async def ask_all(
    cache: SemanticCache,
    queries: list[dict[str, Any]],
    intent_of: dict[str, str],
    use_guard: bool,
) -> list[Outcome]:
    outcomes = []
    for query in queries:
        outcome = Outcome()
        key = cache_key(request(query["text"]))
        for threshold in THRESHOLDS:
            result = await cache.lookup(key, threshold=threshold, use_guard=use_guard)
            hit = result.hit
            outcome.served[threshold] = intent_of[hit.entry.text] if hit else None
            refusal = result.refusal
            outcome.refused[threshold] = (
                (refusal.candidate, refusal.reason, refusal.similarity) if refusal else None
            )
        outcomes.append(outcome)
    return outcomes


def new_cache(embedder: Any, size: int) -> SemanticCache:
    return SemanticCache(MemoryBackend(size), embedder, threshold=0.9, ttl=1e9, guard=hit_guard)


async def simulate(embedder: Any, data: list[dict[str, Any]], use_guard: bool) -> dict[str, Any]:
    cached = [d for d in data if d["split"] == "cache"]
    traffic = [d for d in data if d["split"] == "traffic"]
    intent_of = {normal(d["text"]): d["intent"] for d in cached}
    cache = new_cache(embedder, len(cached) + 1)
    lookups = {}
    for item in cached:
        lookup = Lookup(cache_key(request(item["text"])))
        await cache.store(lookup, b"{}")
        lookups[item["text"]] = lookup
    sim = await ask_all(cache, traffic, intent_of, use_guard)
    # novel traffic: per intent, take its entries out, ask, put them back
    novel: list[Outcome] = [Outcome()] * len(traffic)
    by_intent: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(traffic):
        by_intent[item["intent"]].append(i)
    for intent, indexes in by_intent.items():
        held = [c for c in cached if c["intent"] == intent]
        fresh = new_cache(embedder, len(cached) + 1)
        for item in cached:
            if item["intent"] != intent:
                await fresh.store(lookups[item["text"]], b"{}")
        answers = await ask_all(fresh, [traffic[i] for i in indexes], intent_of, use_guard)
        for i, outcome in zip(indexes, answers, strict=True):
            novel[i] = outcome
        del held
    return {"traffic": traffic, "sim": sim, "novel": novel}


def normal(text: str) -> str:
    return " ".join(text.split())


def score(run: dict[str, Any], indexes: list[int], threshold: float) -> dict[str, float]:
    traffic, sim, novel = run["traffic"], run["sim"], run["novel"]
    hits = correct = false_novel = 0
    for i in indexes:
        served = sim[i].served[threshold]
        if served is not None:
            hits += 1
            correct += served == traffic[i]["intent"]
        false_novel += novel[i].served[threshold] is not None
    n = len(indexes)
    return {
        "threshold": threshold,
        "hit_rate": hits / n,
        "precision": correct / hits if hits else 1.0,
        "wrong_per_request": (hits - correct) / n,
        "novel_false_hits": false_novel / n,
        "correct_hits": correct,
    }


def choose(run: dict[str, Any], indexes: list[int]) -> float:
    """Highest hit rate with precision ≥ 97% and novel false hits ≤ 1%."""
    ok = [score(run, indexes, t) for t in THRESHOLDS]
    ok = [
        s
        for s in ok
        if s["precision"] >= TARGET_PRECISION and s["novel_false_hits"] <= TARGET_NOVEL
    ]
    return max(ok, key=lambda s: (s["hit_rate"], s["threshold"]))["threshold"] if ok else 1.0


def halves(run: dict[str, Any]) -> list[list[int]]:
    n = len(run["traffic"])
    order = list(range(n))
    random.Random(77).shuffle(order)
    return [sorted(order[: n // 2]), sorted(order[n // 2 :])]


def per_half(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The thresholds near the choice, scored on each half: does a default hold on both?"""
    return [
        {"half": f"half {h + 1}", **score(run, part, t)}
        for t in (0.94, 0.95, 0.96, 0.97)
        for h, part in enumerate(halves(run))
    ]


def cross_fit(run: dict[str, Any]) -> list[dict[str, Any]]:
    folds = []
    parts = halves(run)
    for pick, report in ((0, 1), (1, 0)):
        threshold = choose(run, parts[pick])
        folds.append(
            {
                "chosen_on": f"half {pick + 1}",
                "threshold": threshold,
                **score(run, parts[report], threshold),
            }
        )
    return folds


async def pairs_eval(embedder: Any, pairs: list[dict[str, Any]], use_guard: bool) -> list[dict]:
    cache = new_cache(embedder, len(pairs) + 1)
    for pair in pairs:
        lookup = Lookup(cache_key(request(pair["text_a"]), pair["id"]))
        await cache.store(lookup, b"{}")
    rows = []
    for threshold in THRESHOLDS:
        tp = fp = fn = 0
        for pair in pairs:
            key = cache_key(request(pair["text_b"]), pair["id"])
            hit = (await cache.lookup(key, threshold=threshold, use_guard=use_guard)).hit
            if hit and pair["label"] == 1:
                tp += 1
            elif hit:
                fp += 1
            elif pair["label"] == 1:
                fn += 1
        rows.append(
            {
                "threshold": threshold,
                "precision": tp / (tp + fp) if tp + fp else 1.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
            }
        )
    return rows


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    view = Table(title=title)
    for column in columns:
        view.add_column(column, justify="right")
    for row in rows:
        view.add_row(
            *[f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        )
    console.print(view)


def refused_sample(run: dict[str, Any], threshold: float, limit: int = 12) -> list[dict]:
    sample, reasons = [], Counter()
    for item, outcome in zip(run["traffic"], run["sim"], strict=True):
        refusal = outcome.refused[threshold]
        if refusal and outcome.served[threshold] is None:
            reasons[refusal[1]] += 1
            if len(sample) < limit:
                sample.append(
                    {
                        "query": item["text"],
                        "candidate": refusal[0],
                        "reason": refusal[1],
                        "similarity": round(refusal[2], 4),
                    }
                )
    return [{"refused_by_reason": dict(reasons)}, *sample]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", default="local")
    parser.add_argument("--data", type=Path, default=EVAL)
    parser.add_argument("--json", type=Path, default=Path("bench-results/cache-quality.json"))
    args = parser.parse_args()
    embedder = local_embedder(args.embedder)
    if embedder is None:
        sys.exit(f"unknown built-in embedder {args.embedder!r}: use local or hash")
    data = read_jsonl(args.data / "banking77_cache.jsonl")
    pairs = read_jsonl(args.data / "banking77_pairs.jsonl")
    console.print(f"embedder {embedder.name}, default threshold {embedder.default_threshold}")
    report: dict[str, Any] = {
        "embedder": embedder.name,
        "default_threshold": embedder.default_threshold,
    }
    columns = ["threshold", "hit_rate", "precision", "wrong_per_request", "novel_false_hits"]
    correct: dict[str, dict[float, int]] = {}
    for use_guard in (False, True):
        label = "guard on" if use_guard else "guard off"
        run = await simulate(embedder, data, use_guard)
        everyone = list(range(len(run["traffic"])))
        rows = [score(run, everyone, t) for t in THRESHOLDS]
        table(f"Banking77 cache simulation, {label}", rows, columns)
        folds = cross_fit(run)
        table(
            f"cross-fitted choice ({label}): precision ≥ {TARGET_PRECISION}, "
            f"novel ≤ {TARGET_NOVEL}",
            folds,
            ["chosen_on", *columns],
        )
        table(f"thresholds near the choice, per half ({label})", per_half(run), ["half", *columns])
        correct[label] = {t: score(run, everyone, t)["correct_hits"] for t in THRESHOLDS}
        pair_rows = await pairs_eval(embedder, pairs, use_guard)
        table(f"Banking77 pairs, {label}", pair_rows, ["threshold", "precision", "recall"])
        report[label] = {
            "simulation": rows,
            "cross_fit": folds,
            "pairs": pair_rows,
            "refused": refused_sample(run, embedder.default_threshold) if use_guard else None,
        }
        if use_guard:
            console.print(report[label]["refused"])
    cost = [
        {
            "threshold": t,
            "correct_off": correct["guard off"][t],
            "correct_on": correct["guard on"][t],
            "lost": 1 - correct["guard on"][t] / max(correct["guard off"][t], 1),
        }
        for t in THRESHOLDS
    ]
    table("correct hits the guard costs", cost, ["threshold", "correct_off", "correct_on", "lost"])
    report["guard_cost"] = cost
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"written {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
