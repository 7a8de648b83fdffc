"""``lanterne demo``: the whole job on a bundled simulated hospital (CH Démo), offline, in seconds.

It imports the bundled declared inventory, scans the bundled capture into an SQLite database in a
folder, reconciles, prints the reconciled inventory and the open alerts, and writes the exports
beside the database. Every step is the function ``lanterne inventory import``, ``lanterne scan`` and
``lanterne export`` run, so the demo's database answers every other command afterwards.

The capture is one synthetic morning (``agent/demo/generate.py``). Its clock is moved, in whole
days, to the latest such morning before now, and the moved copy (``DIR/hospital.pcap``) is what
gets scanned: the findings are then "recent" for every command's default look-back, as a real
capture of this morning's traffic would be.
"""

from __future__ import annotations

import math
import shlex
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Final

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from agent._cli_common import err, fatal, out
from agent._export import DEFAULT_TIMEZONE, FORMATS, CartographieRow, cartographie, export_meta
from agent._pipeline import FileScan, Scanner
from agent._reconcile import ReconcileConfig, ReconcileResult
from agent._review import open_alerts
from agent.demo import CAPTURE, INVENTORY, SITE, SITE_NAME, bundled_file
from collectors import CaptureFormatError
from fingerprints import CatalogError, Index, default_index
from store import StoreError, open_store
from store._inventory import ImportResult, InventoryFileError, import_inventory
from store._models import Alert

#: The sensor name the demo's observations are recorded under.
AGENT: Final = "demo-sensor"
DB_NAME: Final = "lanterne.db"
#: Left in a folder the demo created its database in: only such a database is ever replaced.
MARKER: Final = ".lanterne-demo"
DEFAULT_FORMATS: Final = ("xlsx", "html")
#: File written for each export format, in the demo folder.
EXPORT_NAMES: Final = {
    "csv": "cartographie.csv",
    "xlsx": "cartographie.xlsx",
    "json": "cartographie.json",
    "cyclonedx": "cartographie.cdx.json",
    "html": "cartographie.html",
}
#: Alerts listed under the table (the rest are counted).
MAX_ALERTS_SHOWN: Final = 10

_STATUS_STYLE: Final = {
    "undeclared_observed": "bold red",
    "unknown_observed": "yellow",
    "declared_mismatch": "bold magenta",
    "declared_observed": "green",
    "declared_not_observed": "dim",
}
_SEVERITY_STYLE: Final = {"high": "bold red", "medium": "yellow", "low": "dim"}
_PCAP_HEADER: Final = 24
_PCAP_MAGIC_USEC_LE: Final = 0xA1B2C3D4


class DemoError(Exception):
    """The demo cannot run (an unusable folder, a broken bundled file)."""


@dataclass(slots=True)
class DemoRun:
    """What one demo run did: the folder, each step's result, the reconciled rows, the files written."""

    directory: Path
    db_url: str
    imported: ImportResult
    scan: FileScan
    replayed_from: datetime
    """When the replayed capture starts (the bundled morning moved by whole days)."""
    lookback: timedelta
    reconciliation: ReconcileResult
    rows: list[CartographieRow]
    alerts: list[Alert]
    exports: list[Path]
    seconds: float


def shift_capture(data: bytes, seconds: int) -> bytes:
    """Return a classic little-endian microsecond pcap (as the generator writes) with every packet moved."""
    if len(data) < _PCAP_HEADER or struct.unpack_from("<I", data)[0] != _PCAP_MAGIC_USEC_LE:
        raise DemoError("the bundled capture is not a little-endian microsecond pcap")
    out = bytearray(data)
    pos = _PCAP_HEADER
    while pos + 16 <= len(out):
        ts_sec, _, caplen, _ = struct.unpack_from("<IIII", out, pos)
        struct.pack_into("<I", out, pos, ts_sec + seconds)
        pos += 16 + caplen
    if pos != len(out):
        raise DemoError("the bundled capture is truncated")
    return bytes(out)


def capture_span(data: bytes) -> tuple[float, float]:
    """First and last packet times of a classic little-endian microsecond pcap."""
    first = last = None
    pos = _PCAP_HEADER
    while pos + 16 <= len(data):
        ts_sec, ts_usec, caplen, _ = struct.unpack_from("<IIII", data, pos)
        stamp = ts_sec + ts_usec / 1_000_000
        first = stamp if first is None else first
        last = stamp
        pos += 16 + caplen
    if first is None or last is None:
        raise DemoError("the bundled capture has no packet")
    return first, last


def replay_shift(data: bytes, now: datetime) -> timedelta:
    """The whole days that move the capture's last packet to the latest same time of day before ``now``."""
    _, last = capture_span(data)
    days = math.floor((now.timestamp() - last) / 86400)
    return timedelta(days=days)


