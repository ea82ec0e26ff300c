"""What a running server holds, under one ``web.AppKey``: the leaf every route imports.

Nothing here starts or stops anything (``kallm.server.app`` does, one cleanup context per
component); this module only names the parts, so handlers, middleware and metrics can
reach them without importing the app factory back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from kallm.accounts.pricing import PriceTable
from kallm.config import Settings
from kallm.providers.router import Router
from kallm.state import Backends

if TYPE_CHECKING:
    from kallm.cache.persistence import SnapshotKeeper
    from kallm.cache.semantic import SemanticCache
    from kallm.db import DatabaseWriter
    from kallm.metrics import Metrics
    from kallm.server.catalogue import Catalogue
    from kallm.server.health import Health


@dataclass(eq=False)
class Runtime:
    settings: Settings
    backends: Backends
    router: Router
    prices: PriceTable
    instance_id: str
    health: Health
    metrics: Metrics | None = None
    catalogue: Catalogue | None = None
    cache: SemanticCache | None = None  # set once the embedder is ready
    keeper: SnapshotKeeper | None = None
    request_log: DatabaseWriter | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def virtual_keys(self) -> bool:
        return self.settings.auth == "virtual-keys"

    @property
    def semantic_cache(self) -> SemanticCache:
        assert self.cache is not None, "the cache is set at start-up, before requests"
        return self.cache


RUNTIME = web.AppKey("kallm.runtime", Runtime)


def runtime_of(request: web.Request) -> Runtime:
    """The server's runtime, from any app or sub-app (``/admin``) a request was routed to."""
    app = request.app
    if RUNTIME in app:  # the main app: no chained lookup (config_dict builds one per call)
        return app[RUNTIME]
    return request.config_dict[RUNTIME]
