#!/usr/bin/env python3
"""Live capture under load: the mixed capture replayed into a veth at rising rates, three capturers at once.

    sudo .venv/bin/python bench/bench_live.py [--rates 10000,50000,200000,top] [--packets 500000]
                                              [--idle 20] [--json results.json]

For each rate, one run: ``tcpreplay`` sends ``bench/data/mixed.pcap`` (500,000 packets: bulk
TLS/SMB/RTP/QUIC with DNS, TLS ClientHellos, HTTP requests, mDNS and DHCP mixed in) from one
network namespace into a veth whose other end is in a sensor namespace, where three capturers
listen at the same time on the same interface:

- **Lanterne**: ``lanterne capture`` (AF_PACKET + kernel BPF filter + lean parser), stored in
  SQLite; counted from the database (sum of the aggregated counts);
- **tshark**: ``tshark -i`` writing a pcap (dumpcap), dissected afterwards;
- **scapy**: ``AsyncSniffer`` with a counting callback (known to lose events from ~20k pps).

All three get the same kernel filter (Lanterne's, from ``collectors._bpf``), so the difference is
what happens after the kernel. The events compared are DNS messages on port 53 (``dns.query`` +
``dns.answer``), TLS ClientHellos with an SNI (``tls.sni``) and HTTP requests with a Host
(``http.host``); "sent" is what Lanterne decodes from the file offline (tshark's offline count
of the same file is shown to cross-check it). Then the idle daemon: ``lanterne run`` on a silent
interface, its CPU share and resident memory after a warm-up.

Everything happens in ``l5`` namespaces made and removed by the benchmark; nothing is sent
anywhere else. Needs root (namespaces), tcpreplay and tshark.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from collectors import Kind, decode_file  # noqa: E402
from collectors._bpf import filter_expression  # noqa: E402
from tests.lab.netns import cleanup_stale, delete_namespace  # noqa: E402

CAPTURE = REPO / "bench" / "data" / "mixed.pcap"
EVENTS = ("dns", "sni", "host")
_TCLK = os.sysconf("SC_CLK_TCK")

# Runs in the sensor namespace: scapy's AsyncSniffer counting the same events as the others.
SNIFFER = r"""
import json, signal, sys, threading
from scapy.all import AsyncSniffer, conf
from scapy.layers.dns import DNS
from scapy.layers.inet import TCP, UDP
from scapy.packet import Raw
conf.sniff_promisc = 0
counts = {"dns": 0, "sni": 0, "host": 0}
def count(packet):
    if packet.haslayer(UDP) and 53 in (packet[UDP].sport, packet[UDP].dport) and packet.haslayer(DNS):
        counts["dns"] += 1
    elif packet.haslayer(TCP) and packet.haslayer(Raw):
        data = bytes(packet[Raw].load)
        if data[:2] == b"\x16\x03" and data[5:6] == b"\x01":
            counts["sni"] += 1
        elif b"\r\nHost:" in data[:2048] and data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT "):
            counts["host"] += 1
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
sniffer = AsyncSniffer(iface=sys.argv[1], filter=sys.stdin.read(), prn=count, store=False)
sniffer.start()
print("ready", flush=True)
done.wait()
sniffer.stop()
print(json.dumps(counts), flush=True)
"""


def run(*command: str, **options: object) -> subprocess.CompletedProcess[str]:
    """Run a command, fail loudly."""
    return subprocess.run(command, check=True, capture_output=True, text=True, **options)  # type: ignore[call-overload]


def in_ns(namespace: str, *command: str) -> list[str]:
    """A command line run inside ``namespace``."""
    return ["ip", "netns", "exec", namespace, *command]


def first_packets(path: Path, limit: int, work: Path) -> Path:
    """The capture itself, or a copy of its first ``limit`` records (classic little-endian pcap)."""
    if limit >= 500_000:
        return path
    copy = work / f"first-{limit}.pcap"
    with path.open("rb") as source, copy.open("wb") as target:
        target.write(source.read(24))
        for _ in range(limit):
            header = source.read(16)
            if len(header) < 16:
                break
            size = int.from_bytes(header[8:12], "little")
            target.write(header + source.read(size))
    return copy


def lanterne_truth(path: Path) -> dict[str, int]:
    """Events Lanterne decodes from the file itself (what was sent)."""
    counts = dict.fromkeys(EVENTS, 0)
    for obs in decode_file(path):
        kind = obs.kind
        if kind is Kind.DNS_QUERY or kind is Kind.DNS_ANSWER:
            counts["dns"] += 1
        elif kind is Kind.TLS_SNI:
            counts["sni"] += 1
        elif kind is Kind.HTTP_HOST:
            counts["host"] += 1
    return counts


def tshark_counts(path: Path) -> dict[str, int]:
    """Events tshark dissects in a capture file (one pass)."""
    display = "(dns && udp.port == 53) || tls.handshake.extensions_server_name || http.host"
    fields = ["-e", "dns.qry.name", "-e", "tls.handshake.extensions_server_name", "-e", "http.host"]
    out = run("tshark", "-r", str(path), "-n", "-Y", display, "-T", "fields", "-E", "separator=\t", *fields)
    counts = dict.fromkeys(EVENTS, 0)
    for line in out.stdout.splitlines():
        dns, sni, host = [*line.split("\t"), "", "", ""][:3]
        if dns:
            counts["dns"] += 1
        elif sni:
            counts["sni"] += 1
        elif host:
            counts["host"] += 1
    return counts


def stored_counts(database: Path) -> dict[str, int]:
    """Events Lanterne stored (aggregated rows: the counts add up to the observations)."""
    import sqlite3  # noqa: PLC0415

    with sqlite3.connect(database) as connection:
        rows = dict(connection.execute("SELECT kind, sum(count) FROM observations GROUP BY kind").fetchall())
    return {
        "dns": int(rows.get("dns.query") or 0) + int(rows.get("dns.answer") or 0),
        "sni": int(rows.get("tls.sni") or 0),
        "host": int(rows.get("http.host") or 0),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TCLK


def rss_mib(pid: int) -> float:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Veth:
    """Two namespaces joined by a veth: tcpreplay on one end, the capturers on the other."""

    def __init__(self) -> None:
        cleanup_stale()
        tag = f"{os.getpid() & 0xFFFF:04x}b"
        self.tx, self.rx = f"l5-{os.getpid()}-{tag}-btx", f"l5-{os.getpid()}-{tag}-brx"
        self.tx_if, self.rx_if = f"l5{tag}tx", f"l5{tag}rx"
        for namespace in (self.tx, self.rx):
            run("ip", "netns", "add", namespace)
        run(
            "ip",
            "link",
            "add",
            self.tx_if,
            "netns",
            self.tx,
            "type",
            "veth",
            "peer",
            "name",
            self.rx_if,
            "netns",
            self.rx,
        )
        for namespace, iface in ((self.tx, self.tx_if), (self.rx, self.rx_if)):
            run("ip", "-n", namespace, "link", "set", iface, "up")
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            run("ip", "netns", "exec", namespace, "sysctl", "-qw", f"net.ipv6.conf.{iface}.disable_ipv6=1")

    def close(self) -> None:
        """Remove both namespaces (and everything running in them)."""
        for namespace in (self.tx, self.rx):
            delete_namespace(namespace)


def replay(veth: Veth, capture: Path, rate: str, loops: int = 1) -> float:
    """tcpreplay the capture at ``rate`` (packets/s, or ``top``); return the rate tcpreplay reports."""
    if rate == "top":
        speed = ["--topspeed"]
    else:
        # Above ~50k pps tcpreplay's per-packet timer cannot keep up: send small bursts per tick.
        speed = ["--pps", rate, "--pps-multi", str(max(1, int(rate) // 25_000))]
    # --preload-pcap: the file is read into memory first, so the disk never limits the rate.
    command = ("tcpreplay", "-i", veth.tx_if, "--preload-pcap", "--loop", str(loops), *speed, str(capture))
    done = run(*in_ns(veth.tx, *command), timeout=900)
    found = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", done.stdout)
    return float(found.group(1)) if found else 0.0


def one_rate(
    veth: Veth, rate: str, capture: Path, expression: str, work: Path, *, solo: bool, raw_only: bool = False
) -> dict[str, object]:
    """One replay with the three capturers listening (``solo``: Lanterne alone; ``rate*N``: N loops).

    ``raw_only``: Lanterne keeps CAP_NET_RAW and loses CAP_NET_ADMIN, as under the systemd unit: its
    receive buffer is then capped by ``net.core.rmem_max``.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_DATA_HOME": str(work / "xdg")}
    label = f"{rate}-raw-only" if raw_only else f"{rate}-solo" if solo else rate
    rate, _, times = rate.partition("*")
    loops = int(times or 1)
    database = work / f"lanterne-{label}.db"
    tshark_file = work / f"tshark-{label}.pcap"
    command = ("capture", "-i", veth.rx_if, "--db", f"sqlite:///{database}", "--json")
    privileges = ("setpriv", "--bounding-set", "-net_admin") if raw_only else ()
    lanterne = subprocess.Popen(
        in_ns(veth.rx, *privileges, sys.executable, "-m", "agent", *command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    tshark: subprocess.Popen[str] | None = None
    sniffer: subprocess.Popen[str] | None = None
    if not solo:
        dumpcap = ("-i", veth.rx_if, "-f", expression, "-w", str(tshark_file), "-q", "-B", "64")
        tshark = subprocess.Popen(
            in_ns(veth.rx, "tshark", *dumpcap),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        sniffer = subprocess.Popen(
            in_ns(veth.rx, sys.executable, "-c", SNIFFER, veth.rx_if),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert sniffer.stdin is not None
        assert sniffer.stdout is not None
        sniffer.stdin.write(expression)
        sniffer.stdin.close()
        sniffer.stdin = None  # closed: communicate() must not flush it
        assert sniffer.stdout.readline().strip() == "ready"
    time.sleep(12)  # Lanterne loads its catalogue and compiles its filter; tshark starts dumpcap
    cpu_before, started = cpu_seconds(lanterne.pid), time.monotonic()
    achieved = replay(veth, capture, rate, loops)
    replay_seconds = time.monotonic() - started
    time.sleep(5)  # let every capturer drain its socket buffer
    cpu = cpu_seconds(lanterne.pid) - cpu_before
    lanterne.send_signal(signal.SIGINT)
    out, _ = lanterne.communicate(timeout=300)
    summary = json.loads(out)
    result: dict[str, object] = {
        "rate": label,
        "loops": loops,
        "rmem_max": int(Path("/proc/sys/net/core/rmem_max").read_text(encoding="ascii")),
        "achieved_pps": achieved,
        "replay_seconds": round(replay_seconds, 2),
        "lanterne_cpu_seconds": round(cpu, 2),
        # Offered rate at which Lanterne's one core would be busy all the time on this mix.
        "lanterne_capacity_pps": round(achieved * replay_seconds / cpu) if cpu > 0 else None,
        "lanterne": stored_counts(database),
        "lanterne_kernel_drops": summary["kernel_drops"],
        "lanterne_frames": summary["frames"],
    }
    if tshark is not None and sniffer is not None:
        tshark.send_signal(signal.SIGINT)
        sniffer.send_signal(signal.SIGTERM)
        tshark.communicate(timeout=120)
        result["tshark"] = tshark_counts(tshark_file)
        result["scapy"] = json.loads(sniffer.communicate(timeout=120)[0].strip().splitlines()[-1])
    return result


def idle(veth: Veth, seconds: float, work: Path) -> dict[str, float]:
    """CPU share and RSS of ``lanterne run`` on a silent interface."""
    config = work / "idle.toml"
    config.write_text(
        f'agent = "l5-idle"\nsite = "bench"\n[database]\nurl = "sqlite:///{work / "idle.db"}"\n'
        f'[capture]\ninterfaces = ["{veth.rx_if}"]\n[spool]\npath = "{work / "idle-spool.jsonl"}"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen(
        in_ns(veth.rx, sys.executable, "-m", "agent", "run", "--config", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        time.sleep(15)  # start-up: catalogue, filter, first jobs
        before, start = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(daemon.pid) - before
        return {"cpu_percent": 100 * used / (time.monotonic() - start), "rss_mib": rss_mib(daemon.pid)}
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def table(results: list[dict[str, object]], sent: dict[str, int], offline_tshark: dict[str, int]) -> str:
    """The results side by side, per event type."""
    lines = [
        f"sent (Lanterne offline decode): dns {sent['dns']}, sni {sent['sni']}, host {sent['host']} "
        f"(tshark offline: dns {offline_tshark['dns']}, sni {offline_tshark['sni']}, "
        f"host {offline_tshark['host']})",
        "",
        f"{'offered':>15} {'achieved':>9} | {'Lanterne dns/sni/host':>24} {'lost':>6} | "
        f"{'tshark dns/sni/host':>22} {'lost':>6} | {'AsyncSniffer dns/sni/host':>26} {'lost':>6}",
    ]
    for result in results:
        cells = []
        for tool in ("lanterne", "tshark", "scapy"):
            counts = result.get(tool)
            if not isinstance(counts, dict):
                cells.append(("(not run)", ""))
                continue
            loops = int(str(result.get("loops", 1)))
            lost = sum(max(0, loops * sent[e] - counts[e]) for e in EVENTS)
            cells.append((f"{counts['dns']}/{counts['sni']}/{counts['host']}", lost))
        lines.append(
            f"{result['rate']:>15} {result['achieved_pps']:>9.0f} | {cells[0][0]:>24} {cells[0][1]:>6} | "
            f"{cells[1][0]:>22} {cells[1][1]:>6} | {cells[2][0]:>26} {cells[2][1]:>6}"
        )
    return "\n".join(lines)


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="10000,50000,200000,top")
    parser.add_argument("--packets", type=int, default=500_000)
    parser.add_argument(
        "--solo",
        default="200000,top,top*4",
        help="rates replayed again with Lanterne alone (the others cost CPU); rate*N replays N times",
    )
    parser.add_argument(
        "--raw-only",
        default="top*4",
        help="rates replayed with Lanterne alone and without CAP_NET_ADMIN (buffer capped by rmem_max)",
    )
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the benchmark builds network namespaces: run it as root")
    if not CAPTURE.exists():
        sys.exit(f"{CAPTURE} is missing (see bench/bench_decode.py, which generates it)")
    expression = filter_expression()
    veth = Veth()
    results: list[dict[str, object]] = []
    idle_result: dict[str, float] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="l5bench-") as tmp:
            work = Path(tmp)
            capture = first_packets(CAPTURE, args.packets, work)
            sent = lanterne_truth(capture)
            offline_tshark = tshark_counts(capture)
            runs = [(rate, False, False) for rate in args.rates.split(",") if rate]
            runs += [(rate, True, False) for rate in args.solo.split(",") if rate]
            runs += [(rate, True, True) for rate in args.raw_only.split(",") if rate]
            for rate, solo, raw_only in runs:
                result = one_rate(veth, rate.strip(), capture, expression, work, solo=solo, raw_only=raw_only)
                print(json.dumps(result), file=sys.stderr, flush=True)
                results.append(result)
            if args.idle > 0:
                idle_result = idle(veth, args.idle, work)
    finally:
        veth.close()
    print(table(results, sent, offline_tshark))
    lossy = [
        r
        for r in results
        if sum(max(0, int(str(r["loops"])) * sent[e] - r["lanterne"][e]) for e in EVENTS)  # type: ignore[index]
    ]
    first_loss = str(lossy[0]["rate"]) if lossy else "none up to the top speed"
    print(f"\nLanterne: loss starts at: {first_loss}")
    solo = [r for r in results if "-" in str(r["rate"]) and r.get("lanterne_capacity_pps")]
    if solo:
        heaviest = max(solo, key=lambda r: float(str(r["achieved_pps"])) * int(str(r["loops"])))
        print(
            f"Lanterne alone at {float(str(heaviest['achieved_pps'])):,.0f} pps used "
            f"{heaviest['lanterne_cpu_seconds']} s of CPU for {heaviest['replay_seconds']} s of traffic: "
            f"its core would be saturated at ~{int(str(heaviest['lanterne_capacity_pps'])):,} pps of this mix"
        )
    if idle_result is not None:
        print(f"idle daemon: {idle_result['cpu_percent']:.2f} % CPU, RSS {idle_result['rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"sent": sent, "tshark_offline": offline_tshark, "runs": results, "idle": idle_result},
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
