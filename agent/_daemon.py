"""The daemon (DESIGN §7): one asyncio process that captures, aggregates, writes, reconciles, for months.

Threads and their jobs:

- **the event loop** reads every capture socket (``collectors._live``), decodes, attributes flows
  and counts observations into the aggregator (``agent._window``): no blocking call, ever; with
  ``[probe]`` enabled it also runs the long-running mDNS/DNS-SD browser, whose resolved
  instances join the same window, and the scheduled sweeps (same packet budget);
- **one database thread** (a single-worker executor) does every write: flushes, spool replays,
  reconciliation, retention purge. One thread means the jobs never write concurrently (and
  SQLite's single writer never waits for itself); APScheduler also keeps each job from
  overlapping with itself (``max_instances=1, coalesce=True``);
- **the metrics thread** (prometheus-client's HTTP server) reads plain counters at scrape time.

Survival, in one place:

- a capture that fails reopens with a growing backoff (``LiveCapture``); an interface that goes
  down and up, or is replaced, is captured again; nothing a collector does stops the daemon;
- every window gets a batch id before it is written; when the database cannot be reached the
  window goes to the spool (``agent._spool``), replayed in order when it answers again, each
  batch applied exactly once (its id is committed with it);
- memory is bounded: a window holds at most ``limits.max_keys`` keys (a window that fills is
  flushed early; what arrives meanwhile is shed and counted), the IP-to-name memory is an LRU,
  and above ``limits.max_rss_mib`` the caches are dropped and the window flushed at once;
- SIGTERM and SIGINT stop the captures after draining their sockets, flush the last window (to
  the database or the spool) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from agent._aggregate import FlushResult, StoreWriter
from agent._config import Config
from agent._identity import IdentityResolver, Pseudonymiser
from agent._metrics import Metrics, Sample
from agent._reconcile import ReconcileConfig, ReconcileResult, reconcile
from agent._spool import (
    Spool,
    already_applied,
    mark_applied,
    new_batch_id,
    purge_markers,
    window_from_json,
    window_to_json,
)
from agent._window import Aggregator, Window
from collectors import Decoder, DecodeStats, Observation
from collectors._bpf import Program, compile_filter, filter_expression
from collectors._live import FlowAttributor, LiveCapture, Opener, open_packet_socket
from collectors._quiet import QuietLogger
from fingerprints import Index, default_index
from store import Endpoint, Store, StoreError, normalise_url, open_store, purge

_LOGGER = logging.getLogger(__name__)
_QUIET = QuietLogger(_LOGGER)
T = TypeVar("T")

#: Seconds between memory checks.
HOUSEKEEPING_SECONDS: Final = 5.0
#: Seconds a PostgreSQL connection attempt may take (an unreachable host must not hold the writer long).
PG_CONNECT_TIMEOUT: Final = 10
#: Seconds the shutdown waits for a running job before flushing anyway.
SHUTDOWN_GRACE: Final = 60.0
#: Scheduled jobs that the shutdown cancels rather than waits for.
_STOPPED_AT_SHUTDOWN: Final = frozenset({"probe"})
#: How often the long-running mDNS browser resolves its known instances again.
MDNS_REFRESH_SECONDS: Final = 3600.0
#: Probe-log lines kept while the database is away (the oldest go first, counted).
MAX_PENDING_PROBE_RECORDS: Final = 10_000
#: Endpoint ids per UPDATE of their service.
_CHUNK: Final = 500

StoreOpener = Callable[[Any], Store]
OpenerFactory = Callable[[str, Program | None], Opener]


def _unreachable(exc: BaseException) -> bool:
    """Whether a database error means "not reachable now" (spool and retry) rather than a bad batch."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout | StoreError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


def rss_bytes() -> int:
    """Resident memory of this process."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def database_url(url: str) -> Any:
    """The URL to open: PostgreSQL gets a connect timeout unless the URL sets one."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(PG_CONNECT_TIMEOUT)})
    return parsed


