"""``lanterne probe CIDR…``: active discovery, once, under the safety rules (DESIGN §6).

Nothing is sent without an explicit scope (``--allow``): the CIDRs given as arguments say what to
sweep now, the scope what may be probed at all; an address outside it, on the deny list, in a
passive-only subnet or known as a medical device is refused and logged. ``--dry-run`` prints every
probe that would be sent (stdout, one per line; ``--json``: JSON lines) and sends nothing.
Otherwise a progress bar runs on stderr, the results go through the matcher, the store and
reconciliation like passive ones, every probe goes to the probe log, and a summary is printed on
stderr (``--json``: the same on stdout). Secrets are only ever named by environment variable.
Exit codes: 0 done; 2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Final

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent._cli_common import (
    DEFAULT_SITE,
    AgentOption,
    DbOption,
    PseudonymousOption,
    SiteOption,
    default_db_url,
    err,
    fatal,
    pseudonymiser_from_env,
)
from agent._host import default_agent_name
from agent._probing import (
    MAX_HOSTS,
    ProbeConfig,
    ProbeConfigError,
    SweepReport,
    async_sweep,
    expand_targets,
    identifications,
)

# The same switch and key as ``lanterne scan``: a pseudonymous store must stay pseudonymous.
from collectors.probe import (
    DEFAULT_BURST,
    DEFAULT_CALLED_AE,
    DEFAULT_CALLING_AE,
    DEFAULT_HTTP_PORTS,
    DEFAULT_RATE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ProbePolicy,
    ProbeRecord,
    Secret,
    SnmpCredential,
    check_ae_title,
    parse_networks,
)
from fingerprints import CatalogError, Index, default_index
from store import ReconciliationStatus, StoreError, open_store

#: ``--snmp-v3 USER:AUTH_PROTOCOL:AUTH_KEY_ENV[:PRIV_PROTOCOL:PRIV_KEY_ENV]``.
SNMP_V3_HELP: Final = (
    "SNMPv3 user, as USER:AUTH:AUTH_KEY_VAR[:PRIV:PRIV_KEY_VAR] (protocols sha, sha256, md5..., aes, des...; "
    "keys are read from the named environment variables). Repeatable; tried before the communities."
)

CidrList = Annotated[
    list[str] | None,
    typer.Option(show_default=False, metavar="CIDR"),
]


def _networks(values: list[str] | None, what: str) -> tuple[Any, ...]:
    try:
        return parse_networks(
            (part for value in values or () for part in value.replace(",", " ").split()), what=what
        )
    except ValueError as exc:
        fatal(str(exc), tip="give CIDRs like 10.1.2.0/24 or single addresses")


def _credentials(community_vars: list[str] | None, v3_specs: list[str] | None) -> tuple[SnmpCredential, ...]:
    """v3 users first (they are refused loudly, communities silently), then the communities."""
    credentials: list[SnmpCredential] = []
    for spec in v3_specs or ():
        parts = spec.split(":")
        if len(parts) not in {3, 5} or not parts[0]:
            fatal("--snmp-v3 takes USER:AUTH:AUTH_KEY_VAR or USER:AUTH:AUTH_KEY_VAR:PRIV:PRIV_KEY_VAR")
        keys: list[Secret] = []
        for variable in parts[2::2]:
            value = os.environ.get(variable, "")
            if not value:
                fatal(f"--snmp-v3: ${variable} is not set", tip="export the key in that variable first")
            keys.append(Secret(value))
        try:
            credentials.append(
                SnmpCredential(
                    "3",
                    user=Secret(parts[0]),
                    auth_protocol=parts[1].lower(),
                    auth_key=keys[0],
                    priv_protocol=parts[3].lower() if len(parts) == 5 else None,
                    priv_key=keys[1] if len(parts) == 5 else None,
                )
            )
        except ValueError as exc:
            fatal(f"--snmp-v3: {exc}")
    for variable in community_vars or ():
        value = os.environ.get(variable, "")
        if not value:
            fatal(
                f"--snmp-community-env: ${variable} is not set", tip="export the community in that variable"
            )
        credentials.extend(SnmpCredential("2c", community=Secret(v)) for v in value.split(",") if v.strip())
    return tuple(credentials)


def _ports(text: str, option: str) -> tuple[int, ...]:
    ports: list[int] = []
    for part in text.replace(",", " ").split():
        if not part.isdigit() or not 0 < int(part) < 65536:
            fatal(f"{option}: {part!r} is not a port")
        ports.append(int(part))
    return tuple(ports)


@contextmanager
def _progress(enabled: bool | None) -> Iterator[Progress | None]:
    show = err.is_terminal if enabled is None else enabled
    if not show:
        yield None
        return
    with Progress(
        TextColumn("probing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("hosts"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        yield bar


def _record_line(record: ProbeRecord) -> str:
    port = f":{record.port}" if record.port is not None else ""
    return f"{record.outcome}\t{record.protocol}\t{record.target}{port}\t{record.detail}"


def _record_json(record: ProbeRecord) -> str:
    return json.dumps(
        {
            "ts": round(record.ts, 3),
            "target": record.target,
            "protocol": record.protocol,
            "port": record.port,
            "outcome": str(record.outcome),
            "detail": record.detail,
        },
        ensure_ascii=False,
    )


def probe(
    cidrs: Annotated[
        list[str], typer.Argument(help="Networks or addresses to sweep now.", show_default=False)
    ],
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            envvar="LANTERNE_PROBE_ALLOW",
            metavar="CIDR",
            help="The scope: networks that may be probed at all (required; repeatable).",
            show_default=False,
        ),
    ] = None,
    deny: Annotated[
        list[str] | None,
        typer.Option(
            "--deny",
            envvar="LANTERNE_PROBE_DENY",
            metavar="CIDR",
            help="Never probed, even inside the scope (repeatable).",
            show_default=False,
        ),
    ] = None,
    passive_only: Annotated[
        list[str] | None,
        typer.Option(
            "--passive-only",
            envvar="LANTERNE_PROBE_PASSIVE_ONLY",
            metavar="CIDR",
            help="Subnets (VLANs) that are only listened to (repeatable).",
            show_default=False,
        ),
    ] = None,
    interface: Annotated[
        list[str] | None,
        typer.Option(
            "--interface",
            "-i",
            envvar="LANTERNE_PROBE_INTERFACES",
            help="Interfaces for ARP and mDNS (default: every IPv4 interface that is up).",
            show_default=False,
        ),
    ] = None,
    passive_interface: Annotated[
        list[str] | None,
        typer.Option(
            "--passive-interface",
            envvar="LANTERNE_PROBE_PASSIVE_INTERFACES",
            help="Interfaces nothing is sent on (repeatable).",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", envvar="LANTERNE_PROBE_RATE", min=0.01, help="Packets per second, all probes together."
        ),
    ] = DEFAULT_RATE,
    burst: Annotated[
        int,
        typer.Option("--burst", envvar="LANTERNE_PROBE_BURST", min=1, help="Packets that may leave at once."),
    ] = DEFAULT_BURST,
    timeout: Annotated[
        float,
        typer.Option("--timeout", envvar="LANTERNE_PROBE_TIMEOUT", min=0.05, help="Seconds per attempt."),
    ] = DEFAULT_TIMEOUT,
    retries: Annotated[
        int,
        typer.Option(
            "--retries", envvar="LANTERNE_PROBE_RETRIES", min=0, help="Retries of a timed-out attempt."
        ),
    ] = DEFAULT_RETRIES,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", envvar="LANTERNE_PROBE_DRY_RUN", help="Print what would be sent; send nothing."
        ),
    ] = False,
    probe_medical: Annotated[
        bool,
        typer.Option(
            "--probe-medical",
            envvar="LANTERNE_PROBE_MEDICAL",
            help="Probe endpoints already identified as medical devices too (off: left alone).",
        ),
    ] = False,
    snmp_community_env: Annotated[
        list[str] | None,
        typer.Option(
            "--snmp-community-env",
            envvar="LANTERNE_SNMP_COMMUNITY_ENV",
            metavar="VAR",
            help="Environment variable holding SNMPv2c communities (comma-separated; repeatable).",
            show_default=False,
        ),
    ] = None,
    snmp_v3: Annotated[
        list[str] | None,
        typer.Option(
            "--snmp-v3", envvar="LANTERNE_SNMP_V3", metavar="SPEC", help=SNMP_V3_HELP, show_default=False
        ),
    ] = None,
    http_ports: Annotated[
        str,
        typer.Option(
            "--http-ports", envvar="LANTERNE_PROBE_HTTP_PORTS", help="HTTP(S) ports (443 and 8443 use TLS)."
        ),
    ] = ",".join(map(str, DEFAULT_HTTP_PORTS)),
    dicom: Annotated[
        bool,
        typer.Option(
            "--dicom", envvar="LANTERNE_PROBE_DICOM", help="DICOM C-ECHO on ports 104 and 11112 (opt-in)."
        ),
    ] = False,
    calling_ae: Annotated[
        str, typer.Option("--calling-ae", envvar="LANTERNE_PROBE_CALLING_AE", help="Our AE title for C-ECHO.")
    ] = DEFAULT_CALLING_AE,
    called_ae: Annotated[
        str, typer.Option("--called-ae", envvar="LANTERNE_PROBE_CALLED_AE", help="The AE title asked for.")
    ] = DEFAULT_CALLED_AE,
    snmp: Annotated[
        bool, typer.Option("--snmp/--no-snmp", envvar="LANTERNE_PROBE_SNMP", help="SNMP GET.")
    ] = True,
    http: Annotated[
        bool, typer.Option("--http/--no-http", envvar="LANTERNE_PROBE_HTTP", help="HTTP(S).")
    ] = True,
    mdns: Annotated[
        bool, typer.Option("--mdns/--no-mdns", envvar="LANTERNE_PROBE_MDNS", help="mDNS browsing.")
    ] = True,
    arp: Annotated[
        bool,
        typer.Option("--arp/--no-arp", envvar="LANTERNE_PROBE_ARP", help="ARP sweep of attached subnets."),
    ] = True,
    mdns_listen: Annotated[
        float,
        typer.Option(
            "--mdns-listen", envvar="LANTERNE_PROBE_MDNS_LISTEN", min=0, help="Seconds mDNS listens at least."
        ),
    ] = 5.0,
    db: DbOption = None,
    site: SiteOption = DEFAULT_SITE,
    agent: AgentOption = None,
    pseudonymous: PseudonymousOption = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            envvar="LANTERNE_PROGRESS",
            help="Progress bar on stderr (default: when stderr is a terminal).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="LANTERNE_JSON", help="JSON on stdout (summary, or dry-run lines)."),
    ] = False,
) -> None:
    """Active discovery, once: ARP, mDNS, SNMP, HTTP(S), DICOM, under the safety gate."""
    scope = _networks(allow, "--allow")
    if not scope:
        fatal(
            "no scope: nothing is probed without an explicit list of allowed networks",
            tip="add --allow CIDR for each network you are authorised to probe (or LANTERNE_PROBE_ALLOW)",
        )
    targets = _networks(cidrs, "target")
    try:
        policy = ProbePolicy(
            allow=scope,
            deny=_networks(deny, "--deny"),
            passive_only=_networks(passive_only, "--passive-only"),
            passive_interfaces=frozenset(passive_interface or ()),
            probe_medical=probe_medical,
            rate=rate,
            burst=burst,
            timeout=timeout,
            retries=retries,
            dry_run=dry_run,
        )
        config = ProbeConfig(
            targets=targets,
            policy=policy,
            interfaces=tuple(interface) if interface else None,
            arp=arp,
            mdns=mdns,
            mdns_listen=mdns_listen,
            snmp=snmp,
            snmp_credentials=_credentials(snmp_community_env, snmp_v3) if snmp else (),
            http=http,
            http_ports=_ports(http_ports, "--http-ports"),
            dicom=dicom,
            calling_ae=check_ae_title(calling_ae),
            called_ae=check_ae_title(called_ae),
        )
        total = len(expand_targets(targets, MAX_HOSTS))
    except ValueError as exc:  # ProbeConfigError included
        fatal(str(exc))
    try:
        index = default_index()
    except CatalogError as exc:
        fatal(f"the fingerprint catalogue does not load: {exc}", tip="run: lanterne fingerprints test")
    try:
        store = open_store(db or default_db_url())
    except StoreError as exc:
        fatal(str(exc), tip="check --db / LANTERNE_DB (sqlite:///path.db or postgresql://user@host/db)")
    agent_name = agent or default_agent_name()
    pseudonymiser = pseudonymiser_from_env(pseudonymous)

    def print_record(record: ProbeRecord) -> None:
        if dry_run:
            sys.stdout.write((_record_json(record) if as_json else _record_line(record)) + "\n")

    try:
        with _progress(progress if not dry_run else False) as bar:
            task = bar.add_task("probe", total=total) if bar is not None else None

            def advance(done: int, planned: int) -> None:
                if bar is not None and task is not None:
                    bar.update(task, completed=done, total=planned)

            report = asyncio.run(
                async_sweep(
                    config,
                    store,
                    site=site,
                    agent=agent_name,
                    index=index,
                    pseudonymiser=pseudonymiser,
                    progress=advance,
                    on_record=print_record,
                )
            )
    except ProbeConfigError as exc:
        fatal(str(exc))
    except StoreError as exc:
        fatal(str(exc))
    finally:
        store.dispose()
    sys.stdout.flush()
    summary = summary_dict(report, index, rate=rate)
    _print_summary(summary)
    if as_json and not dry_run:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=1) + "\n")


def summary_dict(report: SweepReport, index: Index, *, rate: float) -> dict[str, Any]:
    """The sweep summary as plain data (``--json``)."""
    stored = report.stored
    reconciliation = report.reconciliation
    return {
        "seconds": round(report.seconds, 2),
        "targets": report.targets,
        "denied_hosts": report.denied_hosts,
        "medical_skipped": dict(sorted(report.medical_skipped.items())),
        "alive": dict(sorted(report.alive.items(), key=lambda item: _address_key(item[0]))),
        "probes": dict(sorted(report.outcomes.items())),
        "probe_log_rows": report.probe_log_rows,
        "packets": report.packets,
        "rate": rate,
        "observations": report.by_kind(),
        "identified": identifications(index, report.observations),
        "detections": {} if stored is None else {k: len(v) for k, v in sorted(stored.detections.items())},
        "reconciliation": None
        if reconciliation is None
        else {str(status): reconciliation.count(status) for status in ReconciliationStatus},
        "notes": list(report.notes),
    }


def _print_summary(data: dict[str, Any]) -> None:
    table = Table(title="probe summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("targets", str(data["targets"]))
    table.add_row("  refused by the gate", str(data["denied_hosts"]))
    table.add_row("  medical devices left alone", str(len(data["medical_skipped"])))
    table.add_row("  alive", str(len(data["alive"])))
    table.add_row("probe log rows", str(data["probe_log_rows"]))
    for outcome, count in data["probes"].items():
        table.add_row(f"  {outcome}", str(count))
    table.add_row(
        "packets (rate limit)", f"{data['packets']} at ≤ {data['rate']:g}/s in {data['seconds']:g} s"
    )
    table.add_row("observations", str(sum(data["observations"].values())))
    for kind, count in data["observations"].items():
        table.add_row(f"  {kind}", str(count))
    if data["identified"]:
        table.add_row("identified", "")
        for host, labels in data["identified"].items():
            table.add_row(f"  {host}", escape(", ".join(labels)))
    if data["reconciliation"] is not None:
        table.add_row("reconciliation", "")
        for status, count in data["reconciliation"].items():
            table.add_row(f"  {status}", str(count))
    err.print(table)
    for note in data["notes"]:
        err.print(f"[yellow]note:[/] {escape(note)}")


def _address_key(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return address.version, int(address)
