"""A network lab in namespaces for the probe tests and the benchmark (needs root and the Debian peers).

Every namespace, veth and bridge is named ``l6p…`` (other labs run beside this one with other
prefixes), and carries the pid of the run that made it: namespaces ``l6p-<pid>-<name>``, veths
``l6p<pid in base 36>-<n>a|b``. Two runs at once (a developer and a full suite) never touch each
other's lab, and ``Lab.clean_leftovers`` removes only what runs that are no longer alive left.
Hosts are namespaces with one veth to a bridge living in the ``…-lan`` namespace, so nothing of the
lab touches the machine's own namespace: the prober itself runs in ``…-prb`` and can reach lab
addresses only. ``Lab.close`` kills every process it started (by pid) and deletes its namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.peers import system_command

PREFIX: Final = "l6p"
_NAMESPACE: Final = re.compile(rf"{PREFIX}-(\d+)-")
_LINK: Final = re.compile(rf"{PREFIX}([0-9a-z]+)-\d+[ab]$")
REPO: Final = Path(__file__).resolve().parents[2]
PYTHON: Final = sys.executable
PEERS: Final = Path(__file__).resolve().parent / "lab_peers.py"
#: Debian peers the lab needs, by the command that must be on PATH.
PEER_COMMANDS: Final = ("ip", "snmpd", "storescp", "tcpdump")


def missing_requirements() -> str | None:
    """Why the lab cannot run here (not root, a peer missing), or None."""
    if os.geteuid() != 0:
        return "the lab builds network namespaces: run as root (.ci/run does)"
    missing = [name for name in PEER_COMMANDS if system_command(name) is None]
    if missing:
        return f"the lab needs {', '.join(missing)} (apt install snmpd dcmtk tcpdump iproute2)"
    return None


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (ip, sysctl...) and return its result."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def in_ns(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace."""
    return run("ip", "netns", "exec", namespace, *args, check=check)


@dataclass
class Host:
    """A namespace with one address on a lab segment."""

    name: str
    namespace: str
    ip: str
    interface: str
    mac: str = ""


