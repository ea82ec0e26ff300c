"""Choosing every request body before any load is sent, so no cell pays for choosing.

A cell named "miss" must measure misses and a cell named "hit" hits, so the
choice is checked, not assumed: miss prompts are screened against the cache
with the same embedder and threshold kallm uses, and paraphrase candidates are
asked of kallm itself (without storing anything) and kept only if it really
answers them from the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from kallm.bench.load import CACHE_HEADER, SIMILARITY_HEADER
from kallm.bench.prefill import embed_keys, keys_of
from kallm.bench.prompts import MODEL, Prompt, encoded_request
from kallm.bench.stats import summary
from kallm.embed import Embedder

HIT_CANDIDATES = 2000  # cached prompts the hit cells cycle through
PROBE_SECONDS = 120.0


async def pick_misses(
    prompts: Sequence[Prompt],
    stored: np.ndarray,
    needed: int,
    embedder: Embedder,
    threshold: float,
    model: str = MODEL,
) -> tuple[list[str], int]:
    """``needed`` prompts that kallm will really miss, and how many candidates were left out.

    A miss prompt is two unrelated cached-style questions asked together (users do
    that), which is far from any single cached prompt. Templated text still has
    close neighbours, so each candidate is checked against the cache and against
    the misses before it (kallm stores those); one scoring above the threshold
    would come back a hit and is left out, since the miss cell must measure misses.
    """
    kept: list[str] = []
    kept_vectors = np.zeros((needed, stored.shape[1]), dtype=np.float32)
    tried = 0
    batch = 512
    for offset in range(0, len(prompts) - 1, 2 * batch):
        pairs = prompts[offset : offset + 2 * batch]
        texts = [
            f"{a.text} Also, {b.text[0].lower()}{b.text[1:]}"
            for a, b in zip(pairs[::2], pairs[1::2], strict=False)
        ]
        vectors = await embed_keys(embedder, keys_of(texts, model))
        near_cache = (
            (vectors @ stored.T).max(axis=1) >= threshold
            if len(stored)
            else np.zeros(len(texts), dtype=bool)
        )
        for text, vector, near in zip(texts, vectors, near_cache, strict=True):
            tried += 1
            if near or (kept and (kept_vectors[: len(kept)] @ vector).max() >= threshold):
                continue
            kept_vectors[len(kept)] = vector
            kept.append(text)
            if len(kept) == needed:
                return kept, tried - needed
    raise RuntimeError(
        f"only {len(kept)} of {tried} candidate prompts would miss; "
        f"{needed} are needed (use fewer --requests or rounds)"
    )


@dataclass
class Plan:
    """Request bodies for every cell, decided before any load is sent."""

    miss_bodies: list[bytes]
    exact_bodies: list[bytes]
    paraphrase_bodies: list[bytes]  # candidates until ``probe_paraphrases`` keeps the hits
    paraphrase_threshold: float | None  # sent as X-Kallm-Threshold when the default is too high
    paraphrase_scores: dict[str, Any]
    misses_screened_out: int
    paraphrase_probe: dict[str, Any] = field(default_factory=dict)

    def paraphrase_headers(self, base: Mapping[str, str]) -> dict[str, str]:
        """Request headers for the paraphrase cell."""
        if self.paraphrase_threshold is None:
            return dict(base)
        return {**base, "X-Kallm-Threshold": str(self.paraphrase_threshold)}

    def bodies(self) -> dict[str, list[bytes]]:
        """Bodies by ``Target.source``."""
        return {
            "miss": self.miss_bodies,
            "exact": self.exact_bodies,
            "paraphrase": self.paraphrase_bodies,
        }


async def make_plan(
    prompts: list[Prompt],
    vectors: np.ndarray,
    entries: int,
    misses_needed: int,
    embedder: Embedder,
    threshold: float,
    model: str = MODEL,
) -> Plan:
    """Exact hits are cached prompts; paraphrase candidates are their second wordings
    that are not themselves cached (else they would be exact hits) and score above the
    threshold against the cache here, with the same embedder kallm uses."""
    stored_vectors = vectors[:entries]
    miss_texts, screened_out = await pick_misses(
        prompts[entries:], stored_vectors, misses_needed, embedder, threshold, model
    )
    # Spread hits over the whole cache (stride coprime to its size) so LRU order is stirred.
    stride = next(s for s in (7919, 7907, 7901, 1) if entries % s)
    chosen = [(i * stride) % entries for i in range(min(entries, HIT_CANDIDATES))]
    exact = [encoded_request(prompts[i].text, model) for i in chosen]

    stored_exact = {k.exact for k in keys_of([p.text for p in prompts[:entries]], model)}
    texts = [prompts[i].paraphrase for i in chosen]
    para_keys = keys_of(texts, model)
    para_vectors = await embed_keys(embedder, para_keys)
    best = (para_vectors @ stored_vectors.T).max(axis=1) if entries else np.zeros(len(texts))
    novel = np.array([k.exact not in stored_exact for k in para_keys], dtype=bool)
    header: float | None = None
    usable = [j for j in range(len(texts)) if novel[j] and best[j] >= threshold]
    if len(usable) < len(texts) // 4 and novel.any():
        # This embedder scores these paraphrases below its default: lower the bar per
        # request, as a client may, so the cell still measures the semantic-hit path.
        header = round(float(np.percentile(best[novel], 25)), 3)
        usable = [j for j in range(len(texts)) if novel[j] and best[j] >= header]
    scores = best[novel]
    return Plan(
        miss_bodies=[encoded_request(t, model) for t in miss_texts],
        exact_bodies=exact,
        paraphrase_bodies=[encoded_request(texts[j], model) for j in usable],
        paraphrase_threshold=header,
        paraphrase_scores={
            "share_above_default": round(float((scores >= threshold).mean()), 3)
            if len(scores)
            else None,
            **summary(scores),
        },
        misses_screened_out=screened_out,
    )


async def probe_paraphrases(
    plan: Plan, kallm_url: str, headers: Mapping[str, str], limit: int
) -> None:
    """Keep the paraphrases kallm really answers from the cache, asking it with no-store.

    Scoring above the threshold is not enough: the hit guard may refuse a
    neighbour (another city, another number), and a refused paraphrase would be
    stored and come back as an *exact* hit in the cell. ``Cache-Control: no-store``
    lets us ask without changing the cache. At most ``limit`` candidates are asked
    (a refused one goes to the upstream, which may be a paid one).
    """
    probe_headers = {**plan.paraphrase_headers(headers), "Cache-Control": "no-store"}
    candidates = plan.paraphrase_bodies[:limit]
    kept: list[bytes] = []
    outcome: Counter[str] = Counter()
    similarities: list[float] = []
    first_error: str | None = None
    queue = iter(candidates)
    deadline = time.monotonic() + PROBE_SECONDS

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal first_error
        for body in queue:
            if time.monotonic() > deadline:
                return
            try:
                async with session.post(
                    kallm_url + "/chat/completions", data=body, headers=probe_headers
                ) as response:
                    text = await response.read()
                    verdict = response.headers.get(CACHE_HEADER, "-")
                    similarity = response.headers.get(SIMILARITY_HEADER)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome["error"] += 1
                first_error = first_error or repr(exc)
                continue
            if response.status != 200:
                outcome["error"] += 1
                first_error = first_error or f"{response.status} {text[:300]!r}"
            elif verdict == "HIT" and similarity is not None:
                outcome["hit"] += 1
                similarities.append(float(similarity))
                kept.append(body)
            else:
                outcome["miss (guard or neighbour below threshold)"] += 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(4)))
    plan.paraphrase_probe = {
        "probed": len(candidates),
        **outcome,
        "first_error": first_error,
        "similarity": summary(similarities),
    }
    plan.paraphrase_bodies = kept
