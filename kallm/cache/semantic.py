"""The SemanticCache facade: exact tier, then embed + nearest neighbour, then the hit guard.

The request path asks one question (``lookup``) and gives back one answer
(``store``); where entries live is the backend's business and how text becomes
a vector is the embedder's. An embedding failure degrades to "uncached", never
to a failed request.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kallm.cache.scope import CacheKey
from kallm.cache.store import CacheBackend, Entry
from kallm.embed.base import Embedder

log = logging.getLogger("kallm.cache")

# (compared text of the request, text of the candidate, the candidate's similarity, the
# threshold the guard may measure it from, or None) -> reason to refuse, or None. The guard
# sees the similarity so that it can ask more of a candidate that barely clears the threshold
# than of one near 1.0 (kallm.cache.guard.refusal_reason).
HitGuard = Callable[[str, str, float, "float | None"], "str | None"]

CANDIDATES = 4  # neighbours above the threshold the guard may choose among
# Longer texts are cached by the exact tier only: embedding and guarding 10 MB of text held
# the event loop for seconds, and a long text judged by the meaning of a part of it could
# hit an answer to another text. 8,000 characters is a long prompt (~2,000 tokens).
MAX_COMPARED_CHARS = 8_000


def comparable(text: str | None) -> bool:
    """Whether a compared text is matched by meaning (else: exactly, or not at all)."""
    return text is not None and len(text) <= MAX_COMPARED_CHARS


@dataclass(frozen=True, slots=True)
class Hit:
    entry: Entry
    similarity: float
    tier: str  # "exact" or "semantic"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A candidate above the threshold that the guard turned away."""

    candidate: str
    similarity: float
    reason: str


@dataclass(slots=True)
class Lookup:
    """The outcome of one lookup; carries the vector so a miss is stored without re-embedding."""

    key: CacheKey
    hit: Hit | None = None
    vector: np.ndarray | None = None
    refusal: Refusal | None = None
    seconds: float = 0.0
    embedded: bool = False  # an embedding was attempted (and may have failed)
    embed_seconds: float | None = None


@dataclass
class CacheStats:
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    stores: int = 0
    embed_errors: int = 0
    saved_usd: float = 0.0
    saved_tokens: int = 0
    guarded: Counter[str] = field(default_factory=Counter)
    lookup_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    @property
    def hits(self) -> int:
        return self.exact_hits + self.semantic_hits


class SemanticCache:
    def __init__(
        self,
        backend: CacheBackend,
        embedder: Embedder,
        *,
        threshold: float,
        ttl: float,
        guard: HitGuard | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.backend = backend
        self.embedder = embedder
        self.threshold = threshold
        self.ttl = ttl
        self.guard = guard
        self.stats = CacheStats()
        self._clock = clock
        self._embed_failed_logged = False

    async def lookup(
        self,
        key: CacheKey,
        *,
        threshold: float | None = None,
        use_guard: bool = True,
        count: bool = True,
    ) -> Lookup:
        """Find an answer for ``key``; counts a hit or miss in ``stats`` unless ``count`` is
        off (imports ask whether an entry exists; nobody was served or saved anything)."""
        started = time.perf_counter()
        result = Lookup(key)
        now = self._clock()
        entry = await self.backend.get_exact(key.exact, now)
        if entry is not None:
            result.hit = Hit(entry, 1.0, "exact")
        elif comparable(key.text):
            embed_started = time.perf_counter()
            result.vector, result.embedded = await self._embed(key.text), True
            result.embed_seconds = time.perf_counter() - embed_started
            if result.vector is not None:
                limit = self.threshold if threshold is None else threshold
                await self._search(result, limit, use_guard, now)
        result.seconds = time.perf_counter() - started
        if count:
            self._count(result)
            if result.hit is not None:
                await self.backend.touch(result.hit.entry, now)
        return result

    async def store(
        self, lookup: Lookup, response: bytes, *, cost_usd: float = 0.0, tokens: int = 0
    ) -> Entry:
        """Remember a complete answer under the lookup's key (vector reused from the lookup)."""
        key = lookup.key
        if not lookup.embedded and comparable(key.text):
            lookup.vector, lookup.embedded = await self._embed(key.text), True
        now = self._clock()
        entry = Entry(
            key.scope,
            key.exact,
            key.text if comparable(key.text) else None,  # only meaning needs the wording
            lookup.vector,
            response,
            now,
            now + self.ttl,
            cost_usd,
            tokens,
        )
        await self.backend.put(entry)
        self.stats.stores += 1
        return entry

    async def _search(self, result: Lookup, limit: float, use_guard: bool, now: float) -> None:
        assert result.vector is not None and result.key.text is not None
        guard = self.guard if use_guard else None
        k = CANDIDATES if guard else 1
        found = await self.backend.nearest(result.key.scope, result.vector, now, k, limit)
        # A request that lowers the threshold below the configured one has chosen looser
        # matches: its candidates are judged by their wording alone, with no margin measured
        # from a threshold it set aside.
        anchor = limit if limit >= self.threshold else None
        for entry, score in found:
            text = entry.text or ""
            reason = self._check(guard, result.key.text, text, score, anchor) if guard else None
            if reason is None:
                result.hit = Hit(entry, score, "semantic")
                return
            if result.refusal is None:
                result.refusal = Refusal(text, score, reason)

    def _check(
        self, guard: HitGuard, query: str, candidate: str, similarity: float, anchor: float | None
    ) -> str | None:
        """The guard's verdict; a guard that breaks refuses (a miss), never fails the request."""
        try:
            return guard(query, candidate, similarity, anchor)
        except Exception:
            log.exception("hit guard failed on %r / %r; refusing the hit", query, candidate)
            return "guard_error"

    async def _embed(self, text: str) -> np.ndarray | None:
        try:
            return await self.embedder.embed(text)
        except Exception as exc:  # any embedder failure degrades to uncached
            self.stats.embed_errors += 1
            if not self._embed_failed_logged:
                log.warning("embedding failed, serving uncached: %s", exc)
                self._embed_failed_logged = True
            return None

    def _count(self, result: Lookup) -> None:
        stats = self.stats
        stats.lookup_seconds.append(result.seconds)
        if result.refusal is not None and result.hit is None:
            stats.guarded[result.refusal.reason] += 1
        if result.hit is None:
            stats.misses += 1
            return
        if result.hit.tier == "exact":
            stats.exact_hits += 1
        else:
            stats.semantic_hits += 1
        stats.saved_usd += result.hit.entry.cost_usd
        stats.saved_tokens += result.hit.entry.tokens