@dataclass
class Lab:
    """Namespaces, veths, bridges and processes of one lab; ``close`` undoes all of it."""

    folder: Path
    pid: int = field(default_factory=os.getpid)
    namespaces: list[str] = field(default_factory=list)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    _links: int = 0

    # -- building ----------------------------------------------------------------------------------

    @staticmethod
    def clean_leftovers() -> None:
        """Remove what crashed runs (their pid is gone) left: their processes, namespaces, links."""
        for line in run("ip", "netns", "list", check=False).stdout.splitlines():
            name = line.split(" ")[0]
            found = _NAMESPACE.match(name)
            if found is None or _alive(int(found.group(1))):
                continue
            for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "delete", name, check=False)
        for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(": ")
            link = parts[1].split("@")[0] if len(parts) > 1 else ""
            found = _LINK.match(link)
            if found is not None and not _alive(int(found.group(1), 36)):
                run("ip", "link", "delete", link, check=False)

    @property
    def lan(self) -> str:
        """The namespace holding the bridges."""
        return f"{PREFIX}-{self.pid}-lan"

    def namespace(self, name: str) -> str:
        """Create a namespace (``l6p-<pid>-<name>``) with its loopback up."""
        full = f"{PREFIX}-{self.pid}-{name}"
        run("ip", "netns", "add", full)
        self.namespaces.append(full)
        in_ns(full, "ip", "link", "set", "lo", "up")
        return full

    def bridge(self, name: str) -> str:
        """A bridge ``l6p<name>`` in the LAN namespace (created on first use)."""
        if self.lan not in self.namespaces:
            self.namespace("lan")
        full = f"{PREFIX}{name}"
        in_ns(self.lan, "ip", "link", "add", full, "type", "bridge")
        # No multicast snooping: mDNS must reach every port like on a plain switch.
        in_ns(self.lan, "ip", "link", "set", full, "type", "bridge", "mcast_snooping", "0")
        in_ns(self.lan, "ip", "link", "set", full, "up")
        return full

    def attach(self, namespace: str, bridge: str, cidr: str) -> tuple[str, str]:
        """A veth from ``namespace`` to ``bridge`` with ``cidr``; returns (interface, MAC)."""
        self._links += 1
        # Created in the machine's namespace, so unique there: the run's pid is in the name.
        stem = f"{PREFIX}{_base36(self.pid)}-{self._links}"
        inside, outside = f"{stem}a", f"{stem}b"
        run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        run("ip", "link", "set", inside, "netns", namespace)
        run("ip", "link", "set", outside, "netns", self.lan)
        in_ns(self.lan, "ip", "link", "set", outside, "master", bridge)
        in_ns(self.lan, "ip", "link", "set", outside, "up")
        in_ns(namespace, "ip", "addr", "add", cidr, "dev", inside)
        in_ns(namespace, "ip", "link", "set", inside, "up")
        mac = in_ns(namespace, "cat", f"/sys/class/net/{inside}/address").stdout.strip()
        return inside, mac

    def host(self, name: str, bridge: str, ip: str, prefix: int = 24, gateway: str | None = None) -> Host:
        """A namespace with one address on ``bridge`` (and a default route via ``gateway``)."""
        namespace = self.namespace(name)
        interface, mac = self.attach(namespace, bridge, f"{ip}/{prefix}")
        if gateway:
            in_ns(namespace, "ip", "route", "add", "default", "via", gateway)
        host = Host(name, namespace, ip, interface, mac)
        self.hosts[name] = host
        return host

    def router(self, name: str, legs: list[tuple[str, str]]) -> Host:
        """A namespace forwarding between segments: ``legs`` are (bridge, address/prefix)."""
        namespace = self.namespace(name)
        in_ns(namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        first = None
        for bridge, cidr in legs:
            interface, mac = self.attach(namespace, bridge, cidr)
            first = first or Host(name, namespace, cidr.split("/")[0], interface, mac)
        assert first is not None
        self.hosts[name] = first
        return first

    # -- processes ---------------------------------------------------------------------------------

    def start(
        self, namespace: str, *args: str, env: dict[str, str] | None = None, label: str = ""
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in a namespace; its output goes to ``folder/<label>.log``."""
        label = label or f"{namespace}-{Path(args[0]).name}"
        log = open(self.folder / f"{label}.log", "wb")  # noqa: SIM115 - kept open for the process's life
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        self.processes.append((label, process))
        return process

    def log(self, label: str) -> str:
        """What a process wrote so far."""
        path = self.folder / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, label: str, text: str, timeout: float = 20.0) -> None:
        """Wait until a process's log shows ``text`` (it is ready); raise with its log otherwise."""
        deadline = time.monotonic() + timeout
        process = dict(self.processes)[label]
        while time.monotonic() < deadline:
            if text in self.log(label):
                return
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{label} did not get ready:\n{self.log(label)[-2000:]}")

    def wait_listening(self, namespace: str, port: int, *, udp: bool = False, timeout: float = 20.0) -> None:
        """Wait until something listens on ``port`` in ``namespace``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listing = in_ns(namespace, "ss", "-Hln" + ("u" if udp else "t"), check=False).stdout
            if any(
                line.split()[3].rsplit(":", 1)[-1] == str(port)
                for line in listing.splitlines()
                if line.split()
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {port}/{'udp' if udp else 'tcp'} in {namespace}")

    def peer(self, host: Host, kind: str, *args: str) -> None:
        """Start one of ``lab_peers.py``'s servers on ``host`` (waits for ``ready``)."""
        label = f"{host.name}-{kind}"
        self.start(host.namespace, PYTHON, str(PEERS), kind, "--bind", host.ip, *args, label=label)

    def snmpd(self, host: Host, config: str) -> None:
        """Debian's snmpd with its own configuration and state in the lab folder (never /etc/snmp)."""
        folder = self.folder / f"snmpd-{host.name}"
        folder.mkdir()
        (folder / "snmpd.conf").write_text(f"agentAddress udp:{host.ip}:161\n{config}")
        self.start(
            host.namespace,
            "snmpd",
            "-f",  # foreground: killed by pid at teardown
            "-C",  # no other configuration file than ours
            "-c",
            str(folder / "snmpd.conf"),
            "-Lf",
            str(folder / "snmpd.log"),
            env={"SNMP_PERSISTENT_DIR": str(folder / "state"), "MIBS": ""},
            label=f"{host.name}-snmpd",
        )

    def capture(self, host: Host, name: str, expression: str = "") -> Path:
        """tcpdump on the host's interface into ``folder/<name>.pcap`` (waits until it listens)."""
        path = self.folder / f"{name}.pcap"
        # Immediate mode: without it the last packets wait in a kernel block that a quiet link never
        # fills, and are lost when tcpdump is stopped.
        args = [
            "tcpdump",
            "-i",
            host.interface,
            "--immediate-mode",
            "-U",
            "-nn",
            "-s",
            "128",
            "-w",
            str(path),
        ]
        if expression:
            args.append(expression)
        self.start(host.namespace, *args, label=f"capture-{name}")
        self.wait_for(f"capture-{name}", "listening on")
        return path

    def stop(self, label: str) -> None:
        """Stop one process (SIGTERM, then SIGKILL) by its pid."""
        for name, process in self.processes:
            if name == label and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)

    def close(self) -> None:
        """Kill every process started here, then delete every namespace (links go with them)."""
        for label, _process in reversed(self.processes):
            self.stop(label)
        for namespace in reversed(self.namespaces):
            for pid in run("ip", "netns", "pids", namespace, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "delete", namespace, check=False)
        self.namespaces.clear()
