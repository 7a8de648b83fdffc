"""Lab: ``lanterne probe`` against real peers in network namespaces, safety proven by capture.

Topology (every name ``l6p…``; the prober runs in its own namespace and reaches the lab only)::

    segment A 10.66.0.0/24 (bridge l6pa)              segment B 10.66.1.0/24 (bridge l6pb)
      .1   prober   lanterne probe, tcpdump             .10  deny-listed host     (web, tcpdump)
      .10  snmpd    v2c, sysObjectID of B. Braun        .20  infusion pump, known (web, tcpdump)
      .11  snmpd    v3 authPriv only, Cisco sysDescr    .30  control host, probed (web, tcpdump)
      .12  web      Server, title, favicon, TLS         .200 outside the scope    (web, tcpdump)
      .13  zeroconf _dicom._tcp and _http._tcp
      .14  dcmtk storescp on 11112
      .15  Ollama-like API on 11434
      .254 router ──────────────────────────────────── .254

One sweep runs (module fixture): ARP on A, TCP liveness on B, mDNS, SNMP with a wrong v3 key, the
right one and a community, HTTP(S) on 80/443/11434, DICOM C-ECHO on 104/11112, at 200 packets a
second. The tests then read the store, the CLI's summary and the captures.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import NameOID
from scapy.layers.inet import IP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import PcapReader
from sqlalchemy import select

from agent._probing import ingest_observations
from collectors import Endpoint, Kind, Observation
from fingerprints import default_index
from store import Detection, EndpointAlias, ObservationAggregate, ProbeLogEntry, open_store
from store import Endpoint as EndpointRow
from tests.peers import system_command
from tests.probe.helpers import self_signed_certificate
from tests.probe.lab import PYTHON, REPO, Host, Lab, missing_requirements
from tests.probe.lab_peers import FAVICON

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PROBER = "10.66.0.1"
RATE = 200
BURST = 10
COMMUNITY = "lab-community-7f3a"
AUTH_KEY = "lab-auth-pass-4c1d"
PRIV_KEY = "lab-priv-pass-9e2b"
SECRETS = (COMMUNITY, AUTH_KEY, PRIV_KEY, "wrong-auth-pass-0000")
B_BRAUN_OID = "1.3.6.1.4.1.22447.1.2"
CISCO_DESCR = (
    "Cisco IOS Software, C2960 Software (C2960-LANBASEK9-M), Version 12.2(55)SE7, RELEASE SOFTWARE (fc1)"
)


@dataclass
class LabRun:
    """What the one sweep of the module produced."""

    lab: Lab
    db: str
    summary: dict[str, Any]
    stderr: str
    seconds: float
    captures: dict[str, Path]


def build(lab: Lab) -> dict[str, Host]:
    """The topology of the module docstring, with every peer started and ready."""
    lab.bridge("a")
    lab.bridge("b")
    hosts = {
        "prb": lab.host("prb", "l6pa", PROBER, gateway="10.66.0.254"),
        "sn2": lab.host("sn2", "l6pa", "10.66.0.10"),
        "sn3": lab.host("sn3", "l6pa", "10.66.0.11"),
        "web": lab.host("web", "l6pa", "10.66.0.12"),
        "mdn": lab.host("mdn", "l6pa", "10.66.0.13"),
        "dcm": lab.host("dcm", "l6pa", "10.66.0.14"),
        "llm": lab.host("llm", "l6pa", "10.66.0.15"),
        "dny": lab.host("dny", "l6pb", "10.66.1.10", gateway="10.66.1.254"),
        "pmp": lab.host("pmp", "l6pb", "10.66.1.20", gateway="10.66.1.254"),
        "ctl": lab.host("ctl", "l6pb", "10.66.1.30", gateway="10.66.1.254"),
        "out": lab.host("out", "l6pb", "10.66.1.200", gateway="10.66.1.254"),
    }
    lab.router("rtr", [("l6pa", "10.66.0.254/24"), ("l6pb", "10.66.1.254/24")])
    system = "sysContact biomed@lab.example\nsysLocation Bloc B, salle 3\n"
    lab.snmpd(
        hosts["sn2"],
        f"rocommunity {COMMUNITY} 10.66.0.0/24\nsysDescr Infusion gateway IGW-3 v1.2\n"
        f"sysObjectID .{B_BRAUN_OID}\nsysName igw-3\n{system}",
    )
    lab.snmpd(
        hosts["sn3"],
        f'createUser labv3 SHA "{AUTH_KEY}" AES "{PRIV_KEY}"\nrouser labv3 priv\n'
        f"sysDescr {CISCO_DESCR}\nsysObjectID .1.3.6.1.4.1.9.1.1208\nsysName sw-core-2\n{system}",
    )
    cert, key, _der = self_signed_certificate(
        lab.folder,
        [(NameOID.ORGANIZATION_NAME, "Lab Imaging"), (NameOID.COMMON_NAME, "viewer.lab.example")],
        days=365,
        stem="web-",
    )
    web = ["--port", "80", "--server", "Apache/2.4.57 (Debian)", "--title", "Lab Viewer"]
    lab.peer(hosts["web"], "web", *web, "--tls-cert", str(cert), "--tls-key", str(key))
    lab.peer(hosts["llm"], "ollama", "--port", "11434")
    lab.peer(hosts["mdn"], "mdns", "--name", "HOROS-WS1")
    for name in ("dny", "pmp", "ctl", "out"):
        lab.peer(hosts[name], "web", "--port", "80", "--server", "nginx/1.22.1", "--title", f"host {name}")
    storescp = [
        str(system_command("storescp")),
        "--aetitle",
        "LABSCP",
        "--output-directory",
        str(lab.folder),
        "11112",
    ]
    lab.start(hosts["dcm"].namespace, *storescp, label="dcm-storescp")
    for label in ("web-web", "llm-ollama", "mdn-mdns", "dny-web", "pmp-web", "ctl-web", "out-web"):
        lab.wait_for(label, "ready")
    lab.wait_listening(hosts["dcm"].namespace, 11112)
    lab.wait_listening(hosts["sn2"].namespace, 161, udp=True)
    lab.wait_listening(hosts["sn3"].namespace, 161, udp=True)
    return hosts


def seed_the_pump(db: str, pump: Host) -> None:
    """Passive listening identified 10.66.1.20 as a B. Braun device before the sweep."""
    with open_store(db) as store:
        seen = Observation(
            time.time() - 3600, Kind.SNMP_SYSOBJECTID, B_BRAUN_OID, Endpoint(ip=pump.ip, mac=pump.mac)
        )
        ingest_observations(store, default_index(), [seen], site="default", agent="passive-sensor")


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    """Build the lab, run one sweep with captures on every protected host, tear it all down."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("l6p")
    Lab.clean_leftovers()
    lab = Lab(folder)
    try:
        hosts = build(lab)
        db = f"sqlite:///{folder / 'lab.db'}"
        seed_the_pump(db, hosts["pmp"])
        captures = {name: lab.capture(hosts[name], name) for name in ("dny", "pmp", "ctl", "out")}
        captures["prober"] = lab.capture(hosts["prb"], "prober", f"ether src {hosts['prb'].mac}")
        env = {
            **os.environ,
            "LAB_COMMUNITY": COMMUNITY,
            "LAB_AUTH": AUTH_KEY,
            "LAB_BAD_AUTH": "wrong-auth-pass-0000",
            "LAB_PRIV": PRIV_KEY,
            "LANTERNE_AGENT": "lab-prober",
        }
        command = [
            "ip", "netns", "exec", hosts["prb"].namespace, PYTHON, "-m", "agent", "probe",
            "10.66.0.0/24", "10.66.1.0/27", "10.66.1.200",
            "--allow", "10.66.0.0/24", "--allow", "10.66.1.0/25", "--deny", "10.66.1.10",
            "--rate", str(RATE), "--burst", str(BURST), "--timeout", "1", "--retries", "1",
            "--snmp-v3", "labv3:sha:LAB_BAD_AUTH:aes:LAB_PRIV",
            "--snmp-v3", "labv3:sha:LAB_AUTH:aes:LAB_PRIV",
            "--snmp-community-env", "LAB_COMMUNITY", "--http-ports", "80,443,11434",
            "--dicom", "--calling-ae", "LANTERNE", "--mdns-listen", "4",
            "--db", db, "--json", "--no-progress",
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False
        )
        seconds = time.monotonic() - started
        for name in captures:
            lab.stop(f"capture-{name}")
        assert done.returncode == 0, done.stderr[-4000:]
        yield LabRun(lab, db, json.loads(done.stdout), done.stderr, seconds, captures)
    finally:
        lab.close()


