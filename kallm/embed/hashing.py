"""Owns the `hash` embedder: hashed word and character n-grams, numpy only, no data file.

It is the fallback when the static table is missing and the cheapest embedder
that still catches light paraphrases (reordered words, typos, plurals). Scores
are driven by surface overlap, so its threshold is set much higher relative to
its score distribution than a semantic model's would be.

Hashing uses ``zlib.crc32`` rather than Python's salted ``hash()``: vectors must
be identical across processes and machines because cache snapshots store them.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter

import numpy as np

from kallm.embed.base import l2_normalise

_WORD = re.compile(r"\w+")
CHAR_NGRAM_SIZES = (3, 4, 5)


def _features(text: str) -> Counter[str]:
    """Word unigrams and bigrams plus char 3-5-grams of each space-padded word.

    Feature kinds get distinct prefixes so a word never collides with a char
    n-gram spelling the same letters.
    """
    words = _WORD.findall(text.lower())
    feats: Counter[str] = Counter()
    for word in words:
        feats["w:" + word] += 1
        padded = f" {word} "
        for n in CHAR_NGRAM_SIZES:
            for i in range(len(padded) - n + 1):
                feats["c:" + padded[i : i + n]] += 1
    for first, second in itertools.pairwise(words):
        feats["b:" + first + " " + second] += 1
    return feats


class HashEmbedder:
    """Feature hashing into ``dim`` signed buckets with sublinear term frequency."""

    name = "hash-ngram-v1"
    default_threshold = 0.86

    def __init__(self, dim: int = 512) -> None:
        if dim < 2:
            raise ValueError("dim must be at least 2")
        self.dim = dim
        if dim != 512:
            # Scores from another width are not comparable with the default one.
            self.name = f"hash-ngram-v1-d{dim}"
        self._bucket_cache: dict[str, tuple[int, float]] = {}

    def _bucket(self, feature: str) -> tuple[int, float]:
        """Stable bucket index and sign of a feature (bit 0 of the CRC gives the sign)."""
        hit = self._bucket_cache.get(feature)
        if hit is not None:
            return hit
        h = zlib.crc32(feature.encode("utf-8"))
        hit = ((h >> 1) % self.dim, 1.0 if h & 1 else -1.0)
        if len(self._bucket_cache) < 200_000:  # bounded: long-tail features are not kept
            self._bucket_cache[feature] = hit
        return hit

    def _raw(self, text: str) -> np.ndarray:
        """Unnormalised hashed vector: 1 + log(tf) per feature, signed."""
        vec = np.zeros(self.dim, dtype=np.float32)
        for feature, count in _features(text).items():
            index, sign = self._bucket(feature)
            vec[index] += sign * (1.0 + math.log(count))
        return vec

    def encode(self, text: str) -> np.ndarray:
        """Unit-length float32 vector of ``text``; empty or symbol-only text gives zeros."""
        return l2_normalise(self._raw(text))

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """Row-wise ``encode`` for batch scripts (n x dim)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.stack([self._raw(t) for t in texts]))

    async def embed(self, text: str) -> np.ndarray:
        """The async Embedder entry point; hashing is CPU-cheap so it runs inline."""
        return self.encode(text)
