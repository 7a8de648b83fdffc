"""The daemon end to end without a network: frames in through the real add_reader path, rows out in SQLite.

The capture sockets are datagram socketpairs (``test_live.Wire``); the database is a real SQLite
file, made unreachable or unreliable by wrapping the store. What is asserted is what the
operators rely on: every observation counted exactly once across outages, replays and restarts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import agent._daemon as daemon_module
from agent._config import (
    CaptureConfig,
    Config,
    LimitsConfig,
    MetricsConfig,
    ScheduleConfig,
    ServiceMap,
    SpoolConfig,
)
from agent._daemon import Daemon, FlushOutcome
from collectors._bpf import Program
from fingerprints import Index, default_index
from store import Endpoint, ObservationAggregate, Store, StoreError, open_store
from tests.daemon.test_live import Wire

CLIENT_MAC = "02:00:00:00:00:01"


@cache
def _index() -> Index:
    return default_index()


def _query(name: str, *, client: str = "10.0.0.1", mac: str = CLIENT_MAC, vlan: int | None = None) -> bytes:
    frame = Ether(src=mac, dst="02:00:00:00:00:02")
    if vlan is not None:
        frame = frame / Dot1Q(vlan=vlan)
    frame = (
        frame / IP(src=client, dst="10.0.0.53") / UDP(sport=40000, dport=53) / DNS(id=1, qd=DNSQR(qname=name))
    )
    return bytes(frame)


def _config(tmp_path: Path, **changes: Any) -> Config:
    config = Config(
        agent="l5-test",
        site="lab",
        database_url=f"sqlite:///{tmp_path / 'lanterne.db'}",
        capture=CaptureConfig(interfaces=("l5fake0",)),
        # The test flushes by hand: the timers never fire during a test.
        schedule=ScheduleConfig(
            flush_seconds=3600, reconcile_seconds=3600, purge_hours=24, digest_minutes=60
        ),
        spool=SpoolConfig(path=tmp_path / "spool.jsonl"),
        metrics=MetricsConfig(enabled=False),
    )
    return Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, **changes})


def _counts(url: str) -> dict[str, int]:
    store = open_store(url)
    try:
        with store.session() as session:
            rows = session.execute(
                select(ObservationAggregate.value, func.sum(ObservationAggregate.count))
                .where(ObservationAggregate.kind == "dns.query")
                .group_by(ObservationAggregate.value)
            )
            return {value: int(total) for value, total in rows}
    finally:
        store.dispose()


class Harness:
    """A daemon on a fake wire, driven step by step from inside its event loop."""

    def __init__(self, config: Config, wire: Wire, **options: Any) -> None:
        self.wire = wire

        def opener_factory(iface: str, program: Program | None) -> Any:
            return wire.opener

        self.daemon = Daemon(config, index=_index(), opener_factory=opener_factory, **options)

    def run(self, scenario: Callable[[Daemon], Any]) -> None:
        async def main() -> None:
            task = asyncio.ensure_future(self.daemon.async_run(install_signals=False))
            try:
                await asyncio.wait_for(self.daemon.ready.wait(), 30)
                await _until(lambda: all(c.stats.running for c in self.daemon.captures.values()))
                await scenario(self.daemon)
            finally:
                self.daemon.request_stop()
                await task

        asyncio.run(main())

    async def send(self, frames: list[bytes]) -> None:
        before = self.daemon.decode_stats.packets
        for frame in frames:
            self.wire.send(frame)
        await _until(lambda: self.daemon.decode_stats.packets >= before + len(frames))


async def _until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def wire() -> Iterator[Wire]:
    made = Wire()
    yield made
    made.close()


def test_what_is_captured_is_stored_and_detected(tmp_path: Path, wire: Wire) -> None:
    config = _config(tmp_path)
    harness = Harness(config, wire, reconcile_at_exit=True)

    async def scenario(daemon: Daemon) -> None:
        await harness.send([_query("chatgpt.com"), _query("chatgpt.com"), _query("example.org")])
        outcome = await daemon.async_flush()
        assert outcome.stored_batches == 1
        assert outcome.database_up
        await harness.send([_query("chatgpt.com")])  # flushed at stop

    harness.run(scenario)
    assert _counts(config.database_url) == {"chatgpt.com": 3, "example.org": 1}
    report = harness.daemon.report
    assert report.stored.observations == 4
    assert "openai-chatgpt" in report.stored.detections
    assert report.reconciliation is not None
    assert report.reconciliation.raised


class Flaky:
    """A store opener whose database is down until ``up`` is set; then every write may fail on demand."""

    def __init__(self) -> None:
        self.up = False
        self.fail_writes = 0
        self.lose_acks = 0

    def __call__(self, url: Any) -> Store:
        if not self.up:
            raise StoreError("cannot connect to the database: connection refused")
        real = open_store(url)
        flaky = self

        class Unreliable(Store):
            @contextmanager
            def write(self) -> Iterator[Any]:
                if flaky.fail_writes:
                    flaky.fail_writes -= 1
                    raise OperationalError(
                        "BEGIN", {}, ConnectionRefusedError("server closed the connection")
                    )
                with Store.write(self) as session:
                    yield session
                if flaky.lose_acks:  # committed, but the acknowledgement never came back
                    flaky.lose_acks -= 1
                    raise OperationalError("COMMIT", {}, ConnectionResetError("connection lost"))

        return Unreliable(real.engine, real.sessions)


def test_an_outage_spools_then_replays_exactly_once(tmp_path: Path, wire: Wire) -> None:
    config = _config(tmp_path)
    flaky = Flaky()
    harness = Harness(config, wire, store_opener=flaky)

    async def scenario(daemon: Daemon) -> None:
        for round_ in range(3):  # three windows while the database is down
            await harness.send([_query(f"down{round_}.example"), _query("chatgpt.com")])
            outcome = await daemon.async_flush()
            assert outcome.spooled
            assert not outcome.database_up
        assert len(daemon.spool) == 3
        flaky.up = True
        await harness.send([_query("up.example")])
        outcome = await daemon.async_flush()
        assert (outcome.replayed, outcome.stored_batches, outcome.database_up) == (3, 1, True)
        assert len(daemon.spool) == 0
        # The database drops again mid-way: a write fails, then a commit's acknowledgement is lost.
        flaky.fail_writes = 1
        await harness.send([_query("again.example")])
        assert (await daemon.async_flush()).spooled
        flaky.lose_acks = 1
        await harness.send([_query("lost-ack.example")])
        assert (await daemon.async_flush()).spooled
        outcome = await daemon.async_flush()
        assert outcome.replayed == 2
        assert daemon.spool.stats.skipped_duplicates == 1  # the lost-ack batch was already in

    harness.run(scenario)
    assert _counts(config.database_url) == {
        "down0.example": 1,
        "down1.example": 1,
        "down2.example": 1,
        "chatgpt.com": 3,
        "up.example": 1,
        "again.example": 1,
        "lost-ack.example": 1,
    }


def test_the_spool_outlives_the_process(tmp_path: Path, wire: Wire) -> None:
    config = _config(tmp_path)
    flaky = Flaky()
    first = Harness(config, wire, store_opener=flaky)

    async def down(daemon: Daemon) -> None:
        await first.send([_query("kept.example"), _query("kept.example")])

    first.run(down)  # stopped while the database is down: the last window goes to the spool
    assert len(first.daemon.spool) == 1
    flaky.up = True
    second_wire = Wire()
    second = Harness(config, second_wire, store_opener=flaky)

    async def up(daemon: Daemon) -> None:
        assert len(daemon.spool) == 1
        await daemon.async_flush()

    try:
        second.run(up)
    finally:
        second_wire.close()
    assert _counts(config.database_url) == {"kept.example": 2}
    assert not config.spool.path.exists()


def test_a_window_the_database_refuses_is_kept_aside(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    harness = Harness(config, wire)

    async def scenario(daemon: Daemon) -> None:
        writer = daemon._writer
        assert writer is not None
        original = writer.write
        calls = {"n": 0}

        def write(session: Any, window: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("a bug in the writer")
            return original(session, window, **kwargs)

        monkeypatch.setattr(writer, "write", write)
        await harness.send([_query("refused.example")])
        outcome = await daemon.async_flush()
        assert outcome.rejected == 1
        assert not outcome.spooled
        await harness.send([_query("next.example")])
        assert (await daemon.async_flush()).stored_batches == 1

    harness.run(scenario)
    assert _counts(config.database_url) == {"next.example": 1}
    assert "refused.example" in harness.daemon.spool.rejected_path.read_text(encoding="utf-8")


def test_a_full_window_is_flushed_early_and_the_rest_shed(tmp_path: Path, wire: Wire) -> None:
    config = _config(tmp_path, limits=LimitsConfig(max_keys=100))
    harness = Harness(config, wire)
    flushes: list[FlushOutcome] = []

    async def scenario(daemon: Daemon) -> None:
        original = daemon.async_flush

        async def counting() -> FlushOutcome:
            outcome = await original()
            flushes.append(outcome)
            return outcome

        daemon.async_flush = counting  # type: ignore[method-assign]
        await harness.send([_query(f"r{i}.flood.example") for i in range(100)])
        await _until(lambda: bool(flushes))

    harness.run(scenario)
    counts = _counts(config.database_url)
    shed = harness.daemon.aggregator.stats.shed_observations
    assert len(counts) + shed == 100
    assert len(counts) >= 100 - shed
    assert flushes[0].stored.observations >= 1


def test_memory_pressure_drops_caches_and_flushes(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    harness = Harness(config, wire)

    async def scenario(daemon: Daemon) -> None:
        await harness.send([_query("before.example")])
        monkeypatch.setattr(daemon_module, "rss_bytes", lambda: 10 << 30)
        await daemon._async_housekeeping()
        await _until(lambda: _counts(config.database_url) == {"before.example": 1})
        assert daemon.memory_pressure == 1
        assert daemon.sample().shed["memory_pressure"] == 1

    harness.run(scenario)


def test_endpoints_get_their_service(tmp_path: Path, wire: Wire) -> None:
    services = ServiceMap({120: "Radiologie"}, ((ipaddress.ip_network("10.0.7.0/24"), "Urgences"),))
    config = _config(tmp_path, services=services)
    harness = Harness(config, wire)

    async def scenario(daemon: Daemon) -> None:
        await harness.send(
            [
                _query("a.example", client="10.0.0.5", mac="02:00:00:00:00:05", vlan=120),
                _query("b.example", client="10.0.7.9", mac="02:00:00:00:00:09"),
                _query("c.example", client="10.0.9.9", mac="02:00:00:00:00:0a"),
            ]
        )

    harness.run(scenario)
    store = open_store(config.database_url)
    try:
        with store.session() as session:
            found = dict(session.execute(select(Endpoint.mac, Endpoint.service)).all())
    finally:
        store.dispose()
    assert found == {
        "02:00:00:00:00:05": "Radiologie",
        "02:00:00:00:00:09": "Urgences",
        "02:00:00:00:00:0a": None,
    }


def test_jobs_never_overlap(tmp_path: Path, wire: Wire) -> None:
    harness = Harness(_config(tmp_path), wire)

    async def scenario(daemon: Daemon) -> None:
        scheduler = daemon._scheduler
        assert scheduler is not None
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert {"flush", "reconcile", "purge", "housekeeping"} <= set(jobs)
        for job in jobs.values():
            assert (job.max_instances, job.coalesce) == (1, True)
        # Two flushes asked at once run one after the other (one database thread, one lock).
        first, second = await asyncio.gather(daemon.async_flush(), daemon.async_flush())
        assert first.database_up
        assert second.database_up

    harness.run(scenario)


def test_sigterm_flushes_before_exit(tmp_path: Path, wire: Wire) -> None:
    config = _config(tmp_path)
    harness = Harness(config, wire)

    async def main() -> None:
        daemon = harness.daemon
        task = asyncio.ensure_future(daemon.async_run(install_signals=True))
        await asyncio.wait_for(daemon.ready.wait(), 30)
        await _until(lambda: all(c.stats.running for c in daemon.captures.values()))
        await harness.send([_query("last-words.example")])
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the daemon's loop handler, not by pytest
        await asyncio.wait_for(task, 60)

    asyncio.run(main())
    assert _counts(config.database_url) == {"last-words.example": 1}
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(
        signal.getsignal(signal.SIGTERM)
    )


def test_a_job_running_at_the_stop_finishes_and_is_counted(
    tmp_path: Path, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop while the scheduled flush writes: the flush finishes, counted, and no job "failed".

    Shutting the scheduler down first used to cancel the job half-way: its write went on in the
    database thread, but its counts were lost and APScheduler logged a CancelledError traceback.
    """
    config = _config(tmp_path)
    harness = Harness(config, wire)
    daemon = harness.daemon
    writing, release = threading.Event(), threading.Event()
    real_flush = daemon._flush_blocking

    def slow_flush(*args: Any) -> FlushOutcome:
        writing.set()
        release.wait(10)
        return real_flush(*args)

    daemon._flush_blocking = slow_flush  # type: ignore[method-assign]

    async def scenario(daemon: Daemon) -> None:
        await harness.send([_query("mid-flush.example")])
        scheduler = daemon._scheduler
        assert scheduler is not None
        scheduler.modify_job("flush", next_run_time=datetime.now(UTC))
        await _until(writing.is_set)
        daemon.request_stop()
        asyncio.get_running_loop().call_later(0.3, release.set)  # the stop waits for the write

    with caplog.at_level(logging.INFO):
        harness.run(scenario)
    assert _counts(config.database_url) == {"mid-flush.example": 1}
    assert daemon.report.stored.observations == 1  # the scheduled flush's, counted
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_database_down_at_start_does_not_stop_capture(tmp_path: Path, wire: Wire) -> None:
    config = _config(tmp_path)
    flaky = Flaky()
    harness = Harness(config, wire, store_opener=flaky)

    async def scenario(daemon: Daemon) -> None:
        assert daemon.store is None
        assert not daemon.database_up
        await harness.send([_query("early.example")])
        flaky.up = True

    harness.run(scenario)  # the final flush opens the store and writes
    assert _counts(config.database_url) == {"early.example": 1}


