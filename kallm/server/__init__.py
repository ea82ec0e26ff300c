"""The aiohttp server: app factory and lifecycle, middleware, one module per route group.

``create_app``, ``Runtime`` and ``RUNTIME`` are loaded on first use, so importing a leaf
module (``kallm.server.routes``, ``kallm.server.request``) does not build the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kallm.server.app import create_app
    from kallm.server.runtime import RUNTIME, Runtime

__all__ = ["RUNTIME", "Runtime", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from kallm.server.app import create_app

        return create_app
    if name in ("RUNTIME", "Runtime"):
        from kallm.server import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