def _prepare(directory: Path, *, keep: bool) -> Path:
    """Create the folder; unless ``keep``, remove the database of a previous demo run (never another one)."""
    db = directory / DB_NAME
    marker = directory / MARKER
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not keep and db.exists():
            if not marker.exists():
                # Maybe the user's real store: a demo never deletes what it did not create.
                raise DemoError(
                    f"{db} exists and was not created by the demo: choose another --dir, "
                    "or add --keep to run the demo on top of it"
                )
            for suffix in ("", "-wal", "-shm", "-journal"):
                db.with_name(db.name + suffix).unlink(missing_ok=True)
        if not db.exists():
            marker.write_text(
                "lanterne demo: the database in this folder may be replaced by the next demo run\n"
            )
    except OSError as exc:
        raise DemoError(f"cannot use {directory}: {exc.strerror or exc}") from exc
    return db


def run_demo(
    directory: Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    keep: bool = False,
    now: datetime | None = None,
    index: Index | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> DemoRun:
    """Import, scan, reconcile and export the demo hospital into ``directory`` (prints nothing)."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise DemoError(f"unknown export format {unknown[0]!r}: one of {', '.join(FORMATS)}")
    db = _prepare(directory, keep=keep)
    original = bundled_file(CAPTURE).read_bytes()
    shift = replay_shift(original, now)
    first, _ = capture_span(original)
    capture = directory / CAPTURE
    capture.write_bytes(shift_capture(original, int(shift.total_seconds())))
    index = index or default_index()
    db_url = f"sqlite:///{db}"
    store = open_store(db_url)
    try:
        with store.write() as session:
            imported = import_inventory(
                session, bundled_file(INVENTORY), SITE, now=now, catalog=index.catalog
            )
        scanner = Scanner(store, index, site=SITE, agent=AGENT)
        scan = scanner.scan(capture)
        lookback = scanner.lookback(now, None)
        config = ReconcileConfig(lookback=lookback)
        reconciliation = scanner.reconcile(now, lookback)
        with store.session() as session:
            rows = cartographie(session, SITE, now, config=config, catalog=index.catalog)
            alerts = open_alerts(session, SITE)
    finally:
        store.dispose()
    meta = export_meta(rows, SITE, now, catalog=index.catalog, config=config, timezone=timezone)
    exports = []
    for name in dict.fromkeys(formats):
        path = directory / EXPORT_NAMES[name]
        path.write_bytes(FORMATS[name](rows, meta))
        exports.append(path)
    return DemoRun(
        directory=directory,
        db_url=db_url,
        imported=imported,
        scan=scan,
        replayed_from=datetime.fromtimestamp(first, UTC) + shift,
        lookback=lookback,
        reconciliation=reconciliation,
        rows=rows,
        alerts=alerts,
        exports=exports,
        seconds=time.perf_counter() - started,
    )


# -- the command ------------------------------------------------------------------------------------


def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            envvar="LANTERNE_DEMO_DIR",
            help="Folder for the database and the exports (created if needed; default: a new temporary "
            "folder, kept and printed).",
            show_default=False,
        ),
    ] = None,
    export_formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            envvar="LANTERNE_DEMO_FORMATS",
            help=f"Export format, repeatable: {', '.join(FORMATS)} (default: xlsx and html).",
            show_default=False,
        ),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            envvar="LANTERNE_DEMO_KEEP",
            help="Keep the database already in --dir (and the review decisions made since) instead of "
            "starting afresh.",
        ),
    ] = False,
) -> None:
    """Run the whole job on a bundled simulated hospital: inventory, capture, reconciliation, export."""
    formats = export_formats or list(DEFAULT_FORMATS)
    for name in formats:
        if name not in FORMATS:
            fatal(f"unknown export format {name!r}: one of {', '.join(FORMATS)}")
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="lanterne-demo-"))
    _say(f"[bold]Lanterne demo[/]: {escape(SITE_NAME)} (site {SITE}), a simulated hospital")
    _say(f"folder: {escape(str(directory))}")
    try:
        run = run_demo(directory, formats, keep=keep)
    except DemoError as exc:
        fatal(str(exc))
    except StoreError as exc:
        fatal(str(exc), tip="--dir must be a folder you can write to")
    except CatalogError as exc:
        fatal(f"the catalogue does not load: {exc}")
    except (InventoryFileError, CaptureFormatError, OSError) as exc:
        # The bundled files are checked by the test suite: reaching this is a broken installation.
        fatal(f"the demo's bundled files cannot be used: {exc}", tip="reinstall Lanterne")
    _print_steps(run)
    _print_table(run.rows)
    _print_alerts(run.alerts)
    _print_next_steps(run)


def _say(message: str) -> None:
    """A message on stderr, never wrapped: paths and commands stay copyable."""
    err.print(message, soft_wrap=True)


def _print_steps(run: DemoRun) -> None:
    imported = run.imported
    _say(
        f"1. declared inventory: {INVENTORY} ({len(imported.created)} created, {len(imported.updated)} "
        f"updated, {len(imported.unchanged)} unchanged)"
    )
    scan = run.scan
    if scan.skipped:
        _say(f"2. capture: {CAPTURE} already scanned into this database (nothing counted twice)")
    else:
        stored = scan.stored
        _say(
            f"2. capture: {CAPTURE}, a simulated morning replayed from {run.replayed_from:%Y-%m-%d %H:%M} UTC"
        )
        _say(
            f"   {scan.decode.packets:,} packets, {scan.decode.observations:,} observations, "
            f"{len(stored.endpoints)} endpoints, {len(stored.detections)} products detected"
        )
    counts = ", ".join(f"{count} {status}" for status in _STATUS_STYLE if (count := _count(run.rows, status)))
    _say(f"3. reconciled: {counts}")


def _count(rows: Sequence[CartographieRow], status: str) -> int:
    return sum(1 for row in rows if row.reconciliation_status == status)


def _yes_no(value: str) -> str:
    return {"yes": "yes", "no": "no"}.get(value, "?")


def _print_table(rows: Sequence[CartographieRow]) -> None:
    # Two lines per product (vendor beside the name, category under it; review decision under the
    # status) so that the table stays readable in an 80-column terminal.
    table = Table(
        title=f"Reconciled inventory of {escape(SITE_NAME)} ({len(rows)} products)",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_lines=True,
        pad_edge=False,
    )
    table.add_column("product (vendor)\n[dim]category, declaration[/]", overflow="fold")
    table.add_column("AI", no_wrap=True)
    table.add_column("DMN", no_wrap=True)
    table.add_column("endpoints", justify="right", no_wrap=True)
    table.add_column("reconciliation status\n[dim]review decision[/]", no_wrap=True)
    order = list(_STATUS_STYLE)
    for row in sorted(rows, key=lambda r: (order.index(r.reconciliation_status), r.product_key)):
        status = row.reconciliation_status
        name = row.product
        if row.vendor and row.vendor.split()[0].casefold() not in name.casefold():
            name = f"{name} ({row.vendor})"
        about = row.category or "-"
        if row.cartographie_ref:
            about += f", declared as {', '.join(row.cartographie_ref)}"
        table.add_row(
            f"{escape(name)}\n[dim]{escape(about)}[/]",
            _yes_no(row.is_ai),
            _yes_no(row.medical_purpose),
            str(row.endpoints),
            f"[{_STATUS_STYLE[status]}]{status}[/]\n[dim]{escape(row.review_decision)}[/]",
        )
    out.print(table)


def _print_alerts(alerts: Sequence[Alert]) -> None:
    if not alerts:
        out.print("No open alert.")
        return
    out.print(f"[bold]Open alerts ({len(alerts)})[/]")
    for alert in alerts[:MAX_ALERTS_SHOWN]:
        style = _SEVERITY_STYLE.get(alert.severity, "")
        out.print(
            f"  #{alert.id} [{style}]{escape(alert.severity)}[/] {escape(str(alert.reason))}: "
            f"{escape(alert.title)}"
        )
    if len(alerts) > MAX_ALERTS_SHOWN:
        out.print(f"  … and {len(alerts) - MAX_ALERTS_SHOWN} more")


def _print_next_steps(run: DemoRun) -> None:
    for path in run.exports:
        _say(f"wrote {escape(str(path))}")
    _say(f"done in {run.seconds:.1f} s")
    undeclared = [
        row
        for row in run.rows
        if row.reconciliation_status == "undeclared_observed" and row.review_decision == "pending_review"
    ]
    example = max(undeclared, key=lambda row: row.endpoints).product_key if undeclared else None
    _say("\n[bold]Next steps[/] (these variables point every command at the demo's database):")
    _say(f"  export LANTERNE_DB={escape(shlex.quote(run.db_url))} LANTERNE_SITE={SITE}")
    _say("  lanterne alerts list")
    if example is not None:
        _say(
            f'  lanterne review decide {escape(example)} --decision rejected_to_block --reason "not declared"'
        )
    _say("  lanterne export --format csv -o cartographie.csv")
    folder = shlex.quote(str(run.directory))
    _say(f"  lanterne demo --dir {escape(folder)} --keep   # the table again, with your decisions")
