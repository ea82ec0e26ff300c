"""Embedders: text to unit vectors. ``create_embedder`` picks one by name.

local   static table distilled from all-MiniLM-L6-v2 + WordPiece (default; offline)
hash    hashed word/char n-grams (no data file; the fallback)
other   an upstream embedding model by name, through /v1/embeddings
"""

from __future__ import annotations

import logging

import aiohttp

from kallm.embed.base import Embedder, l2_normalise

log = logging.getLogger("kallm.embed")

__all__ = [
    "Embedder",
    "create_embedder",
    "default_threshold_of",
    "l2_normalise",
    "local_embedder",
]


def local_embedder(name: str) -> Embedder | None:
    """The built-in embedder called ``name``, falling back to ``hash`` if the table is missing."""
    from kallm.embed.hashing import HashEmbedder

    if name == "hash":
        return HashEmbedder()
    if name == "local":
        try:
            from kallm.embed.static import StaticEmbedder

            return StaticEmbedder()
        except FileNotFoundError as exc:
            log.warning("local embedding table missing (%s); using the hash embedder", exc)
            return HashEmbedder()
    return None


def default_threshold_of(name: str) -> float:
    """The measured default threshold of the embedder ``name`` (without loading its table)."""
    if name == "local":
        from kallm.embed.static import StaticEmbedder

        return StaticEmbedder.default_threshold
    if name == "hash":
        from kallm.embed.hashing import HashEmbedder

        return HashEmbedder.default_threshold
    from kallm.embed.remote import RemoteEmbedder

    return RemoteEmbedder.default_threshold


def create_embedder(
    name: str, session: aiohttp.ClientSession, base_url: str, api_key: str | None
) -> Embedder:
    from kallm.embed.remote import RemoteEmbedder

    return local_embedder(name) or RemoteEmbedder(name, session, base_url, api_key)
