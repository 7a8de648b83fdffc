"""``lanterne scan``: idempotent per file, one transaction per file, consistent after SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from agent._pipeline import Scanner
from agent.cli import app
from fingerprints import load_index
from store import (
    Detection,
    Endpoint,
    EndpointAlias,
    IngestedFile,
    ObservationAggregate,
    Reconciliation,
    open_store,
)
from tests.pcapfiles import pcap_bytes
from tests.store.dburl import BACKENDS, temporary_database

runner = CliRunner()
T0 = 1_764_000_000.0
GATEWAY = "00:00:0c:9f:f0:01"


def dns_query(ts: float, mac: str, ip: str, name: str, txid: int) -> tuple[float, bytes]:
    """One Ethernet/IPv4/UDP DNS query frame (checksums left at zero: the decoder does not need them)."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    dns = struct.pack(">HHHHHH", txid & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    udp = struct.pack(">HHHH", 40000 + txid % 20000, 53, 8 + len(dns), 0) + dns
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        txid & 0xFFFF,
        0,
        64,
        17,
        0,
        socket.inet_aton(ip),
        socket.inet_aton("10.0.0.53"),
    )
    ethernet = bytes.fromhex(GATEWAY.replace(":", "")) + bytes.fromhex(mac.replace(":", "")) + b"\x08\x00"
    return ts, ethernet + header + udp


def capture(
    path: Path, *, packets: int, clients: int, names: Sequence[str], seed: int, start: float = T0
) -> Path:
    """A capture of DNS queries by ``clients`` workstations (Dell OUI, 10.20.x.y) for ``names``."""
    rng = random.Random(seed)
    frames = []
    for i in range(packets):
        client = rng.randrange(clients)
        mac = f"f4:8e:38:{seed:02x}:{client >> 8:02x}:{client & 0xFF:02x}"
        ip = f"10.{20 + seed}.{client // 250}.{client % 250 + 1}"
        frames.append(dns_query(start + i * 0.001, mac, ip, rng.choice(names), i))
    path.write_bytes(pcap_bytes(frames))
    return path


def snapshot(url: str) -> dict[str, Any]:
    """Every count a scan changes, independent of row ids and ingestion times."""
    store = open_store(url)
    try:
        with store.session() as session:
            count = func.count()
            return {
                "endpoints": session.scalar(select(count).select_from(Endpoint)),
                "merged": session.scalar(
                    select(count).select_from(Endpoint).where(Endpoint.merged_into.is_not(None))
                ),
                "identities": sorted(session.scalars(select(Endpoint.identity))),
                "aliases": session.scalar(select(count).select_from(EndpointAlias)),
                "observation_rows": session.scalar(select(count).select_from(ObservationAggregate)),
                "observations": int(session.scalar(select(func.sum(ObservationAggregate.count))) or 0),
                "per_value": sorted(
                    (value, int(total))
                    for value, total in session.execute(
                        select(ObservationAggregate.value, func.sum(ObservationAggregate.count)).group_by(
                            ObservationAggregate.value
                        )
                    )
                ),
                "detections": sorted(
                    (key, n)
                    for key, n in session.execute(
                        select(Detection.product_key, count).group_by(Detection.product_key)
                    )
                ),
                "evidence_counts": sorted(
                    sum(int(entry.get("count", 0)) for entry in evidence)
                    for evidence in session.scalars(select(Detection.evidence))
                ),
                "files": sorted(session.scalars(select(IngestedFile.sha256))),
                "reconciliations": sorted(
                    (key, str(status))
                    for key, status in session.execute(
                        select(Reconciliation.product_key, Reconciliation.status)
                    )
                ),
            }
    finally:
        store.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with temporary_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def small_capture(tmp_path: Path) -> Path:
    names = [
        "intranet.ch-test.local",
        "chatgpt.com",
        "api.openai.com",
        "pacs.ch-test.local",
        "www.has-sante.fr",
    ]
    return capture(tmp_path / "small.pcap", packets=400, clients=12, names=names, seed=1)


def scan(*args: str) -> Any:
    return runner.invoke(app, ["scan", *args])


