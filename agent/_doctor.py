"""``lanterne doctor``: what works, what does not, and the fix (capabilities, interfaces, database…).

Each check returns a ``Check`` (``ok``, ``warn`` or ``fail``, what was found, and the command or
setting that fixes it). Checks never raise: a check that cannot run is itself a failure with its
reason. The CLI prints them; nothing here prints or exits.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from agent._config import Config, ConfigError, load_config
from collectors._bpf import FilterError, compile_filter, filter_expression
from store import StoreError, current_revision, head_revision, open_store

CAP_NET_ADMIN: Final = 12
CAP_NET_RAW: Final = 13
_SYS_NET: Final = Path("/sys/class/net")
_RMEM_MAX: Final = Path("/proc/sys/net/core/rmem_max")


class Status(StrEnum):
    """How a check went."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict, with the fix when there is something to fix."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Plain data (``--json``)."""
        return {"check": self.name, "status": str(self.status), "detail": self.detail, "fix": self.fix}


def effective_capabilities() -> int:
    """The effective capability set of this process (0 when it cannot be read)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def check_capabilities() -> Check:
    """CAP_NET_RAW (needed) and whether a packet socket actually opens."""
    caps = effective_capabilities()
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    except PermissionError:
        fix = (
            f"run the daemon with the systemd unit of deploy/ (AmbientCapabilities=CAP_NET_RAW), "
            f"or in Docker with --cap-add=NET_RAW, or grant the interpreter: "
            f"sudo setcap cap_net_raw+ep {_interpreter()}"
        )
        return Check("capabilities", Status.FAIL, "no CAP_NET_RAW: live capture cannot open its socket", fix)
    except OSError as exc:
        return Check(
            "capabilities", Status.FAIL, f"packet sockets unavailable: {exc}", "use Linux (AF_PACKET)"
        )
    probe.close()
    names = [
        name
        for bit, name in ((CAP_NET_RAW, "CAP_NET_RAW"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
        if caps >> bit & 1
    ]
    if os.geteuid() == 0:
        return Check(
            "capabilities",
            Status.WARN,
            "running as root: it works, but the daemon needs CAP_NET_RAW only",
            "use the systemd unit of deploy/ (an unprivileged user with AmbientCapabilities=CAP_NET_RAW)",
        )
    return Check("capabilities", Status.OK, f"packet sockets open ({', '.join(names) or 'file capability'})")


def check_filter(config: Config | None) -> Check:
    """The kernel filter compiles (libpcap present) and fits the kernel's limit."""
    capture = config.capture if config is not None else None
    try:
        expression = (
            filter_expression(capture.continuation_ports, capture.response_ports)
            if capture
            else filter_expression()
        )
        program = compile_filter(expression)
    except FilterError as exc:
        return Check(
            "capture filter",
            Status.FAIL,
            f"the BPF filter does not compile: {exc}",
            "install libpcap (Debian: apt install libpcap0.8)",
        )
    return Check("capture filter", Status.OK, f"compiled by libpcap: {len(program)} BPF instructions")


def _operstate(iface: str) -> str:
    try:
        return (_SYS_NET / iface / "operstate").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def check_interfaces(interfaces: Iterable[str]) -> list[Check]:
    """Each interface exists and is up."""
    names = list(interfaces)
    if not names:
        return [
            Check(
                "interfaces",
                Status.WARN,
                "no interface configured: nothing is captured",
                "list the SPAN/TAP interfaces in capture.interfaces (or lanterne capture --iface IF)",
            )
        ]
    available = sorted(name for _, name in socket.if_nameindex())
    checks: list[Check] = []
    for name in names:
        key = f"interface {name}"
        if name not in available:
            checks.append(
                Check(key, Status.FAIL, "no such interface", f"use one of: {', '.join(available) or 'none'}")
            )
            continue
        state = _operstate(name)
        if state == "down":
            checks.append(Check(key, Status.FAIL, "interface is down", f"sudo ip link set {name} up"))
        elif state in {"up", "unknown"}:
            # Virtual interfaces (veth, tun, bridges) often say "unknown" while carrying traffic.
            checks.append(Check(key, Status.OK, f"present, state {state}"))
        else:
            checks.append(
                Check(key, Status.WARN, f"state {state}: no link?", "check the cable or the SPAN session")
            )
    return checks


def check_buffer(config: Config | None) -> Check:
    """Whether the kernel grants the configured receive buffer without CAP_NET_ADMIN."""
    wanted = (config.capture.buffer_mib if config else 32) << 20
    if effective_capabilities() >> CAP_NET_ADMIN & 1:
        return Check("receive buffer", Status.OK, f"{wanted >> 20} MiB (CAP_NET_ADMIN lifts the cap)")
    try:
        cap = int(_RMEM_MAX.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return Check("receive buffer", Status.WARN, "cannot read net.core.rmem_max")
    if cap >= wanted:
        return Check("receive buffer", Status.OK, f"{wanted >> 20} MiB allowed (net.core.rmem_max {cap})")
    return Check(
        "receive buffer",
        Status.WARN,
        f"the kernel caps socket buffers at {cap >> 10} KiB; bursts will be dropped",
        f"sudo sysctl -w net.core.rmem_max={wanted} (and install deploy/99-lanterne.conf in /etc/sysctl.d)",
    )


def check_database(url: str) -> Check:
    """The database answers and its schema is (or can be migrated to) the current one."""
    try:
        store = open_store(url)
    except StoreError as exc:
        return Check(
            "database",
            Status.FAIL,
            str(exc),
            "check database.url (or $LANTERNE_DB): sqlite:////var/lib/lanterne/lanterne.db "
            "or postgresql://user@host/db, and that the server runs",
        )
    try:
        revision = current_revision(store.engine)
        detail = f"{store.dialect} at {store.url}, schema {revision}"
        if revision != head_revision():
            return Check(
                "database", Status.WARN, f"{detail} (expected {head_revision()})", "lanterne run migrates it"
            )
        return Check("database", Status.OK, detail)
    finally:
        store.dispose()


def check_catalogue() -> Check:
    """The fingerprint catalogue loads."""
    from fingerprints import CatalogError, default_index  # noqa: PLC0415 - loading costs a second

    try:
        index = default_index()
    except CatalogError as exc:
        return Check("catalogue", Status.FAIL, f"does not load: {exc}", "run: lanterne fingerprints test")
    products = len(index.catalog.by_id)
    return Check("catalogue", Status.OK, f"{products} products, version {index.version}")


def check_spool(config: Config) -> Check:
    """The spool directory is writable; say how much waits in it."""
    path = config.spool.path
    directory = path.parent
    probe_dir = directory
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK):
        return Check(
            "spool",
            Status.FAIL,
            f"{directory} is not writable: outages would lose data",
            f"create it for the daemon's user (install -d -o lanterne {directory}) or set spool.path",
        )
    if path.exists():
        size = path.stat().st_size
        return Check("spool", Status.WARN if size else Status.OK, f"{size >> 10} KiB waiting in {path}")
    free = shutil.disk_usage(probe_dir).free
    return Check("spool", Status.OK, f"empty ({free >> 20} MiB free in {probe_dir})")


def check_metrics(config: Config) -> Check:
    """The metrics address can be bound (or is already served: the daemon runs)."""
    if not config.metrics.enabled:
        return Check("metrics", Status.OK, "disabled")
    address = f"{config.metrics.host}:{config.metrics.port}"
    try:
        family = socket.AF_INET6 if ":" in config.metrics.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((config.metrics.host, config.metrics.port))
    except OSError as exc:
        return Check(
            "metrics",
            Status.WARN,
            f"{address} is in use or not bindable ({exc.strerror})",
            "is the daemon already running? else change metrics.address",
        )
    return Check("metrics", Status.OK, f"{address} is free")


def run_checks(
    config_path: Path | None,
    *,
    interfaces: Iterable[str] = (),
    database: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Check]:
    """Every check, in the order a person fixes things."""
    checks: list[Check] = []
    config: Config | None = None
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            checks.append(Check("configuration", Status.FAIL, str(exc), f"edit {config_path}"))
        else:
            checks.append(Check("configuration", Status.OK, f"{config_path} is valid"))
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("capabilities", lambda: [check_capabilities()]),
        ("filter", lambda: [check_filter(config)]),
        ("interfaces", lambda: check_interfaces(interfaces or (config.capture.interfaces if config else ()))),
        ("buffer", lambda: [check_buffer(config)]),
    ]
    url = database or (config.database_url if config else None)
    if url is not None:
        steps.append(("database", lambda: [check_database(url)]))
    steps.append(("catalogue", lambda: [check_catalogue()]))
    if config is not None:
        conf = config
        steps += [("spool", lambda: [check_spool(conf)]), ("metrics", lambda: [check_metrics(conf)])]
    for name, step in steps:
        if progress is not None:
            progress(name)
        try:
            checks += step()
        except Exception as exc:  # a check that cannot run is a finding, never a crash
            checks.append(
                Check(name, Status.FAIL, f"the check itself failed: {exc.__class__.__name__}: {exc}")
            )
    return checks
