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
    add_completion=False,
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


def main() -> None:
    app()
