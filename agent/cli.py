"""The ``lanterne`` command line: the only place that prints or exits."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Find undeclared AI tools and medical devices.")


@app.callback()
def _root() -> None:
    """Lanterne: shadow AI and medical-device discovery for hospital networks."""


def main() -> None:
    """Entry point of the console script."""
    app()
