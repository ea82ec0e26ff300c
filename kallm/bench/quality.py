"""``kallm bench quality``: which similarity threshold to run with, from labelled prompt pairs.

A threshold trades wrong answers (a hit on a different question) against
missed savings, and where that trade lands depends on the embedder and on the
user's own traffic, so it is measured on pairs labelled "same question" or
not. Each pair goes through kallm's own ``SemanticCache`` (scope, exact tier,
embedder, index, hit guard), the code the server calls: ``a`` is stored, ``b``
is looked up. Every pair gets its own namespace, so a lookup can only ever
find its own partner and no pair's verdict depends on the others.

With one entry per namespace, one lookup at the lowest threshold says what
would happen at every threshold: ``b`` is a hit at ``t`` exactly when it was
served with a similarity of at least ``t`` (the guard's verdict on the only
candidate does not depend on ``t``). So each pair is looked up once, not once
per threshold, and the figures are the same.

Precision is the share of hits that were right; recall the share of duplicates
that were hits. The recommendation is the lowest threshold (the most savings)
whose precision reaches the target. Both depend on the mix of pairs: a file
with few hard negatives flatters precision, and so does judging pairs one at a
time: in a full cache a question meets thousands of neighbours, and the nearest
wrong one only has to beat the threshold once (``scripts/eval_cache_quality.py``
simulates that on Banking77). Read the recommendation as a floor to start from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kallm.cache.guard import hit_guard
from kallm.cache.scope import cache_key
from kallm.cache.semantic import Lookup, SemanticCache
from kallm.cache.store import MemoryBackend
from kallm.embed import Embedder, local_embedder

DEFAULT_THRESHOLDS = "0.80:0.99:0.01"
DEFAULT_TARGET = 0.97
MODEL = "bench-quality"  # any model name: it only has to be the same for a and b
EXAMPLES = 10  # wrong hits kept in the JSON at the recommended threshold

_TRUE_LABELS = {"1", "true", "must_hit", "duplicate", "same", "yes"}
_FALSE_LABELS = {"0", "false", "must_not_hit", "not_duplicate", "different", "no"}


class PairsError(ValueError):
    """The pairs file cannot be read as labelled pairs; the message names the line."""


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What looking up ``b`` gave: the similarity it was served at, or why it was not."""

    served: float | None  # similarity of the hit, None for a miss at every threshold
    refused: tuple[float, str] | None  # (similarity, reason) when the guard turned it away


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE_LABELS:
        return True
    if text in _FALSE_LABELS:
        return False
    raise PairsError(
        f"{where}: label {value!r} is neither duplicate (1, must_hit) nor not (0, must_not_hit)"
    )


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from JSONL: ``{"text_a", "text_b", "label": 0|1}`` or
    ``{"a", "b", "label": "must_hit"|"must_not_hit"}`` (one object per line)."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise PairsError(f"{where}: expected a JSON object")
        a, b = row.get("text_a", row.get("a")), row.get("text_b", row.get("b"))
        if not isinstance(a, str) or not isinstance(b, str) or "label" not in row:
            raise PairsError(f"{where}: needs text_a, text_b and label (or a, b and label)")
        pairs.append(Pair(a, b, _label(row["label"], where)))
    if not pairs:
        raise PairsError(f"{path}: no pairs")
    return pairs


def parse_thresholds(spec: str) -> list[float]:
    """``0.80:0.99:0.01`` (start:stop:step, stop included) or ``0.9,0.95`` or ``0.92``."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = round((stop - start) / step) + 1
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = sorted({round(float(x), 6) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(
            f"thresholds {spec!r}: expected start:stop:step such as "
            f"{DEFAULT_THRESHOLDS}, or a list such as 0.9,0.95"
        ) from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise ValueError(f"thresholds {spec!r}: every threshold must be in (0, 1]")
    return values


async def judge(pairs: list[Pair], embedder: Embedder, lowest: float, guard: bool) -> list[Outcome]:
    """Store every ``a``, then look up every ``b``, each pair in its own namespace."""
    cache = SemanticCache(
        MemoryBackend(len(pairs) + 1), embedder, threshold=lowest, ttl=1e12, guard=hit_guard
    )

    def request(text: str) -> dict[str, Any]:
        return {"model": MODEL, "messages": [{"role": "user", "content": text}]}

    for i, pair in enumerate(pairs):
        await cache.store(Lookup(cache_key(request(pair.a), f"pair-{i}")), b"{}")
    outcomes = []
    for i, pair in enumerate(pairs):
        found = await cache.lookup(cache_key(request(pair.b), f"pair-{i}"), use_guard=guard)
        refusal = found.refusal
        outcomes.append(
            Outcome(
                found.hit.similarity if found.hit else None,
                (refusal.similarity, refusal.reason) if refusal else None,
            )
        )
    return outcomes


def score(pairs: list[Pair], outcomes: list[Outcome], threshold: float) -> dict[str, Any]:
    """Precision and recall at one threshold, and what the guard did there."""
    tp = fp = fn = tn = refused_dup = refused_other = 0
    for pair, outcome in zip(pairs, outcomes, strict=True):
        hit = outcome.served is not None and outcome.served >= threshold
        if hit:
            tp, fp = tp + pair.duplicate, fp + (not pair.duplicate)
        else:
            fn, tn = fn + pair.duplicate, tn + (not pair.duplicate)
            if outcome.refused is not None and outcome.refused[0] >= threshold:
                refused_dup += pair.duplicate
                refused_other += not pair.duplicate
    return {
        "threshold": threshold,
        "hits": tp + fp,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "guard_refused_duplicates": refused_dup,
        "guard_refused_non_duplicates": refused_other,
    }


def recommend(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The lowest threshold whose precision reaches ``target``: the most savings at that bar."""
    good = [r for r in rows if r["precision"] is not None and r["precision"] >= target]
    return min(good, key=lambda r: r["threshold"]) if good else None