def test_several_interfaces_at_once(tmp_path: Path) -> None:
    wires = {"l5fake0": Wire(), "l5fake1": Wire()}
    config = _config(tmp_path, capture=CaptureConfig(interfaces=tuple(wires)))

    def opener_factory(iface: str, program: Program | None) -> Any:
        return wires[iface].opener

    daemon = Daemon(config, index=_index(), opener_factory=opener_factory)

    async def main() -> None:
        task = asyncio.ensure_future(daemon.async_run(install_signals=False))
        try:
            await asyncio.wait_for(daemon.ready.wait(), 30)
            await _until(
                lambda: len(daemon.captures) == 2 and all(c.stats.running for c in daemon.captures.values())
            )
            wires["l5fake0"].send(_query("zero.example"))
            wires["l5fake1"].send(_query("one.example", client="10.0.1.1", mac="02:00:00:00:01:01"))
            await _until(lambda: daemon.decode_stats.packets == 2)
            assert set(daemon.sample().interfaces) == set(wires)
        finally:
            daemon.request_stop()
            await task

    try:
        asyncio.run(main())
    finally:
        for wire in wires.values():
            wire.close()
    assert _counts(config.database_url) == {"zero.example": 1, "one.example": 1}


def test_a_spool_that_cannot_be_written_sheds_and_counts(tmp_path: Path, wire: Wire) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the spool directory should be", encoding="utf-8")
    config = _config(tmp_path, spool=SpoolConfig(path=blocked / "spool.jsonl"))
    harness = Harness(config, wire, store_opener=Flaky())

    async def scenario(daemon: Daemon) -> None:
        await harness.send([_query("nowhere.example")])
        outcome = await daemon.async_flush()
        assert outcome.shed
        assert not outcome.spooled
        assert daemon.sample().shed["spool_observations"] == 1

    harness.run(scenario)


