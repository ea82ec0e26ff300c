"""The admin API: /admin/keys..., the same KeyStore the `kallm keys` commands use locally.

Guarded by ``KALLM_ADMIN_KEY`` (Authorization: Bearer ...); without one configured the
admin API is off. Changes take effect at once: the server's key ring is reloaded.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from kallm.accounts.k8s import record_for_secret
from kallm.accounts.keys import EDITABLE, KeyStore
from kallm.errors import AdminDisabled, AuthenticationError, KallmError, RequestError
from kallm.server.app import RUNTIME, Runtime
from kallm.server.request import bearer_token


def require_admin(request: web.Request) -> Runtime:
    """The caller holds the admin key (compared in constant time), or the request stops."""
    runtime = request.app[RUNTIME]
    admin_key = runtime.settings.admin_key
    if not admin_key:
        raise AdminDisabled("The admin API is off: start kallm with KALLM_ADMIN_KEY set.")
    if not hmac.compare_digest(bearer_token(request.headers).encode(), admin_key.encode()):
        raise AuthenticationError("Invalid admin key.")
    return runtime


def _store(request: web.Request) -> KeyStore:
    runtime = require_admin(request)
    if runtime.accounts.store is None:
        raise KallmError("kallm runs without a database (db.path); keys need one")
    return runtime.accounts.store


async def _policy(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise RequestError("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    unknown = set(body) - EDITABLE
    if unknown:
        name = sorted(unknown)[0]
        raise RequestError(
            f"unknown field {name!r}; allowed: {', '.join(sorted(EDITABLE))}", param=name
        )
    return body


def _changed(request: web.Request) -> None:
    request.app[RUNTIME].accounts.refresh()


async def list_keys(request: web.Request) -> web.Response:
    return web.json_response({"keys": [r.public() for r in _store(request).list()]})


async def create_key(request: web.Request) -> web.Response:
    store = _store(request)
    policy = await _policy(request)
    name = policy.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise RequestError("'name' is required", param="name")
    record, secret = store.create(name.strip(), **policy)
    _changed(request)
    return web.json_response(
        {"key": secret, "record": record.public(), "k8s_record": record_for_secret(record)},
        status=201,
    )


async def show_key(request: web.Request) -> web.Response:
    return web.json_response(_store(request).get(request.match_info["ref"]).public())


async def update_key(request: web.Request) -> web.Response:
    store = _store(request)
    record = store.update(request.match_info["ref"], **await _policy(request))
    _changed(request)
    return web.json_response(record.public())


async def revoke_key(request: web.Request) -> web.Response:
    record = _store(request).revoke(request.match_info["ref"])
    _changed(request)
    return web.json_response(record.public())


async def rotate_key(request: web.Request) -> web.Response:
    record, secret = _store(request).rotate(request.match_info["ref"])
    _changed(request)
    return web.json_response(
        {"key": secret, "record": record.public(), "k8s_record": record_for_secret(record)}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys/{ref}", show_key)
    app.router.add_patch("/admin/keys/{ref}", update_key)
    app.router.add_delete("/admin/keys/{ref}", revoke_key)
    app.router.add_post("/admin/keys/{ref}/rotate", rotate_key)
