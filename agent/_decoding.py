"""Reading one capture for a scan: decoded here, or in a forked process beside the writer.

A scan is three jobs: decoding (the file, packet by packet, into Observations), aggregating and
matching them (windows of distinct keys), and writing the windows into one transaction. On a
machine with two cores ``DecodeWorker`` forks a child that reads the file, hashes it and
decodes it, and sends the Observations in batches through a pipe; this process aggregates them
into windows while the child decodes on. The batches, hence the windows, are exactly those of
the scan that decodes in its own process (``flush_at`` keys, then the rest), so the stored
result is the same (``tests/agent/test_parallel_scan.py``). The child sends Observations rather
than windows because a file's last window can only be written once the whole file is decoded:
aggregating it here, as the batches arrive, leaves nothing but the write after the decoding.
(A window costs its identity resolution whatever its size, so windows are not made smaller.)

What else runs beside the decoding:

- for the first file, the writer's start-up: the child is forked, never spawned, so it inherits
  the imported decoder and starts at once; it needs neither SQLAlchemy nor the database, and
  this module imports nothing that does (``agent._window``, ``collectors``, ``fingerprints``),
  so ``lanterne scan`` forks it before importing the store, and SQLAlchemy, the migration check
  and the first statements run while the child decodes;
- for the next files, the previous file's write: the next child starts as soon as the previous
  one has sent its last batch (``windows(decoded=...)``);
- within a file larger than one window, the writing of window *n* and the decoding of the
  next batches (a thread receives them meanwhile, ``RECEIVE_BACKLOG`` at most).

The child touches no inherited connection and leaves through ``os._exit``
(multiprocessing's fork start), so it never closes the parent's database sessions. It dies with
its parent (``PR_SET_PDEATHSIG`` on Linux, a broken pipe anyway), ignores SIGINT (the parent
decides), and reports a failure as the exception it raised (``OSError``,
``CaptureFormatError``); a child that dies (a signal, a crash in a C extension) is reported as
``DecoderDied``, and the file's transaction is rolled back like any failed file.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

from agent._window import AggregateStats, Aggregator, Window
from collectors import DecodeStats, Endpoint, Observation, decode_stream
from fingerprints import Index

#: Distinct keys per window before a scan flushes into its (still open) file transaction.
FLUSH_AT: Final = 100_000
#: Files smaller than this are decoded in the scanning process (a fork would cost more than it saves).
PARALLEL_MIN_BYTES: Final = 8 << 20
#: Observations taken from the decoder between two checks of the window size.
BATCH: Final = 4096
#: Bytes read at once where the pipeline reads a file itself (the decoder reads its own chunks).
READ_SIZE: Final = 1 << 22
#: Batches received ahead of the aggregation at most (while a window is written): about 0.5 MB each.
RECEIVE_BACKLOG: Final = 64
#: Chunks read ahead of the hashing thread at most: bounds the memory they hold.
_HASH_BACKLOG: Final = 8
_PR_SET_PDEATHSIG: Final = 1

Progress = Callable[[int], None]
"""Called with the number of bytes of the current file read so far."""


class DecoderDied(Exception):
    """The decoding process ended without finishing its file (killed, or crashed)."""


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read on its own (a file whose content may be known already)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()


class Hasher(threading.Thread):
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


class Reader:
    """A read-only file that reports progress and hands every chunk read to the hasher."""

    def __init__(self, handle: BinaryIO, progress: Progress | None, hasher: Hasher | None) -> None:
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
        while self.read(READ_SIZE):
            pass


def batches(observations: Iterator[Observation], size: int) -> Iterator[list[Observation]]:
    """The decoder's Observations in lists of ``size`` (the last one shorter)."""
    while batch := list(islice(observations, size)):
        yield batch


@contextmanager
def old_objects_frozen() -> Iterator[None]:
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
def collector_paused() -> Iterator[None]:
    """No automatic collection while a window is written or received (bounded work, no decoding).

    Writing allocates rows by the ten thousand, and unpickling a window its records: they would
    trigger half of a scan's collections for nothing (they are acyclic; reference counting frees
    them).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parallel_available() -> bool:
    """Whether this machine can decode in a forked process beside the writer (fork, two cores)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: the CPUs this process may use
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return cpus > 1


