"""The ``lanterne`` command line: the only place that prints or exits.

Data goes to stdout, messages to stderr; every option has a ``LANTERNE_*`` environment default;
exit codes: 0 clean, 1 findings (with ``--fail-on-findings``), 2 usage or configuration error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent import (
    cli_daemon,
    cli_demo,
    cli_export,
    cli_fingerprints,
    cli_inventory,
    cli_probe,
    cli_review,
    cli_scan,
    cli_serve,
)
from agent._cli_common import EXIT_USAGE, AgentOption, default_agent_name, err
from collectors import CaptureFormatError, DecodeStats, decode_file

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Find the AI tools and medical devices used on a hospital network but missing from its inventory.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("demo")(cli_demo.demo)
app.add_typer(cli_fingerprints.app, name="fingerprints")
app.add_typer(cli_inventory.app, name="inventory")
app.add_typer(cli_review.alerts_app, name="alerts")
app.add_typer(cli_review.review_app, name="review")
app.command("export")(cli_export.export)
app.command("scan")(cli_scan.scan)
app.command("probe")(cli_probe.probe)
app.command("capture")(cli_daemon.capture)
app.command("run")(cli_daemon.run)
app.command("doctor")(cli_daemon.doctor)
app.command("serve")(cli_serve.serve)
app.add_typer(cli_serve.users_app, name="users")


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
    app()
