"""Which provider answers a model, and what happens when it fails.

``provider/model`` names a provider explicitly; an alias tries its route in
order; otherwise the first provider whose patterns match. Each route is
retried on 429, 5xx and connection errors with exponential backoff and jitter
(honouring ``Retry-After``), then the next route of the alias is tried.
Nothing is retried once a response is handed to the caller, so a stream that
has started is never replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from kallm.config import Settings
from kallm.errors import KallmError, ModelNotFound, UpstreamError
from kallm.providers.base import Adapter, ChatCall, Provider
from kallm.providers.config import ProviderConfig

log = logging.getLogger("kallm.providers")

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MAX_RETRY_AFTER = 20.0  # seconds: longer waits fail over instead of holding the caller
RESOLVED_NAMES = 4096  # model names whose routes are remembered (pattern matching is not free)


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    model: str  # the name the provider knows it by


@dataclass(slots=True)
class Opened:
    """An upstream response that the router settled on (200 or a final error)."""

    route: Route
    response: aiohttp.ClientResponse
    attempts: int


def adapter_for(kind: str) -> Adapter:
    from kallm.providers.openai import OpenAIAdapter

    if kind == "openai":
        return OpenAIAdapter()
    from kallm.providers.native import AnthropicAdapter, GeminiAdapter

    return AnthropicAdapter() if kind == "anthropic" else GeminiAdapter()


def provider_configs(settings: Settings) -> tuple[ProviderConfig, ...]:
    """The configured providers, or the one implicit OpenAI upstream of the core settings."""
    if settings.providers:
        return settings.providers
    return (
        ProviderConfig(
            "openai",
            "openai",
            settings.upstream_base_url,
            settings.upstream_api_key,
            "OPENAI_API_KEY",
            ("*",),
        ),
    )


class Router:
    def __init__(self, settings: Settings, backoff: float = 0.25, via: str = ""):
        self.providers = [
            Provider(
                config,
                adapter_for(config.kind),
                settings.upstream_connect_timeout,
                settings.upstream_timeout,
                via,
            )
            for config in provider_configs(settings)
        ]
        self._by_name = {p.name: p for p in self.providers}
        self.aliases = {a.name: a.route for a in settings.aliases}
        self._resolved: dict[str, list[Route]] = {}
        self.backoff = backoff
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def start(self) -> None:
        for provider in self.providers:
            await provider.start()

    async def close(self) -> None:
        for provider in self.providers:
            await provider.close()

    @property
    def default(self) -> Provider:
        """Where passthrough goes: the first OpenAI-compatible provider."""
        return next((p for p in self.providers if p.kind == "openai"), self.providers[0])

    def resolve(self, model: str) -> list[Route]:
        """The routes a model name goes to (a copy: callers may not change the cache)."""
        routes = self._resolved.get(model)
        if routes is None:
            routes = self._resolve(model)
            if len(self._resolved) >= RESOLVED_NAMES:  # bounded: clients invent names
                self._resolved.clear()
            self._resolved[model] = routes
        return list(routes)

    def _resolve(self, model: str) -> list[Route]:
        if model in self.aliases:
            return [self._explicit(step) for step in self.aliases[model]]
        if "/" in model and model.split("/", 1)[0] in self._by_name:
            return [self._explicit(model)]
        for provider in self.providers:
            if provider.serves(model):
                return [Route(provider, model)]
        known = [m for p in self.providers for m in p.config.models] + list(self.aliases)
        raise ModelNotFound(
            f"The model '{model}' is not served by any configured provider. "
            f"Configured: {', '.join(known)}",
            param="model",
        )

    def _explicit(self, step: str) -> Route:
        name, model = step.split("/", 1)
        return Route(self._by_name[name], model)

    def listed_models(self) -> list[str]:
        """Concrete model names and aliases for GET /v1/models (patterns are left out)."""
        names = [
            f"{p.name}/{m}"
            for p in self.providers
            for m in p.config.models
            if not any(c in m for c in "*?[")
        ]
        return names + list(self.aliases)

    async def open_chat(self, routes: list[Route], call: ChatCall) -> Opened:
        """A chat call along the routes (each with its own model name)."""

        async def send(route: Route) -> aiohttp.ClientResponse:
            return await route.provider.open_chat(
                ChatCall(call.payload, route.model, call.stream, call.client_headers, call.sent)
            )

        return await self.open_with(routes, send)

    async def open_with(
        self, routes: list[Route], send: Callable[[Route], Awaitable[aiohttp.ClientResponse]]
    ) -> Opened:
        """Send along the routes until one answers 200 or every try is spent; ``send``
        makes the call a route needs (native, or translated for its provider's kind)."""
        attempts = 0
        last_error: KallmError | None = None
        for index, route in enumerate(routes):
            is_last_route = index == len(routes) - 1
            tries = route.provider.config.max_retries + 1
            for attempt in range(tries):
                attempts += 1
                final = is_last_route and attempt == tries - 1
                try:
                    response = await send(route)
                except UpstreamError as exc:
                    last_error = exc
                    if final:
                        raise
                    await self._pause(attempt, None, route, str(exc), exc.status)
                    continue
                if response.status not in RETRYABLE or final:
                    return Opened(route, response, attempts)
                retry_after = response.headers.get("Retry-After")
                response.release()
                await self._pause(
                    attempt,
                    retry_after,
                    route,
                    f"HTTP {response.status}",
                    response.status,
                    next_route=attempt == tries - 1,
                )
        raise last_error or UpstreamError("no route answered")  # unreachable in practice

    async def _pause(
        self,
        attempt: int,
        retry_after: str | None,
        route: Route,
        why: str,
        status: int,
        next_route: bool = False,
    ) -> None:
        if next_route:
            log.warning("%s/%s: %s; trying the next route", route.provider.name, route.model, why)
            return
        delay = self.backoff * (2**attempt) * (0.5 + random.random())
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
        log.info(
            "%s/%s: %s (status %d); retry in %.2fs",
            route.provider.name,
            route.model,
            why,
            status,
            delay,
        )
        await self.sleep(delay)
