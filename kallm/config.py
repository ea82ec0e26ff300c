"""The one frozen Settings object, built from defaults < kallm.toml < environment < CLI flags.

Every setting is declared once in ``SPECS`` (its TOML key, its environment
variables and its parser), so the file, the environment and the flags cannot
drift apart, and ``load_settings`` can say where each value came from.
A bad value raises ``ConfigError`` naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import platformdirs

from kallm.accounts.pricing import Price, parse_price_overrides
from kallm.errors import ConfigError
from kallm.providers.config import AliasConfig, ProviderConfig, parse_aliases, parse_providers

APP_NAME = "kallm"

# "mo" is 30 days: budget periods ("1mo") need a month; calendar months are not worth the
# surprise of a budget that resets on different days of the week.
_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "mo": 30 * 86400,
}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2}


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "kallm.toml"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


@dataclass(frozen=True)
class Settings:
    """Everything kallm reads at start-up; passed down, never mutated."""

    host: str = "127.0.0.1"
    port: int = 8080
    upstream_base_url: str = "https://api.openai.com/v1"
    upstream_api_key: str | None = None
    upstream_connect_timeout: float = 10.0
    upstream_timeout: float = 600.0
    upstream_deadline: float = 1800.0  # one request's whole time upstream, stream included
    max_answer_bytes: int = 64 * 1000**2  # larger answers are relayed, never buffered or cached
    similarity_threshold: float | None = None  # None: the embedder's own measured default
    cache_ttl: float = 24 * 3600.0
    max_cache_size: int = 10_000
    cache_max_bytes: int = 512 * 1024**2  # = kallm.cache.store.DEFAULT_MAX_BYTES
    embedding_model: str = "local"
    cache_file: Path | None = field(default_factory=lambda: default_data_dir() / "cache.kallm")
    snapshot_interval: float = 300.0
    guard: bool = True
    max_body_bytes: int = 10 * 1000**2
    event_loop: str = "auto"  # uvloop where installed; "asyncio" to turn it off
    idle_timeout: float = 30.0  # a connection that starts no request for this long is closed
    body_timeout: float = 60.0  # a request body must arrive within this
    log_json: bool = False
    log_level: str = "info"
    auth: str = "off"  # "virtual-keys": every request needs a key made by `kallm keys create`
    admin_key: str | None = None
    db_path: Path | None = field(default_factory=lambda: default_data_dir() / "kallm.db")
    keys_dir: Path | None = None
    open_routes: tuple[str, ...] = ()  # organisation routes virtual keys may use
    open_route_charge: float = 0.0  # USD charged per successful call of an opened route
    log_requests: bool = True
    log_probes: bool = False  # access lines for /health, /stats and /metrics
    log_bodies: bool = False
    log_retention: float = 30 * 86400.0
    # shared state (kallm.state.redis): unset = everything in this process
    redis_url: str | None = None
    replicas: int = 1  # with Redis down, each replica enforces rate limits / replicas
    redis_timeout: float = 0.5  # per Redis call: a dead Redis must not stall a request
    redis_prefix: str = "kallm"  # key prefix, so several deployments can share one Redis
    reservation_ttl: float = 600.0  # a dead replica's budget reservations free after this
    # structured tables of kallm.toml, parsed in kallm.providers.config
    providers: tuple[ProviderConfig, ...] = ()
    aliases: tuple[AliasConfig, ...] = ()
    prices: tuple[tuple[str, Price], ...] = ()  # [prices.MODEL] overrides of the shipped table

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


# ---------------------------------------------------------------- parsers


def parse_duration(value: Any) -> float:
    """Seconds from ``90s``, ``30m``, ``24h``, ``7d``, ``500ms`` or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|mo|s|m|h|d|w)?\s*", str(value).lower())
        if not match:
            raise ValueError("a duration such as 90s, 30m, 24h, 7d or 1mo")
        seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if seconds < 0:
        raise ValueError("a duration of zero or more")
    return seconds


