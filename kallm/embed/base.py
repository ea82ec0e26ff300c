"""The Embedder protocol: what the cache needs from anything that turns text into vectors.

Cosine scores are not comparable across embedders, so each one names itself
(snapshots record the name and refuse to mix vectors) and states the threshold
that was measured for it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns a prompt into an L2-normalised float32 vector of length ``dim``."""

    name: str
    dim: int
    default_threshold: float

    async def embed(self, text: str) -> np.ndarray:
        """Embed one text; raise ``EmbeddingError`` when it cannot."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit length so a dot product is the cosine; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)
