"""Active discovery of a lab /24 with 30 responders: ``lanterne probe`` beside nmap, at one packet rate.

Builds a lab in network namespaces (names ``l6p…``, see ``tests/probe/lab.py``): the prober on
10.66.0.1, ten Debian snmpd (v2c, sysDescr of switches, printers, UPS cards, Windows servers),
ten web servers (Server headers of Apache, nginx, IIS, embedded servers; three with TLS on 443,
three on 8080) and ten zeroconf responders (``_dicom._tcp`` and ``_http._tcp``). Then, one after
the other, from the prober's namespace and each under tcpdump:

- ``lanterne probe 10.66.0.0/24 --rate R`` with SNMPv2c and ``--http-ports 80,443,8080``
  (ARP, mDNS, SNMP, HTTP(S); every default otherwise: 2 s timeouts, 1 retry);
- ``nmap -sU -p161 --script snmp-sysdescr --max-rate R`` then ``nmap -sV -p80,443,8080 --max-rate R``
  (the same probes: SNMP sysDescr and HTTP(S) service detection; ARP host discovery both times).

It prints the time each took, the frames each sent (measured on the wire) and what each
identified per host: Lanterne through its matcher (catalogue and Recog), nmap through its own
databases (the service product, or the sysDescr text its script printed).

    sudo .venv/bin/python bench/bench_probe.py [--rate 100] [--json results.json]

Target: Lanterne finishes before nmap at the same packet rate, with at least the same hosts
identified. Needs root, snmpd, tcpdump and nmap (``scripts/setup`` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.x509.oid import NameOID  # noqa: E402

from tests.probe.helpers import self_signed_certificate  # noqa: E402
from tests.probe.lab import PYTHON, Host, Lab, missing_requirements  # noqa: E402

COMMUNITY = "bench-community-51"
TARGET = "10.66.0.0/24"
SNMP_AGENTS = (
    "Cisco IOS Software, C2960 Software (C2960-LANBASEK9-M), Version 12.2(55)SE7, RELEASE SOFTWARE (fc1)",
    "Hardware: Intel64 Family 6 Model 15 Stepping 6 AT/AT COMPATIBLE - Software: Windows Version 5.2 "
    "(Build 3790 Multiprocessor Free)",
    "APC Web/SNMP Management Card (MB:v3.6.8 PF:v2.6.4 PN:apc_hw02_aos_264.bin AF1:v2.6.1 "
    "AN1:apc_hw02_sy_261.bin MN:AP9619 HR:A10 SN: ZA0624022354 MD:06/09/2006) "
    "(Embedded PowerNet SNMP Agent SW v2.2 compatible)",
    "Brother NC-130h, Firmware Ver.0.09  ,MID 8CA-A17-001",
    "Xerox WorkCentre 3335; SS 60.004.00.000, NC 4.00.50.73, UI V5.51.00.31.00_17030801, ME V0.00.39, "
    "CCOS 6.9.P",
    "Juniper Networks,Inc,MAG-4610,7.1R6 (build 20169)",
    "Hewlett-Packard Company J4139A HP ProCurve Routing Switch 9304M, Software Version 08.0.01kT53 "
    "Compiled on Apr 27 2007 at 18:55:59 labeled as H2R08001k",
    "Lexmark C524 version NS.NP.N212 kernel 2.6.6 All-N-1",
    "Monarch 7410 Print Adapter compatible with an HP JETDIRECT EX",
    "Cisco IOS Software, C3750E Software (C3750E-UNIVERSALK9-M), Version 15.0(2)SE11, RELEASE SOFTWARE (fc3)",
)
WEB_SERVERS = (
    "Apache/2.4.57 (Debian)",
    "nginx/1.22.1",
    "Microsoft-IIS/10.0",
    "lighttpd/1.4.69",
    "Jetty(9.4.51.v20230217)",
    "GoAhead-Webs",
    "Boa/0.94.14rc21",
    "mini_httpd/1.30 26Oct2018",
    "Allegro-Software-RomPager/4.01",
    "Embedthis-http",
)
TLS_WEB = frozenset({0, 1, 2})  # also HTTPS on 443
ALT_WEB = frozenset({3, 4, 5})  # on 8080 instead of 80


def build(lab: Lab) -> tuple[Host, dict[str, str]]:
    """The prober and thirty responders; returns the prober and each responder's role."""
    lab.bridge("a")
    prober = lab.host("prb", "l6pa", "10.66.0.1")
    roles: dict[str, str] = {}
    # RSA, as most devices serve (and what nmap's service detection handshakes with surely).
    cert, key, _der = self_signed_certificate(
        lab.folder, [(NameOID.COMMON_NAME, "bench.lab.example")], rsa_key=True, serial=1
    )
    for number, descr in enumerate(SNMP_AGENTS):
        host = lab.host(f"s{number}", "l6pa", f"10.66.0.{10 + number}")
        lab.snmpd(host, f"rocommunity {COMMUNITY} 10.66.0.0/24\nsysDescr {descr}\nsysName agent-{number}\n")
        roles[host.ip] = "snmp"
    for number, server in enumerate(WEB_SERVERS):
        host = lab.host(f"w{number}", "l6pa", f"10.66.0.{40 + number}")
        args = [
            "--port",
            "8080" if number in ALT_WEB else "80",
            "--server",
            server,
            "--title",
            f"Device {number}",
        ]
        if number in TLS_WEB:
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        lab.peer(host, "web", *args)
        roles[host.ip] = "http"
    for number in range(10):
        host = lab.host(f"m{number}", "l6pa", f"10.66.0.{70 + number}")
        lab.peer(host, "mdns", "--name", f"MODALITY-{number}")
        roles[host.ip] = "mdns"
    for label, _process in lab.processes:
        if label.endswith(("-web", "-mdns")):
            lab.wait_for(label, "ready")
    for number in range(len(SNMP_AGENTS)):
        lab.wait_listening(lab.hosts[f"s{number}"].namespace, 161, udp=True)
    return prober, roles


