"""Faults under a live daemon: the database gone for 30 s, SIGKILL, an interface down and up, a flood.

Every test builds its own lab (and, for PostgreSQL, its own private cluster on a Unix socket:
the shared one is never stopped) and tears it down whatever happens. Traffic is DNS queries for
unique names sent at a known rate from the lab client to the lab's dnsmasq, so that what the
daemon stored can be compared name by name with what was sent: each name must be counted exactly
once — never lost, never twice.
"""

from __future__ import annotations

import random
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netns import Host, Lab, lab, skip_reason, wait_for
from tests.lab.peers import SensorDaemon, send_queries, sqlite_rows, start_dnsmasq, stored_queries
from tests.lab.pgcluster import PrivateCluster, private_cluster, unavailable

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(240)]

#: How long PostgreSQL stays down under the live daemon.
OUTAGE_SECONDS = 30


@pytest.fixture
def lab_net() -> Iterator[Lab]:
    reason = skip_reason(("dnsmasq", "ss", "curl"))
    if reason is not None:
        pytest.skip(reason)
    with lab() as built:
        yield built


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with private_cluster(port=5400 + random.randrange(90)) as made:
        yield made


def _metric(daemon: SensorDaemon, name: str) -> float:
    for line in daemon.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _pg_counts(cluster: PrivateCluster, suffix: str) -> dict[str, int]:
    rows = cluster.query(
        f"SELECT value, count FROM observations WHERE kind = 'dns.query' AND value LIKE '%.{suffix}'"
    )
    return stored_queries([(value, count) for value, count in rows])


def _expect_all_once(counts: dict[str, int], suffix: str, sent: int) -> None:
    missing = [f"q{i}.{suffix}" for i in range(sent) if f"q{i}.{suffix}" not in counts]
    twice = {name: count for name, count in counts.items() if count != 1}
    assert not missing, f"{len(missing)} of {sent} names lost, e.g. {missing[:5]}"
    assert not twice, f"counted more than once: {dict(list(twice.items())[:5])}"
    assert len(counts) == sent


def _servers(net: Lab, tmp_path: Path) -> tuple[Host, Host, Host]:
    server, client, sensor = net.hosts["srv"], net.hosts["cli"], net.hosts["sen"]
    start_dnsmasq(server, tmp_path, dhcp=False)
    return server, client, sensor


def test_postgres_down_for_30_seconds_loses_nothing_and_counts_nothing_twice(
    lab_net: Lab, cluster: PrivateCluster, tmp_path: Path
) -> None:
    server, client, sensor = _servers(lab_net, tmp_path)
    daemon = SensorDaemon(sensor, tmp_path, database=cluster.url)
    daemon.start()
    sent = 900
    sender = send_queries(client, server.ip or "", "outage.lab", sent, rate=20)  # 45 s of traffic
    time.sleep(5)
    cluster.stop()
    try:
        time.sleep(OUTAGE_SECONDS / 2)
        assert _metric(daemon, "lanterne_database_up") == 0.0
        assert _metric(daemon, 'lanterne_flushes_total{outcome="spooled"}') >= 5
        time.sleep(OUTAGE_SECONDS / 2)
    finally:
        cluster.start()
    assert sender.wait(timeout=60) == 0
    wait_for(
        lambda: _metric(daemon, 'lanterne_queue_depth{queue="spool_batches"}') == 0.0,
        timeout=30,
        what="replay",
    )
    assert _metric(daemon, f'lanterne_kernel_drops_total{{interface="{sensor.iface}"}}') == 0.0
    assert daemon.stop() == 0, daemon.log_text()[-3000:]
    _expect_all_once(_pg_counts(cluster, "outage.lab"), "outage.lab", sent)
    assert "replayed" in daemon.log_text()


