"""``lanterne run`` (the daemon), ``lanterne capture`` (live capture, once) and ``lanterne doctor``.

``run`` reads the TOML configuration (``deploy/lanterne.toml.example`` documents it), validates it
(exit 2 with the key at fault), then runs until SIGTERM or SIGINT, which flush everything first.
``capture`` captures the given interfaces for ``--duration`` seconds (or until Ctrl-C), stores what
it saw, reconciles the site and prints a summary, like ``scan`` does for files. ``doctor`` checks
capabilities, the capture filter, interfaces, the receive buffer, the database, the catalogue,
the spool and the metrics address, and says how to fix what fails (exit 2 when something does).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.markup import escape
from rich.table import Table

from agent._cli_common import (
    DEFAULT_SITE,
    EXIT_USAGE,
    AgentOption,
    DbOption,
    SiteOption,
    default_db_url,
    err,
    fatal,
)
from agent._config import (
    CaptureConfig,
    Config,
    ConfigError,
    LoggingConfig,
    MetricsConfig,
    SpoolConfig,
    load_config,
)
from agent._daemon import Daemon, RunReport
from agent._doctor import Status, run_checks
from agent._host import default_agent_name
from agent._logging import configure
from collectors import Observation
from collectors._bpf import FilterError
from fingerprints import CatalogError

#: Where ``run`` and ``doctor`` look when no ``--config`` is given.
DEFAULT_CONFIG: Final = Path("/etc/lanterne/lanterne.toml")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="LANTERNE_CONFIG",
        help="The TOML configuration (see deploy/lanterne.toml.example).",
    ),
]


def _state_dir() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "lanterne"


def _run_daemon(daemon: Daemon, duration: float | None = None) -> RunReport:
    try:
        return asyncio.run(daemon.async_run(duration=duration))
    except FilterError as exc:
        fatal(f"the capture filter cannot be compiled: {exc}", tip="install libpcap (apt install libpcap0.8)")
    except CatalogError as exc:
        fatal(f"the fingerprint catalogue does not load: {exc}", tip="run: lanterne fingerprints test")


def run(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the daemon: live capture, aggregation, storage, reconciliation and alerts, until stopped."""
    try:
        settings = load_config(config)
    except ConfigError as exc:
        fatal(str(exc), tip=f"lanterne doctor --config {config} checks the whole setup")
    configure(settings.logging.level, settings.logging.format)
    _run_daemon(Daemon(settings))


def capture(
    iface: Annotated[
        list[str],
        typer.Option("--iface", "-i", envvar="LANTERNE_IFACE", help="Interface to capture on (repeatable)."),
    ],
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            "-d",
            envvar="LANTERNE_DURATION",
            min=0.1,
            help="Seconds to capture (default: until Ctrl-C).",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    agent: AgentOption = None,
    print_observations: Annotated[
        bool,
        typer.Option(
            "--print/--no-print",
            envvar="LANTERNE_PRINT",
            help="Also print every Observation as a JSON line on stdout (as lanterne decode does).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="LANTERNE_JSON", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Capture live traffic once: observe, match, store, reconcile; print a summary."""
    state = _state_dir()
    settings = Config(
        agent=agent or default_agent_name(),
        site=site,
        database_url=db or default_db_url(),
        capture=CaptureConfig(interfaces=tuple(dict.fromkeys(iface))),
        spool=SpoolConfig(path=state / "capture-spool.jsonl"),
        metrics=MetricsConfig(enabled=False),
        logging=LoggingConfig(level="warning", format="text"),
    )
    configure("warning", "text")
    write = sys.stdout.write
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode

    def tap(observations: list[Observation]) -> None:
        for obs in observations:
            write(dumps(obs.to_dict()))
            write("\n")

    daemon = Daemon(settings, tap=tap if print_observations else None, reconcile_at_exit=True)
    report = _run_daemon(daemon, duration)
    sys.stdout.flush()
    summary = capture_summary(report)
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
    _print_capture_summary(summary)


def capture_summary(report: RunReport) -> dict[str, object]:
    """What a capture did, as plain data."""
    reconciliation = report.reconciliation
    return {
        "seconds": round(report.seconds, 3),
        "frames": report.frames,
        "kernel_drops": report.kernel_drops,
        "observations": report.decode.observations,
        "per_kind": dict(sorted(report.decode.per_kind.items())),
        "attributed": report.attributed,
        "stored_observations": report.stored.observations,
        "unattributed_observations": report.stored.unattributed,
        "shed_observations": report.shed_observations,
        "spooled_windows": report.spooled_batches,
        "endpoints": len(report.stored.endpoints),
        "detections": {key: len(ids) for key, ids in sorted(report.stored.detections.items())},
        "alerts_raised": None if reconciliation is None else len(reconciliation.raised),
    }


def _print_capture_summary(summary: dict[str, object]) -> None:
    table = Table(title="capture summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("seconds", "frames", "kernel_drops", "observations", "attributed", "stored_observations"):
        table.add_row(key.replace("_", " "), str(summary[key]))
    for key in ("unattributed_observations", "shed_observations", "spooled_windows"):
        if summary[key]:
            table.add_row(key.replace("_", " "), str(summary[key]))
    table.add_row("endpoints", str(summary["endpoints"]))
    detections = summary["detections"]
    if isinstance(detections, dict) and detections:
        table.add_row("detections (endpoints)", "")
        for product, count in detections.items():
            table.add_row(f"  {escape(str(product))}", str(count))
    if summary["alerts_raised"] is not None:
        table.add_row("alerts raised", str(summary["alerts_raised"]))
    err.print(table)


def doctor(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="LANTERNE_CONFIG",
            help=f"The configuration to check (default: {DEFAULT_CONFIG} when it exists).",
            show_default=False,
        ),
    ] = None,
    iface: Annotated[
        list[str] | None,
        typer.Option("--iface", "-i", envvar="LANTERNE_IFACE", help="Interface to check (repeatable)."),
    ] = None,
    db: DbOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="LANTERNE_JSON", help="Print the checks as JSON on stdout.")
    ] = False,
) -> None:
    """Check capabilities, interfaces, database and catalogue; say how to fix what fails."""
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    with err.status("checking…"):
        checks = run_checks(path, interfaces=iface or (), database=db)
    if as_json:
        sys.stdout.write(
            json.dumps([check.to_dict() for check in checks], ensure_ascii=False, indent=1) + "\n"
        )
    marks = {Status.OK: "[green]ok[/]", Status.WARN: "[yellow]warn[/]", Status.FAIL: "[bold red]FAIL[/]"}
    table = Table(title="lanterne doctor", title_justify="left")
    table.add_column("check")
    table.add_column("")
    # Fold long values (paths, URLs, commands): a fix cut with an ellipsis cannot be copied.
    table.add_column("found", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in checks:
        table.add_row(escape(check.name), marks[check.status], escape(check.detail), escape(check.fix or ""))
    err.print(table)
    if any(check.status is Status.FAIL for check in checks):
        raise typer.Exit(EXIT_USAGE)
