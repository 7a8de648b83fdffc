"""``lanterne inventory``: import the declared inventory (the cartographie) and list it.

``import`` is all or nothing: a file with any error writes nothing and prints every error with
its line and column (exit 2). By default entries missing from the file are deactivated (the file
is the whole cartographie; ``--keep-missing`` for a partial file); ``--dry-run`` prints what would
change. A successful import reconciles the site at once, so statuses and alerts follow it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent._cli_common import DEFAULT_SITE, DbOption, SiteOption, default_db_url, err, fatal, out
from agent._reconcile import ReconcileConfig, ReconcileResult, reconcile
from fingerprints import CatalogError, load_catalog
from store import Store, StoreError, open_store
from store._inventory import InventoryFileError, entry_fields, import_inventory
from store._models import InventoryEntry, ReconciliationStatus

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The declared inventory (cartographie): import a CSV/XLSX file, list the entries.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOption = Annotated[
    bool, typer.Option("--json", envvar="LANTERNE_JSON", help="Print JSON instead of a table.")
]
LookbackOption = Annotated[
    int,
    typer.Option(
        "--lookback-days",
        envvar="LANTERNE_LOOKBACK_DAYS",
        min=1,
        help="A declared product not seen for this many days is declared_not_observed.",
    ),
]


@contextmanager
def open_db(db: str | None) -> Iterator[Store]:
    """Open (and migrate) the store, or exit with advice."""
    try:
        store = open_store(db or default_db_url())
    except StoreError as exc:
        fatal(str(exc), tip="check --db / LANTERNE_DB (sqlite:///path.db or postgresql://user@host/db)")
    try:
        yield store
    finally:
        store.dispose()


def now_utc() -> datetime:
    """The current time, timezone-aware (one place, so every command agrees)."""
    return datetime.now(UTC)


def print_reconcile_summary(result: ReconcileResult) -> None:
    """One line on stderr: the statuses and the alerts raised or closed."""
    counts = ", ".join(f"{result.count(status)} {status}" for status in ReconciliationStatus)
    err.print(f"reconciled: {counts}; alerts raised {len(result.raised)}, closed {len(result.closed)}")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="CSV (any Excel dialect) or XLSX file.", show_default=False)],
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and print what would change; write nothing.")
    ] = False,
    deactivate_missing: Annotated[
        bool,
        typer.Option(
            "--deactivate-missing/--keep-missing",
            envvar="LANTERNE_DEACTIVATE_MISSING",
            help="Deactivate (never delete) the entries the file no longer lists.",
        ),
    ] = True,
    lookback_days: LookbackOption = 30,
    as_json: JsonOption = False,
) -> None:
    """Import the declared inventory: all or nothing, every error with its line and column."""
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        fatal(f"the catalogue does not load: {exc}")
    now = now_utc()
    with open_db(db) as store, store.write() as session:
        try:
            result = import_inventory(
                session,
                file,
                site,
                now=now,
                catalog=catalog,
                deactivate_missing=deactivate_missing,
                dry_run=dry_run,
            )
        except InventoryFileError as exc:
            for issue in exc.issues:
                err.print(f"{escape(exc.path)}: {escape(str(issue))}")
            more = f" (and {exc.more} more)" if exc.more else ""
            fatal(f"{file.name}: {len(exc.issues) + exc.more} error(s){more}; nothing was imported")
        reconciled = None
        if not dry_run:
            reconciled = reconcile(
                session,
                site,
                now,
                config=ReconcileConfig(lookback=timedelta(days=lookback_days)),
                catalog=catalog,
            )
        if dry_run:
            session.rollback()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(str(warning))}")
    _print_changes(result.created, result.updated, result.deactivated, as_json)
    verb = "would be" if dry_run else "were"
    counts = (
        f"{len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.deactivated)} deactivated, {len(result.unchanged)} unchanged"
    )
    err.print(f"{counts} entries {verb} imported from {escape(file.name)} (site {escape(site)})")
    if reconciled is not None:
        print_reconcile_summary(reconciled)


def _print_changes(
    created: list[str], updated: dict[str, dict[str, list[Any]]], deactivated: list[str], as_json: bool
) -> None:
    changes: list[dict[str, Any]] = [{"ref": ref, "action": "create"} for ref in created]
    changes += [{"ref": ref, "action": "update", "changes": fields} for ref, fields in updated.items()]
    changes += [{"ref": ref, "action": "deactivate"} for ref in deactivated]
    if as_json:
        for change in changes:
            out.print_json(json.dumps(change, ensure_ascii=False, default=str), indent=None)
        return
    if not changes:
        return
    table = Table(title="changes", title_justify="left")
    table.add_column("ref")
    table.add_column("action")
    table.add_column("fields")
    for change in changes:
        fields = change.get("changes", {})
        shown = "; ".join(f"{name}: {old!r} → {new!r}" for name, (old, new) in fields.items())
        table.add_row(escape(change["ref"]), change["action"], escape(shown))
    out.print(table)


@app.command("list")
def list_(
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    include_inactive: Annotated[bool, typer.Option("--all", help="Also list deactivated entries.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List the declared entries of a site."""
    with open_db(db) as store, store.session() as session:
        entries = _entries(session, site, include_inactive)
        rows = [_entry_dict(entry) for entry in entries]
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False), indent=2)
        return
    table = Table(title=f"declared inventory of {escape(site)}", title_justify="left")
    for column in ("ref", "name", "vendor", "catalogue", "service", "owner", "DMN", "AI", "active"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                escape(str(row[key] or ""))
                for key in ("ref", "name", "vendor", "catalog_id", "service", "owner")
            ),
            _yes_no(row["is_dmn"]),
            _yes_no(row["is_ai"]),
            "yes" if row["active"] else "no",
        )
    out.print(table)
    err.print(f"{len(rows)} entries")


def _entries(session: Session, site: str, include_inactive: bool) -> list[InventoryEntry]:
    query = select(InventoryEntry).where(InventoryEntry.site == site)
    if not include_inactive:
        query = query.where(InventoryEntry.active.is_(True))
    return list(session.scalars(query.order_by(InventoryEntry.ref)))


def _entry_dict(entry: InventoryEntry) -> dict[str, Any]:
    declared = entry.declared_on
    return {
        "ref": entry.ref,
        **entry_fields(entry),
        "declared_on": None if declared is None else declared.isoformat(),
        "active": entry.active,
    }


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")
