"""The daemon live on a mirror port, fed by real clients talking to real servers, all inside a lab.

``dig`` asks the lab's dnsmasq, ``curl`` and ``openssl s_client`` speak TLS and HTTP to a local
server under AI-service names (``--resolve`` / ``-servername``: only lab addresses), ``udhcpc``
asks dnsmasq's DHCP for a lease with a host name and a vendor class, ``snmpget`` reads a real
``snmpd`` that says it is a GE HealthCare device. ``lanterne run`` captures the mirror in the
sensor namespace; the test reads what it stored and detected.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netns import NETWORK, Lab, lab, skip_reason
from tests.lab.peers import (
    PEER_BINARIES,
    SensorDaemon,
    sqlite_rows,
    start_dnsmasq,
    start_http_server,
    start_snmpd,
    start_tls_server,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def hospital() -> Iterator[Lab]:
    reason = skip_reason(PEER_BINARIES)
    if reason is not None:
        pytest.skip(reason)
    with lab(hosts=(("srv", f"{NETWORK}.10"), ("cli", f"{NETWORK}.20"), ("dev", None))) as built:
        built.hosts["srv"].run("ip", "addr", "add", f"{NETWORK}.11/24", "dev", built.hosts["srv"].iface)
        yield built


def test_real_clients_are_observed_stored_and_detected(hospital: Lab, tmp_path: Path) -> None:
    server, client, device, sensor = (hospital.hosts[role] for role in ("srv", "cli", "dev", "sen"))
    start_dnsmasq(server, tmp_path)
    start_snmpd(
        server,
        tmp_path,
        sysobjectid="1.3.6.1.4.1.59615.1.2",
        sysdescr="CARESCAPE Monitor B450 (lab)",
        sysname="l5-monitor",
    )
    start_tls_server(server, tmp_path)
    start_http_server(server, tmp_path)
    daemon = SensorDaemon(sensor, tmp_path)
    daemon.start()

    # DNS, then TLS with an SNI (curl and openssl), then plain HTTP, from the client.
    assert (
        client.run("dig", f"@{server.ip}", "chatgpt.com", "+short", "+tries=1", "+time=3").stdout.strip()
        == server.ip
    )
    client.run(
        "curl",
        "-sk",
        "--max-time",
        "5",
        "--resolve",
        f"api.openai.com:443:{server.ip}",
        "https://api.openai.com/",
        check=False,
    )
    client.run(
        "sh", "-c", f"openssl s_client -connect {server.ip}:443 -servername claude.ai </dev/null", check=False
    )
    client.run(
        "curl",
        "-s",
        "--max-time",
        "5",
        "--resolve",
        f"api.mistral.ai:80:{server.ip}",
        "http://api.mistral.ai/v1/models?key=never-kept",
        check=False,
    )
    # A hello without SNI to an address the client resolved: attributed from its DNS answer.
    client.run("dig", f"@{server.ip}", "gemini.google.com", "+short", "+tries=1", "+time=3")
    client.run(
        "sh", "-c", f"openssl s_client -connect {NETWORK}.11:443 -noservername </dev/null", check=False
    )
    # SNMP from the client to the device-like snmpd; DHCP from a device without an address.
    # sysDescr.0, sysObjectID.0, sysName.0 by number: the MIB files may not be installed.
    snmp = client.run(
        "snmpget",
        "-v2c",
        "-c",
        "public",
        "-t",
        "2",
        "-r",
        "1",
        "-On",
        server.ip or "",
        "1.3.6.1.2.1.1.1.0",
        "1.3.6.1.2.1.1.2.0",
        "1.3.6.1.2.1.1.5.0",
    )
    assert "CARESCAPE" in snmp.stdout
    device.run(
        "udhcpc",
        "-i",
        device.iface,
        "-n",
        "-q",
        "-B",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        "/bin/true",
        "-x",
        "hostname:infpump-lab-7",
        "-V",
        "LabMed-Infusion 2.1",
        timeout=30,
    )

    daemon.wait_flushed(12)
    metrics = daemon.metrics()
    assert f'lanterne_capture_up{{interface="{sensor.iface}"}} 1.0' in metrics
    assert "lanterne_kernel_drops_total" in metrics
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()[-3000:]

    seen = {
        (kind, value) for kind, value in sqlite_rows(daemon.database, "SELECT kind, value FROM observations")
    }
    for expected in [
        ("dns.query", "chatgpt.com"),
        ("dns.answer", "chatgpt.com"),
        ("tls.sni", "api.openai.com"),
        ("tls.sni", "claude.ai"),
        ("http.host", "api.mistral.ai"),
        ("tls.sni", "gemini.google.com"),
        ("snmp.sysobjectid", "1.3.6.1.4.1.59615.1.2"),
        ("snmp.sysname", "l5-monitor"),
        ("dhcp.hostname", "infpump-lab-7"),
        ("dhcp.vendor_class", "LabMed-Infusion 2.1"),
    ]:
        assert expected in seen, f"{expected} not stored; got {sorted(seen)}"
    # Metadata only: the URL's path and query never reach the store.
    assert not [value for _, value in seen if "never-kept" in str(value)]
    (attributed,) = sqlite_rows(
        daemon.database,
        "SELECT attrs FROM observations WHERE kind = 'tls.sni' AND value = 'gemini.google.com'",
    )
    assert '"attributed_from":"dns"' in str(attributed[0]).replace(" ", "")
    products = {key for (key,) in sqlite_rows(daemon.database, "SELECT DISTINCT product_key FROM detections")}
    assert {
        "openai-chatgpt",
        "openai-api",
        "anthropic-claude",
        "mistral-api",
        "google-gemini",
        "ge-healthcare",
    } <= products
    alerts = {key for (key,) in sqlite_rows(daemon.database, "SELECT DISTINCT product_key FROM alerts")}
    assert "openai-chatgpt" in alerts  # undeclared: the reconciliation job raised it
    assert "Traceback" not in daemon.log_text(), daemon.log_text()[-6000:]
