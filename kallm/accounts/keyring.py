"""The server's view of its virtual keys: who a secret belongs to, and changes to keys.

``KeyBackend`` is the seam. The request path asks one synchronous question, ``find``,
answered from memory (a hash lookup, no I/O); the admin API's changes are async and
visible to ``find`` as soon as they return. ``DatabaseKeys`` keeps keys in the local
SQLite database, reloads them every ``REFRESH_SECONDS`` (so ``kallm keys`` run against
the same file is seen within seconds) and folds in a directory of mounted Secrets.
A Redis backend (``kallm.state.redis``) shares them between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kallm.accounts.keys import KeyRecord, KeyStore, hash_secret
from kallm.accounts.keysdir import KeysDirectory
from kallm.db import connect
from kallm.errors import KallmError

log = logging.getLogger("kallm.accounts")

REFRESH_SECONDS = 2.0
T = TypeVar("T")


class KeyBackend(Protocol):
    def find(self, secret: str) -> KeyRecord | None:
        """The key whose secret this is, from memory; None for an unknown secret."""
        ...

    async def list(self) -> list[KeyRecord]: ...

    async def get(self, ref: str) -> KeyRecord: ...

    async def create(self, name: str, **policy: Any) -> tuple[KeyRecord, str]: ...

    async def update(self, ref: str, **changes: Any) -> KeyRecord: ...

    async def revoke(self, ref: str) -> KeyRecord: ...

    async def rotate(self, ref: str) -> tuple[KeyRecord, str]: ...

    async def refresh(self) -> None:
        """Reload from where keys live (and the keys directory, if any)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class DatabaseKeys:
    """Keys in SQLite; every database call runs in a worker thread, one at a time."""

    def __init__(self, path: Path, keys_dir: Path | None = None):
        self.path = path
        self.keys_dir = KeysDirectory(keys_dir) if keys_dir else None
        self._store: KeyStore | None = None
        self._lock = threading.Lock()  # one sqlite3 connection, many threads
        self._by_hash: dict[str, KeyRecord] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._store = KeyStore(await asyncio.to_thread(connect, self.path))
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._store is not None:
            await asyncio.to_thread(self._store.conn.close)

    def find(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_secret(secret)) if secret else None

    async def list(self) -> list[KeyRecord]:
        return await self._call(lambda store: store.list())

    async def get(self, ref: str) -> KeyRecord:
        return await self._call(lambda store: store.get(ref))

    async def create(self, name: str, **policy: Any) -> tuple[KeyRecord, str]:
        return await self._change(lambda store: store.create(name, **policy))

    async def update(self, ref: str, **changes: Any) -> KeyRecord:
        return await self._change(lambda store: store.update(ref, **changes))

    async def revoke(self, ref: str) -> KeyRecord:
        return await self._change(lambda store: store.revoke(ref))

    async def rotate(self, ref: str) -> tuple[KeyRecord, str]:
        return await self._change(lambda store: store.rotate(ref))

    async def refresh(self) -> None:
        await self._call(self._reload)

    async def _change(self, action: Callable[[KeyStore], T]) -> T:
        """A change, then the reload that makes ``find`` see it before the caller returns."""
        return await self._call(lambda store: (action(store), self._reload(store))[0])

    async def _call(self, action: Callable[[KeyStore], T]) -> T:
        store = self._store
        if store is None:
            raise KallmError("the key database is not open")

        def locked() -> T:
            with self._lock:
                return action(store)

        return await asyncio.to_thread(locked)

    def _reload(self, store: KeyStore) -> None:
        """From mounted Secrets into the database, then the whole ring from the database."""
        if self.keys_dir is not None:
            for record in self.keys_dir.changed():
                try:
                    store.upsert_policy(record)
                except sqlite3.IntegrityError as exc:  # one bad file must not stop the rest
                    log.warning("key file for %r (%s) not loaded: %s", record.name, record.id, exc)
            for key_id in self.keys_dir.removed():
                with contextlib.suppress(KallmError):
                    store.revoke(key_id)
        self._by_hash = {r.hash: r for r in store.list()}

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except (sqlite3.Error, OSError, ValueError) as exc:
                log.warning("could not reload keys: %s", exc)