def test_sigkill_with_a_spool_pending_then_restart(
    lab_net: Lab, cluster: PrivateCluster, tmp_path: Path
) -> None:
    server, client, sensor = _servers(lab_net, tmp_path)
    daemon = SensorDaemon(sensor, tmp_path, database=cluster.url)
    daemon.start()
    assert send_queries(client, server.ip or "", "before.lab", 150, rate=100).wait(timeout=30) == 0
    daemon.wait_flushed(150)
    cluster.stop()
    try:
        assert send_queries(client, server.ip or "", "spooled.lab", 150, rate=100).wait(timeout=30) == 0
        # Every window of the outage has gone to the spool: then the power cord.
        wait_for(lambda: _metric(daemon, 'lanterne_flushes_total{outcome="spooled"}') >= 2, what="spooled")
        time.sleep(2.5)
        daemon.stop(signal.SIGKILL)
    finally:
        cluster.start()
    restarted = SensorDaemon(sensor, tmp_path, database=cluster.url)
    restarted.start()
    assert send_queries(client, server.ip or "", "after.lab", 100, rate=100).wait(timeout=30) == 0
    restarted.wait_flushed(100)
    assert restarted.stop() == 0, restarted.log_text()[-3000:]
    for suffix, sent in (("before.lab", 150), ("spooled.lab", 150), ("after.lab", 100)):
        _expect_all_once(_pg_counts(cluster, suffix), suffix, sent)
    # Consistent: every observation belongs to an endpoint, every applied batch once.
    assert cluster.query(
        "SELECT count(*) FROM observations o LEFT JOIN endpoints e ON e.id = o.endpoint_id WHERE e.id IS NULL"
    ) == [["0"]]
    batches = cluster.query("SELECT sha256, count(*) FROM ingested_files GROUP BY sha256 HAVING count(*) > 1")
    assert batches == []


def test_sigkill_mid_run_leaves_sqlite_consistent(lab_net: Lab, tmp_path: Path) -> None:
    server, client, sensor = _servers(lab_net, tmp_path)
    daemon = SensorDaemon(sensor, tmp_path)
    daemon.start()
    sender = send_queries(client, server.ip or "", "killed.lab", 400, rate=100)
    time.sleep(2.2)  # mid-way: windows flushed every second, one being written now and then
    daemon.stop(signal.SIGKILL)
    sender.wait(timeout=30)
    restarted = SensorDaemon(sensor, tmp_path)
    restarted.start()
    assert send_queries(client, server.ip or "", "reborn.lab", 100, rate=100).wait(timeout=30) == 0
    restarted.wait_flushed(100)
    assert restarted.stop() == 0
    assert sqlite_rows(restarted.database, "PRAGMA integrity_check") == [("ok",)]
    rows = sqlite_rows(restarted.database, "SELECT value, count FROM observations WHERE kind = 'dns.query'")
    counts = stored_queries(rows)
    killed = {name: count for name, count in counts.items() if name.endswith(".killed.lab")}
    assert killed, "nothing was stored before the kill"
    assert set(killed.values()) == {1}  # what was stored is whole and counted once; the rest was in memory
    _expect_all_once({n: c for n, c in counts.items() if n.endswith(".reborn.lab")}, "reborn.lab", 100)


def test_capture_resumes_after_the_interface_goes_down_and_up(lab_net: Lab, tmp_path: Path) -> None:
    server, client, sensor = _servers(lab_net, tmp_path)
    daemon = SensorDaemon(sensor, tmp_path)
    daemon.start()
    assert send_queries(client, server.ip or "", "up1.lab", 30, rate=100).wait(timeout=30) == 0
    daemon.wait_flushed(30)
    sensor.run("ip", "link", "set", sensor.iface, "down")
    time.sleep(3)
    sensor.run("ip", "link", "set", sensor.iface, "up")
    capture_up = f'lanterne_capture_up{{interface="{sensor.iface}"}}'
    wait_for(lambda: _metric(daemon, capture_up) == 1.0, timeout=40, what="capture back up")
    time.sleep(1)
    assert send_queries(client, server.ip or "", "up2.lab", 30, rate=100).wait(timeout=30) == 0
    daemon.wait_flushed(60)
    assert daemon.stop() == 0
    rows = sqlite_rows(daemon.database, "SELECT value, count FROM observations WHERE kind = 'dns.query'")
    counts = stored_queries(rows)
    _expect_all_once({n: c for n, c in counts.items() if n.endswith(".up2.lab")}, "up2.lab", 30)


# -- the flood ---------------------------------------------------------------------------------------

FLOOD = 1_000_000
AI_EVERY = 10_000
FLOOD_CAP_MIB = 256


