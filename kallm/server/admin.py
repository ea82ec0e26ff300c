"""The admin API under /admin: virtual keys (/admin/keys...) and cache imports.

A sub-application with its own middleware: every route in it needs ``KALLM_ADMIN_KEY``
(``Authorization: Bearer ...``, compared in constant time); without one configured the
admin API is off. Key changes go through the server's ``KeyBackend`` (off the event
loop) and are visible to the request path as soon as the call returns.
"""

from __future__ import annotations

import hmac
import sqlite3
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from kallm.accounts.k8s import record_for_secret
from kallm.accounts.keyring import KeyBackend
from kallm.accounts.keys import EDITABLE
from kallm.errors import AdminDisabled, AuthenticationError, KallmError, RequestError
from kallm.server.cacheadmin import import_entries
from kallm.server.request import bearer_token, json_object
from kallm.server.runtime import runtime_of
from kallm.server.usage import admin_usage


class DatabaseBusy(KallmError):
    status = 503
    code = "database_unavailable"


@web.middleware
async def require_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The caller holds the admin key, or the request stops here."""
    admin_key = runtime_of(request).settings.admin_key
    if not admin_key:
        raise AdminDisabled("The admin API is off: start kallm with KALLM_ADMIN_KEY set.")
    supplied = bearer_token(request.headers).encode("utf-8", "replace")
    if not hmac.compare_digest(supplied, admin_key.encode()):
        raise AuthenticationError("Invalid admin key.")
    try:
        return await handler(request)
    except sqlite3.Error as exc:
        raise DatabaseBusy(f"the key database cannot be used right now ({exc}); retry") from None


def _keys(request: web.Request) -> KeyBackend:
    keys = runtime_of(request).backends.keys
    if keys is None:
        raise KallmError("kallm runs without a key store (db.path); keys need one")
    return keys


async def _policy(request: web.Request) -> dict[str, Any]:
    body = json_object(await request.read() or b"{}", "body")
    unknown = set(body) - EDITABLE
    if unknown:
        name = sorted(unknown)[0]
        raise RequestError(
            f"unknown field {name!r}; allowed: {', '.join(sorted(EDITABLE))}", param=name
        )
    return body


async def list_keys(request: web.Request) -> web.Response:
    return web.json_response({"keys": [r.public() for r in await _keys(request).list()]})


async def create_key(request: web.Request) -> web.Response:
    keys = _keys(request)
    policy = await _policy(request)
    name = policy.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise RequestError("'name' is required", param="name")
    record, secret = await keys.create(name.strip(), **policy)
    return web.json_response(
        {"key": secret, "record": record.public(), "k8s_record": record_for_secret(record)},
        status=201,
    )


async def show_key(request: web.Request) -> web.Response:
    return web.json_response((await _keys(request).get(request.match_info["ref"])).public())


async def update_key(request: web.Request) -> web.Response:
    keys = _keys(request)
    record = await keys.update(request.match_info["ref"], **await _policy(request))
    return web.json_response(record.public())


async def revoke_key(request: web.Request) -> web.Response:
    record = await _keys(request).revoke(request.match_info["ref"])
    return web.json_response(record.public())


async def rotate_key(request: web.Request) -> web.Response:
    record, secret = await _keys(request).rotate(request.match_info["ref"])
    return web.json_response(
        {"key": secret, "record": record.public(), "k8s_record": record_for_secret(record)}
    )


def admin_app() -> web.Application:
    app = web.Application(middlewares=[require_admin])
    app.router.add_get("/keys", list_keys)
    app.router.add_post("/keys", create_key)
    app.router.add_get("/keys/{ref}", show_key)
    app.router.add_patch("/keys/{ref}", update_key)
    app.router.add_delete("/keys/{ref}", revoke_key)
    app.router.add_post("/keys/{ref}/rotate", rotate_key)
    app.router.add_post("/cache/entries", import_entries)
    app.router.add_get("/usage", admin_usage)
    return app