def test_scan_then_rescan_counts_nothing_twice(db_url: str, small_capture: Path) -> None:
    result = scan(str(small_capture), "--db", db_url, "--site", "ch-test", "--agent", "sonde-1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["packets"], summary["observations"], summary["stored_observations"]) == (400, 400, 400)
    assert summary["endpoints"] == 12
    assert summary["detections"]["openai-chatgpt"] >= 1
    assert summary["reconciliation"]["undeclared_observed"] >= 1
    assert "scan summary" in result.stderr
    before = snapshot(db_url)
    assert before["observations"] == 400
    assert before["files"] == [summary["files"][0]["sha256"]]

    again = scan(str(small_capture), "--db", db_url, "--site", "ch-test", "--agent", "sonde-1", "--json")
    assert again.exit_code == 0, again.output
    assert "already ingested" in again.stderr
    assert json.loads(again.stdout)["files"][0]["status"] == "skipped"
    assert snapshot(db_url) == before


def test_fail_on_findings(tmp_path: Path, small_capture: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    assert scan(str(small_capture), "--db", db, "--fail-on-findings").exit_code == 1
    quiet = capture(tmp_path / "quiet.pcap", packets=20, clients=2, names=["intranet.ch-test.local"], seed=2)
    clean_db = f"sqlite:///{tmp_path / 'clean.db'}"
    assert scan(str(quiet), "--db", clean_db, "--fail-on-findings").exit_code == 0


def test_a_file_that_cannot_be_read_is_reported_and_the_others_scanned(
    tmp_path: Path, small_capture: Path
) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a capture\n" * 10)
    db = f"sqlite:///{tmp_path / 'e.db'}"
    result = scan(str(bogus), str(tmp_path / "missing.pcap"), str(small_capture), "--db", db, "--json")
    assert result.exit_code == 2
    statuses = [item["status"] for item in json.loads(result.stdout)["files"]]
    assert statuses == ["failed", "failed", "scanned"]
    assert "notes.txt" in result.stderr


def test_usage_errors(tmp_path: Path, small_capture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = scan(str(small_capture), "--db", "mysql://u@h/db")
    assert bad.exit_code == 2
    assert "unsupported database" in bad.stderr
    monkeypatch.delenv("LANTERNE_PSEUDONYM_KEY", raising=False)
    no_key = scan(str(small_capture), "--db", str(tmp_path / "p.db"), "--pseudonymous")
    assert no_key.exit_code == 2
    assert "LANTERNE_PSEUDONYM_KEY" in no_key.stderr


def test_pseudonymous_scan(tmp_path: Path, small_capture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANTERNE_PSEUDONYM_KEY", "a-test-key-of-more-than-16-bytes")
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert scan(str(small_capture), "--db", db, "--pseudonymous").exit_code == 0
    identities = snapshot(db)["identities"]
    assert identities
    assert all(identity.startswith("h:") for identity in identities)


def test_progress_bar_on_request(tmp_path: Path, small_capture: Path) -> None:
    result = scan(str(small_capture), "--db", str(tmp_path / "b.db"), "--progress")
    assert result.exit_code == 0, result.output


def test_many_windows_in_one_file_give_the_counts_of_one(tmp_path: Path) -> None:
    names = [f"host{i}.example.org" for i in range(60)] + ["chatgpt.com"]
    path = capture(tmp_path / "w.pcap", packets=3000, clients=40, names=names, seed=3)
    index = load_index(with_recog=False)
    results = {}
    for flush_at in (10**6, 97):
        url = f"sqlite:///{tmp_path / f'w{flush_at}.db'}"
        store = open_store(url)
        try:
            report = Scanner(store, index, site="s", agent="a", flush_at=flush_at).scan(path)
        finally:
            store.dispose()
        assert (report.windows == 1) == (flush_at > 3000)
        results[flush_at] = snapshot(url)
    assert results[97] == results[10**6]


def test_a_store_that_fails_mid_file_keeps_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"host{i}.example.org" for i in range(40)]
    path = capture(tmp_path / "x.pcap", packets=2000, clients=30, names=names, seed=4)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = open_store(url)
    index = load_index(with_recog=False)
    calls = 0
    from agent import _aggregate

    original = _aggregate.StoreWriter.write

    def failing(self: _aggregate.StoreWriter, session: Any, window: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full")
        return original(self, session, window, **kwargs)

    monkeypatch.setattr(_aggregate.StoreWriter, "write", failing)
    try:
        with pytest.raises(OSError, match="disk full"):
            Scanner(store, index, site="s", agent="a", flush_at=50).scan(path)
    finally:
        store.dispose()
    empty = snapshot(url)
    assert (empty["endpoints"], empty["observation_rows"], empty["files"]) == (0, 0, [])


# -- SIGKILL half-way ---------------------------------------------------------------------------------


def _lanterne(*args: str) -> list[str]:
    return [sys.executable, "-c", "from agent.cli import main; main()", *args]


def _ingested(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2) as connection:
            return int(connection.execute("SELECT count(*) FROM ingested_files").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_half_way_leaves_a_consistent_database(tmp_path: Path) -> None:
    names_a = [f"a{i}.example.org" for i in range(300)] + ["chatgpt.com"]
    names_b = [f"b{i}.example.net" for i in range(400)] + ["claude.ai", "chatgpt.com"]
    first = capture(tmp_path / "a.pcap", packets=30_000, clients=200, names=names_a, seed=5)
    second = capture(
        tmp_path / "b.pcap", packets=150_000, clients=300, names=names_b, seed=6, start=T0 + 3600
    )
    common = ["--site", "ch-test", "--agent", "sonde-1", "--flush-keys", "5000", "--no-progress"]

    whole = tmp_path / "whole.db"
    run = subprocess.run(
        _lanterne("scan", str(first), str(second), "--db", str(whole), *common),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 1 or run.returncode == 0, run.stderr

    killed = tmp_path / "killed.db"
    started = time.monotonic()
    process = subprocess.Popen(
        _lanterne("scan", str(first), str(second), "--db", str(killed), *common),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while _ingested(killed) < 1:  # the first file is committed: the second is being scanned
            assert process.poll() is None, "the scan ended before the second file started"
            assert time.monotonic() - started < 300, "the first file never committed"
            time.sleep(0.02)
        time.sleep(1.0)  # well into the second file: several windows written, none committed
        assert process.poll() is None, "the scan finished before it could be killed: make the capture larger"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    with sqlite3.connect(killed) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        values = [row[0] for row in connection.execute("SELECT value FROM observations")]
    assert values
    assert not [value for value in values if value.startswith("b") and value.endswith(".example.net")]
    half = snapshot(f"sqlite:///{killed}")
    assert len(half["files"]) == 1
    assert half["observations"] == 30_000

    rerun = subprocess.run(
        _lanterne("scan", str(first), str(second), "--db", str(killed), *common),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert rerun.returncode in (0, 1), rerun.stderr
    assert "already ingested" in rerun.stderr
    assert snapshot(f"sqlite:///{killed}") == snapshot(f"sqlite:///{whole}")
