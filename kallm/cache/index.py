"""Nearest-neighbour search over the vectors of one scope, held in a numpy matrix.

Rows are kept packed: a removed row is filled by the last one, so a search is
one matrix-vector product over exactly the live rows. Capacity doubles as the
scope grows, so adding is amortised O(dim).

A brute-force scan reads the whole matrix (10 MB at 10,000 entries of 256
dims, 100 MB at 100,000): inside a busy server that memory is rarely in the CPU
cache, so past ``BINARY_FROM`` rows the scan runs first on sign bits (32 bytes
a row, Hamming distance with ``np.bitwise_count``) and only the closest
``RERANK`` rows are scored exactly. On Banking77 (10,000 cached queries) the
true nearest neighbour of every query that scores ≥ 0.9 is among those rows;
at 10,000 rows a cold lookup drops from ~0.97 ms to ~0.34 ms.
"""

from __future__ import annotations

import numpy as np

BINARY_FROM = 4_096
RERANK = 128


def sign_bits(vectors: np.ndarray) -> np.ndarray:
    """Rows of sign bits packed into uint64 words (padded to whole words)."""
    packed = np.packbits(np.atleast_2d(vectors) > 0, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return packed.view(np.uint64)


class VectorIndex:
    """Unit vectors keyed by entry id; ``nearest`` returns the best cosines."""

    def __init__(self, dim: int, capacity: int = 16):
        self.dim = dim
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        # one row per 64-bit word, one column per entry: each word is XORed and counted
        # over a contiguous array (6x faster than summing the words of each row)
        self._bits = np.zeros((sign_bits(np.zeros(dim)).shape[1], capacity), dtype=np.uint64)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, entry_id: int, vector: np.ndarray) -> None:
        row = self._row_of.get(entry_id)
        if row is None:
            row = len(self._row_of)
            if row == len(self._matrix):
                self._grow()
            self._ids[row] = entry_id
            self._row_of[entry_id] = row
        self._matrix[row] = vector
        self._bits[:, row] = sign_bits(vector)[0]

    def remove(self, entry_id: int) -> None:
        row = self._row_of.pop(entry_id, None)
        if row is None:
            return
        last = len(self._row_of)
        if row != last:
            moved = int(self._ids[last])
            self._matrix[row] = self._matrix[last]
            self._bits[:, row] = self._bits[:, last]
            self._ids[row] = moved
            self._row_of[moved] = row

    def nearest(
        self, vector: np.ndarray, k: int = 1, min_score: float = -1.0
    ) -> list[tuple[int, float]]:
        """The k best (entry id, cosine) pairs scoring at least ``min_score``, best first."""
        size = len(self._row_of)
        if size == 0:
            return []
        rows = self._candidates(vector, size)
        matrix = self._matrix[:size] if rows is None else self._matrix[rows]
        scores = matrix @ vector
        best = int(np.argmax(scores))
        if scores[best] < min_score:
            return []  # the common miss: no need to rank anything
        if k == 1 or len(scores) == 1:
            order = np.array([best])
        else:
            k = min(k, len(scores))
            order = np.argpartition(-scores, k - 1)[:k]
            order = order[np.argsort(-scores[order])]
        found = order if rows is None else rows[order]
        return [
            (int(self._ids[r]), float(scores[o]))
            for r, o in zip(found, order, strict=True)
            if scores[o] >= min_score
        ]

    def _candidates(self, vector: np.ndarray, size: int) -> np.ndarray | None:
        """Rows worth scoring exactly, or None to score them all."""
        if size < BINARY_FROM:
            return None
        query = sign_bits(vector)[0]
        distances = np.bitwise_count(self._bits[0, :size] ^ query[0]).astype(np.uint16)
        for word in range(1, len(query)):
            distances += np.bitwise_count(self._bits[word, :size] ^ query[word])
        # distances are small integers: a histogram finds the cut-off for the RERANK closest
        # in one pass (about twice as fast as argpartition on 10,000 rows); ties come along
        counts = np.cumsum(np.bincount(distances, minlength=len(query) * 64 + 1))
        cutoff = int(np.searchsorted(counts, RERANK))
        return np.flatnonzero(distances <= cutoff)

    def _grow(self) -> None:
        capacity = len(self._matrix) * 2
        self._matrix = _grown(self._matrix, capacity, axis=0)
        self._bits = _grown(self._bits, capacity, axis=1)
        self._ids = _grown(self._ids, capacity, axis=0)


def _grown(array: np.ndarray, capacity: int, axis: int) -> np.ndarray:
    shape = list(array.shape)
    shape[axis] = capacity
    bigger = np.zeros(shape, dtype=array.dtype)
    bigger[tuple(slice(0, n) for n in array.shape)] = array
    return bigger