def test_the_digest_job_delivers_alerts_to_a_channel(tmp_path: Path, wire: Wire) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    channel = {"name": "siem", "type": "syslog", "host": "127.0.0.1", "port": listener.getsockname()[1]}
    config = _config(tmp_path, alert_channels=(channel,))
    harness = Harness(config, wire)

    async def scenario(daemon: Daemon) -> None:
        scheduler = daemon._scheduler
        assert scheduler is not None
        assert scheduler.get_job("digest") is not None
        await harness.send([_query("chatgpt.com")])
        await daemon.async_flush()
        await daemon._async_reconcile()
        await daemon._async_digest()

    try:
        harness.run(scenario)
        message = listener.recv(65536).decode("utf-8", "replace")
    finally:
        listener.close()
    assert "CEF:0|" in message
    assert "openai-chatgpt" in message or "ChatGPT" in message


def _probing_config(tmp_path: Path) -> Config:
    """``_config`` with ``[probe]`` enabled in dry run (the tests replace the sweep anyway)."""
    from agent._config import parse_config

    probe = parse_config(
        {
            "database": {"url": "sqlite://"},
            "probe": {"enabled": True, "allow": ["10.55.0.0/24"], "dry_run": True},
        },
        env={},
    ).probe
    return _config(tmp_path, probe=probe)


