"""Key records from a directory of mounted Kubernetes Secrets, picked up without a restart.

Each Secret made by ``kallm keys create --output k8s-secret`` holds one file,
``<key id>.json``: the key's hash and policy, never its secret. Kubernetes
swaps the files behind symlinks when a Secret changes, so files are compared
by content, not by mtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from kallm.accounts.keys import KeyRecord, record_from_file

log = logging.getLogger("kallm.accounts")


class KeysDirectory:
    def __init__(self, path: Path):
        self.path = path
        self._seen: dict[str, tuple[str, str]] = {}  # file name -> (content digest, key id)
        self._removed: list[str] = []

    def changed(self) -> list[KeyRecord]:
        """Records from files that are new or changed since the last call."""
        if not self.path.is_dir():
            return []
        records, present = [], set()
        for file in sorted(self.path.glob("*.json")):
            present.add(file.name)
            try:
                data = file.read_bytes()
            except OSError as exc:
                log.warning("cannot read key file %s: %s", file, exc)
                continue
            digest = hashlib.sha256(data).hexdigest()
            if self._seen.get(file.name, ("", ""))[0] == digest:
                continue
            try:
                record = record_from_file(json.loads(data, parse_constant=_refuse))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("key file %s is not a kallm key record: %s", file, exc)
                continue
            self._seen[file.name] = (digest, record.id)
            records.append(record)
        for name in set(self._seen) - present:
            self._removed.append(self._seen.pop(name)[1])
        return records

    def removed(self) -> list[str]:
        """Ids of keys whose files disappeared (their keys are revoked)."""
        gone, self._removed = self._removed, []
        return gone


def _refuse(name: str) -> None:
    raise ValueError(f"{name} is not a number a key may hold")
