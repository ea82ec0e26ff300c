"""Virtual keys shared by every replica: records in Redis, a map in each replica's memory.

Layout (one hash tag, ``{kallm:keys}``): ``records`` (hash: key id -> JSON record),
``names`` (hash: name -> id, names stay unique), ``retired`` (set: hashes rotated out,
never to come back) and ``version`` (a counter bumped by every change, which is also
published on ``<prefix>:keys:changed``). Every change is one compare-and-set script
(``keys_put.lua``) on the record as it was read, so two admins changing one key through
two replicas cannot lose either change silently (the second retries on the new record).

The request path asks ``find``, answered from this replica's map. The map is reloaded on
each change notification (pub/sub: milliseconds) and whenever the version moves (polled
every ``POLL_SECONDS``, in case a notification was missed): a key revoked through one
replica is refused by all of them within well under a second. The replica that made a
change reloads before answering, so its caller sees the change at once.

Keys from a mounted Secrets directory are loaded into Redis by every replica that sees
the files (the same record twice is no change); what Redis already decided outlives the
file: a revocation, and the hash after a rotation. Spend shown by ``list``/``get`` is the
fleet's, from the Redis ledger.

Redis unreachable: ``find`` keeps answering from the map as last loaded; changes fail with
503 until Redis answers, then the map is reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from kallm.accounts.keys import (
    SHOWN_PREFIX,
    KeyRecord,
    _checked,
    hash_secret,
    new_secret,
    record_from_row,
)
from kallm.accounts.keysdir import KeysDirectory
from kallm.errors import KallmError, KeyConflict, KeyNotFound
from kallm.state.redis.client import (
    UNREACHABLE,
    Part,
    RedisState,
    Script,
    StateUnavailable,
    stop_tasks,
)
from kallm.state.redis.ledger import RedisLedger

log = logging.getLogger("kallm.state")

POLL_SECONDS = 0.5
DIRECTORY_SECONDS = 2.0
ATTEMPTS = 8  # compare-and-set retries before giving up on a key changed that often
_PUT = Script("keys_put")


class _Changed(Exception):
    """The record changed between reading it and writing it: read again."""


def encode(record: KeyRecord) -> bytes:
    values = asdict(record)
    values["models"] = list(record.models) if record.models is not None else None
    return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> KeyRecord:
    return record_from_row(json.loads(raw))


class RedisKeys:
    """``KeyBackend`` over Redis."""

    def __init__(self, state: RedisState, ledger: RedisLedger, keys_dir: Path | None = None):
        self.state = state
        self.ledger = ledger
        self.keys_dir_path = keys_dir
        self.keys_dir = KeysDirectory(keys_dir) if keys_dir else None
        self._by_hash: dict[str, KeyRecord] = {}
        self._version: int | None = None
        self._revocations: set[str] = set()  # files removed while Redis was away
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._listener = state.blocking_client(1.0)
        self._channel = f"{state.prefix}:keys:changed"
        tag = state.key
        self._records = tag("keys", "records")
        self._names = tag("keys", "names")
        self._retired = tag("keys", "retired")
        self._version_key = tag("keys", "version")
        state.register(
            Part(
                "keys",
                "keys are served as this replica last loaded them, and changing keys fails "
                "(503) until it answers",
                self.refresh,
            )
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(StateUnavailable):
            await self.refresh()
        self._tasks = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._poll()),
        ]

    async def close(self) -> None:
        self._closing = True  # redis-py may turn a cancellation into a ConnectionError
        await stop_tasks(self._tasks)

    # -- KeyBackend -----------------------------------------------------------------------

    def find(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_secret(secret)) if secret else None

    async def list(self) -> list[KeyRecord]:
        records = sorted((r for _, r in (await self._read_all()).values()), key=lambda r: r.created)
        return await self._with_spend(records)

    async def get(self, ref: str) -> KeyRecord:
        _, record = self._match(await self._read_all(), ref)
        return (await self._with_spend([record]))[0]

    async def create(self, name: str, **policy: Any) -> tuple[KeyRecord, str]:
        secret = new_secret()
        now = time.time()
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            prefix=secret[:SHOWN_PREFIX],
            hash=hash_secret(secret),
            created=now,
            period_start=now,
            **_checked(policy),
        )
        await self._put(record, b"", "")
        await self._reload()
        return record, secret

    async def update(self, ref: str, **changes: Any) -> KeyRecord:
        changes = _checked(changes)
        return await self._change(ref, lambda record: (replace(record, **changes), ""))

    async def revoke(self, ref: str) -> KeyRecord:
        def revoked(record: KeyRecord) -> tuple[KeyRecord, str]:
            if record.revoked is not None:
                return record, ""
            return replace(record, revoked=time.time()), ""

        return await self._change(ref, revoked)

    async def rotate(self, ref: str) -> tuple[KeyRecord, str]:
        """A new secret for the same key; the old hash is retired for good."""
        secret = new_secret()

        def rotated(record: KeyRecord) -> tuple[KeyRecord, str]:
            new = replace(record, prefix=secret[:SHOWN_PREFIX], hash=hash_secret(secret))
            return new, record.hash

        return await self._change(ref, rotated), secret

    async def refresh(self) -> None:
        """Mounted Secrets into Redis (if any), then this replica's map from Redis."""
        if self.keys_dir is not None:
            await self._load_directory()
        await self._reload()

    # -- reading and writing --------------------------------------------------------------

    async def _read_all(self) -> dict[str, tuple[bytes, KeyRecord]]:
        raw = await self.state.call(self.state.client.hgetall(self._records))
        return {key_id.decode(): (value, decode(value)) for key_id, value in raw.items()}

    def _match(
        self, records: dict[str, tuple[bytes, KeyRecord]], ref: str
    ) -> tuple[bytes, KeyRecord]:
        """By id, name or the shown prefix, as ``KeyStore.get``."""
        found = [(raw, r) for raw, r in records.values() if ref in (r.id, r.name, r.prefix)]
        if len(found) != 1:
            raise KeyNotFound(f"no key {ref!r}" if not found else f"{ref!r} matches several keys")
        return found[0]

    async def _change(self, ref: str, change: Any) -> Any:
        """Read, change, compare-and-set; again if someone else changed the key meanwhile."""
        for _ in range(ATTEMPTS):
            raw, record = self._match(await self._read_all(), ref)
            new, retire = change(record)
            if new == record:
                return (await self._with_spend([record]))[0]
            try:
                await self._put(new, raw, record.name, retire)
            except _Changed:
                continue
            await self._reload()
            return (await self._with_spend([new]))[0]
        raise KallmError(f"key {ref!r} kept changing under this update; retry")

    async def _put(
        self, record: KeyRecord, expected: bytes, old_name: str, retire: str = ""
    ) -> None:
        keys = [self._records, self._names, self._retired, self._version_key]
        args = [self._channel, record.id, expected, encode(record), record.name, old_name, retire]
        result = int(await self.state.call(_PUT(self.state.client, keys, args)))
        if result == -1:
            raise _Changed
        if result == -2:
            raise KeyConflict(f"a key named {record.name!r} already exists")

    async def _with_spend(self, records: list[KeyRecord]) -> list[KeyRecord]:
        """The records with the fleet's spend, saved and last use from the ledger."""
        if not records:
            return records
        accounts = await self.ledger.accounts(records)
        return [
            replace(r, spend_usd=spend, saved_usd=saved, last_used=last)
            for r in records
            for spend, saved, last in [accounts[r.id]]
        ]

    async def _reload(self) -> None:
        """This replica's map: every record, as of one version. A version lower than the
        one loaded last means Redis lost its data (restarted without persistence): the
        records this replica holds and Redis lacks are written back first, so no caller
        is refused while the replicas put the keys back."""
        version, raw = await self._read_version()
        if self._version is not None and version < self._version and self._by_hash:
            missing = [r for r in self._by_hash.values() if r.id.encode() not in raw]
            if missing:
                await self._restore(missing)
                version, raw = await self._read_version()
        self._by_hash = {record.hash: record for record in map(decode, raw.values())}
        self._version = version

    async def _read_version(self) -> tuple[int, dict[bytes, bytes]]:
        async with self.state.client.pipeline(transaction=True) as pipe:
            pipe.get(self._version_key)
            pipe.hgetall(self._records)
            version, raw = await self.state.call(pipe.execute())
        return int(version or 0), raw

    async def _restore(self, records: list[KeyRecord]) -> None:
        """Write records back, each seeded with the fleet spend last seen here (a budget
        resumes about where it was). Rotated-out hashes are not among them."""
        restored = 0
        for record in records:
            seed = max(record.spend_usd, self.ledger.seen.get(record.id, 0.0))
            with contextlib.suppress(_Changed, KeyConflict):
                await self._put(replace(record, spend_usd=seed), b"", "")
                restored += 1
        log.warning(
            "keys: Redis came back without %d of kallm's keys (restarted without "
            "persistence?); %d written back from this replica",
            len(records),
            restored,
        )

    async def _load_directory(self) -> None:
        """Changed Secret files into Redis; removed ones revoke their keys."""
        assert self.keys_dir is not None
        try:
            for record in self.keys_dir.changed():
                await self._upsert(record)
            self._revocations.update(self.keys_dir.removed())
            for key_id in sorted(self._revocations):
                with contextlib.suppress(KeyNotFound):
                    await self.revoke(key_id)
                self._revocations.discard(key_id)
        except StateUnavailable:
            # read every file again next time: loading the same record twice changes nothing
            self._revocations.update(self.keys_dir.removed())
            assert self.keys_dir_path is not None
            self.keys_dir = KeysDirectory(self.keys_dir_path)
            raise

    async def _upsert(self, record: KeyRecord) -> None:
        """A Secret's record: its policy wins; Redis's revocation, spend and a hash rotated
        away from the file's stay."""
        for _ in range(ATTEMPTS):
            client = self.state.client
            async with client.pipeline(transaction=False) as pipe:
                pipe.hget(self._records, record.id)
                pipe.sismember(self._retired, record.hash)
                raw, retired = await self.state.call(pipe.execute())
            merged, old_name = record, ""
            if raw is not None:
                existing = decode(raw)
                old_name = existing.name
                merged = replace(
                    record,
                    revoked=existing.revoked if existing.revoked is not None else record.revoked,
                    period_start=existing.period_start,
                    spend_usd=existing.spend_usd,
                    saved_usd=existing.saved_usd,
                    last_used=existing.last_used,
                )
                if retired:
                    merged = replace(merged, hash=existing.hash, prefix=existing.prefix)
                if encode(merged) == raw:
                    return  # another replica (or an earlier start) loaded it already
            try:
                await self._put(merged, raw or b"", old_name)
                return
            except _Changed:
                continue
            except KeyConflict as exc:
                log.warning("key file for %r (%s) not loaded: %s", record.name, record.id, exc)
                return

    # -- following changes ----------------------------------------------------------------

    async def _listen(self) -> None:
        """Reload on every change notification."""
        while not self._closing:
            if not self.state.up:
                await self.state.until_up()
                continue
            pubsub = self._listener.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._reload()  # anything published before the subscription
                while not self._closing:  # (get_message can swallow a cancellation)
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and int(message["data"]) != self._version:
                        await self._reload()
            except UNREACHABLE as exc:
                if not self._closing:
                    self.state.lost(exc)
            except StateUnavailable:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)

    async def _poll(self) -> None:
        """The version, every half second, in case a notification was missed; the Secrets
        directory every two."""
        rounds = 0
        every = max(1, round(DIRECTORY_SECONDS / POLL_SECONDS))
        while True:
            await asyncio.sleep(POLL_SECONDS)
            rounds += 1
            if not self.state.up:
                continue
            try:
                if self.keys_dir is not None and rounds % every == 0:
                    await self._load_directory()
                version = await self.state.call(self.state.client.get(self._version_key))
                if int(version or 0) != self._version:
                    await self._reload()
            except StateUnavailable:
                pass
            except (ValueError, OSError) as exc:
                log.warning("could not reload keys: %s", exc)
