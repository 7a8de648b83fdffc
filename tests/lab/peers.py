"""Real peers for lab tests, each started inside a lab namespace with a temporary configuration.

dnsmasq (DNS and DHCP), snmpd, ``openssl s_server`` (TLS) and Python's ``http.server`` run on the
lab server; ``lanterne run`` runs on the sensor. Everything is killed when the lab closes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tests.lab.netns import NETWORK, Host, wait_for, wait_port

REPO = Path(__file__).resolve().parents[2]
LANTERNE = [sys.executable, "-m", "agent"]
#: Names the lab DNS answers, each with a lab address (nothing outside 10.55.0.0/24 is ever used).
LAB_NAMES = {
    "chatgpt.com": f"{NETWORK}.10",
    "api.openai.com": f"{NETWORK}.10",
    "claude.ai": f"{NETWORK}.10",
    "api.mistral.ai": f"{NETWORK}.10",
    "gemini.google.com": f"{NETWORK}.11",
}
PEER_BINARIES = ("dnsmasq", "snmpd", "openssl", "dig", "curl", "snmpget", "udhcpc", "ss")


def start_dnsmasq(
    server: Host, workdir: Path, *, dhcp: bool = True, names: Mapping[str, str] = LAB_NAMES
) -> None:
    """DNS for the lab names (and DHCP on the lab range) on the server."""
    args = [
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        f"--interface={server.iface}",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--log-facility=-",
        f"--pid-file={workdir / 'dnsmasq.pid'}",
        "--local-ttl=300",
        *(f"--address=/{name}/{address}" for name, address in names.items()),
    ]
    if dhcp:
        args += [
            f"--dhcp-range={NETWORK}.100,{NETWORK}.150,255.255.255.0,1h",
            f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}",
        ]
    server.spawn(*args, log=workdir / "dnsmasq.log")
    wait_port(server, 53, udp=True)


def start_snmpd(server: Host, workdir: Path, *, sysobjectid: str, sysdescr: str, sysname: str) -> None:
    """A real snmpd answering v2c ``public`` with the given system group."""
    conf = workdir / "snmpd.conf"
    conf.write_text(
        f"agentAddress udp:{server.ip}:161\n"
        f"rocommunity public {NETWORK}.0/24\n"
        f"sysObjectID {sysobjectid}\n"
        f"sysDescr {sysdescr}\n"
        f"sysName {sysname}\n"
        "sysServices 72\n",
        encoding="utf-8",
    )
    logs = ("-Lf", str(workdir / "snmpd.log"), "-p", str(workdir / "snmpd.pid"))
    server.spawn("snmpd", "-f", "-C", "-c", str(conf), *logs)
    wait_port(server, 161, udp=True)


def start_tls_server(server: Host, workdir: Path, *, port: int = 443) -> None:
    """``openssl s_server`` with a throw-away self-signed certificate (the client never checks it)."""
    key, cert = workdir / "tls.key", workdir / "tls.crt"
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    subject = ("-subj", "/CN=lanterne-lab", "-keyout", str(key), "-out", str(cert))
    subprocess.run(
        ["openssl", "req", "-x509", *curve, "-nodes", "-days", "1", *subject],
        check=True,
        capture_output=True,
        timeout=30,
    )
    files = ("-cert", str(cert), "-key", str(key))
    server.spawn(
        "openssl", "s_server", "-accept", str(port), *files, "-www", "-quiet", log=workdir / "s_server.log"
    )
    wait_port(server, port)


def start_http_server(server: Host, workdir: Path, *, port: int = 80) -> None:
    """Python's http.server serving an empty directory."""
    root = workdir / "www"
    root.mkdir(exist_ok=True)
    server.spawn(
        sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", str(root)
    )
    wait_port(server, port)


class SensorDaemon:
    """``lanterne run`` in the sensor namespace with a configuration written for the lab."""

    def __init__(
        self,
        sensor: Host,
        workdir: Path,
        *,
        database: str | None = None,
        extra: str = "",
        reconcile_seconds: float = 2,
    ) -> None:
        self.sensor = sensor
        self.workdir = workdir
        self.database = database or f"sqlite:///{workdir / 'lanterne.db'}"
        self.config = workdir / "lanterne.toml"
        self.log = workdir / "daemon.log"
        self.config.write_text(
            f'agent = "l5-sensor"\nsite = "lab"\n'
            f'[database]\nurl = "{self.database}"\n'
            f'[capture]\ninterfaces = ["{sensor.iface}"]\n'
            f"[schedule]\nflush_seconds = 1\nreconcile_seconds = {reconcile_seconds}\n"
            f'[spool]\npath = "{workdir / "spool.jsonl"}"\n'
            f'[metrics]\naddress = "127.0.0.1:9850"\n'
            f'[logging]\nlevel = "info"\n{extra}',
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str] | None = None) -> None:
        """Start the daemon and wait until it captures."""
        environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        offset = len(self.log_text())  # a restart appends to the same log: wait for its own line
        self.process = self.sensor.spawn(
            *LANTERNE, "run", "--config", str(self.config), log=self.log, env=environment
        )
        wait_for(
            lambda: "capturing on" in self.log_text()[offset:] or self.process_exited(),
            timeout=60,
            what="capture",
        )
        assert not self.process_exited(), self.log_text()[-3000:]

    def process_exited(self) -> bool:
        """Whether the daemon has exited."""
        return self.process is not None and self.process.poll() is not None

    def log_text(self) -> str:
        """What the daemon logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code."""
        assert self.process is not None
        os.killpg(self.process.pid, sig)
        return self.process.wait(timeout=timeout)

    def metrics(self) -> str:
        """The Prometheus text served inside the sensor namespace."""
        result = self.sensor.run(
            "curl", "-s", "--max-time", "5", "http://127.0.0.1:9850/metrics", check=False
        )
        return result.stdout

    def wait_flushed(self, minimum: int, timeout: float = 30) -> None:
        """Wait until at least ``minimum`` observations were stored."""

        def stored() -> bool:
            for line in self.metrics().splitlines():
                if line.startswith("lanterne_stored_observations_total "):
                    return float(line.split()[1]) >= minimum
            return False

        wait_for(stored, timeout=timeout, what=f"{minimum} stored observations")


def sqlite_rows(url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of a query on the daemon's SQLite database (read-only)."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as connection:
        return list(connection.execute(query, args))


def pause(seconds: float) -> None:
    """Let the daemon's timers run (flush every second in the lab)."""
    time.sleep(seconds)


_SENDER = r"""
import socket, struct, sys, time
server, prefix, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for index in range(count):
    name = f"q{index}.{prefix}"
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    header = struct.pack("!HHHHHH", index & 0xFFFF, 0x0100, 1, 0, 0, 0)
    sock.sendto(header + question + b"\0\1\0\1", (server, 53))
    delay = start + (index + 1) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(count)
"""


def send_queries(
    client: Host, server_ip: str, suffix: str, count: int, rate: float
) -> subprocess.Popen[bytes]:
    """Send ``count`` DNS queries ``q<i>.<suffix>`` (one per name) at ``rate`` a second, in the background."""
    return client.spawn(sys.executable, "-c", _SENDER, server_ip, suffix, str(count), str(rate))


def stored_queries(rows: list[tuple[object, ...]]) -> dict[str, int]:
    """``{name: count}`` of (value, count) rows."""
    totals: dict[str, int] = {}
    for value, count in rows:
        totals[str(value)] = totals.get(str(value), 0) + int(str(count))
    return totals