def timed(lab: Lab, prober: Host, name: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one tool in the prober's namespace under tcpdump: time, frames, output."""
    capture = lab.capture(prober, name, f"ether src {prober.mac}")
    started = time.monotonic()
    done = subprocess.run(
        ["ip", "netns", "exec", prober.namespace, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    seconds = time.monotonic() - started
    time.sleep(0.5)  # late frames (closing handshakes) belong to this run
    lab.stop(f"capture-{name}")
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    frames, peak = wire(capture)
    return {"seconds": seconds, "frames": frames, "peak": peak, "stdout": done.stdout, "stderr": done.stderr}


def wire(path: Path) -> tuple[int, int]:
    """Frames in a capture, and the most in any one second."""
    import scapy.layers.l2  # noqa: F401, PLC0415 - registers Ethernet for the reader (scapy only here)
    from scapy.utils import PcapReader  # noqa: PLC0415

    with PcapReader(str(path)) as reader:
        times = sorted(float(packet.time) for packet in reader)
    peak = start = 0
    for end, moment in enumerate(times):
        while times[start] <= moment - 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return len(times), peak


def nmap_findings(xml_text: str) -> dict[str, list[str]]:
    """What nmap named per host: service products of open ports, the sysDescr its script printed."""
    found: dict[str, list[str]] = {}
    root = ET.fromstring(xml_text)
    for host in root.iter("host"):
        address = host.find("address[@addrtype='ipv4']")
        if address is None:
            continue
        labels: list[str] = []
        for port in host.iter("port"):
            state = port.find("state")
            if state is None or state.get("state") not in {"open", "open|filtered"}:
                continue
            service = port.find("service")
            if service is not None and service.get("product"):
                labels.append(" ".join(filter(None, (service.get("product"), service.get("version")))))
            for script in port.iter("script"):
                if script.get("id") == "snmp-sysdescr" and (script.get("output") or "").strip():
                    labels.append("sysDescr: " + script.get("output", "").strip().splitlines()[0][:60])
        if labels:
            found.setdefault(address.get("addr", ""), []).extend(labels)
    return found


def main(argv: list[str] | None = None) -> int:
    """Build the lab, run both tools, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=int, default=100, help="packets per second for both tools")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the captures and logs (the folder is printed)"
    )
    parser.add_argument("--skip-nmap", action="store_true", help="time Lanterne alone")
    args = parser.parse_args(argv)
    nmap_missing = None if args.skip_nmap or shutil.which("nmap") else "nmap is not installed"
    reason = missing_requirements() or nmap_missing
    if reason:
        print(f"bench_probe: skipped: {reason}", file=sys.stderr)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="l6p-bench-"))
    Lab.clean_leftovers()
    lab = Lab(folder)
    try:
        prober, roles = build(lab)
        env = {**os.environ, "BENCH_COMMUNITY": COMMUNITY, "LANTERNE_AGENT": "bench"}
        db = f"sqlite:///{folder / 'bench.db'}"
        rate = str(args.rate)
        ours_command = [PYTHON, "-m", "agent", "probe", TARGET, "--allow", TARGET, "--rate", rate, "--db", db]
        ours_command += [
            "--snmp-community-env",
            "BENCH_COMMUNITY",
            "--http-ports",
            "80,443,8080",
            "--json",
            "--no-progress",
        ]
        lanterne = timed(lab, prober, "lanterne", ours_command, env)
        summary = json.loads(lanterne["stdout"])
        ours: dict[str, list[str]] = summary["identified"]
        if args.skip_nmap:
            timing = {k: lanterne[k] for k in ("seconds", "frames", "peak")} | {"charged": summary["packets"]}
            print(json.dumps(timing | {"probes": summary["probes"], "identified": ours}))
            return 0
        snmp_script = f"--script snmp-sysdescr --script-args creds.snmp=:{COMMUNITY}"
        snmp_command = f"nmap -n -sU -p161 {snmp_script} --max-rate {rate} -oX - {TARGET}".split()
        nmap_snmp = timed(lab, prober, "nmap-snmp", snmp_command, env)
        http_command = f"nmap -n -sV -p80,443,8080 --max-rate {rate} -oX - {TARGET}".split()
        nmap_http = timed(lab, prober, "nmap-http", http_command, env)
        theirs = nmap_findings(nmap_snmp["stdout"])
        for host, labels in nmap_findings(nmap_http["stdout"]).items():
            theirs.setdefault(host, []).extend(labels)
    finally:
        lab.close()
        if args.keep:
            print(f"bench_probe: captures and logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    report(args.rate, roles, lanterne, (nmap_snmp, nmap_http), ours, theirs, summary)
    if args.json:
        nmap_seconds = nmap_snmp["seconds"] + nmap_http["seconds"]
        data = {
            "rate": args.rate,
            "lanterne": {k: lanterne[k] for k in ("seconds", "frames", "peak")} | {"identified": ours},
            "nmap": {
                "seconds": nmap_seconds,
                "frames": nmap_snmp["frames"] + nmap_http["frames"],
                "peak": max(nmap_snmp["peak"], nmap_http["peak"]),
                "identified": theirs,
            },
            "roles": roles,
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 0


def report(
    rate: int,
    roles: dict[str, str],
    lanterne: dict[str, Any],
    nmap_runs: tuple[dict[str, Any], dict[str, Any]],
    ours: dict[str, list[str]],
    theirs: dict[str, list[str]],
    summary: dict[str, Any],
) -> None:
    """Print the comparison as Markdown."""
    nmap_seconds = sum(run["seconds"] for run in nmap_runs)
    nmap_frames = sum(run["frames"] for run in nmap_runs)
    nmap_peak = max(run["peak"] for run in nmap_runs)
    print(f"## Active discovery of a lab /24 with {len(roles)} responders, at {rate} packets/s\n")
    print("| tool | time (s) | frames sent | most frames in 1 s | hosts identified (snmp / http / mdns) |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, frames, peak, found in (
        ("lanterne probe", lanterne["seconds"], lanterne["frames"], lanterne["peak"], ours),
        ("nmap -sU snmp-sysdescr + nmap -sV", nmap_seconds, nmap_frames, nmap_peak, theirs),
    ):
        counts = {
            role: sum(1 for ip, r in roles.items() if r == role and found.get(ip))
            for role in ("snmp", "http", "mdns")
        }
        total = sum(counts.values())
        print(
            f"| {name} | {seconds:.1f} | {frames} | {peak} | {total} ({counts['snmp']} / {counts['http']} / "
            f"{counts['mdns']}) |"
        )
    print(f"\n(nmap: {nmap_runs[0]['seconds']:.1f} s for SNMP, {nmap_runs[1]['seconds']:.1f} s for -sV)\n")
    print("| host | role | lanterne (matcher) | nmap |")
    print("|---|---|---|---|")
    for ip in sorted(roles, key=lambda a: tuple(int(p) for p in a.split("."))):
        mine, nmaps = ", ".join(ours.get(ip, [])) or "-", "; ".join(theirs.get(ip, [])) or "-"
        print(f"| {ip} | {roles[ip]} | {mine} | {nmaps} |")
    print(f"\nlanterne probe log: {summary['probes']}; observations: {summary['observations']}")


if __name__ == "__main__":
    sys.exit(main())
