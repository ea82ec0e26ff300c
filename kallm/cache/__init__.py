"""The semantic cache: scope (what may share an answer), index (numpy), store (backends),
snapshot (the file), persistence (when it is written), semantic (the facade the server calls)."""

from kallm.cache.scope import CacheKey, cache_key
from kallm.cache.semantic import Hit, Lookup, SemanticCache
from kallm.cache.store import CacheBackend, Entry, MemoryBackend

__all__ = [
    "CacheBackend",
    "CacheKey",
    "Entry",
    "Hit",
    "Lookup",
    "MemoryBackend",
    "SemanticCache",
    "cache_key",
]
