"""``lanterne scan FILE…``: ingest captures into the store, then reconcile the site.

Each file is decoded, matched, aggregated and stored in one transaction; a file whose content
was already ingested is skipped (said on stderr), so re-running a scan counts nothing twice.
Then the site is reconciled and a summary goes to stderr (``--json``: the same on stdout).
Exit codes: 0 clean; 1 with ``--fail-on-findings`` when undeclared or unknown tools are found;
2 when a file cannot be read or the database cannot be used.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from agent._cli_common import (
    DEFAULT_SITE,
    EXIT_FINDINGS,
    EXIT_USAGE,
    AgentOption,
    DbOption,
    PseudonymousOption,
    SiteOption,
    default_db_url,
    err,
    fatal,
    pseudonymiser_from_env,
)
from agent._decoding import FLUSH_AT, DecoderDied, long_lived
from agent._host import default_agent_name
from agent._prefetch import Prefetch
from collectors import CaptureFormatError
from fingerprints import CatalogError, Index, default_index

# The store, SQLAlchemy and the pipeline are imported inside ``scan``, once the first file's
# decoding process is forked: their start-up then runs beside its decoding (``agent._decoding``).
if TYPE_CHECKING:
    from agent._pipeline import ScanReport

#: Files at least this large get a progress bar (when stderr is a terminal).
PROGRESS_MIN_BYTES: Final = 16 << 20
#: Statuses that ``--fail-on-findings`` fails on: shadow IT and unnamed AI or medical devices.
FINDINGS: Final = frozenset({"undeclared_observed", "unknown_observed"})


@contextmanager
def _progress(files: list[Path], enabled: bool | None) -> Iterator[Progress | None]:
    """A byte progress bar on stderr for long files (auto: when stderr is a terminal)."""
    sizes = [path.stat().st_size for path in files if path.is_file()]
    show = enabled if enabled is not None else err.is_terminal and max(sizes, default=0) >= PROGRESS_MIN_BYTES
    if not show:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        yield progress


def scan(
    files: Annotated[
        list[Path], typer.Argument(help="pcap or pcapng captures (Zeek logs later).", show_default=False)
    ],
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    agent: AgentOption = None,
    lookback_days: Annotated[
        int | None,
        typer.Option(
            "--lookback-days",
            envvar="LANTERNE_LOOKBACK_DAYS",
            min=1,
            help="Reconciliation look-back (default: 30 days back from the site's newest detection).",
            show_default=False,
        ),
    ] = None,
    fail_on_findings: Annotated[
        bool,
        typer.Option(
            "--fail-on-findings",
            envvar="LANTERNE_FAIL_ON_FINDINGS",
            help="Exit 1 when undeclared or unknown tools are found at the site.",
        ),
    ] = False,
    pseudonymous: PseudonymousOption = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            envvar="LANTERNE_PROGRESS",
            help="Progress bar on stderr (default: for long files on a terminal).",
            show_default=False,
        ),
    ] = None,
    flush_keys: Annotated[
        int,
        typer.Option(
            "--flush-keys",
            envvar="LANTERNE_FLUSH_KEYS",
            min=1,
            help="Distinct observations held in memory before a write (each file still commits once).",
        ),
    ] = FLUSH_AT,
    parallel: Annotated[
        bool | None,
        typer.Option(
            "--parallel/--no-parallel",
            envvar="LANTERNE_PARALLEL",
            help="Decode in a second process beside the writer (default: files of 8 MiB or more, "
            "on two cores or more).",
            show_default=False,
        ),
    ] = None,
    decoders: Annotated[
        int | None,
        typer.Option(
            "--decoders",
            envvar="LANTERNE_DECODERS",
            min=1,
            max=64,
            help="Processes decoding each large file, each its share of the address pairs "
            "(default: one per CPU but one, 4 at most).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="LANTERNE_JSON", help="Also print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Ingest captures: observe, match, store, reconcile; print a summary."""
    agent_name = agent or default_agent_name()
    with ExitStack() as workers:
        prefetch = Prefetch(
            files, workers, agent=agent_name, flush_keys=flush_keys, parallel=parallel, decoders=decoders
        )
        # Before the catalogue loads and the store is imported: the child decodes meanwhile (only
        # this process matches and writes).
        prefetch(0)
        try:
            with long_lived():
                index = default_index()
        except CatalogError as exc:
            fatal(f"the fingerprint catalogue does not load: {exc}", tip="run: lanterne fingerprints test")
        report = _scan_files(
            files,
            prefetch,
            index,
            db=db,
            site=site,
            agent=agent_name,
            pseudonymous=pseudonymous,
            lookback_days=lookback_days,
            progress=progress,
            flush_keys=flush_keys,
            parallel=parallel,
            decoders=decoders,
        )
    _print_summary(report)
    if as_json:
        sys.stdout.write(json.dumps(summary_dict(report), ensure_ascii=False, indent=1) + "\n")
    if any(item.error for item in report.files):
        raise typer.Exit(EXIT_USAGE)
    findings = report.reconciliation is not None and any(
        product.status in FINDINGS for product in report.reconciliation.products
    )
    if fail_on_findings and findings:
        raise typer.Exit(EXIT_FINDINGS)


