"""Nearest-neighbour search over the vectors of one scope, held in a numpy matrix.

Rows are kept packed: a removed row is filled by the last one, so a search is
one matrix-vector product over exactly the live rows. Capacity doubles as the
scope grows, so adding is amortised O(dim).
"""

from __future__ import annotations

import numpy as np


class VectorIndex:
    """Unit vectors keyed by entry id; ``nearest`` returns the best cosine."""

    def __init__(self, dim: int, capacity: int = 16):
        self.dim = dim
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, entry_id: int, vector: np.ndarray) -> None:
        if entry_id in self._row_of:
            self._matrix[self._row_of[entry_id]] = vector
            return
        row = len(self._row_of)
        if row == len(self._matrix):
            self._grow()
        self._matrix[row] = vector
        self._ids[row] = entry_id
        self._row_of[entry_id] = row

    def remove(self, entry_id: int) -> None:
        row = self._row_of.pop(entry_id, None)
        if row is None:
            return
        last = len(self._row_of)
        if row != last:
            moved = int(self._ids[last])
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._row_of[moved] = row

    def nearest(self, vector: np.ndarray, k: int = 1) -> list[tuple[int, float]]:
        """The k best (entry id, cosine) pairs, best first."""
        size = len(self._row_of)
        if size == 0:
            return []
        scores = self._matrix[:size] @ vector
        if k == 1:
            best = int(np.argmax(scores))
            return [(int(self._ids[best]), float(scores[best]))]
        k = min(k, size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(int(self._ids[i]), float(scores[i])) for i in top]

    def _grow(self) -> None:
        capacity = len(self._matrix) * 2
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[: len(self._matrix)] = self._matrix
        ids = np.zeros(capacity, dtype=np.int64)
        ids[: len(self._ids)] = self._ids
        self._matrix, self._ids = matrix, ids
