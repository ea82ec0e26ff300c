"""Virtual API keys: what a key may do, and the store that keeps them.

A key is shown once (``sk-kallm-`` + 32 random bytes); only its SHA-256 and a
short prefix are kept. ``KeyStore`` is the one implementation behind both the
``kallm keys`` commands on a local database and the server's admin API.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kallm.errors import KeyConflict, KeyNotFound, RequestError

SECRET_PREFIX = "sk-kallm-"
SHOWN_PREFIX = 16  # characters of the secret kept to recognise a key in lists


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    hash: str
    created: float
    period_start: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    budget_usd: float | None = None
    budget_period: float | None = None  # seconds; None: the budget never resets
    spend_usd: float = 0.0
    saved_usd: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] | None = None  # patterns; None: every model
    metadata: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # cache tenant; None: shares the cache with other keys

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def allows(self, model: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def public(self) -> dict[str, Any]:
        """Everything but the hash, for lists, the admin API and JSON output."""
        out = asdict(self)
        out.pop("hash")
        out["models"] = list(self.models) if self.models is not None else None
        out["status"] = self.status()
        return out


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret; header bytes that are not UTF-8 (kept by aiohttp as
    surrogates) hash too, and match no key."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


_COLUMNS = (
    "id",
    "name",
    "prefix",
    "hash",
    "created",
    "period_start",
    "expires",
    "revoked",
    "last_used",
    "budget_usd",
    "budget_period",
    "spend_usd",
    "saved_usd",
    "rpm",
    "tpm",
    "models",
    "metadata",
    "namespace",
)


def record_from_row(row: sqlite3.Row | dict[str, Any]) -> KeyRecord:
    data = dict(row)
    models = data.get("models")
    if isinstance(models, str):
        models = json.loads(models)
    metadata = data.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    values = {name: data.get(name) for name in _COLUMNS}
    values["models"] = tuple(models) if models is not None else None
    values["metadata"] = dict(metadata)
    values["spend_usd"] = values["spend_usd"] or 0.0
    values["saved_usd"] = values["saved_usd"] or 0.0
    return KeyRecord(**values)


def _row(record: KeyRecord) -> tuple[Any, ...]:
    values = asdict(record)
    values["models"] = json.dumps(list(record.models)) if record.models is not None else None
    values["metadata"] = json.dumps(record.metadata)
    return tuple(values[name] for name in _COLUMNS)


EDITABLE = frozenset(
    {
        "budget_usd",
        "budget_period",
        "rpm",
        "tpm",
        "models",
        "expires",
        "metadata",
        "namespace",
        "name",
    }
)


class KeyStore:
    """Keys in the local SQLite database (see kallm.db)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def create(self, name: str, **policy: Any) -> tuple[KeyRecord, str]:
        """A new key; returns the record and the secret, which is never stored."""
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
        self.put(record)
        return record, secret

    def put(self, record: KeyRecord) -> None:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        try:
            with self.conn:
                self.conn.execute(
                    f"INSERT INTO keys ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                    _row(record),
                )
        except sqlite3.IntegrityError:
            raise KeyConflict(f"a key named {record.name!r} already exists") from None

    def upsert_policy(self, record: KeyRecord) -> None:
        """Insert a key from a mounted Secret, or update its policy; spend stays as counted.

        What was done here outlives the Secret file: a revocation (the file still says "not
        revoked"), and a rotation (the file still carries the old, retired hash).
        """
        names = [
            c
            for c in _COLUMNS
            if c not in ("spend_usd", "saved_usd", "last_used", "period_start", "revoked")
            and c not in ("id", "hash", "prefix")
        ]
        values = dict(zip(_COLUMNS, _row(record), strict=True))
        updates = ", ".join(f"{c} = excluded.{c}" for c in names)
        updates += ", revoked = COALESCE(keys.revoked, excluded.revoked)"
        retired = "excluded.hash IN (SELECT hash FROM retired_hashes)"
        updates += f", hash = CASE WHEN {retired} THEN keys.hash ELSE excluded.hash END"
        updates += f", prefix = CASE WHEN {retired} THEN keys.prefix ELSE excluded.prefix END"
        with self.conn:
            self.conn.execute(
                f"INSERT INTO keys ({', '.join(_COLUMNS)}) VALUES "
                f"({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT(id) DO UPDATE SET {updates}",
                tuple(values[c] for c in _COLUMNS),
            )

    def list(self) -> list[KeyRecord]:
        rows = self.conn.execute("SELECT * FROM keys ORDER BY created").fetchall()
        return [record_from_row(r) for r in rows]

    def get(self, ref: str) -> KeyRecord:
        """By id, name or the shown prefix."""
        row = self.conn.execute(
            "SELECT * FROM keys WHERE id = ? OR name = ? OR prefix = ? LIMIT 2", (ref, ref, ref)
        ).fetchall()
        if len(row) != 1:
            raise KeyNotFound(f"no key {ref!r}" if not row else f"{ref!r} matches several keys")
        return record_from_row(row[0])

    def update(self, ref: str, **changes: Any) -> KeyRecord:
        changes = _checked(changes)
        record = replace(self.get(ref), **changes)
        self._save(record, changes)
        return record

    def revoke(self, ref: str) -> KeyRecord:
        record = self.get(ref)
        if record.revoked is None:
            record = replace(record, revoked=time.time())
            self._save(record, {"revoked"})
        return record

    def rotate(self, ref: str) -> tuple[KeyRecord, str]:
        """A new secret for the same key: id, name, policy and spend stay; the old hash is
        retired for good (a stale Secret file cannot bring it back)."""
        secret = new_secret()
        old = self.get(ref)
        record = replace(old, prefix=secret[:SHOWN_PREFIX], hash=hash_secret(secret))
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO retired_hashes (hash, key_id, retired) VALUES (?, ?, ?)",
                (old.hash, old.id, time.time()),
            )
        self._save(record, {"prefix", "hash"})
        return record, secret

    def _save(self, record: KeyRecord, columns: Any) -> None:
        """Write only ``columns``: spend is the server's to write, never a stale copy's."""
        names = [c for c in _COLUMNS if c in columns]
        if not names:
            return
        values = dict(zip(_COLUMNS, _row(record), strict=True))
        try:
            with self.conn:
                self.conn.execute(
                    f"UPDATE keys SET {', '.join(f'{c} = ?' for c in names)} WHERE id = ?",
                    (*[values[c] for c in names], record.id),
                )
        except sqlite3.IntegrityError:
            raise KeyConflict(f"a key named {record.name!r} already exists") from None


