"""A reusable lab of network namespaces: a switch, hosts, and a sensor that receives a mirror of the traffic.

Everything is created by the test and torn down by it, even when it fails, and only inside
namespaces: no address outside the lab range is ever a target, nothing touches the host's own
interfaces. Names start with ``l5`` (other engineers run labs with other prefixes at the same
time); a namespace name carries the pid of the run that made it, so a later run deletes the
leftovers of a crashed one (``cleanup_stale``) without touching a lab that is still alive.

Topology (``10.55.0.0/24`` by default)::

    [l5-…-srv] 10.55.0.10 ──┐            ┌── [l5-…-cli] 10.55.0.20 (or DHCP)
                            ├── bridge ──┤
                  (switch namespace l5-…-sw)
                            │  tc mirred: each host port's ingress copied out of the sensor port
                            └──────────────► [l5-…-sen] sensor interface (no address, promiscuous)

The sensor port is not on the bridge: like a SPAN destination, it only receives the copies. If
the kernel has no ``tc`` mirred action, the bridge becomes a hub (``ageing_time 0``) with the
sensor on it, which floods the same frames to it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "l5"
NETWORK = "10.55.0"
_NS = re.compile(r"^l5-(\d+)-([0-9a-f]+)-(\w+)$")
_COUNTER = itertools.count()
#: Binaries the lab itself needs (tests check their own peers too).
LAB_BINARIES = ("ip", "tc")


def missing_binaries(names: Sequence[str]) -> list[str]:
    """Which of ``names`` are not installed (a lab test skips with their names)."""
    extra_paths = ("/usr/sbin", "/sbin")
    return [
        name
        for name in names
        if shutil.which(name) is None and not any(Path(d, name).exists() for d in extra_paths)
    ]


def skip_reason(binaries: Sequence[str] = ()) -> str | None:
    """Why lab tests cannot run here (not root, a binary missing), or None."""
    if os.geteuid() != 0:
        return "lab tests build network namespaces: they need root (CI runs them as root)"
    missing = missing_binaries([*LAB_BINARIES, *binaries])
    if missing:
        return f"lab tests need {', '.join(missing)} (scripts/setup installs the Debian peers)"
    return None


def _run(*command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    listing = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def _kill_namespace_processes(namespace: str) -> None:
    pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def delete_namespace(namespace: str) -> None:
    """Kill what runs in ``namespace`` and delete it (its interfaces go with it)."""
    _kill_namespace_processes(namespace)
    _run("ip", "netns", "delete", namespace, check=False)


def cleanup_stale() -> list[str]:
    """Delete the ``l5`` namespaces of runs that are no longer alive; return their names."""
    removed: list[str] = []
    for namespace in _namespaces():
        found = _NS.match(namespace)
        if found is not None and not _alive(int(found.group(1))):
            delete_namespace(namespace)
            removed.append(namespace)
    return removed


@dataclass
class Host:
    """A namespace with one interface on the switch."""

    lab: Lab
    role: str
    namespace: str
    iface: str
    ip: str | None
    mac: str

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host and wait for it."""
        return _run("ip", "netns", "exec", self.namespace, *command, check=check, timeout=timeout)

    def spawn(
        self, *command: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running command inside this host (killed at teardown)."""
        return self.lab.spawn(self.namespace, *command, log=log, env=env)


@dataclass
class Lab:
    """The namespaces, interfaces and processes of one lab; ``close()`` removes them all."""

    tag: str = field(default_factory=lambda: f"{os.getpid() & 0xFFFF:04x}{next(_COUNTER) & 0xF:x}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    switch: str = ""
    bridge: str = ""
    sensor_port: str = ""
    mirrored: bool = False

    def _namespace(self, role: str) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.tag}-{role}"

    def _ifname(self, role: str, end: int) -> str:
        name = f"{PREFIX}{self.tag}{role[:4]}{end}"
        assert len(name) <= 15, name
        return name

    def _add_namespace(self, role: str) -> str:
        namespace = self._namespace(role)
        _run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        return namespace

    def build_switch(self) -> None:
        """The switch namespace and its bridge."""
        self.switch = self._add_namespace("sw")
        self.bridge = self._ifname("br", 0)
        _run("ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", self.bridge, "up")

    def add_host(self, role: str, ip: str | None, *, index: int) -> Host:
        """A host namespace cabled to the switch, with ``ip``/24 (None: no address, e.g. DHCP later)."""
        namespace = self._add_namespace(role)
        inside, port = self._ifname(role, 0), self._ifname(role, 1)
        mac = f"02:55:00:00:{int(self.tag[:2], 16):02x}:{index:02x}"
        _run(
            "ip",
            "link",
            "add",
            inside,
            "netns",
            namespace,
            "address",
            mac,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.switch,
        )
        _run("ip", "-n", self.switch, "link", "set", port, "master", self.bridge)
        _run("ip", "-n", self.switch, "link", "set", port, "up")
        _run("ip", "-n", namespace, "link", "set", inside, "up")
        if ip is not None:
            _run("ip", "-n", namespace, "addr", "add", f"{ip}/24", "dev", inside)
        host = Host(self, role, namespace, inside, ip, mac)
        self.hosts[role] = host
        if self.sensor_port:
            self._mirror(port)
        return host

    def add_sensor(self, role: str = "sen") -> Host:
        """The sensor: receives a copy of every frame that enters a host port, has no address."""
        namespace = self._add_namespace(role)
        inside, port = self._ifname(role, 0), self._ifname(role, 1)
        _run(
            "ip",
            "link",
            "add",
            inside,
            "netns",
            namespace,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.switch,
        )
        _run("ip", "-n", self.switch, "link", "set", port, "up")
        _run("ip", "-n", namespace, "link", "set", inside, "up")
        # No IPv6 link-local chatter from the sensor port: it only listens.
        _run(
            "ip",
            "netns",
            "exec",
            namespace,
            "sysctl",
            "-qw",
            f"net.ipv6.conf.{inside}.disable_ipv6=1",
            check=False,
        )
        self.sensor_port = port
        for host in list(self.hosts.values()):
            self._mirror(self._ifname(host.role, 1))
        sensor = Host(self, role, namespace, inside, None, "")
        self.hosts[role] = sensor
        return sensor

    def _mirror(self, port: str) -> None:
        qdisc = _run(
            "tc", "-n", self.switch, "qdisc", "add", "dev", port, "handle", "ffff:", "ingress", check=False
        )
        mirror = ("action", "mirred", "egress", "mirror", "dev", self.sensor_port)
        match_all = ("protocol", "all", "u32", "match", "u32", "0", "0")
        rule = _run(
            "tc",
            "-n",
            self.switch,
            "filter",
            "add",
            "dev",
            port,
            "parent",
            "ffff:",
            *match_all,
            *mirror,
            check=False,
        )
        if qdisc.returncode == 0 and rule.returncode == 0:
            self.mirrored = True
            return
        # No tc mirred here: make the bridge a hub and put the sensor on it.
        _run("ip", "-n", self.switch, "link", "set", self.bridge, "type", "bridge", "ageing_time", "0")
        _run("ip", "-n", self.switch, "link", "set", self.sensor_port, "master", self.bridge, check=False)

    def spawn(
        self, namespace: str, *command: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a command in ``namespace``; its output goes to ``log`` (or nowhere)."""
        output = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                stdout=output,
                stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            if log is not None and not isinstance(output, int):
                output.close()
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Kill every process, delete every namespace (safe to call twice, and after a failed build)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()
        for namespace in reversed(self.namespaces):
            delete_namespace(namespace)
        self.namespaces.clear()


def wait_for(
    predicate: object, *, timeout: float = 10.0, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``predicate()`` until it is true; raise AssertionError naming ``what`` after ``timeout``."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_port(host: Host, port: int, *, udp: bool = False, timeout: float = 10.0) -> None:
    """Wait until something listens on ``port`` inside ``host``."""
    flag = "-uln" if udp else "-tln"

    def listening() -> bool:
        out = host.run("ss", flag, check=False).stdout
        return any(
            line.split()[3].endswith(f":{port}") for line in out.splitlines()[1:] if len(line.split()) > 4
        )

    wait_for(listening, timeout=timeout, what=f"port {port} in {host.role}")


@contextlib.contextmanager
def lab(
    *, hosts: Sequence[tuple[str, str | None]] = (("srv", f"{NETWORK}.10"), ("cli", f"{NETWORK}.20"))
) -> Iterator[Lab]:
    """Build a lab (switch, hosts, sensor) and always tear it down."""
    cleanup_stale()
    built = Lab()
    try:
        built.build_switch()
        for index, (role, ip) in enumerate(hosts, start=1):
            built.add_host(role, ip, index=index)
        built.add_sensor()
        yield built
    finally:
        built.close()
