"""The scan pipeline: decode, match, aggregate, store, one capture file at a time.

Each file is one transaction: its windows, its endpoints and detections and its
``ingested_files`` row commit together or not at all. A scan killed half-way (even by SIGKILL)
leaves the database as it was before that file, and running it again finishes with the same
counts as an uninterrupted run; a file already ingested (same SHA-256 of its content) is
skipped, so re-running never counts anything twice.

The file is read once: a thread hashes the very chunks the decoder reads, beside it (``hashlib``
releases the GIL on large buffers), so the hash costs a second core rather than a second read.
Content can only be known already if a file of the same size was ingested: then the file is
hashed first, and skipped without decoding when it is known (a re-run); otherwise the hash is
checked once decoding is done, in the write transaction (another scan may have got there first).
The write transaction opens at the first flush only, so a long decode does not hold SQLite's
write lock; identity resolution starts afresh for each file, so a file's result depends only on
the database and the file (a re-run after a crash sees what the uninterrupted run saw).
"""

from __future__ import annotations

import gc
import hashlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Final, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent._aggregate import FlushResult, StoreWriter
from agent._identity import IdentityResolver, Pseudonymiser
from agent._reconcile import DEFAULT_LOOKBACK, ReconcileConfig, ReconcileResult, reconcile
from agent._window import Aggregator
from collectors import DecodeStats, Observation, decode_stream
from fingerprints import Index
from store import Detection, IngestedFile, Store

#: Distinct keys per window before a scan flushes into its (still open) file transaction.
FLUSH_AT: Final = 100_000
#: Observations taken from the decoder between two checks of the window size.
_BATCH: Final = 4096
#: Bytes read at once where the pipeline reads a file itself (the decoder reads its own chunks).
_READ_SIZE: Final = 1 << 22
#: Chunks read ahead of the hashing thread at most: bounds the memory they hold.
_HASH_BACKLOG: Final = 8

Progress = Callable[[int], None]
"""Called with the number of bytes of the current file read so far."""


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


def _sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read on its own (a file whose content may be known already)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()


class _Hasher(threading.Thread):
    """SHA-256 of the chunks the decoder reads, computed by a thread beside it."""

    def __init__(self, name: str) -> None:
        super().__init__(name=f"sha256 {name}", daemon=True)
        self._blocks: queue.Queue[bytes | None] = queue.Queue(_HASH_BACKLOG)
        self._hasher = hashlib.sha256()

    def run(self) -> None:
        """Hash blocks until the end mark (hashlib releases the GIL on each block)."""
        get, update = self._blocks.get, self._hasher.update
        while (block := get()) is not None:
            update(block)

    def feed(self, block: bytes) -> None:
        """Hash ``block`` next (waits while the thread is ``_HASH_BACKLOG`` blocks behind)."""
        if block:
            self._blocks.put(block)

    def hexdigest(self) -> str:
        """Wait for the blocks fed so far; the digest of them all."""
        self.stop()
        return self._hasher.hexdigest()

    def stop(self) -> None:
        """End the thread once it has hashed what it was fed (idempotent)."""
        if self.is_alive():
            self._blocks.put(None)
            self.join()


class _Reader:
    """A read-only file that reports progress and hands every chunk read to the hasher."""

    def __init__(self, handle: BinaryIO, progress: Progress | None, hasher: _Hasher | None) -> None:
        self._handle = handle
        self._progress = progress
        self._feed = hasher.feed if hasher is not None else None
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        """Read like a file."""
        data = self._handle.read(size)
        if self._feed is not None:
            self._feed(data)
        self.done += len(data)
        if self._progress is not None:
            self._progress(self.done)
        return data

    def drain(self) -> None:
        """Read what the decoder left (nothing, for a well-formed capture): the hash covers the file."""
        while self.read(_READ_SIZE):
            pass


@contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """Keep the cyclic GC to young objects while a file is scanned (``gc.freeze`` each batch).

    A scan holds ever larger long-lived tables (the window's keys and records, the match caches,
    the catalogue, SQLAlchemy's registries): each full collection walks them all again, and the
    growing window triggers several (0.3-0.6 s on the 500,000-packet mixed capture, a sixth of
    the scan). What is alive at the end of a batch is frozen instead: out of the collector's sight,
    while reference counting still frees it. Collections of young objects go on as usual, so a
    cycle made while decoding a packet is freed as before; only a cycle among objects that
    outlived a batch waits for the end of the file (a few hundred objects on that capture), when
    everything is unfrozen. Process-wide, like any GC setting: scanning is what the process does.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No automatic collection while a window is written (bounded work that decodes nothing).

    Writing allocates rows by the ten thousand, and would trigger half of a scan's collections
    for nothing: they are acyclic, and reference counting frees them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    ) -> None:
        self.store = store
        self.index = index
        self.site = site
        self.agent = agent
        self.pseudonymiser = pseudonymiser
        self.flush_at = flush_at

    def scan(self, path: Path, *, progress: Progress | None = None) -> FileScan:
        """Scan one file in one transaction; raise OSError or CaptureFormatError if it cannot be read."""
        started = time.perf_counter()
        report = FileScan(path=path, size=path.stat().st_size)
        hasher: _Hasher | None = None
        if self._size_known(report.size):
            # Probably a re-run: hash first, and skip without decoding anything if it is.
            report.sha256 = _sha256_of(path)
            with self.store.session() as lookup:
                if _ingested(lookup, report.sha256):
                    report.skipped = True
                    report.seconds = time.perf_counter() - started
                    return report
        else:
            hasher = _Hasher(path.name)
            hasher.start()
        resolver = IdentityResolver(self.site, pseudonymiser=self.pseudonymiser)
        writer = StoreWriter(self.index, site=self.site, agent=self.agent, resolver=resolver)
        # A batch adds at most ``batch`` keys: flushing at ``flush_at`` never reaches the bound.
        batch_size = max(1, min(_BATCH, self.flush_at))
        aggregator = Aggregator(self.index, max_keys=self.flush_at + batch_size)
        try:
            with ExitStack() as stack, open(path, "rb") as handle, _old_objects_frozen():
                session: Session | None = None
                source = _Reader(handle, progress, hasher)
                observations = decode_stream(
                    cast(BinaryIO, source), agent=self.agent, source="pcap", stats=report.decode
                )
                for batch in _batches(observations, batch_size):
                    aggregator.add_all(batch)
                    gc.freeze()
                    if len(aggregator) >= self.flush_at:
                        if session is None:
                            session = stack.enter_context(self.store.write())
                        with _collector_paused():
                            report.stored.add(writer.write(session, aggregator.drain()))
                if hasher is not None:
                    source.drain()
                    report.sha256 = hasher.hexdigest()
                if session is None:
                    session = stack.enter_context(self.store.write())
                if _ingested(session, report.sha256):  # another scan got there first
                    raise AlreadyIngested
                with _collector_paused():
                    report.stored.add(writer.write(session, aggregator.drain()))
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
        finally:
            if hasher is not None:
                hasher.stop()
        report.shed = aggregator.stats.shed_observations
        report.windows = aggregator.stats.windows
        report.seconds = time.perf_counter() - started
        return report

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


def _batches(observations: Iterator[Observation], size: int) -> Iterator[list[Observation]]:
    while batch := list(islice(observations, size)):
        yield batch


def lookback_for(files: Sequence[FileScan], now: datetime, days: int | None) -> timedelta:
    """A look-back reaching the newest traffic of ``files`` (``Scanner.lookback`` covers skipped ones too)."""
    if days is not None:
        return timedelta(days=days)
    newest = [item.stored.last_ts for item in files if item.stored.last_ts is not None]
    if not newest:
        return DEFAULT_LOOKBACK
    age = now - datetime.fromtimestamp(max(newest), UTC)
    return max(DEFAULT_LOOKBACK, DEFAULT_LOOKBACK + timedelta(days=math.ceil(age / timedelta(days=1))))