def packets(path: Path) -> list[Any]:
    with PcapReader(str(path)) as reader:
        return list(reader)


# -- discovery and identification -------------------------------------------------------------------


def test_each_peer_is_discovered_and_identified_through_the_matcher(lab_run: LabRun) -> None:
    print(f"sweep: {lab_run.seconds:.1f} s; identified: {lab_run.summary['identified']}")
    identified = lab_run.summary["identified"]
    assert "b-braun" in identified["10.66.0.10"]  # SNMPv2c sysObjectID
    assert "dicom-bonjour-node" in identified["10.66.0.13"]  # mDNS _dicom._tcp
    assert "dcmtk" in identified["10.66.0.14"]  # C-ECHO: the acceptor's implementation UID
    assert "ollama" in identified["10.66.0.15"]  # /api/tags and /api/version
    if default_index().recog is not None:  # banners of generic products are Recog's (shared corpus)
        assert any("Cisco" in label for label in identified["10.66.0.11"])  # SNMPv3 sysDescr/sysObjectID
        assert any("Apache" in label for label in identified["10.66.0.12"])  # Server header
        assert "nginx" in " ".join(identified["10.66.1.30"])  # the control host behind the router
    alive = lab_run.summary["alive"]
    assert {f"10.66.0.{n}" for n in (10, 11, 12, 13, 14, 15, 254)} | {"10.66.1.30"} <= set(alive)
    assert alive["10.66.0.12"] == lab_run.lab.hosts["web"].mac  # from the ARP sweep