@dataclass(slots=True)
class FlushOutcome:
    """What one flush job did."""

    stored: FlushResult = field(default_factory=FlushResult)
    stored_batches: int = 0
    replayed: int = 0
    spooled: bool = False
    shed: bool = False
    rejected: int = 0
    database_up: bool = False


@dataclass(slots=True)
class RunReport:
    """What a run did, for ``lanterne capture``'s summary and the tests."""

    decode: DecodeStats = field(default_factory=DecodeStats)
    stored: FlushResult = field(default_factory=FlushResult)
    attributed: int = 0
    shed_observations: int = 0
    probe_records_shed: int = 0
    spooled_batches: int = 0
    replayed_batches: int = 0
    kernel_drops: int = 0
    frames: int = 0
    reconciliation: ReconcileResult | None = None
    seconds: float = 0.0


class Daemon:
    """Lanterne running: captures on the configured interfaces, jobs on a schedule, until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        index: Index | None = None,
        opener_factory: OpenerFactory | None = None,
        store_opener: StoreOpener = open_store,
        tap: Callable[[list[Observation]], None] | None = None,
        reconcile_at_exit: bool = False,
    ) -> None:
        self.config = config
        self.index = index
        self.opener_factory = opener_factory or self._socket_opener
        self.store_opener = store_opener
        self.tap = tap
        self.reconcile_at_exit = reconcile_at_exit
        self.report = RunReport()
        self.decode_stats = self.report.decode
        self.attributor = FlowAttributor(config.limits.dns_cache_entries)
        self.attributed: Counter[str] = Counter()
        self.spool = Spool(config.spool.path, max_bytes=config.spool.max_mib << 20)
        self.store: Store | None = None
        self.database_up = False
        self.memory_pressure = 0
        self.captures: dict[str, LiveCapture] = {}
        self.metrics = Metrics(self.sample)
        self.metrics_address: tuple[str, int] | None = None
        self.ready = asyncio.Event()
        self._aggregator: Aggregator | None = None
        self._writer: StoreWriter | None = None
        self._decoders: list[Decoder] = []
        self._stop = asyncio.Event()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lanterne-db")
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._jobs: dict[asyncio.Task[Any], str] = {}
        """The scheduled jobs running, by their name."""
        self.mdns: Any = None
        """The long-running mDNS/DNS-SD browser (``[probe]`` enabled with ``mdns``), once started."""
        self._probe_bucket: Any = None
        self._probe_records: list[Any] = []
        self._scheduler: AsyncIOScheduler | None = None
        self._channels: list[Any] = []

    # -- the public seams --------------------------------------------------------------------------

    @property
    def aggregator(self) -> Aggregator:
        """The current window's aggregator (exists once the run has started)."""
        assert self._aggregator is not None, "the daemon is not running"
        return self._aggregator

    def request_stop(self) -> None:
        """Ask the daemon to flush and exit (what SIGTERM and SIGINT do)."""
        if self._stop.is_set():
            _LOGGER.info("already stopping")
        self._stop.set()

    def emit(self, observations: list[Observation]) -> None:
        """Take observations from a collector (on the loop: the hot path of live capture)."""
        aggregator = self._aggregator
        if aggregator is None:
            return
        extra = self.attributor.process(observations) if self.attributor.max_entries else []
        aggregator.add_all(observations)
        if extra:
            aggregator.add_all(extra)
            for obs in extra:
                self.attributed[obs.kind] += 1
            self.report.attributed += len(extra)
        if self.tap is not None:
            self.tap(observations + extra if extra else observations)
        if aggregator.full:
            self._request_flush()

    def sample(self) -> Sample:
        """The counters the metrics endpoint exports."""
        decode = self.decode_stats
        per_kind = Counter(dict(decode.per_kind))
        per_kind.update(dict(self.attributed))
        aggregator = self._aggregator
        spool = self.spool.stats
        shed = {
            "window_observations": aggregator.stats.shed_observations if aggregator else 0,
            "window_evidence": aggregator.stats.shed_evidence if aggregator else 0,
            "window_peers": aggregator.stats.shed_peers if aggregator else 0,
            "spool_batches": spool.shed_batches,
            "spool_observations": spool.shed_observations,
            "attribution_entries": self.attributor.stats.evicted,
            "tcp_streams": sum(d.streams.evicted for d in self._decoders),
            "memory_pressure": self.memory_pressure,
        }
        queues = {
            "window_keys": len(aggregator) if aggregator else 0,
            "spool_batches": spool.batches,
            "tcp_streams": sum(len(d.streams.streams) for d in self._decoders),
            "attribution_entries": len(self.attributor),
        }
        return Sample(
            interfaces={name: capture.stats for name, capture in self.captures.items()},
            observations=dict(per_kind),
            malformed=dict(decode.malformed_by),
            decoder_errors=decode.parser_errors + sum(c.stats.decoder_errors for c in self.captures.values()),
            shed=shed,
            queues=queues,
            spool_bytes=spool.bytes,
            database_up=self.database_up,
        )

    # -- running -----------------------------------------------------------------------------------

    async def async_run(self, *, duration: float | None = None, install_signals: bool = True) -> RunReport:
        """Run until ``request_stop`` (or a signal, or ``duration`` seconds); flush everything; report."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
        try:
            await self._async_start()
            self.ready.set()
            _LOGGER.info(
                "lanterne running: agent %s, site %s, interfaces %s",
                self.config.agent,
                self.config.site,
                ", ".join(self.config.capture.interfaces) or "none",
            )
            if duration is None:
                await self._stop.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), duration)
        finally:
            await self._async_shutdown()
            if install_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            self.report.seconds = time.monotonic() - started
        return self.report

    async def _async_start(self) -> None:
        config = self.config
        if self.index is None:
            self.index = await self._in_thread(default_index)
        index = self.index
        limits = config.limits
        self._aggregator = Aggregator(
            index, max_keys=limits.max_keys, max_evidence=limits.max_evidence, max_peers=limits.max_peers
        )
        pseudonymiser = Pseudonymiser(config.pseudonym_key) if config.pseudonym_key else None
        resolver = IdentityResolver(config.site, pseudonymiser=pseudonymiser)
        self._writer = StoreWriter(index, site=config.site, agent=config.agent, resolver=resolver)
        if config.alert_channels:
            from agent._alert_channels import channels_from_config  # noqa: PLC0415 - only with channels

            self._channels = channels_from_config(config.alert_channels)
        await self._in_thread(self._open_store_blocking)
        if config.metrics.enabled:
            try:
                self.metrics_address = self.metrics.serve(config.metrics.host, config.metrics.port)
            except OSError as exc:
                _LOGGER.error(
                    "cannot serve metrics on %s:%d: %s", config.metrics.host, config.metrics.port, exc
                )
        self._start_scheduler()
        program: Program | None = None
        if config.capture.interfaces and self.opener_factory == self._socket_opener:
            expression = filter_expression(config.capture.continuation_ports, config.capture.response_ports)
            program = await self._in_thread(compile_filter, expression)
        for iface in config.capture.interfaces:
            decoder = Decoder(agent=config.agent, source="live", stats=self.decode_stats)
            self._decoders.append(decoder)
            capture = LiveCapture(
                iface,
                self.emit,
                opener=self.opener_factory(iface, program),
                decoder=decoder,
                batch=config.capture.batch,
                ignore_outgoing=config.capture.ignore_outgoing,
            )
            self.captures[iface] = capture
            self._spawn(capture.async_run(), name=f"capture {iface}")
        if config.probe.enabled:
            await self._async_start_mdns()

    async def _async_start_mdns(self) -> None:
        """Browse DNS-SD for as long as the daemon runs, on the ``[probe]`` scope's interfaces.

        The browser's gate shares its packet budget with the scheduled sweeps (``_async_probe``),
        so the configured rate holds for all of them together; its resolved instances go into the
        current window like captured traffic; its probe-log lines are written at each flush.
        """
        from agent._probing import sweep_config, sweep_interfaces  # noqa: PLC0415 - only when probing
        from collectors.probe import MdnsBrowser, SafetyGate  # noqa: PLC0415

        sweep = sweep_config(self.config)
        gate = SafetyGate(sweep.policy, record=self._probe_record)
        self._probe_bucket = gate.bucket
        if not sweep.mdns:
            return
        interfaces = await self._in_thread(sweep_interfaces, sweep)
        browser = MdnsBrowser(
            lambda observation: self.emit([observation]),
            gate=gate,
            interfaces=interfaces,
            agent=self.config.agent,
        )
        try:
            started = await browser.async_start()
        except OSError as exc:
            _LOGGER.warning("mDNS browsing could not start: %s", exc.strerror or exc)
            return
        if started:
            self.mdns = browser
            self._spawn(self._async_refresh_mdns(browser), name="mdns refresh")

    async def _async_refresh_mdns(self, browser: Any) -> None:
        """Resolve the known instances again now and then: devices still there stay current."""
        while True:
            await asyncio.sleep(MDNS_REFRESH_SECONDS)
            browser.refresh()

    def _probe_record(self, record: Any) -> None:
        if len(self._probe_records) >= MAX_PENDING_PROBE_RECORDS:
            del self._probe_records[0]  # the database has been away long: the oldest line goes
            self.report.probe_records_shed += 1
        self._probe_records.append(record)

    def _socket_opener(self, iface: str, program: Program | None) -> Opener:
        assert program is not None
        capture = self.config.capture

        def opener() -> Any:
            return open_packet_socket(
                iface,
                program,
                rcvbuf=capture.buffer_mib << 20,
                promiscuous=capture.promiscuous,
                ignore_outgoing=capture.ignore_outgoing,
            )

        return opener

    def _start_scheduler(self) -> None:
        schedule = self.config.schedule
        scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        jobs: list[tuple[str, Callable[[], Awaitable[object]], float, float]] = [
            ("flush", self.async_flush, schedule.flush_seconds, schedule.flush_seconds),
            ("reconcile", self._async_reconcile, schedule.reconcile_seconds, schedule.reconcile_seconds),
            ("purge", self._async_purge, schedule.purge_hours * 3600, min(60.0, schedule.purge_hours * 3600)),
            ("housekeeping", self._async_housekeeping, HOUSEKEEPING_SECONDS, HOUSEKEEPING_SECONDS),
        ]
        if self._channels:
            jobs.append(
                ("digest", self._async_digest, schedule.digest_minutes * 60, schedule.digest_minutes * 60)
            )
        if self.config.probe.enabled:
            jobs.append(("probe", self._async_probe, self.config.probe.interval_minutes * 60, 30.0))
        for name, job, every, first in jobs:
            scheduler.add_job(
                self._job(name, job),
                IntervalTrigger(seconds=every, timezone=UTC),
                id=name,
                name=name,
                next_run_time=now + timedelta(seconds=first),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(every)),
            )
        scheduler.start()
        self._scheduler = scheduler

    def _job(self, name: str, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._jobs[task] = name
            try:
                await job()
            except asyncio.CancelledError:
                if not self._stop.is_set():
                    raise
                # Stopped by the shutdown (a sweep; any job past the grace): not a failure.
                _LOGGER.info("the %s job was stopped by the shutdown", name)
            except Exception:
                self.metrics.jobs.labels(name, "error").inc()
                _QUIET.exception("the %s job failed", name)
            else:
                self.metrics.jobs.labels(name, "ok").inc()
            finally:
                if task is not None:
                    self._jobs.pop(task, None)

        run.__name__ = f"lanterne_{name}"
        return run

    async def _async_shutdown(self) -> None:
        _LOGGER.info("stopping: draining the captures and flushing")
        self._stop.set()  # also when the run's duration ended: the jobs' cancellations are expected
        scheduler = self._scheduler
        if scheduler is not None and scheduler.running:
            # No job starts any more, and the running ones finish (within the grace below):
            # shutting the scheduler down now would cancel them half-way, their write going on
            # in the database thread while what follows it (the counts, the probe log) is lost,
            # and APScheduler would log the cancellation as a failed job.
            scheduler.pause()
        background = list(self._background)
        flushes = [task for task in background if task.get_name() == "early flush"]  # the same
        stopped = [task for task in background if task not in flushes]
        # An active sweep may take minutes, and its probes have nothing to finish: it stops now.
        stopped += [task for task, name in self._jobs.items() if name in _STOPPED_AT_SHUTDOWN]
        for task in stopped:
            task.cancel()
        if stopped:
            await asyncio.gather(*stopped, return_exceptions=True)
        if running := {*self._jobs, *flushes}:
            await asyncio.wait(running, timeout=SHUTDOWN_GRACE)
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)  # cancels what outlived the grace
        if self.mdns is not None:
            browser, self.mdns = self.mdns, None
            with contextlib.suppress(Exception):  # its goodbye line is still written below
                await browser.async_stop()
        try:
            if self._aggregator is not None:
                await self.async_flush()
            if self.reconcile_at_exit and self.store is not None:
                await self._async_reconcile()
        finally:
            for capture in self.captures.values():
                self.report.kernel_drops += capture.stats.kernel_drops
                self.report.frames += capture.stats.frames
            if self._aggregator is not None:
                self.report.shed_observations = self._aggregator.stats.shed_observations
            self.report.spooled_batches = self.spool.stats.spooled
            self.report.replayed_batches = self.spool.stats.replayed
            self.metrics.close()
            await self._in_thread(self._close_store_blocking)
            self._db.shutdown(wait=True)
        _LOGGER.info("stopped")

    def _spawn(self, coroutine: Awaitable[T], *, name: str) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._background.add(task)  # strong reference: a task nobody holds can be collected mid-run
        task.add_done_callback(self._background.discard)
        return task

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, function, *args)

    # -- flushing ----------------------------------------------------------------------------------

    def _request_flush(self) -> None:
        """Flush now (a full window), unless a flush is already running or queued."""
        if self._flush_lock.locked() or any(t.get_name() == "early flush" for t in self._background):
            return
        self._spawn(self.async_flush(), name="early flush")

    async def async_flush(self) -> FlushOutcome:
        """Hand the current window to the database thread (or the spool); one flush at a time."""
        async with self._flush_lock:
            window = self.aggregator.drain()
            batch_id = new_batch_id()
            started = time.perf_counter()
            outcome = await self._in_thread(self._flush_blocking, batch_id, window)
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
            self.database_up = outcome.database_up
            if self._probe_records and outcome.database_up:
                records, self._probe_records = self._probe_records, []
                if not await self._in_thread(self._write_probe_log_blocking, records):
                    self._probe_records[:0] = records  # kept for the next flush
            stored = outcome.stored
            self.report.stored.add(stored)
            if outcome.stored_batches:
                self.metrics.flushes.labels("stored").inc(outcome.stored_batches)
            for label, count in (
                ("spooled", int(outcome.spooled)),
                ("shed", int(outcome.shed)),
                ("rejected", outcome.rejected),
            ):
                if count:
                    self.metrics.flushes.labels(label).inc(count)
            if stored.observations:
                self.metrics.stored_observations.inc(stored.observations)
            for product, endpoints in stored.detections.items():
                self.metrics.detections.labels(product).inc(len(endpoints))
            return outcome

    def _write_probe_log_blocking(self, records: list[Any]) -> bool:
        from agent._probing import write_probe_log  # noqa: PLC0415 - only when probing

        store = self._open_store_blocking()
        if store is None:
            return False
        try:
            write_probe_log(store, self.config.agent, records)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            return False
        return True

    def _open_store_blocking(self) -> Store | None:
        if self.store is not None:
            return self.store
        try:
            self.store = self.store_opener(database_url(self.config.database_url))
        except Exception as exc:
            if not _unreachable(exc):
                raise
            self.database_up = False
            _QUIET.warning("the database is unreachable (windows go to the spool): %s", exc)
            return None
        self.database_up = True
        return self.store

    def _close_store_blocking(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            store.dispose()

    def _flush_blocking(self, batch_id: str, window: Window) -> FlushOutcome:
        """Replay the spool, then write ``window``; spool it if the database cannot be reached."""
        outcome = FlushOutcome()
        empty = not window.observations and not window.evidence
        store = self._open_store_blocking()
        down = store is None
        if store is not None and len(self.spool):
            try:
                self._replay_blocking(store, outcome)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                down = True
                _QUIET.warning("the database went away during the spool replay: %s", exc)
        if store is not None and not down:
            try:
                with store.write() as session:
                    result = self._write_blocking(session, None if empty else batch_id, window)
                outcome.stored.add(result)
                outcome.stored_batches += 0 if empty else 1
            except Exception as exc:
                if not _unreachable(exc):
                    outcome.rejected += 1
                    _LOGGER.exception("the database refused a window (kept in %s)", self.spool.rejected_path)
                    self._reject_blocking(batch_id, window)
                    return outcome
                down = True
                _QUIET.warning("cannot write to the database (windows go to the spool): %s", exc)
        outcome.database_up = not down
        if down and not empty:
            try:
                spooled = self.spool.append(batch_id, window_to_json(window), agent=self.config.agent)
            except OSError as exc:  # a full or read-only disk: the window cannot be kept anywhere
                self.spool.stats.shed_batches += 1
                self.spool.stats.shed_observations += window.observed
                _QUIET.warning("cannot write the spool %s (window shed): %s", self.spool.path, exc)
                outcome.shed = True
                return outcome
            if spooled:
                outcome.spooled = True
            else:
                outcome.shed = True
                _QUIET.warning(
                    "the spool is full (%d MiB): a window of %d observations was shed",
                    self.config.spool.max_mib,
                    window.observed,
                )
        return outcome

    def _write_blocking(self, session: Session, batch_id: str | None, window: Window) -> FlushResult:
        """Write one window in the caller's transaction, with its batch id (None: heartbeat only)."""
        assert self._writer is not None
        if batch_id is not None and already_applied(session, batch_id):
            self.spool.stats.skipped_duplicates += 1
            return FlushResult()
        result = self._writer.write(session, window)
        self._assign_services(session, result.endpoints)
        if batch_id is not None:
            mark_applied(
                session, batch_id, agent=self.config.agent, observations=window.observed, rows=result.rows
            )
        return result

    def _replay_blocking(self, store: Store, outcome: FlushOutcome) -> None:
        """Apply the spooled batches in order; stop at the first sign that the database is gone."""
        assert self._writer is not None
        done: set[str] = set()
        try:
            for batch in self.spool:
                try:
                    with store.write() as session:
                        window = window_from_json(batch.window, self._writer)
                        result = self._write_blocking(session, batch.id, window)
                except Exception as exc:
                    if _unreachable(exc):
                        raise
                    _LOGGER.exception("the database refused spooled batch %s (kept aside)", batch.id)
                    self.spool.reject(batch)
                    outcome.rejected += 1
                else:
                    outcome.stored.add(result)
                    outcome.replayed += 1
                    self.spool.stats.replayed += 1
                done.add(batch.id)
        finally:
            self.spool.discard(done)
            if done:
                _LOGGER.info("replayed %d spooled windows (%d left)", len(done), len(self.spool))

    def _reject_blocking(self, batch_id: str, window: Window) -> None:
        from agent._spool import Batch  # noqa: PLC0415 - the rare path

        self.spool.reject(
            Batch(batch_id, time.time(), self.config.agent, window.observed, window_to_json(window))
        )

    def _assign_services(self, session: Session, endpoint_ids: Iterable[int]) -> None:
        """Set the service of the endpoints a window touched (the configuration's VLAN/subnet map)."""
        services = self.config.services
        ids = sorted(endpoint_ids)
        if not services or not ids:
            return
        # Pseudonymous mode stores hashed addresses: only the VLAN can name the service then.
        clear_ips = not self.config.pseudonymous
        changes: dict[str, list[int]] = {}
        for start in range(0, len(ids), _CHUNK):
            rows = session.execute(
                select(Endpoint.id, Endpoint.vlan, Endpoint.ip, Endpoint.service).where(
                    Endpoint.id.in_(ids[start : start + _CHUNK])
                )
            )
            for endpoint_id, vlan, ip, current in rows:
                service = services.service_of(vlan, ip if clear_ips else None)
                if service is not None and service != current:
                    changes.setdefault(service, []).append(endpoint_id)
        for service, changed in changes.items():
            for start in range(0, len(changed), _CHUNK):
                session.execute(
                    update(Endpoint)
                    .where(Endpoint.id.in_(changed[start : start + _CHUNK]))
                    .values(service=service),
                    execution_options={"synchronize_session": False},
                )

    # -- the other jobs ------------------------------------------------------------------------------

    async def _async_reconcile(self) -> None:
        result = await self._in_thread(self._reconcile_blocking)
        if result is None:
            return
        self.report.reconciliation = result
        if result.raised:
            self.metrics.alerts.labels("raised").inc(len(result.raised))
        if result.closed:
            self.metrics.alerts.labels("closed").inc(len(result.closed))

    def _reconcile_blocking(self) -> ReconcileResult | None:
        store = self._open_store_blocking()
        if store is None:
            return None
        assert self.index is not None
        config = ReconcileConfig(lookback=timedelta(days=self.config.lookback_days))
        try:
            with store.write() as session:
                return reconcile(
                    session, self.config.site, datetime.now(UTC), config=config, catalog=self.index.catalog
                )
        except Exception as exc:
            if not _unreachable(exc):
                raise
            _QUIET.warning("reconciliation postponed: the database is unreachable (%s)", exc)
            return None

    async def _async_purge(self) -> None:
        await self._in_thread(self._purge_blocking)

    def _purge_blocking(self) -> None:
        store = self._open_store_blocking()
        if store is None:
            return
        days = self.config.retention_days
        try:
            with store.write() as session:
                result = purge(session, days=days)
                markers = purge_markers(session, result.cutoff)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            _QUIET.warning("retention purge postponed: the database is unreachable (%s)", exc)
            return
        if result.total or markers:
            _LOGGER.info("retention purge: %d rows older than %d days deleted", result.total + markers, days)

    async def _async_housekeeping(self) -> None:
        """Keep memory under the cap: past it, drop the caches and flush the window at once."""
        cap = self.config.limits.max_rss_mib << 20
        if rss_bytes() <= cap:
            return
        self.memory_pressure += 1
        self.attributor.clear()
        _QUIET.warning(
            "memory above %d MiB: caches dropped, window flushed early", self.config.limits.max_rss_mib
        )
        self._request_flush()

    async def _async_digest(self) -> None:
        from agent._alert_channels import async_deliver_pending  # noqa: PLC0415 - only with channels

        store = await self._in_thread(self._open_store_blocking)
        if store is None or not self._channels:
            return
        report = await async_deliver_pending(store, self._channels, datetime.now(UTC))
        if report.delivered:
            self.metrics.alerts.labels("delivered").inc(report.delivered)
        if report.dead:
            self.metrics.alerts.labels("dead_letter").inc(report.dead)

    async def _async_probe(self) -> None:
        """Run one active sweep of the ``[probe]`` scope (the probe module's gate rules every probe)."""
        from agent._probing import async_sweep  # noqa: PLC0415 - only when probing is enabled

        store = await self._in_thread(self._open_store_blocking)
        if store is None:
            _QUIET.warning("active sweep postponed: the database is unreachable")
            return
        report = await async_sweep(
            self.config,
            store,
            site=self.config.site,
            agent=self.config.agent,
            index=self.index,
            bucket=self._probe_bucket,
            mdns=self.mdns is None,  # the long-running browser covers mDNS already
        )
        _LOGGER.info(
            "active sweep: %d targets, %d alive, %d medical devices left alone, probes %s",
            report.targets,
            len(report.alive),
            len(report.medical_skipped),
            dict(report.outcomes),
        )
