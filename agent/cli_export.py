"""``lanterne export``: the reconciled inventory (the cartographie) as CSV, XLSX, JSON, CycloneDX or HTML.

Text formats go to stdout without ``-o``; XLSX needs ``-o``. The site is reconciled first (so the
export is as of now; ``--no-reconcile`` for a read-only export of the stored state's inputs).
Exit codes: 0, or 1 with ``--fail-on-findings`` when undeclared or unknown tools are in it.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.markup import escape

from agent._cli_common import DEFAULT_SITE, EXIT_FINDINGS, DbOption, SiteOption, err, fatal
from agent._export import FORMATS, TEXT_FORMATS, cartographie, export_meta, findings
from agent._reconcile import ReconcileConfig, reconcile
from agent.cli_inventory import LookbackOption, now_utc, open_db, print_reconcile_summary
from fingerprints import CatalogError, load_catalog


def export(
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            envvar="LANTERNE_EXPORT_FORMAT",
            help=f"One of: {', '.join(FORMATS)}.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="File to write (default: stdout, text formats only).", show_default=False
        ),
    ] = None,
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    fail_on_findings: Annotated[
        bool,
        typer.Option(
            "--fail-on-findings",
            envvar="LANTERNE_FAIL_ON_FINDINGS",
            help="Exit 1 when undeclared or unknown tools are found.",
        ),
    ] = False,
    do_reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile/--no-reconcile",
            envvar="LANTERNE_EXPORT_RECONCILE",
            help="Reconcile the site (store statuses, refresh alerts) before exporting.",
        ),
    ] = True,
    lookback_days: LookbackOption = 30,
    timezone: Annotated[
        str, typer.Option("--tz", envvar="LANTERNE_TZ", help="Time zone of the dates in CSV, XLSX and HTML.")
    ] = "Europe/Paris",
) -> None:
    """Export the cartographie: one row per product or device of the site, both statuses."""
    writer = FORMATS.get(export_format)
    if writer is None:
        fatal(f"unknown format {export_format!r}: one of {', '.join(FORMATS)}")
    if output is None and export_format not in TEXT_FORMATS:
        fatal(f"{export_format} is a binary format: give a file with -o")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        fatal(f"unknown time zone {timezone!r}", tip="e.g. Europe/Paris or UTC")
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        fatal(f"the catalogue does not load: {exc}")
    config = ReconcileConfig(lookback=timedelta(days=lookback_days))
    now = now_utc()
    with open_db(db) as store, store.write() as session:
        if do_reconcile:
            print_reconcile_summary(reconcile(session, site, now, config=config, catalog=catalog))
        rows = cartographie(session, site, now, config=config, catalog=catalog)
    meta = export_meta(rows, site, now, catalog=catalog, config=config, timezone=timezone)
    data = writer(rows, meta)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            output.write_bytes(data)
        except OSError as exc:
            fatal(f"cannot write {output}: {exc.strerror}")
        err.print(f"wrote {escape(str(output))} ({export_format}, {len(rows)} rows)")
    found = findings(rows)
    if found:
        err.print(f"[yellow]{found} undeclared or unknown tool(s)[/] in the cartographie of {escape(site)}")
    if fail_on_findings and found:
        raise typer.Exit(EXIT_FINDINGS)
