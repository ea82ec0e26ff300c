"""Whether each part of the server works, shown in ``/health``, ``/metrics`` and the log.

A part that cannot do its job (shared state unreachable, the database refusing
writes) marks itself degraded with a reason and clears the mark when it recovers;
each change is logged once, so an outage is two log lines, not a million.
"""

from __future__ import annotations

import logging

log = logging.getLogger("kallm.server")


class Health:
    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}

    def degrade(self, part: str, reason: str) -> None:
        if self._reasons.get(part) != reason:
            log.warning("%s degraded: %s", part, reason)
        self._reasons[part] = reason

    def recover(self, part: str) -> None:
        if self._reasons.pop(part, None) is not None:
            log.warning("%s recovered", part)

    @property
    def degraded(self) -> dict[str, str]:
        return dict(self._reasons)

    @property
    def status(self) -> str:
        return "degraded" if self._reasons else "ok"