async def evaluate(
    path: Path,
    embedder_name: str = "local",
    thresholds: list[float] | None = None,
    guard: bool = True,
    target: float = DEFAULT_TARGET,
) -> dict[str, Any]:
    """The whole ``kallm bench quality`` result, JSON-ready."""
    embedder = local_embedder(embedder_name)
    if embedder is None:
        raise ValueError(f"unknown embedder {embedder_name!r}: use local or hash")
    thresholds = thresholds or parse_thresholds(DEFAULT_THRESHOLDS)
    pairs = read_pairs(path)
    outcomes = await judge(pairs, embedder, min(thresholds), guard)
    rows = [score(pairs, outcomes, t) for t in thresholds]
    best = recommend(rows, target)
    default = embedder.default_threshold
    wrong = []
    if best is not None:
        wrong = [
            {"a": p.a, "b": p.b, "similarity": round(o.served or 0.0, 4)}
            for p, o in zip(pairs, outcomes, strict=True)
            if not p.duplicate and o.served is not None and o.served >= best["threshold"]
        ]
    return {
        "pairs_file": str(path),
        "pairs": len(pairs),
        "duplicates": sum(p.duplicate for p in pairs),
        "embedder": embedder.name,
        "embedder_default_threshold": default,
        "guard": guard,
        "target_precision": target,
        "thresholds": rows,
        "at_default_threshold": score(pairs, outcomes, default),
        "recommended": None
        if best is None
        else {
            "threshold": best["threshold"],
            "precision": best["precision"],
            "recall": best["recall"],
            "setting": "cache.similarity_threshold",
            "lowest_tried": best["threshold"] == rows[0]["threshold"],
            "env": f"KALLM_SIMILARITY_THRESHOLD={best['threshold']:g}",
        },
        "wrong_hits_at_recommended": sorted(wrong, key=lambda w: -w["similarity"])[:EXAMPLES],
    }


def print_quality(result: dict[str, Any], console: Console) -> None:
    """Precision and recall per threshold, the recommended row marked, then the verdict."""
    best = result["recommended"]
    guard = "guard on" if result["guard"] else "guard off"
    table = Table(
        title=f"cache quality — {result['pairs']:,} pairs "
        f"({result['duplicates']:,} duplicates) from {result['pairs_file']}, "
        f"{result['embedder']} embedder, {guard}"
    )
    for column in (
        "threshold",
        "hits",
        "precision",
        "recall",
        "wrong hits",
        "missed dups",
        "guard refused (dup / not)",
    ):
        table.add_column(column, justify="right")
    for row in result["thresholds"]:
        chosen = best is not None and row["threshold"] == best["threshold"]
        default = row["threshold"] == result["embedder_default_threshold"]
        mark = " ◀ recommended" if chosen else (" (default)" if default else "")
        table.add_row(
            f"{row['threshold']:.2f}{mark}",
            f"{row['hits']:,}",
            _share(row["precision"]),
            _share(row["recall"]),
            f"{row['fp']:,}",
            f"{row['fn']:,}",
            f"{row['guard_refused_duplicates']:,} / {row['guard_refused_non_duplicates']:,}",
            style="bold green" if chosen else None,
        )
    console.print(table)
    at_default = result["at_default_threshold"]
    console.print(
        f"embedder default {result['embedder_default_threshold']}: precision "
        f"{_share(at_default['precision'])}, recall {_share(at_default['recall'])}"
    )
    if best is None:
        top = max(
            (r for r in result["thresholds"] if r["precision"] is not None),
            key=lambda r: r["precision"],
            default=None,
        )
        console.print(
            f"[bold red]no threshold reached precision {result['target_precision']}"
            "[/]"
            + (
                f"; the best was {_share(top['precision'])} at {top['threshold']}"
                if top
                else "; nothing was a hit"
            )
        )
        return
    console.print(
        f"[bold]recommended: cache.similarity_threshold = {best['threshold']:g}[/] — the lowest "
        f"threshold with precision ≥ {result['target_precision']} ({_share(best['precision'])}, "
        f"recall {_share(best['recall'])}, {guard}). Set it in kallm.toml \\[cache], or "
        f"{best['env']}, or kallm serve --threshold {best['threshold']:g}.",
        highlight=False,
    )
    console.print(
        "[dim]pairs are judged one at a time; in a full cache a question meets many "
        "neighbours, so precision there is lower at the same threshold[/]"
    )
    if best["threshold"] == result["thresholds"][0]["threshold"]:
        console.print(
            "[yellow]that is the lowest threshold tried; lower ones may reach the "
            "target too (widen --thresholds)[/]"
        )


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
