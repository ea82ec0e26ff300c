"""Embeddings from the upstream's ``/v1/embeddings`` (OpenAI, Ollama, vLLM...).

Slower and paid per call, but the strongest embedders live there. Failures
raise ``EmbeddingError`` so the cache serves the request uncached.
"""

from __future__ import annotations

import aiohttp
import numpy as np

from kallm.embed.base import l2_normalise
from kallm.errors import EmbeddingError


class RemoteEmbedder:
    """Calls an OpenAI-compatible embeddings endpoint, one text per call."""

    # Measured on paraphrase data for OpenAI's text-embedding-3 family; other
    # remote models should set cache.similarity_threshold from `kallm bench quality`.
    default_threshold = 0.92

    def __init__(
        self,
        model: str,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str | None,
        timeout: float = 10.0,
    ):
        self.model = model
        self.name = f"remote:{model}"
        self.dim = 0  # learnt from the first answer
        self._session = session
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def embed(self, text: str) -> np.ndarray:
        try:
            async with self._session.post(
                self._url,
                json={"model": self.model, "input": text, "encoding_format": "float"},
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if response.status != 200:
                    raise EmbeddingError(f"{self._url} answered HTTP {response.status}")
                body = await response.json()
            vector = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
        except EmbeddingError:
            raise
        except (
            aiohttp.ClientError,
            TimeoutError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as exc:
            raise EmbeddingError(f"{self._url}: {exc.__class__.__name__}: {exc}") from None
        if self.dim and vector.shape != (self.dim,):
            raise EmbeddingError(f"{self.model} returned dim {vector.shape}, expected {self.dim}")
        self.dim = vector.shape[0]
        return l2_normalise(vector)
