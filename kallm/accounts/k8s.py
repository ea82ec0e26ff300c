"""Virtual keys as Kubernetes Secrets: what a Secret holds and how its manifest reads.

A Secret carries one file, ``<key id>.json``: the key's hash and policy, never the
secret itself; ``kallm serve --keys-dir`` loads such files from a mounted directory.
The manifest is written by hand (no YAML library at run time), every scalar quoted.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from kallm.accounts.keys import KeyRecord
from kallm.errors import RequestError

BASE_LABELS = {"app.kubernetes.io/name": "kallm", "app.kubernetes.io/component": "virtual-key"}


def record_for_secret(record: KeyRecord) -> dict[str, Any]:
    """What a Kubernetes Secret holds for a key: its hash and policy, never the secret."""
    data = asdict(record)
    data["models"] = list(record.models) if record.models is not None else None
    for name in ("spend_usd", "saved_usd", "last_used"):
        data.pop(name)
    return data


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def yaml_str(text: str) -> str:
    """A YAML double-quoted scalar: JSON's escapes, and every character outside printable
    ASCII escaped too, so no YAML reader can take it for a line break or reject it."""
    quoted = json.dumps(text, ensure_ascii=False)
    return re.sub(
        r"[^\x20-\x7e]",
        lambda m: f"\\u{ord(m[0]):04x}" if ord(m[0]) <= 0xFFFF else f"\\U{ord(m[0]):08x}",
        quoted,
    )


def secret_name(record: KeyRecord) -> str:
    """``kallm-key-<name>`` as a DNS-1123 name. A name that had to be changed to fit gets the
    key id's start too, so two names that look alike (Team A, team-a) cannot overwrite
    each other's Secret (which would revoke one of the keys)."""
    clean = re.sub(r"[^a-z0-9]+", "-", record.name.lower()).strip("-")[:44].strip("-")
    if clean == record.name:
        return f"kallm-key-{clean}"
    return f"kallm-key-{clean or 'key'}-{record.id.removeprefix('key_')[:8]}"


def check_labels(labels: dict[str, str]) -> None:
    """Kubernetes' rules for label names and values; a RequestError naming the bad one."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.fullmatch(name) or (
            prefix and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix))
        ):
            raise RequestError(
                f"--label {key!r}: not a Kubernetes label name (letters, "
                "digits, -_. up to 63, optionally prefix/)"
            )
        if value and not _LABEL_NAME.fullmatch(value):
            raise RequestError(
                f"--label {key}={value!r}: not a Kubernetes label value "
                "(letters, digits, -_. up to 63)"
            )


def k8s_secret(record: KeyRecord, namespace: str, labels: dict[str, str]) -> str:
    """A Secret whose one file, ``<key id>.json``, is what ``--keys-dir`` loads."""
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {yaml_str(secret_name(record))}",
        f"  namespace: {yaml_str(namespace)}",
        "  labels:",
    ]
    lines += [f"    {yaml_str(k)}: {yaml_str(v)}" for k, v in {**labels, **BASE_LABELS}.items()]
    body = json.dumps(record_for_secret(record), sort_keys=True)
    lines += ["type: Opaque", "stringData:", f"  {yaml_str(record.id + '.json')}: {yaml_str(body)}"]
    return "\n".join(lines) + "\n"


def valid_namespace(name: str) -> bool:
    return bool(_DNS_LABEL.fullmatch(name))
