"""The scan pipeline: decode, match, aggregate, store, one capture file at a time.

Each file is one transaction: its windows, its endpoints and detections and its
``ingested_files`` row commit together or not at all. A scan killed half-way (even by SIGKILL)
leaves the database as it was before that file, and running it again finishes with the same
counts as an uninterrupted run; a file already ingested (same SHA-256 of its content) is
skipped, so re-running never counts anything twice.

The file is read once: a thread hashes the very chunks the decoder reads, beside it (``hashlib``
releases the GIL on large buffers), so the hash costs a second core rather than a second read.
A large file is read, decoded and aggregated in a forked process while this one writes
(``agent._decoding``): the same windows come out of it, so the same rows go in.
Content can only be known already if a file of the same size was ingested: then the file is
hashed first, and skipped without decoding when it is known (a re-run); otherwise the hash is
checked once decoding is done, in the write transaction (another scan may have got there first).
The write transaction opens at the first flush only, so a long decode does not hold SQLite's
write lock; identity resolution starts afresh for each file, so a file's result depends only on
the database and the file (a re-run after a crash sees what the uninterrupted run saw).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent._aggregate import FlushResult, StoreWriter
from agent._decoding import (
    BATCH,
    FLUSH_AT,
    DecodeWorker,
    Hasher,
    Progress,
    Reader,
    batches,
    collector_paused,
    full_windows,
    old_objects_frozen,
    sha256_of,
    use_worker,
)
from agent._exit import keep
from agent._identity import IdentityResolver, Pseudonymiser
from agent._reconcile import DEFAULT_LOOKBACK, ReconcileConfig, ReconcileResult, reconcile
from agent._window import AggregateStats, Aggregator, Window
from collectors import DecodeStats, decode_stream
from fingerprints import Index
from store import Detection, IngestedFile, Store

__all__ = ["FLUSH_AT", "AlreadyIngested", "FileScan", "ScanReport", "Scanner", "lookback_for"]


class AlreadyIngested(Exception):
    """The file's content was scanned before: stop decoding it."""


@dataclass(slots=True)
class FileScan:
    """What scanning one file did."""

    path: Path
    size: int
    sha256: str = ""
    skipped: bool = False
    """Already ingested (same content): nothing was written."""
    error: str | None = None
    decode: DecodeStats = field(default_factory=DecodeStats)
    stored: FlushResult = field(default_factory=FlushResult)
    shed: int = 0
    windows: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class ScanReport:
    """What a whole ``lanterne scan`` did, reconciliation included."""

    files: list[FileScan] = field(default_factory=list)
    reconciliation: ReconcileResult | None = None
    lookback: timedelta | None = None

    @property
    def stored(self) -> FlushResult:
        """The stored results of every file, added up."""
        total = FlushResult()
        for item in self.files:
            total.add(item.stored)
        return total

    @property
    def packets(self) -> int:
        """Packets read in all files that were decoded."""
        return sum(item.decode.packets for item in self.files)

    @property
    def observations(self) -> int:
        """Observations decoded in all files."""
        return sum(item.decode.observations for item in self.files)


def _ingested(session: Session, digest: str) -> bool:
    return session.scalar(select(IngestedFile.sha256).where(IngestedFile.sha256 == digest)) is not None


