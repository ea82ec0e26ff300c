"""Owns the offline quality/speed report for the built-in embedders (`local`, `hash`).

Used to pick their default thresholds: Banking77 pairs give ROC-AUC; the cache
simulation (see /work/shared/eval/README.md) gives, per threshold, the hit rate,
the precision of hits, wrong hits as a share of requests, and the false-hit
rate on novel traffic (the query's own intent removed from the cache), which
is what users see for questions the cache has never answered.

    python scripts/eval_embedders.py                     # both embedders
    python scripts/eval_embedders.py local --data-dir /tmp/table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kallm.embed.hashing import HashEmbedder
from kallm.embed.static import StaticEmbedder

EVAL_DIR = Path("/work/shared/eval")
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)]


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC with average ranks for ties (no sklearn needed)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairs_auc(embedder, pairs: list[dict]) -> tuple[float, float]:
    """ROC-AUC over all pairs, and over positives vs look-alike ("sibling") negatives only."""
    a = embedder.encode_batch([p["text_a"] for p in pairs])
    b = embedder.encode_batch([p["text_b"] for p in pairs])
    scores = (a * b).sum(axis=1)
    labels = np.array([p["label"] for p in pairs])
    hard = np.array([p["label"] == 1 or p["negative_kind"] == "sibling-intent" for p in pairs])
    return roc_auc(scores, labels), roc_auc(scores[hard], labels[hard])


@dataclass
class CacheSim:
    """Nearest cached neighbour of each traffic query, with and without its own intent."""

    best: np.ndarray  # cosine of the nearest cached query
    correct: np.ndarray  # nearest has the same intent
    novel_best: np.ndarray  # cosine of the nearest after removing the query's intent

    def at(self, threshold: float) -> dict[str, float]:
        """Hit rate, precision of hits, wrong hits per request and novel false-hit rate."""
        hits = self.best >= threshold
        n_hits = int(hits.sum())
        wrong = int((hits & ~self.correct).sum())
        return {
            "threshold": threshold,
            "hit_rate": n_hits / len(hits),
            "precision": (n_hits - wrong) / n_hits if n_hits else float("nan"),
            "error_rate": wrong / len(hits),
            "novel_false_hit": float((self.novel_best >= threshold).mean()),
        }

    def best_threshold(self, ok) -> dict[str, float]:
        """The lowest threshold (most hits) whose counts still satisfy ``ok(hits, wrong, n)``."""
        order = np.argsort(-self.best, kind="mergesort")
        wrong_cum = np.cumsum(~self.correct[order])
        hits_cum = np.arange(1, len(order) + 1)
        good = np.nonzero(ok(hits_cum, wrong_cum, len(order)))[0]
        if len(good) == 0:
            return self.at(1.01)
        return self.at(float(self.best[order[good[-1]]]))


def cache_sim(embedder, rows: list[dict]) -> CacheSim:
    """Fill the cache with the `cache` split and query it with the `traffic` split."""
    cache = [r for r in rows if r["split"] == "cache"]
    traffic = [r for r in rows if r["split"] == "traffic"]
    c = embedder.encode_batch([r["text"] for r in cache])
    t = embedder.encode_batch([r["text"] for r in traffic])
    c_intent = np.array([r["intent"] for r in cache])
    t_intent = np.array([r["intent"] for r in traffic])
    sims = t @ c.T
    nearest = sims.argmax(axis=1)
    best = sims[np.arange(len(t)), nearest]
    correct = c_intent[nearest] == t_intent
    sims[t_intent[:, None] == c_intent[None, :]] = -np.inf
    return CacheSim(best=best, correct=correct, novel_best=sims.max(axis=1))


def time_encode(make_embedder, texts: list[str]) -> tuple[float, float]:
    """Mean ms per prompt for a fresh embedder (cold word cache) and a second pass (warm)."""
    embedder = make_embedder()
    embedder.encode("warm up the table load")
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        for text in texts:
            embedder.encode(text)
        runs.append((time.perf_counter() - start) / len(texts) * 1000)
    return runs[0], runs[1]


def fmt(row: dict[str, float]) -> str:
    """One aligned line of a threshold report."""
    return (
        f"  th={row['threshold']:.3f}  hit={row['hit_rate']:.3f}  prec={row['precision']:.3f}"
        f"  wrong/req={row['error_rate']:.3f}  novel_false_hit={row['novel_false_hit']:.3f}"
    )


def report(label: str, make_embedder, pairs: list[dict], rows: list[dict]) -> None:
    """Print the whole report for one embedder."""
    # Timed first, so the tokenizer's per-word cache really starts cold.
    cold, warm = time_encode(make_embedder, [r["text"] for r in rows if r["split"] == "traffic"])
    embedder = make_embedder()
    print(f"== {label}: {embedder.name} (dim {embedder.dim}, default {embedder.default_threshold})")
    auc, auc_hard = pairs_auc(embedder, pairs)
    print(f"pairs ROC-AUC {auc:.3f} (positives vs sibling negatives only: {auc_hard:.3f})")
    sim = cache_sim(embedder, rows)
    print(f"cache sim: nearest neighbour correct for {sim.correct.mean():.3f} of traffic")
    print("at 95% precision:")
    print(fmt(sim.best_threshold(lambda h, w, n: (h - w) / h >= 0.95)))
    print("with wrong hits <= 1% of requests:")
    print(fmt(sim.best_threshold(lambda h, w, n: w / n <= 0.01)))
    print("by threshold:")
    for th in THRESHOLDS:
        print(fmt(sim.at(th)))
    print(fmt(sim.at(embedder.default_threshold)) + "   <- default")
    print(f"encode: {cold:.3f} ms/prompt cold word cache, {warm:.3f} ms warm\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("embedders", nargs="*", default=["local", "hash"])
    parser.add_argument("--data-dir", help="static table directory (default: packaged)")
    parser.add_argument("--hash-dim", type=int, default=512)
    parser.add_argument("--eval-dir", default=str(EVAL_DIR))
    args = parser.parse_args()
    pairs = read_jsonl(Path(args.eval_dir) / "banking77_pairs.jsonl")
    rows = read_jsonl(Path(args.eval_dir) / "banking77_cache.jsonl")
    makers = {
        "local": lambda: StaticEmbedder(args.data_dir),
        "hash": lambda: HashEmbedder(args.hash_dim),
    }
    for name in args.embedders:
        report(name, makers[name], pairs, rows)


if __name__ == "__main__":
    main()