def test_results_are_stored_matched_and_reconciled_like_passive_ones(lab_run: LabRun) -> None:
    with open_store(lab_run.db) as store, store.session() as session:
        joined = select(Detection.product_key, EndpointRow.ip).join(
            EndpointRow, EndpointRow.id == Detection.endpoint_id
        )
        by_product: dict[str, str] = dict(session.execute(joined).all())  # type: ignore[arg-type]
        values = {
            (kind, value)
            for kind, value in session.execute(select(ObservationAggregate.kind, ObservationAggregate.value))
        }
    assert by_product["ollama"] == "10.66.0.15"
    assert by_product["dcmtk"] == "10.66.0.14"
    assert by_product["dicom-bonjour-node"] == "10.66.0.13"
    assert {"b-braun"} <= set(by_product)
    assert ("http.favicon", hashlib.md5(FAVICON).hexdigest()) in values
    assert ("http.title", "Lab Viewer") in values
    assert ("tls.certificate", "CN=viewer.lab.example,O=Lab Imaging") in values
    assert ("snmp.sysdescr", CISCO_DESCR) in values
    assert ("mdns.service", "horos-ws1._dicom._tcp.local") in values
    assert ("mdns.service", "horos-ws1 web._http._tcp.local") in values
    assert lab_run.summary["reconciliation"]["undeclared_observed"] >= 3


