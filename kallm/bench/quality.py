"""``kallm bench quality``: which similarity threshold to run with, from labelled prompt pairs.

A threshold trades wrong answers (a hit on a different question) against
missed savings, and where that trade lands depends on the embedder and on the
user's own traffic, so it is measured on pairs labelled "same question" or
not. Each pair goes through kallm's own ``SemanticCache`` (scope, exact tier,
embedder, index, hit guard), the code the server calls: ``a`` is stored, ``b``
is looked up. Every pair gets its own namespace, so a lookup can only ever
find its own partner and no pair's verdict depends on the others.

Each pair is looked up once per threshold, as a server configured with that
threshold would look it up: the guard asks more of a candidate that barely clears
the threshold (a swap of content words must clear it by ``SWAP_MARGIN``), so a
verdict at one threshold does not tell another.

Precision is the share of hits that were right; recall the share of duplicates
that were hits. The recommendation is the lowest threshold (the most savings)
whose precision reaches the target. Both depend on the mix of pairs: a file
with few hard negatives flatters precision, and so does judging pairs one at a
time: in a full cache a question meets thousands of neighbours, and the nearest
wrong one only has to beat the threshold once (``scripts/eval_cache_quality.py``
simulates that on Banking77). Read the recommendation as a floor to start from.

Labelled *traffic* (``{"split": "cache"|"traffic", "text", "intent", "slots"?}``, the
format of ``../shared/eval``) is simulated instead: the ``cache`` rows fill one cache,
each ``traffic`` row asks it. A hit is right when the entry has the asker's intent,
and, where rows carry ``slots`` (the answer-changing details, ``type=value``), right
*in detail* when the details match too — compared exactly; normalised (number words
as digits, plurals, articles, contractions and punctuation folded), since "4 stars"
and "four stars" are the same detail; and normalised with spelling too (British
spellings as American ones, a leading "this"/"that": "this current essay" = "current
essay", "neighbourhood" = "neighborhood"). Synonyms are never folded: "nearest" /
"closest" are different details to every judge.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kallm.cache.guard import SWAP_MARGIN, refusal_reason
from kallm.cache.scope import cache_key
from kallm.cache.semantic import HitGuard, Lookup, SemanticCache
from kallm.cache.store import MemoryBackend
from kallm.cli.tables import folded
from kallm.embed import Embedder, local_embedder

DEFAULT_THRESHOLDS = "0.80:0.99:0.01"
DEFAULT_TARGET = 0.97
MODEL = "bench-quality"  # any model name: it only has to be the same for a and b
EXAMPLES = 10  # wrong hits kept in the JSON at the recommended threshold
SAMPLE = 12  # refusals and wrong hits shown per reason, for a person to judge

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
    """What looking up ``b`` at one threshold gave: the similarity it was served at, or
    why it was not."""

    served: float | None  # similarity of the hit, None for a miss
    refused: tuple[float, str] | None  # (similarity, reason) when the guard turned it away


def guard_with(margin: float = SWAP_MARGIN) -> HitGuard:
    """The server's hit guard, with another swap margin (to measure the trade-off)."""
    return refusal_reason if margin == SWAP_MARGIN else partial(refusal_reason, margin=margin)


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


async def judge(
    pairs: list[Pair], embedder: Embedder, thresholds: list[float], guard: bool
) -> dict[float, list[Outcome]]:
    """Store every ``a``, then look up every ``b`` at each threshold, each pair in its own
    namespace. The cache is configured at the lowest threshold, and each lookup asks for its
    own (never lower), so the guard measures its margin from that threshold, as a server
    configured with it would."""
    cache = SemanticCache(
        MemoryBackend(len(pairs) + 1),
        embedder,
        threshold=min(thresholds),
        ttl=1e12,
        guard=refusal_reason,
    )

    def request(text: str) -> dict[str, Any]:
        return {"model": MODEL, "messages": [{"role": "user", "content": text}]}

    for i, pair in enumerate(pairs):
        await cache.store(Lookup(cache_key(request(pair.a), (f"pair-{i}",))), b"{}")
    outcomes: dict[float, list[Outcome]] = {t: [] for t in thresholds}
    for i, pair in enumerate(pairs):
        key = cache_key(request(pair.b), (f"pair-{i}",))
        for t in thresholds:
            found = await cache.lookup(key, threshold=t, use_guard=guard)
            refusal = found.refusal
            outcomes[t].append(
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


# --- labelled traffic: a full-cache simulation, judged by intent and by detail ----------

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}


