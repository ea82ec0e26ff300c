"""``kallm config init | show``: write a starter kallm.toml; print the effective settings."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from kallm.cli.common import CONFIG_OPTION, fail, settings_from
from kallm.cli.tables import folded

if TYPE_CHECKING:  # imported where used: see kallm/cli/__init__.py
    from kallm.config import Settings

app = typer.Typer(
    help="Write a starter kallm.toml, or show the settings kallm would run with.",
    no_args_is_help=True,
)
console = Console()

# Each section of the starter file: (comment, table). Values are the defaults, so the
# file changes nothing until edited; providers and aliases show the multi-provider shape.
STARTER: list[tuple[str, dict[str, Any]]] = [
    (
        "Where kallm listens. 0.0.0.0 only in a container: a laptop tool should not be on the "
        "network unasked.",
        {"server": {"host": "127.0.0.1", "port": 8080, "max_body_size": "10MB"}},
    ),
    (
        "The default upstream when no [[providers]] are configured (OPENAI_BASE_URL, "
        "OPENAI_API_KEY).",
        {
            "upstream": {
                "base_url": "https://api.openai.com/v1",
                "connect_timeout": "10s",
                "timeout": "600s",
            }
        },
    ),
    (
        "The semantic cache. similarity_threshold defaults to the embedder's measured value.",
        {
            "cache": {
                "ttl": "24h",
                "max_entries": 10000,
                "embedding_model": "local",
                "snapshot_interval": "5m",
                "guard": True,
            }
        },
    ),
    (
        "Logs: one line per request; json = true for machines.",
        {"log": {"json": False, "level": "info"}},
    ),
]
PROVIDERS_EXAMPLE = """
# Providers: uncomment to route models to several upstreams. Keys come from the
# environment variable named by api_key_env, never from this file unless you insist.
#
# [[providers]]
# name = "openai"
# kind = "openai"                 # openai | anthropic | gemini
# base_url = "https://api.openai.com/v1"
# api_key_env = "OPENAI_API_KEY"
# models = ["gpt-*", "o*", "text-embedding-*"]
#
# [[providers]]
# name = "local"
# kind = "openai"                 # any OpenAI-compatible server: Ollama, vLLM, llama.cpp
# base_url = "http://localhost:11434/v1"
# models = ["llama*", "qwen*"]
#
# [[providers]]
# name = "anthropic"
# kind = "anthropic"
# api_key_env = "ANTHROPIC_API_KEY"
# models = ["claude-*"]
#
# [models.fast]                   # an alias with fallbacks, tried in order
# route = ["anthropic/claude-haiku-4-5", "openai/gpt-4o-mini"]
"""


def starter_text() -> str:
    import tomli_w

    parts = [
        "# kallm.toml: settings for kallm. Precedence: defaults < this file < KALLM_* "
        "environment < flags.\n"
    ]
    for comment, table in STARTER:
        parts.append(f"\n# {comment}\n" + tomli_w.dumps(table))
    return "".join(parts) + PROVIDERS_EXAMPLE


@app.command()
def init(
    path: Path | None = typer.Option(None, help="Where to write (default: the user config dir)."),
    force: bool = typer.Option(False, help="Overwrite an existing file."),
) -> None:
    """Write a commented starter kallm.toml."""
    from kallm.config import default_config_path

    target = path or default_config_path()
    if target.exists() and not force:
        fail(f"{target} exists; use --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(starter_text())
    console.print(f"wrote {target}")


def _mask(value: Any) -> str:
    text = str(value)
    return (
        "(not set)" if value is None else (text[:3] + "…" + text[-2:] if len(text) > 8 else "***")
    )


def _shown(settings: Settings, name: str) -> str:
    """A value as a person writes it in kallm.toml: ``24h`` not ``86400.0``, ``10MB`` not
    ``10000000``, and the threshold actually in force rather than ``None``."""
    from kallm.config import SPEC_BY_FIELD, duration_text, parse_duration, parse_size, size_text

    value = getattr(settings, name)
    spec = SPEC_BY_FIELD[name]
    if spec.secret:
        return _mask(value)
    if name == "similarity_threshold" and value is None:
        from kallm.embed import default_threshold_of

        embedder = settings.embedding_model
        return f"{default_threshold_of(embedder)} (the {embedder} embedder's own)"
    if value is None:
        return "off"
    if spec.parse is parse_duration:
        return duration_text(value)
    if spec.parse is parse_size:
        return size_text(value)
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


@app.command()
def show(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print the effective settings, where each came from, secrets masked."""
    from rich.table import Table

    from kallm.config import SPEC_BY_FIELD, Settings

    loaded = settings_from(config)
    settings = loaded.settings
    plain = [f.name for f in fields(Settings) if f.name in SPEC_BY_FIELD]
    providers = [
        {**asdict(p), "api_key": _mask(p.api_key) if p.api_key else None}
        for p in settings.providers
    ]
    if as_json:
        print(
            json.dumps(
                {
                    "config_file": str(loaded.config_path) if loaded.config_path else None,
                    "settings": {
                        SPEC_BY_FIELD[n].toml_key: {
                            "value": _shown(settings, n),
                            "source": loaded.sources[n],
                        }
                        for n in plain
                    },
                    "providers": providers,
                    "aliases": {a.name: list(a.route) for a in settings.aliases},
                },
                indent=2,
            )
        )
        return
    console.print(f"config file: {loaded.config_path or '(none; defaults and environment)'}")
    view = Table("setting", "value", "source")
    for name in plain:
        view.add_row(SPEC_BY_FIELD[name].toml_key, _shown(settings, name), loaded.sources[name])
    console.print(folded(view))
    if providers:
        table = Table("provider", "kind", "base_url", "models", "api key")
        for p in providers:
            table.add_row(
                p["name"],
                p["kind"],
                p["base_url"],
                ", ".join(p["models"]),
                p["api_key"] or f"(set {p['api_key_env']})",
            )
        console.print(folded(table))
    for alias in settings.aliases:
        console.print(f"alias [bold]{alias.name}[/] → {' → '.join(alias.route)}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="config")