def parallel_worth_it(path: Path) -> bool:
    """Whether ``path`` is a regular file big enough for a decoding process to pay off."""
    try:
        return path.is_file() and path.stat().st_size >= PARALLEL_MIN_BYTES
    except OSError:
        return False


def use_worker(path: Path, parallel: bool | None) -> bool:
    """Whether a scan decodes ``path`` in a forked process (``parallel``: forced on or off, None: auto)."""
    if parallel is False or not parallel_available():
        return False
    return parallel is True or parallel_worth_it(path)


@dataclass(slots=True)
class Decoded:
    """A file decoded in a child: its hash and decoding counts (sent), and the aggregation's (added here)."""

    sha256: str
    stats: DecodeStats = field(default_factory=DecodeStats)
    aggregate: AggregateStats = field(default_factory=AggregateStats)


class DecodeWorker:
    """One capture file decoded in a forked child; its Observations aggregated into windows here.

    Start it (``start``), iterate ``windows()`` to the end, then read ``result``; ``close`` (or
    the context manager) stops a child that is still running, whatever happened.
    """

    def __init__(self, path: Path, *, agent: str, flush_at: int = FLUSH_AT) -> None:
        """``flush_at``: keys per window, as in a scan that decodes in its own process."""
        self.path = path
        self.agent = agent
        self.window_keys = max(1, flush_at)
        self.batch_size = min(BATCH, self.window_keys)
        self.result: Decoded | None = None
        self._process: Any = None
        self._receive: Connection | None = None
        self._receiver: _Receiver | None = None

    def start(self) -> DecodeWorker:
        """Fork the child (it starts reading at once)."""
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_child,
            args=(send, os.getpid(), self.path, self.agent, self.batch_size),
            name=f"lanterne-decode {self.path.name}",
            daemon=True,
        )
        gc.freeze()  # before fork(): the child's collections never touch the pages it shares
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns when a process with threads forks (a progress bar's
                # refresh thread, the daemon's pools): the child runs only this module's code,
                # which takes none of their locks.
                warnings.filterwarnings("ignore", message=r".*fork\(\)", category=DeprecationWarning)
                self._process.start()
        except BaseException:
            receive.close()
            self._process = None
            raise
        finally:
            send.close()
        self._receive = receive
        self._receiver = _Receiver(receive, self.path.name)
        self._receiver.start()
        return self

    def windows(
        self, index: Index, progress: Progress | None = None, decoded: Callable[[], None] | None = None
    ) -> Iterator[Window]:
        """The windows of the file, in order, aggregated here (matched with ``index``) from the batches.

        ``result`` is set, and ``decoded`` called, when the child has sent its last batch (before
        the last window is yielded: the caller may start decoding its next file while it writes
        this one). Raises what the child raised (``OSError``, ``CaptureFormatError``...), or
        ``DecoderDied``.
        """
        receive = self._receiver
        if receive is None:
            raise RuntimeError("DecodeWorker.windows() before start()")
        # As in the one-process scan (``Scanner._windows``): the same batches, hence the same windows.
        aggregator = Aggregator(index, max_keys=self.window_keys + self.batch_size)
        while True:
            try:
                data = receive.get()
                with collector_paused():
                    message = pickle.loads(data)  # noqa: S301 - our own child, over a pipe
                del data
            except (EOFError, OSError) as exc:
                self._process.join(timeout=5)
                raise DecoderDied(
                    f"the decoding process ended before the end of {self.path.name} "
                    f"(exit code {self._process.exitcode})"
                ) from exc
            tag = message[0]
            if tag == "error":
                raise message[1]
            if tag == "failed":  # an exception that does not pickle, sent as text
                raise DecoderDied(message[1])
            if progress is not None:
                progress(message[1])
            if tag == "batch":
                with collector_paused():
                    batch = unpack(message[2])
                aggregator.add_all(batch)
                del batch
                gc.freeze()
                if len(aggregator) >= self.window_keys:
                    yield aggregator.drain()
            elif tag == "end":
                self.result = message[2]
                self.result.aggregate = aggregator.stats
                if decoded is not None:
                    decoded()
                yield aggregator.drain()
                return

    def close(self) -> None:
        """Stop the child if it still runs, and release the pipe (idempotent)."""
        process = self._process
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
            self._process = None
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        if self._receive is not None:
            self._receive.close()
            self._receive = None

    def __enter__(self) -> DecodeWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Receiver(threading.Thread):
    """Reads the child's messages into a bounded queue, so that it decodes on while a window is written.

    The pipe itself holds a fraction of one batch: without this thread the child would wait for
    each write to end. ``RECEIVE_BACKLOG`` batches bound what waits here.
    """

    def __init__(self, connection: Connection, name: str) -> None:
        super().__init__(name=f"receive {name}", daemon=True)
        self._connection = connection
        self._messages: queue.Queue[bytes | BaseException] = queue.Queue(RECEIVE_BACKLOG)
        self._stopped = threading.Event()

    def run(self) -> None:
        """Receive until the child closes its end (or ``stop``)."""
        while not self._stopped.is_set():
            item: bytes | BaseException
            try:
                item = self._connection.recv_bytes()
            except (EOFError, OSError) as exc:
                item = exc
            while not self._stopped.is_set():
                try:
                    self._messages.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self) -> bytes:
        """The next message; raises ``EOFError`` or ``OSError`` when the pipe ended before it."""
        item = self._messages.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """Stop waiting to hand over messages (the connection is closed by the worker, after)."""
        self._stopped.set()
        self.join(timeout=5)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (the pipe would tell it later anyway)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the broken pipe ends the child
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _child(send: Connection, parent: int, path: Path, agent: str, batch_size: int) -> None:
    """The decoding process: read, hash, decode; send the Observations in batches, then the result."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def put(message: tuple[Any, ...]) -> None:
        send.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    hasher = Hasher(path.name)
    try:
        stats = DecodeStats()
        with open(path, "rb") as handle, old_objects_frozen():
            hasher.start()
            reader = Reader(handle, lambda done: put(("progress", done)), hasher)
            observations = decode_stream(cast(BinaryIO, reader), agent=agent, source="pcap", stats=stats)
            for batch in batches(observations, batch_size):
                put(("batch", reader.done, pack(batch)))
                gc.freeze()
            reader.drain()
            put(("end", reader.done, Decoded(hasher.hexdigest(), stats)))
    except BrokenPipeError:  # the parent is gone: nobody to tell
        pass
    except BaseException as exc:  # every failure goes to the parent, which decides
        try:
            put(("error", exc))
        except BrokenPipeError:
            pass
        except Exception:  # an exception that does not pickle: its text then
            with contextlib.suppress(BrokenPipeError):
                put(("failed", "".join(traceback.format_exception(exc)).strip()))
    finally:
        hasher.stop()
        send.close()


Packed = list[tuple[Any, ...]]
"""A batch of Observations as flat tuples of their fields (the endpoints' fields inlined)."""


def pack(batch: list[Observation]) -> Packed:
    """Observations as flat tuples: they pickle without a call per Observation or Endpoint."""
    return [
        (ts, kind, value, *src, *dst, attrs, source, agent)
        for ts, kind, value, src, dst, attrs, source, agent in batch
    ]


def unpack(packed: Packed) -> list[Observation]:
    """The Observations ``pack`` flattened, rebuilt as they were (checked when they were made)."""
    new = tuple.__new__
    return [
        new(
            Observation,
            (
                ts,
                kind,
                value,
                new(Endpoint, (sip, smac, sport)),
                new(Endpoint, (dip, dmac, dport)),
                attrs,
                source,
                agent,
            ),
        )
        for ts, kind, value, sip, smac, sport, dip, dmac, dport, attrs, source, agent in packed
    ]
