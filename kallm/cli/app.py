"""``kallm``: the root Typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from kallm import __version__
from kallm.cli import bench, config, keys, serve, stats
from kallm.cli import warm as warm_cli

app = typer.Typer(
    name="kallm",
    help="An OpenAI-compatible LLM proxy with a semantic cache. "
    "Point any OpenAI client at http://127.0.0.1:8080/v1 after `kallm serve`.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kallm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """An OpenAI-compatible LLM proxy with a semantic cache."""


serve.register(app)
config.register(app)
warm_cli.register(app)
keys.register(app)
stats.register(app)
bench.register(app)


def _no_placeholder_for_flags() -> None:
    """Typer shows a type column for every option, ``<bool>`` for on/off flags too, which
    tells nobody anything: flags get none. (A display detail of typer's help, patched here
    in one place; any typer without it keeps its default.)"""
    from typer.core import TyperOption

    original = getattr(TyperOption, "display_type_rich", None)
    if original is None:
        return

    def display(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag else original(self, ctx)

    TyperOption.display_type_rich = display  # type: ignore[method-assign]


def main() -> None:
    _no_placeholder_for_flags()
    app()