def _flood_pcap(path: Path, client_mac: str) -> int:
    """A million DNS queries for random subdomains, with a known AI domain every AI_EVERY packets."""
    rng = random.Random(5)
    src_mac = bytes.fromhex(client_mac.replace(":", ""))
    head = b"\x02\x55\x00\x00\xff\x99" + src_mac + b"\x08\x00"  # to a MAC nobody has: flooded, mirrored
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    ai_names = [b"\x07chatgpt\x03com\x00", b"\x06claude\x02ai\x00"]
    ai_sent = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for index in range(FLOOD):
            if index % AI_EVERY == AI_EVERY // 2:
                qname = ai_names[ai_sent % 2]
                ai_sent += 1
            else:
                label = bytes(rng.choices(alphabet, k=12))
                qname = b"\x0c" + label + b"\x05flood\x03lab\x00"
            dns = struct.pack("!HHHHHH", index & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
            udp = struct.pack("!HHHH", 1024 + index % 60000, 53, 8 + len(dns), 0) + dns
            ip = (
                struct.pack(
                    "!BBHHHBBH4s4s",
                    0x45,
                    0,
                    20 + len(udp),
                    index & 0xFFFF,
                    0,
                    64,
                    17,
                    0,
                    bytes([10, 55, 0, 20]),
                    bytes([10, 55, 0, 99]),
                )
                + udp
            )
            frame = head + ip
            out.write(
                struct.pack(
                    "<IIII", 1_700_000_000 + index // 100_000, index % 100_000, len(frame), len(frame)
                )
            )
            out.write(frame)
    return ai_sent


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_flood_of_random_subdomains_stays_under_the_cap_and_ai_is_still_seen(
    lab_net: Lab, tmp_path: Path
) -> None:
    reason = skip_reason(("tcpreplay",))
    if reason is not None:
        pytest.skip(reason)
    client, sensor = lab_net.hosts["cli"], lab_net.hosts["sen"]
    capture = tmp_path / "flood.pcap"
    ai_sent = _flood_pcap(capture, client.mac)
    # Reconciliation runs every few seconds during the flood: it must read only the rows behind
    # the evidence, never the hundreds of thousands of flood names of the same endpoint.
    daemon = SensorDaemon(
        sensor,
        tmp_path,
        extra=f"[limits]\nmax_keys = 20000\nmax_rss_mib = {FLOOD_CAP_MIB}\n",
        reconcile_seconds=2,
    )
    daemon.start()
    assert daemon.process is not None
    started = time.monotonic()
    replay = client.run("tcpreplay", "-q", "-i", client.iface, "--pps", "60000", str(capture), timeout=120)
    assert replay.returncode == 0
    replay_seconds = time.monotonic() - started
    time.sleep(3)
    peak = _peak_rss_mib(daemon.process.pid)
    shed = _metric(daemon, 'lanterne_shed_total{bound="window_observations"}')
    decoded = _metric(daemon, 'lanterne_observations_total{kind="dns.query"}')
    drops = _metric(daemon, f'lanterne_kernel_drops_total{{interface="{sensor.iface}"}}')
    assert daemon.stop() == 0, daemon.log_text()[-3000:]
    print(
        f"flood: {FLOOD} queries in {replay_seconds:.1f} s, decoded {decoded:.0f}, kernel drops {drops:.0f}, "
        f"shed {shed:.0f}, peak RSS {peak:.0f} MiB (cap {FLOOD_CAP_MIB})"
    )
    assert peak < FLOOD_CAP_MIB
    stored = sqlite_rows(
        daemon.database, "SELECT count(*), sum(count) FROM observations WHERE value LIKE '%.flood.lab'"
    )
    assert stored[0][0] is not None
    products = {key for (key,) in sqlite_rows(daemon.database, "SELECT DISTINCT product_key FROM detections")}
    assert {"openai-chatgpt", "anthropic-claude"} <= products, (
        f"{ai_sent} AI queries sent, detections {products}"
    )
    # Most of the flood is dropped by the kernel (the daemon decodes a few tens of thousands of DNS
    # messages a second): the AI names, sent a hundred times among a million, still come through.
    for name in ("chatgpt.com", "claude.ai"):
        (seen,) = sqlite_rows(daemon.database, "SELECT sum(count) FROM observations WHERE value = ?", name)
        assert seen[0] is not None, f"{name} never stored"
