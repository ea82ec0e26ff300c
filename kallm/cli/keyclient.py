"""One interface to virtual keys, whether they live in a local database or a running server.

``kallm keys`` works on the SQLite file directly (``LocalKeys``) or through a
server's admin API (``RemoteKeys``, for a server on another machine or in a
cluster). Both answer with ``KeyRecord``s, so the commands format, print and
export the same way whichever path was taken. Failures are ``KallmError``s with
a one-line message; the commands print that message and nothing else.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kallm.errors import KallmError, RequestError

if TYPE_CHECKING:  # imported where used: see kallm/cli/__init__.py
    from kallm.accounts.keys import KeyRecord
    from kallm.config import Settings

HTTP_TIMEOUT = 10.0


class RemoteError(KallmError):
    """The server answered with an error, or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class KeyClient(Protocol):
    """What ``kallm keys`` needs; ``create`` and ``rotate`` return the secret once."""

    def create(self, name: str, policy: Mapping[str, Any]) -> tuple[KeyRecord, str]: ...
    def list(self) -> list[KeyRecord]: ...
    def get(self, ref: str) -> KeyRecord: ...
    def update(self, ref: str, changes: Mapping[str, Any]) -> KeyRecord: ...
    def revoke(self, ref: str) -> KeyRecord: ...
    def rotate(self, ref: str) -> tuple[KeyRecord, str]: ...
    def close(self) -> None: ...


class LocalKeys:
    """Keys in a SQLite file. A server on the same file sees changes within seconds:
    it reloads keys from the database periodically."""

    def __init__(self, path: Path):
        from kallm.accounts.keys import KeyStore
        from kallm.db import connect

        self.path = path
        self.store = KeyStore(connect(path))

    def create(self, name: str, policy: Mapping[str, Any]) -> tuple[KeyRecord, str]:
        return self.store.create(name, **policy)

    def list(self) -> list[KeyRecord]:
        return self.store.list()

    def get(self, ref: str) -> KeyRecord:
        return self.store.get(ref)

    def update(self, ref: str, changes: Mapping[str, Any]) -> KeyRecord:
        return self.store.update(ref, **changes)

    def revoke(self, ref: str) -> KeyRecord:
        return self.store.revoke(ref)

    def rotate(self, ref: str) -> tuple[KeyRecord, str]:
        return self.store.rotate(ref)

    def close(self) -> None:
        self.store.conn.close()


class RemoteKeys:
    """Keys through a running server's admin API (``/admin/keys``).

    The API never sends a key's hash except right after create and rotate (for the
    Kubernetes Secret), so records from ``list``/``get`` carry an empty ``hash``.
    """

    def __init__(self, url: str, admin_key: str):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {admin_key}"}

    def create(self, name: str, policy: Mapping[str, Any]) -> tuple[KeyRecord, str]:
        return _with_secret(self._call("POST", "", {"name": name, **policy}))

    def list(self) -> list[KeyRecord]:
        return [_record(item) for item in self._call("GET", "")["keys"]]

    def get(self, ref: str) -> KeyRecord:
        return _record(self._call("GET", _ref(ref)))

    def update(self, ref: str, changes: Mapping[str, Any]) -> KeyRecord:
        return _record(self._call("PATCH", _ref(ref), dict(changes)))

    def revoke(self, ref: str) -> KeyRecord:
        return _record(self._call("DELETE", _ref(ref)))

    def rotate(self, ref: str) -> tuple[KeyRecord, str]:
        return _with_secret(self._call("POST", _ref(ref) + "/rotate"))

    def close(self) -> None:
        """Nothing to release: every call is its own HTTP request."""

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return http_json(method, f"{self.url}/admin/keys{path}", body, self.headers)


def _ref(ref: str) -> str:
    return "/" + urllib.parse.quote(ref, safe="")


def _record(public: Mapping[str, Any]) -> KeyRecord:
    from kallm.accounts.keys import record_from_row

    return record_from_row({"hash": "", **public})


def _with_secret(answer: Mapping[str, Any]) -> tuple[KeyRecord, str]:
    """The full record: the public view plus the hash from the Secret view."""
    from kallm.accounts.keys import record_from_row

    return record_from_row({**answer["record"], **answer.get("k8s_record", {})}), answer["key"]


def http_json(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
) -> Any:
    """One JSON request with the standard library; any failure is a one-line ``RemoteError``."""
    import urllib.error
    import urllib.request  # here, not at the top: `kallm --help` should not load http and ssl

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise RemoteError(_error_message(exc), exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RemoteError(f"cannot reach kallm at {url}: {reason}") from None
    except ValueError:
        raise RemoteError(f"{url} did not answer with JSON; is it a kallm server?") from None


def _error_message(exc: Any) -> str:
    """The message of OpenAI's error envelope, or the HTTP status if there is none."""
    try:
        message = json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        message = None
    if exc.code == 404 and message is None:
        return f"{exc.url} not found; is it a kallm server?"
    return f"{message or exc.reason} (HTTP {exc.code})"


def env_or(value: str | None, name: str) -> str | None:
    """A flag's value, else the environment variable's (empty counts as unset)."""
    return value or os.environ.get(name) or None


def open_keys(settings: Settings, url: str | None) -> KeyClient:
    """The client the settings and flags ask for: ``--url`` (a server's admin API, with the
    admin key from the settings) or the database the settings name (``db.path``), the same
    file ``kallm serve`` with these settings uses.

    Raises ``RequestError`` when the chosen path cannot work.
    """
    url = env_or(url, "KALLM_URL")
    if url:
        if not settings.admin_key:
            raise RequestError(
                "--url needs the server's admin key: --admin-key, KALLM_ADMIN_KEY or "
                "auth.admin_key in kallm.toml"
            )
        return RemoteKeys(url, settings.admin_key)
    if settings.db_path is None:
        raise RequestError("db.path is off, so there is no key database: pass --db PATH or --url")
    return LocalKeys(settings.db_path)
