"""The ``[[providers]]`` and ``[models.ALIAS]`` tables of kallm.toml, parsed and checked.

With no providers configured, kallm has one: ``openai``, an OpenAI-compatible
upstream at ``upstream.base_url`` (``OPENAI_BASE_URL``) that serves every model.
Keys are read from the environment variable a provider names (``api_key_env``),
so the file itself need not hold secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kallm.errors import ConfigError

KINDS = ("openai", "anthropic", "gemini")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PROVIDER_KEYS = {
    "name",
    "kind",
    "base_url",
    "api_key_env",
    "api_key",
    "models",
    "timeout",
    "connect_timeout",
    "max_retries",
}


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ("*",)
    timeout: float | None = None  # None: upstream.timeout
    connect_timeout: float | None = None
    max_retries: int = 2


@dataclass(frozen=True)
class AliasConfig:
    name: str
    route: tuple[str, ...]  # "provider/model" each, tried in order


def parse_providers(
    document: Mapping[str, Any], environ: Mapping[str, str], origin: str
) -> tuple[ProviderConfig, ...]:
    from kallm.config import parse_duration, parse_url

    raw = document.get("providers", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{origin}: [[providers]] must be an array of tables")
    providers = []
    for i, item in enumerate(raw):
        where = f"{origin}: providers[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a table")
        unknown = set(item) - _PROVIDER_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {sorted(unknown)[0]!r}; known: "
                + ", ".join(sorted(_PROVIDER_KEYS))
            )
        name = str(item.get("name", ""))
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: 'name' is required (letters, digits, . _ -)")
        kind = str(item.get("kind", "openai"))
        if kind not in KINDS:
            raise ConfigError(
                f"{where} ({name}): kind {kind!r}; expected one of " + ", ".join(KINDS)
            )
        try:
            base_url = parse_url(item.get("base_url", DEFAULT_BASE_URLS[kind]))
            timeout = parse_duration(item["timeout"]) if "timeout" in item else None
            connect = parse_duration(item["connect_timeout"]) if "connect_timeout" in item else None
        except ValueError as exc:
            raise ConfigError(f"{where} ({name}): expected {exc}") from None
        models = item.get("models", ["*"])
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"{where} ({name}): 'models' must be a list of name patterns")
        retries = item.get("max_retries", 2)
        if not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigError(f"{where} ({name}): max_retries must be a whole number 0-10")
        key_env = item.get("api_key_env", DEFAULT_KEY_ENV[kind])
        api_key = item.get("api_key") or (environ.get(key_env) if key_env else None) or None
        providers.append(
            ProviderConfig(
                name, kind, base_url, api_key, key_env, tuple(models), timeout, connect, retries
            )
        )
    names = [p.name for p in providers]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"{origin}: two providers are named {duplicate!r}")
    return tuple(providers)


def parse_aliases(
    document: Mapping[str, Any], providers: tuple[ProviderConfig, ...], origin: str
) -> tuple[AliasConfig, ...]:
    raw = document.get("models", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: [models.NAME] tables expected")
    names = {p.name for p in providers} or {"openai"}  # the implicit upstream's name
    aliases = []
    for alias, body in raw.items():
        route = body.get("route") if isinstance(body, Mapping) else None
        if isinstance(route, str):
            route = [route]
        if not isinstance(route, list) or not route:
            raise ConfigError(f'{origin}: [models.{alias}] needs route = ["provider/model", ...]')
        for step in route:
            provider = str(step).split("/", 1)[0]
            if "/" not in str(step) or provider not in names:
                raise ConfigError(
                    f"{origin}: [models.{alias}] route step {step!r} must be provider/model "
                    f"with a configured provider ({', '.join(sorted(names)) or 'none'})"
                )
        aliases.append(AliasConfig(str(alias), tuple(str(s) for s in route)))
    return tuple(aliases)