# Upper bounds: a key's numbers end up in SQLite (64-bit integers) and in arithmetic;
# anything past these is a typo or an attack, never a policy.
_MAXIMA = {
    "budget_usd": 1e9,
    "budget_period": 100 * 365 * 86400.0,
    "expires": 1e11,
    "rpm": 10**9,
    "tpm": 10**12,
}
_MAX_TEXT = 256


def _checked(policy: dict[str, Any]) -> dict[str, Any]:
    """Types and ranges of a key policy; a 400 naming the field otherwise. NaN, infinities
    and numbers too large to mean anything are refused everywhere (a NaN budget would be
    a key without one)."""
    unknown = set(policy) - EDITABLE
    if unknown:
        name = sorted(unknown)[0]
        raise RequestError(f"unknown key setting {name!r}", param=name)
    kinds: dict[str, tuple[type, ...]] = {
        "budget_usd": (int, float),
        "budget_period": (int, float),
        "expires": (int, float),
        "rpm": (int,),
        "tpm": (int,),
        "models": (list, tuple),
        "metadata": (dict,),
        "namespace": (str,),
        "name": (str,),
    }
    for name, value in policy.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds[name]):
            raise RequestError(f"{name} has the wrong type ({type(value).__name__})", param=name)
        if name in _MAXIMA and not (0 <= value <= _MAXIMA[name]):  # False for NaN too
            raise RequestError(
                f"{name} must be a finite number from 0 to {_MAXIMA[name]:,.0f}", param=name
            )
        if isinstance(value, str):
            _check_text(value, name)
    if policy.get("models") is not None:
        if not all(isinstance(m, str) and m for m in policy["models"]):
            raise RequestError("models must be a list of model name patterns", param="models")
        for pattern in policy["models"]:
            _check_text(pattern, "models")
        policy["models"] = tuple(policy["models"])
    if policy.get("metadata") is not None:
        for key, value in policy["metadata"].items():
            if not isinstance(value, str):
                raise RequestError("metadata values must be strings", param="metadata")
            _check_text(key, "metadata")
            _check_text(value, "metadata")
    return policy


def _check_text(value: str, name: str) -> None:
    """Printable UTF-8 of bounded length: names end up in tables, logs and Secrets."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{name} is not valid UTF-8 text", param=name) from None
    if len(value) > _MAX_TEXT or not value.isprintable():
        raise RequestError(
            f"{name} must be printable text of at most {_MAX_TEXT} characters", param=name
        )


def record_from_file(data: Any) -> KeyRecord:
    """A key record from a mounted Secret's JSON, checked like the admin API checks a policy.

    Raises ``ValueError`` naming what is wrong: the file is skipped, the rest load.
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for name in ("id", "name", "prefix", "hash"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise ValueError(f"{name!r} must be a non-empty string")
    for name in ("created", "period_start"):
        value = data.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e11:
            raise ValueError(f"{name!r} must be a time in seconds")
    policy = {k: data.get(k) for k in EDITABLE if k != "name" and data.get(k) is not None}
    try:
        _checked(dict(policy))
    except RequestError as exc:
        raise ValueError(exc.message) from None
    return record_from_row(data)
