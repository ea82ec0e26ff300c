"""The vector index: exact below BINARY_FROM rows, sign-bit prefilter above, same answers."""

from __future__ import annotations

import numpy as np

from kallm.cache import index as index_module
from kallm.cache.index import VectorIndex


def unit(rng: np.random.Generator, n: int, dim: int = 256) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_add_remove_keeps_rows_packed() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50)
    index = VectorIndex(256)
    for i, v in enumerate(vectors):
        index.add(i, v)
    for i in range(0, 50, 2):
        index.remove(i)
    assert len(index) == 25
    for i in range(1, 50, 2):
        assert index.nearest(vectors[i])[0] == (i, index.nearest(vectors[i])[0][1])
        assert abs(index.nearest(vectors[i])[0][1] - 1.0) < 1e-5


def test_min_score_and_k() -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 20)
    index = VectorIndex(256)
    for i, v in enumerate(vectors):
        index.add(i, v)
    assert index.nearest(vectors[3], k=4, min_score=0.99) == [(3, index.nearest(vectors[3])[0][1])]
    top = index.nearest(vectors[3], k=4)
    assert len(top) == 4 and [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_binary_prefilter_finds_near_neighbours(monkeypatch) -> None:
    monkeypatch.setattr(index_module, "BINARY_FROM", 256)
    rng = np.random.default_rng(3)
    vectors = unit(rng, 2000)
    index = VectorIndex(256)
    for i, v in enumerate(vectors):
        index.add(i, v)
    for i in range(0, 2000, 97):
        noisy = vectors[i] + 0.15 * unit(rng, 1)[0]  # cosine about 0.99 to its source
        noisy /= np.linalg.norm(noisy)
        assert index.nearest(noisy)[0][0] == i