@dataclass(frozen=True, slots=True)
class Query:
    """One labelled utterance: fills the cache (``cached``) or asks it."""

    text: str
    intent: str
    details: tuple[str, ...] | None  # sorted "type=value"; None when the data has none
    cached: bool


def is_traffic_file(path: Path) -> bool:
    """Whether ``path`` holds labelled traffic (rows with a ``split``) rather than pairs."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(row, dict) and "split" in row
    return False


def read_traffic(path: Path) -> list[Query]:
    """Rows ``{"split": "cache"|"traffic", "text", "intent", "slots"?}``."""
    queries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or row.get("split") not in ("cache", "traffic"):
            raise PairsError(f"{where}: needs split (cache or traffic), text and intent")
        if not isinstance(row.get("text"), str) or "intent" not in row:
            raise PairsError(f"{where}: needs split (cache or traffic), text and intent")
        slots = row.get("slots")
        details = tuple(sorted(str(s) for s in slots)) if isinstance(slots, list) else None
        queries.append(Query(row["text"], str(row["intent"]), details, row["split"] == "cache"))
    if not any(q.cached for q in queries) or all(q.cached for q in queries):
        raise PairsError(f"{path}: needs both cache and traffic rows")
    return queries


def _value_words(value: str) -> list[str]:
    words = []
    for word in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", value.lower().replace("’", "'")):
        word = word.split("'", 1)[0]
        if word in _ARTICLES:
            continue
        word = _NUMBER_WORDS.get(word, word)
        if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
        if len(word) > 3 and word.endswith("ie"):  # stories/story, movies/movie alike
            word = word[:-2] + "y"
        words.append(word)
    return words


def normal_value(value: str) -> str:
    """A detail's value as the judge compares it: "the 4 Stars" = "four star"."""
    return " ".join(_value_words(value))


# The judge's own spelling folds, kept apart from the guard's (kallm.cache.details.american)
# so that a mistake in one is not repeated by the other: British endings written the
# American way, on words already singular.
_BRITISH_ENDINGS = (
    (re.compile(r"^([a-z]{3,})our(hood|ite|able|ed|ing)?$"), r"\1or\2"),  # neighbourhood
    (re.compile(r"^([a-z]{2,}[bt])re$"), r"\1er"),  # theatre, centre
    (re.compile(r"^([a-z]{3,})ogue$"), r"\1og"),  # catalogue
    (re.compile(r"^([a-z]{4,})is(e|ed|ing|ation)$"), r"\1iz\2"),  # organise
)
_DEMONSTRATIVES = frozenset({"this", "that", "these", "those"})


def _american(word: str) -> str:
    for pattern, replacement in _BRITISH_ENDINGS:
        if pattern.match(word):
            return pattern.sub(replacement, word)
    return word


def spelt_value(value: str) -> str:
    """``normal_value`` with spelling set aside too: British spellings as American ones
    ("in the neighbourhood" = "in the neighborhood", "movie theatre" = "movie theater")
    and a leading demonstrative before another word ("this current" = "current"; a value
    that is only "this" keeps it). No synonyms: "nearest" and "closest" stay apart."""
    words = [_american(word) for word in _value_words(value)]
    if len(words) > 1 and words[0] in _DEMONSTRATIVES:
        words = words[1:]
    return " ".join(words)


def normal_details(details: tuple[str, ...], spelling: bool = False) -> frozenset[str]:
    """The details as ``type=value`` with each value normalised (and spelling set aside
    too with ``spelling``)."""
    fold = spelt_value if spelling else normal_value
    out = set()
    for detail in details:
        kind, _, value = detail.partition("=")
        out.add(f"{kind}={fold(value)}")
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Served:
    """What one traffic query got from its lookup at one threshold."""

    entry: int | None  # index (into the queries) of the entry served
    similarity: float
    refused: tuple[int, str, float] | None  # (entry, reason, similarity) of the first refusal

    def hit(self, threshold: float) -> int | None:
        return self.entry if self.entry is not None and self.similarity >= threshold else None

    def refusal(self, threshold: float) -> tuple[int, str, float] | None:
        """The refusal that made the answer a miss at ``threshold``, if one did."""
        if self.hit(threshold) is not None or self.refused is None:
            return None
        return self.refused if self.refused[2] >= threshold else None