def duration_text(seconds: float) -> str:
    """``86400`` -> ``24h``, ``2592000`` -> ``30d``: the largest unit that divides it (a
    day reads as 24h)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0 and not (unit == "d" and seconds == 86400):
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


def size_text(size: int) -> str:
    """``10000000`` -> ``10MB``."""
    for unit in ("gb", "mb", "kb"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit.upper()}"
    return f"{size}B"


def parse_size(value: Any) -> int:
    """Bytes from ``10MB``, ``512KiB`` or a bare number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", str(value).lower())
        if not match or match[2] not in _SIZE_UNITS:
            raise ValueError("a size such as 10MB or 512KiB")
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    if size <= 0:
        raise ValueError("a size above zero")
    return size


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("true or false")


def parse_fraction(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number from 0.0 to 1.0") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError("a number from 0.0 to 1.0")
    return number


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return number

    return parse


def parse_url(value: Any) -> str:
    url = str(value).strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise ValueError("an http:// or https:// URL")
    return url


def parse_host(value: Any) -> str:
    host = str(value).strip()
    if not host or any(c.isspace() for c in host):
        raise ValueError("a host name or IP address such as 127.0.0.1 or 0.0.0.0")
    return host


def parse_optional_path(value: Any) -> Path | None:
    text = str(value).strip()
    return None if text.lower() in {"", "none", "off"} else Path(text).expanduser()


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return text

    return parse


def parse_embedding_model(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("local, hash, or the name of an upstream embedding model")
    return text


def parse_open_routes(value: Any) -> tuple[str, ...]:
    """``files,batches`` or a TOML list: organisation routes opened to virtual keys."""
    from kallm.server.routes import ORGANISATION_ROUTES

    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    unknown = [name for name in names if name not in ORGANISATION_ROUTES]
    if unknown:
        raise ValueError("route names from: " + ", ".join(sorted(ORGANISATION_ROUTES)))
    return names


def parse_usd(value: Any) -> float:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        amount = -1.0
    if not 0 <= amount <= 1e6:  # False for NaN too
        raise ValueError("an amount in USD from 0 to 1000000")
    return amount


def parse_redis_url(value: Any) -> str | None:
    """``redis://``, ``rediss://`` (TLS) or ``unix://``; empty or ``off`` for none."""
    text = str(value).strip()
    if text.lower() in {"", "off", "none"}:
        return None
    parsed = urlparse(text)
    if parsed.scheme not in {"redis", "rediss", "unix"} or not (parsed.netloc or parsed.path):
        raise ValueError("a redis://host:port[/db], rediss://... or unix:///path URL")
    return text


def parse_prefix(value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", text):
        raise ValueError("1-64 letters, digits, '_', '.', ':' or '-'")
    return text


def parse_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("a duration above zero, such as 500ms or 2s")
    return seconds


def parse_secret(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


MIN_ADMIN_KEY = 16


def parse_admin_key(value: Any) -> str | None:
    """The admin key opens every virtual key's policy: not a word someone can guess."""
    text = parse_secret(value)
    if text is not None and len(text) < MIN_ADMIN_KEY:
        raise ValueError(f"at least {MIN_ADMIN_KEY} characters (e.g. `openssl rand -hex 16`)")
    return text


# ---------------------------------------------------------------- the table of settings


@dataclass(frozen=True)
class SettingSpec:
    field: str
    toml_key: str  # dotted: section.key
    env: tuple[str, ...]
    parse: Callable[[Any], Any]
    secret: bool = False
    flag: str | None = None  # the CLI flag, where it is not --<field with dashes>

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.field.replace("_", "-")


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("host", "server.host", ("KALLM_HOST",), parse_host),
    SettingSpec("port", "server.port", ("KALLM_PORT",), _int_in(0, 65535)),
    SettingSpec("max_body_bytes", "server.max_body_size", ("KALLM_MAX_BODY_SIZE",), parse_size),
    SettingSpec(
        "event_loop",
        "server.event_loop",
        ("KALLM_EVENT_LOOP",),
        parse_choice("auto", "asyncio", "uvloop"),
    ),
    SettingSpec("idle_timeout", "server.idle_timeout", ("KALLM_IDLE_TIMEOUT",), parse_duration),
    SettingSpec("body_timeout", "server.body_timeout", ("KALLM_BODY_TIMEOUT",), parse_duration),
    SettingSpec(
        "upstream_base_url",
        "upstream.base_url",
        ("OPENAI_BASE_URL", "KALLM_UPSTREAM_URL"),
        parse_url,
        flag="--upstream",
    ),
    SettingSpec(
        "upstream_api_key", "upstream.api_key", ("OPENAI_API_KEY",), parse_secret, secret=True
    ),
    SettingSpec(
        "upstream_connect_timeout",
        "upstream.connect_timeout",
        ("KALLM_UPSTREAM_CONNECT_TIMEOUT",),
        parse_duration,
    ),
    SettingSpec(
        "upstream_timeout", "upstream.timeout", ("KALLM_UPSTREAM_TIMEOUT",), parse_duration
    ),
    SettingSpec(
        "upstream_deadline", "upstream.deadline", ("KALLM_UPSTREAM_DEADLINE",), parse_duration
    ),
    SettingSpec(
        "max_answer_bytes", "upstream.max_answer_size", ("KALLM_MAX_ANSWER_SIZE",), parse_size
    ),
    SettingSpec(
        "similarity_threshold",
        "cache.similarity_threshold",
        ("KALLM_SIMILARITY_THRESHOLD",),
        parse_fraction,
        flag="--threshold",
    ),
    SettingSpec("cache_ttl", "cache.ttl", ("KALLM_CACHE_TTL",), parse_duration),
    SettingSpec(
        "max_cache_size", "cache.max_entries", ("KALLM_MAX_CACHE_SIZE",), _int_in(1, 10_000_000)
    ),
    SettingSpec("cache_max_bytes", "cache.max_bytes", ("KALLM_CACHE_MAX_BYTES",), parse_size),
    SettingSpec(
        "embedding_model",
        "cache.embedding_model",
        ("KALLM_EMBEDDING_MODEL",),
        parse_embedding_model,
    ),
    SettingSpec("cache_file", "cache.file", ("KALLM_CACHE_FILE",), parse_optional_path),
    SettingSpec(
        "snapshot_interval", "cache.snapshot_interval", ("KALLM_SNAPSHOT_INTERVAL",), parse_duration
    ),
    SettingSpec("guard", "cache.guard", ("KALLM_CACHE_GUARD",), parse_bool),
    SettingSpec("log_json", "log.json", ("KALLM_LOG_JSON",), parse_bool),
    SettingSpec(
        "log_level",
        "log.level",
        ("KALLM_LOG_LEVEL",),
        parse_choice("debug", "info", "warning", "error"),
    ),
    SettingSpec("auth", "auth.mode", ("KALLM_AUTH",), parse_choice("off", "virtual-keys")),
    SettingSpec("admin_key", "auth.admin_key", ("KALLM_ADMIN_KEY",), parse_admin_key, secret=True),
    SettingSpec("keys_dir", "auth.keys_dir", ("KALLM_KEYS_DIR",), parse_optional_path),
    SettingSpec("open_routes", "auth.open_routes", ("KALLM_OPEN_ROUTES",), parse_open_routes),
    SettingSpec(
        "open_route_charge", "auth.open_route_charge", ("KALLM_OPEN_ROUTE_CHARGE",), parse_usd
    ),
    SettingSpec("db_path", "db.path", ("KALLM_DB",), parse_optional_path, flag="--db"),
    SettingSpec("log_requests", "log.requests", ("KALLM_LOG_REQUESTS",), parse_bool),
    SettingSpec("log_probes", "log.probes", ("KALLM_LOG_PROBES",), parse_bool),
    SettingSpec("log_bodies", "log.bodies", ("KALLM_LOG_BODIES",), parse_bool),
    SettingSpec("log_retention", "log.retention", ("KALLM_LOG_RETENTION",), parse_duration),
    SettingSpec("redis_url", "state.redis_url", ("KALLM_REDIS_URL",), parse_redis_url, secret=True),
    SettingSpec("replicas", "state.replicas", ("KALLM_REPLICAS",), _int_in(1, 1000)),
    SettingSpec(
        "redis_timeout", "state.redis_timeout", ("KALLM_REDIS_TIMEOUT",), parse_positive_duration
    ),
    SettingSpec("redis_prefix", "state.redis_prefix", ("KALLM_REDIS_PREFIX",), parse_prefix),
    SettingSpec(
        "reservation_ttl",
        "state.reservation_ttl",
        ("KALLM_RESERVATION_TTL",),
        parse_positive_duration,
    ),
)
SPEC_BY_FIELD = {spec.field: spec for spec in SPECS}
STRUCTURED_FIELDS = frozenset({"providers", "aliases", "prices"})
STRUCTURED_SECTIONS = frozenset({"providers", "models", "prices"})
assert set(SPEC_BY_FIELD) | STRUCTURED_FIELDS == {f.name for f in fields(Settings)}, (
    "every setting needs a spec"
)


@dataclass(frozen=True)
class LoadedSettings:
    """The settings plus where each value came from (default, file, env NAME, flag)."""

    settings: Settings
    sources: Mapping[str, str]
    config_path: Path | None


def _parse(spec: SettingSpec, raw: Any, origin: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        shown = "***" if spec.secret else repr(raw)
        raise ConfigError(f"{origin}: invalid value {shown}; expected {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # here, not at the top: ~10 ms of regexes every `kallm --help` paid

    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None


def _lookup(document: Mapping[str, Any], dotted: str) -> Any:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _check_unknown_keys(document: Mapping[str, Any], path: Path) -> None:
    """A misspelt key silently ignored is a setting the user thinks they set."""
    known = {spec.toml_key for spec in SPECS}
    sections = {key.split(".")[0] for key in known}
    for section, body in document.items():
        if section in STRUCTURED_SECTIONS:
            continue  # checked by their own parsers
        if section not in sections:
            allowed = ", ".join(sorted(sections | STRUCTURED_SECTIONS))
            raise ConfigError(f"config file {path}: unknown section [{section}]; known: {allowed}")
        if not isinstance(body, Mapping):
            raise ConfigError(f"config file {path}: [{section}] must be a table")
        for key in body:
            if f"{section}.{key}" not in known:
                allowed = sorted(k.split(".", 1)[1] for k in known if k.startswith(section + "."))
                raise ConfigError(
                    f"config file {path}: unknown setting {section}.{key}; "
                    f"known in [{section}]: {', '.join(allowed)}"
                )


def load_settings(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Layer defaults < TOML file < environment < flags into one frozen Settings."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_env = environ.get("KALLM_CONFIG", "").strip()
    explicit = config_path is not None or bool(from_env)
    path = config_path or (Path(from_env).expanduser() if from_env else default_config_path())
    if explicit and not path.exists():
        raise ConfigError(f"config file {path}: does not exist")
    document = read_toml(path) if path.exists() else {}
    if document:
        _check_unknown_keys(document, path)

    values: dict[str, Any] = {}
    sources = {spec.field: "default" for spec in SPECS}
    for spec in SPECS:
        raw = _lookup(document, spec.toml_key)
        if raw is not None:
            values[spec.field] = _parse(spec, raw, f"{spec.toml_key} in {path}")
            sources[spec.field] = f"file {path}"
        for name in spec.env:
            if environ.get(name, "") != "":
                values[spec.field] = _parse(spec, environ[name], name)
                sources[spec.field] = f"env {name}"
                break
        if spec.field in flags:
            values[spec.field] = _parse(spec, flags[spec.field], spec.flag_name)
            sources[spec.field] = "flag"
    origin = f"config file {path}"
    values["providers"] = parse_providers(document, environ, origin)
    values["aliases"] = parse_aliases(document, values["providers"], origin)
    values["prices"] = tuple(parse_price_overrides(document, origin).items())
    return LoadedSettings(Settings(**values), sources, path if path.exists() else None)
