"""What every ``lanterne`` command shares: consoles, the single fatal path, common options.

Sub-command modules (``agent/cli_*.py``) import from here, never from ``agent.cli`` (which
imports them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from agent._identity import Pseudonymiser

#: Data (tables, JSON) goes to stdout; messages, progress and summaries to stderr.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

#: Where pseudonymous mode finds its key (the daemon's configuration reads the same variable).
PSEUDONYM_KEY_ENV: Final = "LANTERNE_PSEUDONYM_KEY"

EXIT_CLEAN: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_USAGE: Final = 2


def fatal(message: str, *, tip: str | None = None, code: int = EXIT_USAGE) -> NoReturn:
    """Print an error (and advice) on stderr and exit: the single fatal path of the CLI."""
    err.print(f"[bold red]error:[/] {_escape(message)}")
    if tip:
        err.print(f"[yellow]tip:[/] {_escape(tip)}")
    raise typer.Exit(code)


def _escape(text: str) -> str:
    # Messages can quote hostile strings (host names, file contents): never let them be markup.
    return text.replace("[", r"\[")


def default_db_url() -> str:
    """The embedded SQLite store: ``$XDG_DATA_HOME/lanterne/lanterne.db`` (``~/.local/share/...``)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'lanterne' / 'lanterne.db'}"


AgentOption = Annotated[
    str | None,
    typer.Option("--agent", envvar="LANTERNE_AGENT", help="Name of this sensor (default: the host name)."),
]
SiteOption = Annotated[
    str,
    typer.Option("--site", envvar="LANTERNE_SITE", help="Site (hospital, campus) the data belongs to."),
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="LANTERNE_DB",
        help="Database URL: sqlite:///path.db (default: ~/.local/share/lanterne/lanterne.db) "
        "or postgresql+psycopg://user@host/db.",
        show_default=False,
    ),
]
DEFAULT_SITE: Final = "default"


PseudonymousOption = Annotated[
    bool,
    typer.Option(
        "--pseudonymous/--no-pseudonymous",
        envvar="LANTERNE_PSEUDONYMOUS",
        help=f"Store client MACs, addresses and names as keyed hashes (key in ${PSEUDONYM_KEY_ENV}).",
    ),
]


def pseudonymiser_from_env(enabled: bool) -> Pseudonymiser | None:
    """The pseudonymiser of ``--pseudonymous`` (its key from the environment), or exit with advice."""
    from agent._identity import Pseudonymiser  # noqa: PLC0415 - the store comes with it: only when asked

    if not enabled:
        return None
    key = os.environ.get(PSEUDONYM_KEY_ENV, "")
    try:
        return Pseudonymiser(key.encode("utf-8"))
    except ValueError:
        fatal(
            f"pseudonymous mode needs a key of at least 16 bytes in ${PSEUDONYM_KEY_ENV}",
            tip="generate one with: python -c 'import secrets; print(secrets.token_hex(32))', keep it secret "
            "and stable (another key gives other pseudonyms)",
        )
