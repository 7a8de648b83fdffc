"""The ``lanterne`` command line: the only place that prints or exits.

Data goes to stdout, messages to stderr; every option has a ``LANTERNE_*`` environment default;
exit codes: 0 clean, 1 findings (with ``--fail-on-findings``), 2 usage or configuration error.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from agent._cli_common import EXIT_USAGE, AgentOption, err
from agent._host import default_agent_name
from collectors import CaptureFormatError, DecodeStats, decode_file

#: Every command but ``decode`` lives in its own module, imported only when that command runs (or
#: its own help is asked for): the web app, the daemon and the probers pull in FastAPI, pysnmp,
#: APScheduler… which a ``scan`` does not need. ``lanterne --help`` lists them from this table; a
#: test checks that each line equals the help its module declares.
#: name → (module, attribute: a command function or a typer sub-app, help line)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "alerts": (
        "agent.cli_review",
        "alerts_app",
        "Alerts: what needs a person (undeclared or unknown tools, mismatches, expiries).",
    ),
    "capture": (
        "agent.cli_daemon",
        "capture",
        "Capture live traffic once: observe, match, store, reconcile; print a summary.",
    ),
    "demo": (
        "agent.cli_demo",
        "demo",
        "Run the whole job on a bundled simulated hospital: inventory, capture, reconciliation, export.",
    ),
    "doctor": (
        "agent.cli_daemon",
        "doctor",
        "Check capabilities, interfaces, database and catalogue; say how to fix what fails.",
    ),
    "export": (
        "agent.cli_export",
        "export",
        "Export the cartographie: one row per product or device of the site, both statuses.",
    ),
    "fingerprints": ("agent.cli_fingerprints", "app", "The fingerprint catalogue: list, show, test, match."),
    "inventory": (
        "agent.cli_inventory",
        "app",
        "The declared inventory (cartographie): import a CSV/XLSX file, list the entries.",
    ),
    "probe": (
        "agent.cli_probe",
        "probe",
        "Active discovery, once: ARP, mDNS, SNMP, HTTP(S), DICOM, under the safety gate.",
    ),
    "review": (
        "agent.cli_review",
        "review_app",
        "Review: record decisions (who, when, why) and read their history.",
    ),
    "run": (
        "agent.cli_daemon",
        "run",
        "Run the daemon: live capture, aggregation, storage, reconciliation and alerts, until stopped.",
    ),
    "scan": ("agent.cli_scan", "scan", "Ingest captures: observe, match, store, reconcile; print a summary."),
    "serve": (
        "agent.cli_serve",
        "serve",
        "Serve the web review UI and the REST API (OpenAPI at /api/openapi.json).",
    ),
    "users": (
        "agent.cli_serve",
        "users_app",
        "People who may use the web UI and the API: roles viewer, reviewer, admin; tokens shown once.",
    ),
}

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


# typer vendors its own click (``typer._click``), whose classes are not public API: the methods
# below take and return them, hence the ``Any`` annotations.


def load_command(name: str) -> Any:
    """Import the module of a lazy command and build its click command."""
    module_name, attribute, _ = LAZY_COMMANDS[name]
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)
        group.name = name
        return group
    single = typer.Typer(add_completion=False, context_settings=CONTEXT_SETTINGS)
    single.command(name)(target)
    return typer.main.get_command(single)


class _LazyGroup(TyperGroup):
    """The top-level group: lazy commands are imported on use, listed from ``LAZY_COMMANDS``."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command, sorted."""
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """Import a lazy command when it runs; a placeholder with its help line for ``--help``."""
        if cmd_name in LAZY_COMMANDS:
            if self._listing:
                return TyperCommand(cmd_name, help=LAZY_COMMANDS[cmd_name][2])
            return load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """List the commands without importing them."""
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=_LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    help="Find the AI tools and medical devices used on a hospital network but missing from its inventory.",
    context_settings=CONTEXT_SETTINGS,
)


@app.callback()
def _root() -> None:
    """Lanterne: shadow AI and medical-device discovery for hospital networks."""


@app.command()
def decode(
    files: Annotated[list[Path], typer.Argument(help="pcap or pcapng captures.", show_default=False)],
    agent: AgentOption = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", "-k", envvar="LANTERNE_KINDS", help="Only print these kinds (repeatable)."),
    ] = None,
    summary: Annotated[
        bool,
        typer.Option("--summary/--no-summary", envvar="LANTERNE_SUMMARY", help="Print counts on stderr."),
    ] = True,
) -> None:
    """Print every Observation of the captures as JSON lines (no database)."""
    agent_name = agent or default_agent_name()
    wanted = set(kind or ())
    stats = DecodeStats()
    failed: list[str] = []
    write = sys.stdout.write
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    for path in files:
        try:
            for obs in decode_file(path, agent=agent_name, stats=stats):
                if not wanted or obs.kind in wanted:
                    write(dumps(obs.to_dict()))
                    write("\n")
        except (OSError, CaptureFormatError) as exc:
            failed.append(str(path))
            err.print(f"[red]{path}:[/] {exc}", highlight=False, markup=True)
    sys.stdout.flush()
    if summary:
        _print_decode_summary(stats)
    if failed:
        raise typer.Exit(EXIT_USAGE)


def _print_decode_summary(stats: DecodeStats) -> None:
    table = Table(title="decode summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("packets read", str(stats.packets))
    table.add_row("packets decoded", str(stats.decoded))
    table.add_row("malformed (skipped)", str(stats.malformed))
    if stats.unsupported_link:
        table.add_row("unsupported link type", str(stats.unsupported_link))
    if stats.truncated_files:
        table.add_row("captures cut short", str(stats.truncated_files))
    if stats.parser_errors:
        table.add_row("parser errors (bugs, skipped)", str(stats.parser_errors))
    table.add_row("observations", str(stats.observations))
    for kind_name, count in sorted(stats.per_kind.items()):
        table.add_row(f"  {kind_name}", str(count))
    for proto, count in sorted(stats.malformed_by.items()):
        table.add_row(f"  malformed {proto}", str(count))
    err.print(table)


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    finally:
        # The process ends here: the interpreter's last collections need not walk every object
        # the command made (tens of thousands after a scan); memory goes back to the system whole.
        gc.freeze()