def test_the_probe_log_says_what_happened_and_never_a_secret(lab_run: LabRun) -> None:
    with open_store(lab_run.db) as store, store.session() as session:
        rows = session.execute(
            select(
                ProbeLogEntry.target,
                ProbeLogEntry.protocol,
                ProbeLogEntry.port,
                ProbeLogEntry.outcome,
                ProbeLogEntry.detail,
            )
        ).all()
    outcomes = {(target, protocol, port): [] for target, protocol, port, _o, _d in rows}
    for target, protocol, port, outcome, _detail in rows:
        outcomes[target, protocol, port].append(outcome)
    snmp3 = outcomes["10.66.0.11", "snmp", 161]
    assert snmp3 == ["auth_failed", "ok"]  # the wrong v3 key, then the right one
    assert outcomes["10.66.0.10", "snmp", 161] == ["auth_failed", "auth_failed", "ok"]  # v3 unknown, then v2c
    assert outcomes["10.66.0.14", "dicom", 11112] == ["ok"]
    assert outcomes["10.66.0.14", "dicom", 104] == ["refused"]
    assert outcomes["10.66.0.12", "https", 443][0] == "ok"
    assert outcomes["10.66.1.10", "all", None] == ["denied"]
    assert outcomes["10.66.1.20", "all", None] == ["denied"]
    assert outcomes["10.66.1.200", "all", None] == ["denied"]
    # The infusion gateway told its maker over SNMP: its other probes were refused by the gate.
    assert set(outcomes["10.66.0.10", "http", 80]) == {"denied"}
    assert "10.66.0.10" in lab_run.summary["medical_skipped"]
    details = " ".join(detail or "" for *_rest, detail in rows) + lab_run.stderr + json.dumps(lab_run.summary)
    for secret in SECRETS:
        assert secret not in details
    assert "SNMPv3 authPriv SHA/AES (credential 1)" in details


def test_protected_hosts_receive_zero_packets_from_the_prober(lab_run: LabRun) -> None:
    """Deny-listed, outside the scope, known infusion pump: nothing from 10.66.0.1 reaches them."""
    received = {}
    for name, path in lab_run.captures.items():
        if name == "prober":
            continue
        received[name] = [p for p in packets(path) if IP in p and p[IP].src == PROBER]
    assert received["dny"] == []
    assert received["pmp"] == []
    assert received["out"] == []
    # The capture works: the control host beside them on the same segment was probed.
    with open_store(lab_run.db) as store, store.session() as session:
        logged = session.execute(
            select(
                ProbeLogEntry.protocol, ProbeLogEntry.port, ProbeLogEntry.outcome, ProbeLogEntry.detail
            ).where(ProbeLogEntry.target == "10.66.1.30")
        ).all()
    ports = {p[IP].dport for p in received["ctl"] if p[IP].proto == 6}
    assert len(received["ctl"]) >= 5, logged
    assert ports >= {80, 443, 11434}, (ports, logged)


def test_the_rate_limit_holds_on_the_wire(lab_run: LabRun) -> None:
    """Every frame the prober sent (ARP, mDNS, SNMP, TCP of HTTP and DICOM, kernel ACKs included)."""
    sent = packets(lab_run.captures["prober"])
    times = sorted(float(p.time) for p in sent)
    assert len(times) > 300, "the capture missed the sweep"
    most = 0
    start = 0
    for end, moment in enumerate(times):
        while times[start] <= moment - 1.0:
            start += 1
        most = max(most, end - start + 1)
    assert most <= RATE + BURST, f"{most} packets in one second at --rate {RATE} --burst {BURST}"
    average = len(times) / (times[-1] - times[0])
    print(
        f"prober sent {len(times)} frames in {times[-1] - times[0]:.1f} s: "
        f"at most {most} in one second, {average:.0f}/s on average"
    )
    assert average <= RATE
    arp = [p for p in sent if ARP in p]
    assert {p[ARP].pdst for p in arp} <= {str(a) for a in ipaddress.ip_network("10.66.0.0/24")}
    assert all(p[Ether].src == lab_run.lab.hosts["prb"].mac for p in sent)


def test_the_pump_was_known_from_the_store_before_any_packet(lab_run: LabRun) -> None:
    with open_store(lab_run.db) as store, store.session() as session:
        aliases = session.scalars(select(EndpointAlias.alias)).all()
        pump = (
            session.execute(
                select(Detection.category)
                .join(EndpointRow, EndpointRow.id == Detection.endpoint_id)
                .where(EndpointRow.ip == "10.66.1.20")
            )
            .scalars()
            .all()
        )
    assert pump == ["medical_device"]
    assert any(alias.startswith("mac:") for alias in aliases)
    assert lab_run.summary["medical_skipped"]["10.66.1.20"].startswith("B. Braun")