def _request(text: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


async def simulate(
    queries: list[Query],
    embedder: Embedder,
    thresholds: list[float],
    guard: bool = True,
    novel: bool = False,
    margin: float = SWAP_MARGIN,
) -> dict[float, list[Served]]:
    """Fill a cache with the cached rows, look each traffic row up at each threshold.

    Returns, per threshold, what each traffic row got there. The cache is configured at
    the lowest threshold and each lookup asks for its own, so the guard measures its swap
    ``margin`` from that threshold, as a server configured with it would; a verdict at one
    threshold does not tell another. Without the guard it would, and one lookup serves all.

    ``novel``: before a query is asked, every cached row of its intent is taken out,
    so every hit is wrong: what users see for a question the cache has never seen.
    """
    cached = [i for i, q in enumerate(queries) if q.cached]
    asked = [i for i, q in enumerate(queries) if not q.cached]
    lowest = min(thresholds)
    lookups = {}
    for i in cached:
        key = cache_key(_request(queries[i].text))
        lookups[i] = Lookup(key, vector=await embedder.embed(key.text or ""), embedded=True)
    groups = {"": asked}
    if novel:
        groups = {}
        for i in asked:
            groups.setdefault(queries[i].intent, []).append(i)
    served: dict[float, dict[int, Served]] = {t: {} for t in thresholds}
    for intent, members in groups.items():
        keep = [i for i in cached if not novel or queries[i].intent != intent]
        cache = SemanticCache(
            MemoryBackend(len(keep) + 1),
            embedder,
            threshold=lowest,
            ttl=1e12,
            guard=guard_with(margin),
        )
        index_of = {}
        for i in keep:
            await cache.store(lookups[i], b"{}")
            index_of[lookups[i].key.text] = i
        for i in members:
            key = cache_key(_request(queries[i].text))
            for t in thresholds if guard else [lowest]:
                found = await cache.lookup(key, threshold=t, use_guard=guard)
                refusal = found.refusal
                served[t][i] = Served(
                    index_of[found.hit.entry.text] if found.hit else None,
                    found.hit.similarity if found.hit else 0.0,
                    (index_of[refusal.candidate], refusal.reason, refusal.similarity)
                    if refusal
                    else None,
                )
    if not guard:  # no verdict to depend on the threshold: the lowest one tells them all
        served = {t: served[lowest] for t in thresholds}
    return {t: [by_row[i] for i in asked] for t, by_row in served.items()}


def _asked(queries: list[Query]) -> list[Query]:
    return [q for q in queries if not q.cached]


def right(query: Query, entry: Query, level: str) -> bool:
    """Whether ``entry``'s answer is right for ``query``: at ``level`` intent, exact
    (details equal as written), normalised (details equal once normalised) or spelling
    (equal once normalised with spelling set aside too)."""
    if entry.intent != query.intent:
        return False
    if level == "intent" or query.details is None or entry.details is None:
        return True
    if level == "exact":
        return entry.details == query.details
    spelling = level == "spelling"
    return normal_details(entry.details, spelling) == normal_details(query.details, spelling)


def score_traffic(
    queries: list[Query],
    served: list[Served],
    threshold: float,
    novel: list[Served] | None = None,
    only: list[int] | None = None,
) -> dict[str, Any]:
    """Hit rate and precision (by intent, and by detail where the data has details)."""
    asked = _asked(queries)
    rows = range(len(asked)) if only is None else only
    hits = Counter[str]()
    count = novel_hits = 0
    for r in rows:
        count += 1
        if novel is not None:
            novel_hits += novel[r].hit(threshold) is not None
        entry = served[r].hit(threshold)
        if entry is None:
            continue
        hits["all"] += 1
        for level in ("intent", "exact", "normalised", "spelling"):
            hits[level] += right(asked[r], queries[entry], level)
    n, h = max(count, 1), hits["all"]
    result: dict[str, Any] = {
        "threshold": threshold,
        "hit_rate": h / n,
        "precision": hits["intent"] / h if h else 1.0,
        "wrong_per_request": (h - hits["intent"]) / n,
    }
    if any(q.details is not None for q in asked):
        result["detail_exact"] = hits["exact"] / h if h else 1.0
        result["detail_normalised"] = hits["normalised"] / h if h else 1.0
        result["detail_spelling"] = hits["spelling"] / h if h else 1.0
    if novel is not None:
        result["novel_false_hits"] = novel_hits / n
    return result


def _pair(queries: list[Query], query: Query, entry: int, similarity: float) -> dict[str, Any]:
    other = queries[entry]
    row: dict[str, Any] = {"query": query.text, "cached": other.text, "similarity": similarity}
    if query.details is not None and other.details is not None:
        row["differs"] = sorted(normal_details(query.details) ^ normal_details(other.details))
    return row


def refusals(
    queries: list[Query], served: list[Served], threshold: float, limit: int = SAMPLE
) -> dict[str, Any]:
    """Refusals by reason at ``threshold``: how many, how many turned away an answer that
    was right (by the strictest label the data has), and a sample a person can judge."""
    asked = _asked(queries)
    level = "normalised" if any(q.details is not None for q in asked) else "intent"
    by_reason: dict[str, dict[str, Any]] = {}
    for query, outcome in zip(asked, served, strict=True):
        refusal = outcome.refusal(threshold)
        if refusal is None:
            continue
        entry, reason, similarity = refusal
        tally = by_reason.setdefault(reason, {"refused": 0, "right_answer": 0, "sample": []})
        tally["refused"] += 1
        was_right = right(query, queries[entry], level)
        tally["right_answer"] += was_right
        if len(tally["sample"]) < limit:
            row = _pair(queries, query, entry, round(similarity, 4))
            tally["sample"].append({**row, "refused_a_right_answer": was_right})
    return dict(sorted(by_reason.items(), key=lambda kv: -kv[1]["refused"]))


def wrong_hits(
    queries: list[Query], served: list[Served], threshold: float, limit: int = 2 * SAMPLE
) -> list[dict[str, Any]]:
    """Hits whose details (normalised) or intent differ, most similar first."""
    asked = _asked(queries)
    level = "normalised" if any(q.details is not None for q in asked) else "intent"
    wrong = []
    for query, outcome in zip(asked, served, strict=True):
        entry = outcome.hit(threshold)
        if entry is not None and not right(query, queries[entry], level):
            wrong.append(_pair(queries, query, entry, round(outcome.similarity, 4)))
    return sorted(wrong, key=lambda w: -w["similarity"])[:limit]


async def evaluate_traffic(
    path: Path,
    embedder: Embedder,
    thresholds: list[float],
    guard: bool,
    target: float,
) -> dict[str, Any]:
    """``kallm bench quality`` on labelled traffic: the same report as for pairs, plus
    detail-level precision, refusals by reason and wrong hits to read."""
    queries = read_traffic(path)
    default = embedder.default_threshold
    served = await simulate(queries, embedder, sorted({*thresholds, default}), guard)
    rows = [score_traffic(queries, served[t], t) for t in thresholds]
    has_details = "detail_normalised" in rows[0]
    key = "detail_normalised" if has_details else "precision"
    good = [r for r in rows if r[key] >= target and r["hit_rate"] > 0]
    best = max(good, key=lambda r: (r["hit_rate"], r["threshold"])) if good else None
    at = best["threshold"] if best else default
    asked = _asked(queries)
    return {
        "traffic_file": str(path),
        "cached": len(queries) - len(asked),
        "asked": len(asked),
        "judged_by": "intent and details" if has_details else "intent",
        "embedder": embedder.name,
        "embedder_default_threshold": default,
        "guard": guard,
        "target_precision": target,
        "thresholds": rows,
        "at_default_threshold": score_traffic(queries, served[default], default),
        "recommended": None
        if best is None
        else {
            "threshold": best["threshold"],
            "precision": best[key],
            "hit_rate": best["hit_rate"],
            "setting": "cache.similarity_threshold",
            "env": f"KALLM_SIMILARITY_THRESHOLD={best['threshold']:g}",
        },
        "refused_by_reason": refusals(queries, served[at], at),
        "wrong_hits": wrong_hits(queries, served[at], at),
    }


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
    if is_traffic_file(path):
        return await evaluate_traffic(path, embedder, thresholds, guard, target)
    pairs = read_pairs(path)
    default = embedder.default_threshold
    outcomes = await judge(pairs, embedder, sorted({*thresholds, default}), guard)
    rows = [score(pairs, outcomes[t], t) for t in thresholds]
    best = recommend(rows, target)
    at = best["threshold"] if best else default
    wrong = []
    if best is not None:
        wrong = [
            {"a": p.a, "b": p.b, "similarity": round(o.served or 0.0, 4)}
            for p, o in zip(pairs, outcomes[best["threshold"]], strict=True)
            if not p.duplicate and o.served is not None
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
        "at_default_threshold": score(pairs, outcomes[default], default),
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
        "refused_by_reason": pair_refusals(pairs, outcomes[at], at),
    }


def pair_refusals(
    pairs: list[Pair], outcomes: list[Outcome], threshold: float, limit: int = SAMPLE
) -> dict[str, Any]:
    """What the guard refused at ``threshold``, by reason: how many, how many of them were
    duplicates (a refused right answer), and a sample a person can judge."""
    by_reason: dict[str, dict[str, Any]] = {}
    for pair, outcome in zip(pairs, outcomes, strict=True):
        if outcome.refused is None or outcome.refused[0] < threshold:
            continue
        if outcome.served is not None and outcome.served >= threshold:
            continue
        similarity, reason = outcome.refused
        tally = by_reason.setdefault(reason, {"refused": 0, "right_answer": 0, "sample": []})
        tally["refused"] += 1
        tally["right_answer"] += pair.duplicate
        if len(tally["sample"]) < limit:
            tally["sample"].append(
                {
                    "query": pair.b,
                    "cached": pair.a,
                    "similarity": round(similarity, 4),
                    "refused_a_right_answer": pair.duplicate,
                }
            )
    return dict(sorted(by_reason.items(), key=lambda kv: -kv[1]["refused"]))


def print_quality(result: dict[str, Any], console: Console) -> None:
    """Precision and recall per threshold, the recommended row marked, then the verdict."""
    if "traffic_file" in result:
        print_traffic_quality(result, console)
        return
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
    console.print(folded(table))
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
    print_refusals(result["refused_by_reason"], best["threshold"], console)


def print_refusals(by_reason: dict[str, Any], threshold: float, console: Console) -> None:
    """The guard's refusals at ``threshold`` by reason, with a few to read."""
    if not by_reason:
        console.print(f"the guard refused nothing at {threshold:g}")
        return
    table = Table(title=f"refused by the guard at {threshold:g} (a sample per reason)")
    for column in ("reason", "refused", "of them right answers", "query", "cached", "right?"):
        table.add_column(column)
    for reason, tally in by_reason.items():
        for i, row in enumerate(tally["sample"][:3]):
            first = i == 0
            table.add_row(
                reason if first else "",
                f"{tally['refused']:,}" if first else "",
                f"{tally['right_answer']:,}" if first else "",
                row["query"],
                row["cached"],
                "yes" if row["refused_a_right_answer"] else "no",
            )
    console.print(folded(table))


def print_traffic_quality(result: dict[str, Any], console: Console) -> None:
    """Per threshold: hit rate and precision by intent and, with details, by detail."""
    best = result["recommended"]
    details = result["judged_by"] == "intent and details"
    guard = "guard on" if result["guard"] else "guard off"
    table = Table(
        title=f"cache simulation — {result['cached']:,} cached, {result['asked']:,} asked "
        f"from {result['traffic_file']}, {result['embedder']} embedder, {guard}"
    )
    columns = ["threshold", "hit rate", "precision (intent)"]
    columns += ["detail exact", "detail normalised", "+ spelling"] if details else []
    for column in columns:
        table.add_column(column, justify="right")
    for row in result["thresholds"]:
        chosen = best is not None and row["threshold"] == best["threshold"]
        default = row["threshold"] == result["embedder_default_threshold"]
        mark = " ◀ recommended" if chosen else (" (default)" if default else "")
        cells = [
            f"{row['threshold']:.2f}{mark}",
            f"{row['hit_rate']:.1%}",
            _share(row["precision"]),
        ]
        if details:
            cells += [
                _share(row["detail_exact"]),
                _share(row["detail_normalised"]),
                _share(row["detail_spelling"]),
            ]
        table.add_row(*cells, style="bold green" if chosen else None)
    console.print(folded(table))
    judged = "detail-level (normalised)" if details else "intent"
    if best is None:
        console.print(
            f"[bold red]no threshold reached {judged} precision {result['target_precision']}[/]"
        )
    else:
        console.print(
            f"[bold]recommended: cache.similarity_threshold = {best['threshold']:g}[/] — the "
            f"highest hit rate ({best['hit_rate']:.1%}) with {judged} precision ≥ "
            f"{result['target_precision']} ({_share(best['precision'])}, {guard}).",
            highlight=False,
        )
    at = best["threshold"] if best else result["embedder_default_threshold"]
    print_refusals(result["refused_by_reason"], at, console)
    if result["wrong_hits"]:
        console.print(f"wrong hits at {at:g}, most similar first:")
        for row in result["wrong_hits"][:EXAMPLES]:
            differs = f"  [dim]{', '.join(row.get('differs', []))}[/]" if details else ""
            console.print(f"  {row['query']!r} got {row['cached']!r}{differs}", highlight=False)


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
