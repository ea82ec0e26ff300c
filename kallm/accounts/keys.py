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
    return hashlib.sha256(secret.encode()).hexdigest()


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
        """Insert a key from a mounted Secret, or update its policy; spend stays as counted."""
        names = [
            c
            for c in _COLUMNS
            if c not in ("spend_usd", "saved_usd", "last_used", "period_start", "revoked")
        ]
        values = dict(zip(_COLUMNS, _row(record), strict=True))
        updates = ", ".join(f"{c} = excluded.{c}" for c in names if c != "id")
        # a revocation made here outlives the Secret file, which still says "not revoked"
        updates += ", revoked = COALESCE(keys.revoked, excluded.revoked)"
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
        """A new secret for the same key: id, name, policy and spend stay."""
        secret = new_secret()
        record = replace(self.get(ref), prefix=secret[:SHOWN_PREFIX], hash=hash_secret(secret))
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


def _checked(policy: dict[str, Any]) -> dict[str, Any]:
    """Types and ranges of a key policy; a 400 naming the field otherwise."""
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
        if name in ("budget_usd", "budget_period", "rpm", "tpm") and value < 0:
            raise RequestError(f"{name} must be zero or more", param=name)
    if policy.get("models") is not None:
        if not all(isinstance(m, str) and m for m in policy["models"]):
            raise RequestError("models must be a list of model name patterns", param="models")
        policy["models"] = tuple(policy["models"])
    return policy
