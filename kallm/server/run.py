"""Run the server until SIGINT/SIGTERM: in-flight requests finish, then the cache is saved."""

from __future__ import annotations

import logging

from aiohttp import web

from kallm.config import Settings
from kallm.server.app import create_app

log = logging.getLogger("kallm.server")

GRACE_SECONDS = 30.0  # how long in-flight requests may finish after a stop signal


def serve(settings: Settings) -> None:
    """Block serving ``settings.host:port``; raises OSError if the address is taken."""
    app = create_app(settings)

    async def announce(_: web.Application) -> None:
        log.info(
            "kallm listening on http://%s:%d/v1 (upstream %s)",
            settings.host,
            settings.port,
            settings.upstream_base_url,
        )

    app.on_startup.append(announce)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=GRACE_SECONDS,
        handle_signals=True,
    )