def test_the_probe_job_hands_the_sweep_its_scope(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent._probing as probing

    config = _probing_config(tmp_path)
    calls: list[dict[str, Any]] = []

    async def fake_sweep(config: Any, store: Any, **options: Any) -> Any:
        # Never a real sweep in a unit test: nothing may leave this machine.
        calls.append({"config": config, "store": store, **options})
        return probing.SweepReport(started=datetime.now(UTC))

    monkeypatch.setattr(probing, "async_sweep", fake_sweep)
    harness = Harness(config, wire)

    async def scenario(daemon: Daemon) -> None:
        scheduler = daemon._scheduler
        assert scheduler is not None
        job = scheduler.get_job("probe")
        assert job is not None
        assert (job.max_instances, job.coalesce) == (1, True)
        await daemon._async_probe()

    harness.run(scenario)
    (call,) = calls
    assert call["config"].probe.policy.dry_run
    assert (call["site"], call["agent"]) == ("lab", "l5-test")


def test_a_sweep_running_at_the_stop_is_stopped_at_once(
    tmp_path: Path, wire: Wire, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An active sweep has nothing to finish: the stop cancels it rather than wait up to the grace."""
    import agent._probing as probing

    config = _probing_config(tmp_path)
    sweeping = asyncio.Event()
    cancelled: list[bool] = []

    async def endless_sweep(config: Any, store: Any, **options: Any) -> Any:
        sweeping.set()  # never a real sweep in a unit test: nothing may leave this machine
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        raise AssertionError("the sweep was not stopped")

    monkeypatch.setattr(probing, "async_sweep", endless_sweep)
    harness = Harness(config, wire)

    async def scenario(daemon: Daemon) -> None:
        scheduler = daemon._scheduler
        assert scheduler is not None
        scheduler.modify_job("probe", next_run_time=datetime.now(UTC))
        await asyncio.wait_for(sweeping.wait(), 10)

    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        harness.run(scenario)
    assert cancelled == [True]
    assert time.monotonic() - started < daemon_module.SHUTDOWN_GRACE / 2
    messages = [r.getMessage() for r in caplog.records]
    assert "the probe job was stopped by the shutdown" in messages
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_long_running_mdns_browser_feeds_the_window(tmp_path: Path, wire: Wire) -> None:
    """``[probe]`` enabled: DNS-SD is browsed for as long as the daemon runs, on loopback here."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from agent._config import parse_config
    from store import Detection, ProbeLogEntry

    probe = parse_config(
        {
            "database": {"url": "sqlite://"},
            "probe": {
                "enabled": True,
                "allow": ["127.0.0.0/8"],
                "interfaces": ["lo"],  # the only interface anything may be sent on in this test
                "rate": 1000,
                "burst": 100,
            },
        },
        env={},
    ).probe
    config = _config(tmp_path, probe=probe)
    harness = Harness(config, wire)
    resolved: list[int] = []

    async def scenario(daemon: Daemon) -> None:
        browser = daemon.mdns
        assert browser is not None, "the browser starts with the daemon"
        # A device that appears while the daemon runs, long after it started browsing.
        responder = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(
            "_dicom._tcp.local.",
            "PACS-LAB._dicom._tcp.local.",
            addresses=[bytes([127, 0, 0, 1])],
            port=11112,
            properties={"aet": "PACS_LAB"},
            server="pacs-lab.local.",
        )
        try:
            await (await responder.async_register_service(info, cooperating_responders=True))
            await _until(lambda: browser.instances >= 1, limit=20)
            resolved.append(browser.instances)
            assert browser.refresh() == 1  # what the hourly refresh does: the device is still there
            await _until(lambda: browser.instances >= 2, limit=20)
            resolved.append(browser.instances)
            await daemon.async_flush()
        finally:
            await responder.async_unregister_all_services()
            await responder.async_close()

    harness.run(scenario)
    assert resolved == [1, 2]
    store = open_store(config.database_url)
    try:
        with store.session() as session:
            services = session.scalars(
                select(ObservationAggregate.value).where(ObservationAggregate.kind == "mdns.service")
            ).all()
            detections = session.scalars(select(Detection.product_id)).all()
            log = session.scalars(select(ProbeLogEntry.detail).where(ProbeLogEntry.protocol == "mdns")).all()
    finally:
        store.dispose()
    assert services == ["pacs-lab._dicom._tcp.local"]
    assert "dicom-bonjour-node" in detections
    assert any(line.endswith("started") for line in log), log
    assert any("stopped" in line and "instances resolved" in line for line in log), log