def _scan_files(
    files: list[Path],
    prefetch: Prefetch,
    index: Index,
    *,
    db: str | None,
    site: str,
    agent: str,
    pseudonymous: bool,
    lookback_days: int | None,
    progress: bool | None,
    flush_keys: int,
    parallel: bool | None,
    decoders: int | None,
) -> ScanReport:
    """Scan ``files`` into the store and reconcile them."""
    pseudonymiser = pseudonymiser_from_env(pseudonymous)
    with long_lived():
        from agent._pipeline import FileScan, Scanner, ScanReport  # noqa: PLC0415 - see the imports
        from store import StoreError, open_store  # noqa: PLC0415

        try:
            store = open_store(db or default_db_url())
        except StoreError as exc:
            fatal(str(exc), tip="check --db / LANTERNE_DB (sqlite:///path.db or postgresql://user@host/db)")
    report = ScanReport()
    try:
        scanner = Scanner(
            store,
            index,
            site=site,
            agent=agent,
            pseudonymiser=pseudonymiser,
            flush_at=flush_keys,
            parallel=parallel,
            decoders=decoders,
        )
        with _progress(files, progress) as bar:
            for number, path in enumerate(files):
                task = None
                if bar is not None and path.is_file():
                    task = bar.add_task(escape(path.name), total=path.stat().st_size)

                def advance(done: int, task: Any = task) -> None:
                    if bar is not None and task is not None:
                        bar.update(task, completed=done)

                try:
                    result = scanner.scan(
                        path,
                        progress=advance,
                        worker=prefetch.take(number),
                        decoded=partial(prefetch, number + 1),
                    )
                except (OSError, CaptureFormatError, DecoderDied) as exc:
                    report.files.append(FileScan(path=path, size=0, error=str(exc)))
                    err.print(f"[red]{escape(str(path))}:[/] {escape(str(exc))}")
                    continue
                finally:
                    if bar is not None and task is not None:
                        bar.remove_task(task)
                report.files.append(result)
                if result.skipped:
                    err.print(
                        f"{escape(str(path))}: already ingested (sha256 {result.sha256[:16]}…): skipped",
                        highlight=False,
                    )
        now = datetime.now(UTC)
        report.lookback = scanner.lookback(now, lookback_days)
        report.reconciliation = scanner.reconcile(now, report.lookback)
    except StoreError as exc:
        fatal(str(exc))
    finally:
        store.dispose()
    return report


def summary_dict(report: ScanReport) -> dict[str, Any]:
    """The scan summary as plain data (``--json``)."""
    from store import ReconciliationStatus  # noqa: PLC0415 - see the imports

    stored = report.stored
    reconciliation = report.reconciliation
    return {
        "files": [
            {
                "path": str(item.path),
                "sha256": item.sha256 or None,
                "size": item.size,
                "status": "failed" if item.error else "skipped" if item.skipped else "scanned",
                "error": item.error,
                "packets": item.decode.packets,
                "observations": item.decode.observations,
                "seconds": round(item.seconds, 3),
            }
            for item in report.files
        ],
        "packets": report.packets,
        "observations": report.observations,
        "stored_observations": stored.observations,
        "unattributed_observations": stored.unattributed,
        "shed_observations": sum(item.shed for item in report.files),
        "endpoints": len(stored.endpoints),
        "new_endpoints": stored.created,
        "merged_endpoints": stored.merged,
        "detections": {key: len(ids) for key, ids in sorted(stored.detections.items())},
        "lookback_days": None if report.lookback is None else report.lookback.days,
        "reconciliation": None
        if reconciliation is None
        else {str(status): reconciliation.count(status) for status in ReconciliationStatus},
        "alerts_raised": None if reconciliation is None else len(reconciliation.raised),
        "alerts_closed": None if reconciliation is None else len(reconciliation.closed),
    }


def _print_summary(report: ScanReport) -> None:
    data = summary_dict(report)
    statuses = [item["status"] for item in data["files"]]
    table = Table(title="scan summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row(
        "files",
        f"{statuses.count('scanned')} scanned, {statuses.count('skipped')} already ingested, "
        f"{statuses.count('failed')} failed",
    )
    table.add_row("packets", str(data["packets"]))
    table.add_row("observations", str(data["observations"]))
    table.add_row("  stored", str(data["stored_observations"]))
    if data["unattributed_observations"]:
        table.add_row("  no identity (remote, unbound)", str(data["unattributed_observations"]))
    if data["shed_observations"]:
        table.add_row("  shed (window full)", str(data["shed_observations"]))
    table.add_row(
        "endpoints", f"{data['endpoints']} ({data['new_endpoints']} new, {data['merged_endpoints']} merged)"
    )
    if data["detections"]:
        table.add_row("detections (endpoints)", "")
        for key, count in data["detections"].items():
            table.add_row(f"  {escape(key)}", str(count))
    if data["reconciliation"] is not None:
        table.add_row(f"reconciliation ({data['lookback_days']} days)", "")
        for status, count in data["reconciliation"].items():
            table.add_row(f"  {status}", str(count))
        table.add_row("alerts raised / closed", f"{data['alerts_raised']} / {data['alerts_closed']}")
    err.print(table)
