"""What every command shares: building Settings from flags and failing with one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from kallm.config import LoadedSettings

err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    # the message is data (a key name, a path): never read it as rich markup
    err_console.print(
        Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


def settings_from(config: Path | None, **flags: Any) -> LoadedSettings:
    """Settings from defaults < file < env < these flags, or exit with the one-line reason."""
    from kallm.config import load_settings
    from kallm.errors import ConfigError

    try:
        return load_settings(config_path=config, flags=flags)
    except ConfigError as exc:
        fail(exc.message)


def duration_flag(flag: str, text: str) -> float:
    """A duration flag's seconds (``90s``, ``5m``, ``24h``), or exit naming the flag."""
    from kallm.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{flag} {text!r}: expected {exc}")


CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="Path to kallm.toml (env KALLM_CONFIG; default: kallm.toml in the user config dir).",
)
