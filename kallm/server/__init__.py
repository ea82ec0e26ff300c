"""The aiohttp server: app factory and lifecycle, middleware, one module per route group."""

from kallm.server.app import RUNTIME, Runtime, create_app

__all__ = ["RUNTIME", "Runtime", "create_app"]
