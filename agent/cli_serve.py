"""``lanterne serve`` (the web review UI and REST API) and ``lanterne users`` (people, roles, tokens).

A token is printed once, on stdout, when it is issued (``users add``, ``users token``); only its
SHA-256 is stored. The web server binds to loopback by default: expose it through a TLS reverse
proxy and pass ``--cookie-secure``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from agent._cli_common import DbOption, err, fatal, out
from agent._users import (
    UserError,
    add_user,
    disable_user,
    get_user,
    issue_token,
    list_users,
    live_tokens,
    revoke_tokens,
)
from agent.cli_inventory import JsonOption, LookbackOption, now_utc, open_db
from fingerprints import CatalogError, load_catalog
from store._models import UserRole

users_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="People who may use the web UI and the API: roles viewer, reviewer, admin; tokens shown once.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[
        str,
        typer.Option("--host", envvar="LANTERNE_HOST", help="Address to listen on (loopback by default)."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar="LANTERNE_PORT", min=1, max=65535, help="Port to listen on.")
    ] = 8350,
    db: DbOption = None,
    cookie_secure: Annotated[
        bool,
        typer.Option(
            "--cookie-secure/--no-cookie-secure",
            envvar="LANTERNE_COOKIE_SECURE",
            help="Secure cookies and HSTS: set it when a TLS reverse proxy serves the UI.",
        ),
    ] = False,
    session_hours: Annotated[
        int,
        typer.Option(
            "--session-hours",
            envvar="LANTERNE_SESSION_HOURS",
            min=1,
            max=720,
            help="A sign-in lasts this long.",
        ),
    ] = 12,
    lookback_days: LookbackOption = 30,
    review_months: Annotated[
        int,
        typer.Option(
            "--review-months",
            envvar="LANTERNE_REVIEW_MONTHS",
            min=1,
            help="Months from a decision to its review.",
        ),
    ] = 12,
    timezone: Annotated[
        str, typer.Option("--tz", envvar="LANTERNE_TZ", help="Time zone of the dates shown and exported.")
    ] = "Europe/Paris",
) -> None:
    """Serve the web review UI and the REST API (OpenAPI at /api/openapi.json)."""
    # Imported here: FastAPI and uvicorn are not needed by any other command.
    import uvicorn  # noqa: PLC0415

    from agent.web import WebSettings, create_app  # noqa: PLC0415

    try:
        from zoneinfo import ZoneInfo  # noqa: PLC0415

        ZoneInfo(timezone)
    except (KeyError, ValueError):
        fatal(f"unknown time zone {timezone!r}", tip="e.g. Europe/Paris or UTC")
    settings = WebSettings(
        cookie_secure=cookie_secure,
        session_ttl=timedelta(hours=session_hours),
        lookback=timedelta(days=lookback_days),
        review_interval_months=review_months,
        timezone=timezone,
    )
    with open_db(db) as store:
        with store.session() as session:
            if not list_users(session):
                err.print(
                    "[yellow]no user yet:[/] nobody can sign in; create one with "
                    "'lanterne users add NAME --role admin'"
                )
        if not _is_loopback(host) and not cookie_secure:
            err.print(
                "[yellow]tip:[/] listening beyond loopback without TLS: put a TLS reverse proxy in front "
                "and pass --cookie-secure"
            )
        err.print(
            f"serving on http://{escape(host)}:{port}/ (API under /api/v1, schema at /api/openapi.json)"
        )
        try:
            catalog = load_catalog()  # now rather than on the first request (it takes a second)
        except CatalogError as exc:
            fatal(f"the catalogue does not load: {exc}")
        uvicorn.run(
            create_app(store, settings, catalog=catalog),
            host=host,
            port=port,
            log_level="info",
            server_header=False,
            proxy_headers=False,
        )


@contextmanager
def _users_session(db: str | None) -> Iterator[Session]:
    """A write transaction on the users; a refused change (``UserError``) is the command's error."""
    with open_db(db) as store:
        try:
            with store.write() as session:
                yield session
        except UserError as exc:
            fatal(str(exc))


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The person's name (recorded as the author of decisions).")],
    role: Annotated[
        UserRole, typer.Option("--role", case_sensitive=False, help="What they may do.")
    ] = UserRole.VIEWER,
    db: DbOption = None,
) -> None:
    """Create a user and print their first token (once: it is not stored)."""
    with _users_session(db) as session:
        user, token = add_user(session, name, role, now_utc())
    out.print(token, markup=False, highlight=False)
    err.print(f"user {escape(user.name)} ({user.role}) created; the token above is shown once: keep it safe")


@users_app.command("token")
def users_token(
    name: Annotated[str, typer.Argument(help="An existing user.")],
    db: DbOption = None,
) -> None:
    """Issue another token for a user and print it (once)."""
    with _users_session(db) as session:
        token = issue_token(session, get_user(session, name), now_utc())
    out.print(token, markup=False, highlight=False)
    err.print("the token above is shown once: keep it safe")


@users_app.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(help="An existing user.")],
    db: DbOption = None,
) -> None:
    """Revoke every token of a user (their browser sessions end too)."""
    with _users_session(db) as session:
        count = revoke_tokens(session, get_user(session, name), now_utc())
    err.print(f"{count} token(s) revoked")


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="An existing user.")],
    db: DbOption = None,
) -> None:
    """Disable a user: no token of theirs works any more (their decisions keep their name)."""
    with _users_session(db) as session:
        disable_user(session, get_user(session, name), now_utc())
    err.print(f"user {escape(name)} disabled")


@users_app.command("list")
def users_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List users, their roles and how many live tokens they have."""
    with open_db(db) as store, store.session() as session:
        tokens = live_tokens(session)
        rows: list[dict[str, Any]] = [
            {
                "name": user.name,
                "role": str(user.role),
                "created_at": user.created_at.isoformat(),
                "disabled": user.disabled_at is not None,
                "tokens": tokens.get(user.id, 0),
            }
            for user in list_users(session)
        ]
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False), indent=2)
        return
    table = Table(title="users", title_justify="left")
    for column in ("name", "role", "created", "disabled", "tokens"):
        table.add_column(column, justify="right" if column == "tokens" else "left")
    for row in rows:
        table.add_row(
            escape(row["name"]),
            row["role"],
            row["created_at"][:16],
            "yes" if row["disabled"] else "no",
            str(row["tokens"]),
        )
    out.print(table)
