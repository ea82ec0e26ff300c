"""kallm must never be its own upstream: found at start-up, and caught per request.

``OPENAI_BASE_URL=http://127.0.0.1:8080/v1`` on the machine kallm serves from makes
every miss call kallm again, ten retries deep, into a pile of 502s. Start-up refuses
the obvious case (an upstream URL naming our own address and port); the rest (another
name for this host, a port-forward) is caught by a header: every call kallm makes
upstream carries ``X-Kallm-Via: <this server's id>``, and a request that arrives with
our own id is answered 508 at once.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from urllib.parse import urlparse

from kallm.providers.base import VIA_HEADER

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_ANY = frozenset({"0.0.0.0", "::", ""})


def new_instance_id() -> str:
    return secrets.token_hex(8)


def upstream_is_self(url: str, host: str, port: int) -> bool:
    """Whether ``url`` names the address kallm listens on (``host``:``port``)."""
    parsed = urlparse(url)
    try:
        target_port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return False
    if target_port != port:
        return False
    target = (parsed.hostname or "").lower()
    return target == host.lower() or (_is_local(target) and (host in _ANY or _is_local(host)))


def _is_local(name: str) -> bool:
    if name in _LOOPBACK_NAMES or name in _ANY:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def came_from(headers: Mapping[str, str], instance_id: str) -> bool:
    """Whether a request was sent by this very server (it is looping through its upstream)."""
    via = headers.get(VIA_HEADER)
    return via is not None and instance_id in via.split(",")