class Scanner:
    """Scans capture files into one store for one site and agent."""

    def __init__(
        self,
        store: Store,
        index: Index,
        *,
        site: str,
        agent: str,
        pseudonymiser: Pseudonymiser | None = None,
        flush_at: int = FLUSH_AT,
        parallel: bool | None = None,
        decoders: int | None = None,
    ) -> None:
        """``parallel``: decode in forked processes beside the writer (None: for big files, on two cores).

        ``decoders``: how many (default: ``agent._decoding.default_decoders``).
        """
        self.store = store
        self.index = index
        self.site = site
        self.agent = agent
        self.pseudonymiser = pseudonymiser
        self.flush_at = flush_at
        self.parallel = parallel
        self.decoders = decoders

    def scan(
        self,
        path: Path,
        *,
        progress: Progress | None = None,
        worker: DecodeWorker | None = None,
        decoded: Callable[[], None] | None = None,
    ) -> FileScan:
        """Scan one file in one transaction; raise OSError or CaptureFormatError if it cannot be read.

        ``worker``: a decoding process already started for ``path`` (closed here, whatever
        happens); otherwise one is started here when ``use_worker`` says so, or the file is
        decoded in this process. ``decoded``: called once the file is decoded, before its last
        window is written (not for a file skipped as already ingested).
        """
        workers = [worker] if worker is not None else []
        try:
            return self._scan(path, progress, worker, workers, decoded)
        finally:
            for started in workers:
                started.close()

    def _scan(
        self,
        path: Path,
        progress: Progress | None,
        worker: DecodeWorker | None,
        workers: list[DecodeWorker],
        decoded: Callable[[], None] | None,
    ) -> FileScan:
        """``scan``'s work; a decoding process started here joins ``workers`` (closed by ``scan``)."""
        started = time.perf_counter()
        report = FileScan(path=path, size=path.stat().st_size)
        if self._size_known(report.size):
            # Probably a re-run: hash first, and skip without decoding anything if it is.
            report.sha256 = sha256_of(path)
            with self.store.session() as lookup:
                if _ingested(lookup, report.sha256):
                    report.skipped = True
                    report.seconds = time.perf_counter() - started
                    return report
        if worker is None and use_worker(path, self.parallel):
            worker = DecodeWorker(path, agent=self.agent, flush_at=self.flush_at, decoders=self.decoders)
            workers.append(worker)
            try:
                worker.start()
            except OSError:  # no process to be had (a limit, memory): decode in this one
                worker = None
        resolver = IdentityResolver(self.site, pseudonymiser=self.pseudonymiser)
        writer = StoreWriter(self.index, site=self.site, agent=self.agent, resolver=resolver)
        aggregate = AggregateStats()
        try:
            with ExitStack() as stack, old_objects_frozen():
                session: Session | None = None
                windows: Iterator[Window]
                if worker is not None:
                    windows = worker.windows(self.index, progress, decoded)
                else:
                    handle = stack.enter_context(open(path, "rb"))
                    windows = stack.enter_context(
                        closing(self._windows(handle, report, progress, aggregate, decoded))
                    )
                last: Window | None = None
                for last in windows:
                    if session is None:  # opened at the first window: decoding holds no write lock
                        session = stack.enter_context(self.store.write())
                    with collector_paused():
                        report.stored.add(writer.write(session, last))
                    gc.freeze()
                keep(last)  # a scan about to end leaves it to the system (``agent._exit``)
                if worker is not None:
                    assert worker.result is not None, "windows() ends with the result"
                    report.sha256 = worker.sha256()
                    report.decode = worker.result.stats
                    aggregate = worker.result.aggregate
                assert session is not None, "every file ends with a window, empty or not"
                if _ingested(session, report.sha256):  # another scan got there first: roll back
                    raise AlreadyIngested
                session.add(
                    IngestedFile(
                        sha256=report.sha256,
                        path=str(path)[:4096],
                        size=report.size,
                        agent=self.agent,
                        packets=report.decode.packets,
                        observations=report.decode.observations,
                        ingested_at=datetime.now(UTC),
                    )
                )
        except AlreadyIngested:
            report = FileScan(path=path, size=report.size, sha256=report.sha256, skipped=True)
        report.shed = aggregate.shed_observations
        report.windows = aggregate.windows
        report.seconds = time.perf_counter() - started
        return report

    def _windows(
        self,
        handle: BinaryIO,
        report: FileScan,
        progress: Progress | None,
        stats: AggregateStats,
        decoded: Callable[[], None] | None,
    ) -> Generator[Window]:
        """Decode and aggregate in this process: the windows of ``flush_at`` keys, then the rest.

        Sets ``report.sha256`` (when not known already) before the last window.
        """
        hasher = Hasher(report.path.name) if not report.sha256 else None
        # A batch adds at most ``BATCH`` keys: flushing at ``flush_at`` never reaches the bound.
        batch_size = max(1, min(BATCH, self.flush_at))
        aggregator = Aggregator(self.index, max_keys=self.flush_at + batch_size)
        aggregator.stats = stats
        try:
            if hasher is not None:
                hasher.start()
            source = Reader(handle, progress, hasher)
            observations = decode_stream(
                cast(BinaryIO, source),
                agent=self.agent,
                source="pcap",
                stats=report.decode,
                chunk_done=progress,
            )
            yield from full_windows(batches(observations, batch_size), aggregator, self.flush_at, batch_size)
            if hasher is not None:
                source.drain()
                report.sha256 = hasher.hexdigest()
            if decoded is not None:
                decoded()
            yield aggregator.drain()
        finally:
            if hasher is not None:
                hasher.stop()

    def _size_known(self, size: int) -> bool:
        with self.store.session() as session:
            return (
                session.scalar(select(IngestedFile.sha256).where(IngestedFile.size == size).limit(1))
                is not None
            )

    def lookback(self, now: datetime, days: int | None) -> timedelta:
        """The look-back of the reconciliation after a scan.

        Given: ``days``. Otherwise reconciliation's default, counted back from the site's newest
        detection when that is older than the default: a site fed only with old captures is
        reconciled on its latest data, and running the same scan again gives the same answer.
        """
        if days is not None:
            return timedelta(days=days)
        with self.store.session() as session:
            newest = session.scalar(select(func.max(Detection.last_seen)).where(Detection.site == self.site))
        if newest is None or newest >= now - DEFAULT_LOOKBACK:
            return DEFAULT_LOOKBACK
        return DEFAULT_LOOKBACK + timedelta(days=math.ceil((now - newest) / timedelta(days=1)))

    def reconcile(self, now: datetime, lookback: timedelta) -> ReconcileResult:
        """Reconcile the site (its own transaction) after the files are in."""
        with self.store.write() as session:
            return reconcile(
                session, self.site, now, config=ReconcileConfig(lookback=lookback), catalog=self.index.catalog
            )


def lookback_for(files: Sequence[FileScan], now: datetime, days: int | None) -> timedelta:
    """A look-back reaching the newest traffic of ``files`` (``Scanner.lookback`` covers skipped ones too)."""
    if days is not None:
        return timedelta(days=days)
    newest = [item.stored.last_ts for item in files if item.stored.last_ts is not None]
    if not newest:
        return DEFAULT_LOOKBACK
    age = now - datetime.fromtimestamp(max(newest), UTC)
    return max(DEFAULT_LOOKBACK, DEFAULT_LOOKBACK + timedelta(days=math.ceil(age / timedelta(days=1))))
