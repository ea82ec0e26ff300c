"""GET /v1/models: the models clients can really use, as model pickers expect to see them.

With ``[[providers]]`` configured, each provider is asked what it offers (OpenAI-compatible
``/models``, Gemini's ``/v1beta/models``, Anthropic's ``/v1/models``), kept for
``CATALOGUE_SECONDS``, filtered by the provider's own ``models`` patterns; a provider that
cannot be asked contributes its configured concrete names. Aliases are listed too. Under
virtual keys only what the key may use is shown. With no providers configured, the one
upstream's list is relayed as it is (filtered by the key when there is one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from kallm.accounts.keys import KeyRecord
from kallm.errors import KallmError, ModelNotFound
from kallm.providers.base import Provider
from kallm.providers.native import provider_key
from kallm.providers.router import Router
from kallm.server.admission import admission, allowed
from kallm.server.passthrough import relay
from kallm.server.runtime import runtime_of

log = logging.getLogger("kallm.server")

CATALOGUE_SECONDS = 300.0
ASK_SECONDS = 5.0
_PATTERN_CHARS = frozenset("*?[")


class Catalogue:
    """Each provider's model ids, asked at most once per ``CATALOGUE_SECONDS``."""

    def __init__(self, router: Router):
        self.router = router
        self._cached: dict[str, tuple[float, list[str]]] = {}
        self._lock = asyncio.Lock()

    async def models(self) -> list[tuple[str, str]]:
        """(model id, owner) pairs: each id once, the first provider serving it owning it,
        then the aliases."""
        seen: dict[str, str] = {}
        for provider in self.router.providers:
            for model in await self._offered(provider):
                if provider.serves(model):
                    seen.setdefault(model, provider.name)
        for alias in self.router.aliases:
            seen.setdefault(alias, "kallm")
        return list(seen.items())

    async def _offered(self, provider: Provider) -> list[str]:
        async with self._lock:
            stamp, models = self._cached.get(provider.name, (0.0, []))
            if time.monotonic() - stamp < CATALOGUE_SECONDS:
                return models
            models = await self._ask(provider) or _configured(provider)
            self._cached[provider.name] = (time.monotonic(), models)
            return models

    async def _ask(self, provider: Provider) -> list[str]:
        path, headers = _listing(provider)
        try:
            async with asyncio.timeout(ASK_SECONDS):
                response = await provider.send("GET", provider.url(path), headers, None)
                async with response:
                    body = await response.read() if response.status == 200 else b""
        except Exception as exc:  # an upstream that cannot list falls back to the configuration
            log.info("provider %s did not list its models (%s)", provider.name, exc)
            return []
        return _ids(body)


def _listing(provider: Provider) -> tuple[str, dict[str, str]]:
    """Where a provider lists its models, and with which credential."""
    try:
        key = provider_key(provider)
    except Exception:
        key = ""
    if provider.kind == "gemini":
        return "/v1beta/models?pageSize=1000", {"x-goog-api-key": key}
    if provider.kind == "anthropic":
        return "/v1/models?limit=1000", {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return "/models", {"Authorization": f"Bearer {key}"} if key else {}


def _ids(body: bytes) -> list[str]:
    """Model ids from an OpenAI, Anthropic (``data[].id``) or Gemini (``models[].name``) list."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(document, dict):
        return []
    items = document.get("data") or document.get("models") or []
    ids = []
    for item in items if isinstance(items, list) else []:
        name = item.get("id") or item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            ids.append(name.removeprefix("models/"))
    return ids


def _configured(provider: Provider) -> list[str]:
    return [m for m in provider.config.models if not _PATTERN_CHARS & set(m)]


def _usable(key: KeyRecord | None, model: str, router: Router) -> bool:
    """Whether the key may use ``model``: the same rule admission applies."""
    if key is None or key.models is None:
        return True
    try:
        routes = router.resolve(model)
    except KallmError:
        return False
    return allowed(router, key, model, routes)


async def models(request: web.Request) -> web.StreamResponse:
    runtime = runtime_of(request)
    key = admission(request).key
    if not runtime.settings.providers and (key is None or key.models is None):
        return await relay(request, runtime.router.default, "/models", None)  # as it is
    return web.json_response({"object": "list", "data": await _visible(request)})


async def one_model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{id}``. Under virtual keys kallm answers it from what the key may
    use: relayed, it would read the shared account's models (its fine-tunes included) with
    the provider's key. With auth off, the caller's own key asks the provider."""
    runtime = runtime_of(request)
    model_id = request.match_info["model_id"]
    if not runtime.virtual_keys:
        path = admission(request).path.upstream_path
        return await relay(request, runtime.router.default, path, None)
    for item in await _visible(request):
        if item["id"] == model_id:
            return web.json_response(item)
    raise ModelNotFound(f"The model '{model_id}' does not exist or this key may not use it.")


async def _visible(request: web.Request) -> list[dict[str, Any]]:
    """The models the request's key may use, as OpenAI lists them."""
    runtime = runtime_of(request)
    key = admission(request).key
    assert runtime.catalogue is not None
    listed = await runtime.catalogue.models()
    now = int(time.time())
    return [
        {"id": model, "object": "model", "created": now, "owned_by": owner}
        for model, owner in listed
        if _usable(key, model, runtime.router)
    ]
