"""Reading one capture for a scan: decoded here, or in forked processes beside the writer.

A scan is three jobs: decoding (the file, packet by packet, into Observations), aggregating and
matching them (windows of distinct keys), and writing the windows into one transaction. On a
machine with two cores or more, ``DecodeWorker`` forks children that read the file and decode
it, each its share of the address pairs (``collectors.Partition``: the decoder's state is per
address pair, so the shares need nothing from each other), and send their Observations, with
the number of the frame of each, through pipes; the first one also hashes the file, where it
lies, once it has sent its last Observations (only the file's commit needs the digest: the last
window is written meanwhile).
This process merges them back into the file's order and aggregates them into windows while the
children decode on. The Observations, hence the batches and the windows, are exactly those of
the scan that decodes in its own process (``flush_at`` keys, then the rest), so the stored
result is the same (``tests/agent/test_parallel_scan.py``, and ``tests/collectors/test_shares.py``
for the merge on every corpus capture). The children send Observations rather than windows
because a file's last window can only be written once the whole file is decoded: aggregating it
here, as the Observations arrive, leaves nothing but the write after the decoding. (A window
costs its identity resolution whatever its size, so windows are not made smaller.)

What else runs beside the decoding:

- for the first file, the writer's start-up: the children are forked, never spawned, so they
  inherit the imported decoder and start at once; they need neither the catalogue, nor
  SQLAlchemy, nor the database, and this module imports none of them (``agent._window`` and
  ``collectors`` only), so ``lanterne scan`` forks them first (``agent._prefetch``), and the
  CLI, the catalogue, SQLAlchemy, the migration check and the first statements load while
  they decode;
- for the next files, the previous file's write: the next children start as soon as the
  previous ones have sent their last Observations (``windows(decoded=...)``);
- within a file larger than one window, the writing of window *n* and the decoding of what
  follows (a thread per child receives meanwhile, ``RECEIVE_BACKLOG_BYTES`` at most).

A child touches no inherited connection and leaves through ``os._exit`` (multiprocessing's fork
start), so it never closes the parent's database sessions. It dies with its parent
(``PR_SET_PDEATHSIG`` on Linux, a broken pipe anyway), ignores SIGINT (the parent decides), and
reports a failure as the exception it raised (``OSError``, ``CaptureFormatError``); a child
that dies (a signal, a crash in a C extension) is reported as ``DecoderDied``, and the file's
transaction is rolled back like any failed file.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import gc
import hashlib
import io
import mmap
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from multiprocessing.connection import Connection
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

try:
    import fcntl
except ImportError:  # not a Unix: pipes keep their size
    fcntl = None  # type: ignore[assignment]

from agent._window import AggregateStats, Aggregator, Window
from collectors import DecodeStats, Endpoint, Observation, Partition, decode_share, merge_shares
from collectors._decoder import release_pages

if TYPE_CHECKING:
    from fingerprints import Index

#: Distinct keys per window before a scan flushes into its (still open) file transaction.
FLUSH_AT: Final = 100_000
#: Decoding processes per file at most (each takes its share of the address pairs).
MAX_DECODERS: Final = 4
#: Files smaller than this are decoded in the scanning process (a fork would cost more than it saves).
PARALLEL_MIN_BYTES: Final = 8 << 20
#: Observations taken from the decoder between two checks of the window size.
BATCH: Final = 4096
#: Bytes read at once where the pipeline reads a file itself (the decoder reads its own chunks).
READ_SIZE: Final = 1 << 22
#: Bytes of messages received ahead of the aggregation at most (the decoding processes of a file
#: share them).
RECEIVE_BACKLOG_BYTES: Final = 64 << 20
#: Bytes a decoding process's pipe holds (Linux; 64 KiB by default, a message or so): the child
#: writes on while this process's receiving thread waits for the interpreter's lock.
PIPE_BYTES: Final = 1 << 20
#: Chunks read ahead of the hashing thread at most: bounds the memory they hold.
_HASH_BACKLOG: Final = 8
_PR_SET_PDEATHSIG: Final = 1

Progress = Callable[[int], None]
"""Called with the number of bytes of the current file read so far."""


class DecoderDied(Exception):
    """The decoding process ended without finishing its file (killed, or crashed)."""


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file.

    A regular file is hashed where it lies (mapped in memory: nothing copied, its pages let go
    as it goes); anything else is read.
    """
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError):  # not a mappable file (a pipe, a device): read it
            mapped = None
        if mapped is None:
            while data := handle.read(READ_SIZE):
                hasher.update(data)
            return hasher.hexdigest()
        if hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        with mapped, memoryview(mapped) as view:
            for start in range(0, size, READ_SIZE):
                with view[start : start + READ_SIZE] as block:
                    hasher.update(block)  # hashlib lets go of the GIL on large blocks
                release_pages(mapped, start, start + READ_SIZE)
    return hasher.hexdigest()


def lowest_priority() -> None:
    """Run the calling thread at the lowest priority from now on (nice 19; per thread on Linux).

    Only where a thread's id names it: elsewhere the id may name the whole process.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


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

    def fileno(self) -> int:
        """The file's descriptor, to map it in memory; refused when the reads must be hashed."""
        if self._feed is not None:
            raise io.UnsupportedOperation("the reads of this file are hashed")
        return self._handle.fileno()

    def tell(self) -> int:
        """Where the file is."""
        return self._handle.tell()

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


def full_windows(
    chunks: Iterable[list[Observation]], aggregator: Aggregator, window_keys: int, batch_size: int
) -> Iterator[Window]:
    """Aggregate Observations as they come (lists of any length); a window when ``window_keys`` keys are held.

    The one way a scan cuts a file into windows, wherever it is decoded: the window's size is
    checked after every ``batch_size`` Observations of the file, and only then, so the same
    Observations in the same order give the same windows however they arrive. What arrives is
    aggregated at once (a decoding process sends what each chunk of the file held): once the
    last Observations are in, only they are left to aggregate before the last window, not the
    rest of a batch. What is left at the end (the last window) stays in ``aggregator`` for the
    caller to drain.
    """
    room = batch_size  # Observations until the next check
    # Counting makes records by the thousand, none of them in a cycle: no collection meanwhile,
    # and what is alive after is frozen (the bench capture's aggregation spent 30 ms in young
    # collections). Decoding, where ``chunks`` decodes, keeps its collections; so does the caller.
    counting = partial(collector_paused, freeze=True)
    for chunk in chunks:
        start, size = 0, len(chunk)
        while size - start >= room:
            with counting():
                aggregator.add_all(chunk if start == 0 and size == room else chunk[start : start + room])
            start += room
            room = batch_size
            if len(aggregator) >= window_keys:
                yield aggregator.drain()
        if start < size:
            with counting():
                aggregator.add_all(chunk if start == 0 else chunk[start:])
            room -= size - start


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
def long_lived() -> Iterator[None]:
    """No collection while long-lived objects are made (modules, the catalogue, an engine); frozen after.

    Start-up makes hundreds of thousands of objects that live as long as the process: a
    collection in the middle walks them all (30 ms for a scan's imports), and they would stay in
    the young generations, walked again by the next ones. Frozen, no collection sees them until
    a file's scan ends (``old_objects_frozen`` unfreezes everything then, and the next file's
    scan freezes what is alive again).
    """
    with collector_paused():
        try:
            yield
        finally:
            gc.freeze()  # before the collector is back


@contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """No automatic collection while a window is written or received (bounded work, no decoding).

    Writing allocates rows by the ten thousand, and unpacking a child's batch its Observations:
    they would trigger half of a scan's collections for nothing (they are acyclic; reference
    counting frees them). ``freeze``: what is alive at the end is frozen (``gc.freeze``, as at
    each batch of a scan, ``old_objects_frozen``), which also clears the count of allocations:
    otherwise the first allocation after the pause pays the collection the pause held back (one
    per message of a decoding process, 200 on the bench capture).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if enabled:
            gc.enable()


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: the CPUs this process may use
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def parallel_available() -> bool:
    """Whether this machine can decode in a forked process beside the writer (fork, two cores)."""
    return "fork" in multiprocessing.get_all_start_methods() and usable_cpus() > 1


def default_decoders() -> int:
    """Decoding processes per file: one per CPU but the writer's, ``MAX_DECODERS`` at most.

    On two cores a second decoder made the scan slower, measured (``bench/bench_scan.py``): the
    writer starts up and aggregates while the file is decoded, so both cores were busy already
    (the file is hashed after its decoding, ``_child``).
    """
    return max(1, min(usable_cpus() - 1, MAX_DECODERS))


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
    """A file decoded in children: their decoding counts (sent), and the aggregation's (added here)."""

    stats: DecodeStats = field(default_factory=DecodeStats)
    aggregate: AggregateStats = field(default_factory=AggregateStats)


class DecodeWorker:
    """One capture file decoded in forked children, one per share; the Observations merged into windows here.

    Start it (``start``), iterate ``windows()`` to the end, then read ``result`` and the file's
    ``sha256()``; ``close`` (or the context manager) stops the children that still run, whatever
    happened.
    """

    def __init__(
        self, path: Path, *, agent: str, flush_at: int = FLUSH_AT, decoders: int | None = None
    ) -> None:
        """``flush_at``: keys per window, as in a scan that decodes in its own process.

        ``decoders``: processes decoding the file, each its share of the address pairs
        (default ``default_decoders()``).
        """
        self.path = path
        self.agent = agent
        self.window_keys = max(1, flush_at)
        self.batch_size = min(BATCH, self.window_keys)
        self.decoders = max(1, decoders if decoders is not None else default_decoders())
        self.result: Decoded | None = None
        self._children: list[_Child] = []

    @property
    def processes(self) -> list[Any]:
        """The decoding processes started (``multiprocessing.Process``), share by share."""
        return [child.process for child in self._children]

    def start(self) -> DecodeWorker:
        """Fork the children (they start reading at once); none is left running if one cannot start."""
        context = multiprocessing.get_context("fork")
        # A pipe or a device can be read once only: one child then reads it, and hashes it too.
        regular = self.path.is_file()
        decoders = self.decoders if regular else 1
        gc.freeze()  # before fork(): the children's collections never touch the pages they share
        try:
            for number in range(decoders):
                receive, send = context.Pipe(duplex=False)
                _widen(send)
                process = context.Process(
                    target=_child,
                    args=(send, os.getpid(), self.path, self.agent, Partition(number, decoders), regular),
                    name=f"lanterne-decode {self.path.name} {number + 1}/{decoders}",
                    daemon=True,
                )
                try:
                    with warnings.catch_warnings():
                        # Python >= 3.12 warns when a process with threads forks (a progress
                        # bar's refresh thread, the daemon's pools, the receivers of the shares
                        # started before): the child runs only this module's code, which takes
                        # none of their locks.
                        warnings.filterwarnings("ignore", message=r".*fork\(\)", category=DeprecationWarning)
                        process.start()
                except BaseException:
                    receive.close()
                    raise
                finally:
                    send.close()
                name = f"{self.path.name} {number + 1}"
                receiver = _Receiver(receive, name, RECEIVE_BACKLOG_BYTES // decoders)
                self._children.append(_Child(process, receive, receiver))
                receiver.start()
        except BaseException:
            self.close()
            raise
        return self

    def windows(
        self, index: Index, progress: Progress | None = None, decoded: Callable[[], None] | None = None
    ) -> Iterator[Window]:
        """The windows of the file, in order, aggregated here (matched with ``index``) from the shares.

        The shares' Observations are merged back into the file's order (by frame number), then
        batched and aggregated as the one-process scan does it, so the windows are the same.
        ``result`` is set, and ``decoded`` called, once every child has sent its last
        Observations (before the last window is yielded: the caller may start decoding its next
        file while it writes this one). Raises what a child raised (``OSError``,
        ``CaptureFormatError``...), or ``DecoderDied``.
        """
        if not self._children:
            raise RuntimeError("DecodeWorker.windows() before start()")
        aggregator = Aggregator(index, max_keys=self.window_keys + self.batch_size)
        ends: list[Decoded] = []
        merged = self._merged(progress, ends)
        yield from full_windows(merged, aggregator, self.window_keys, self.batch_size)
        first, *others = ends
        for other in others:
            first.stats.add(other.stats, packets=False)
        first.aggregate = aggregator.stats
        self.result = first
        if decoded is not None:
            decoded()
        yield aggregator.drain()

    def sha256(self) -> str:
        """The file's SHA-256, once ``windows()`` has ended (the first child sends it after its end).

        Raises what the child raised while hashing (``OSError``), or ``DecoderDied``.
        """
        if self.result is None:
            raise RuntimeError("DecodeWorker.sha256() before the end of windows()")
        message = self._receive(0)
        if message[0] != "digest":
            raise DecoderDied(f"the decoding process sent {message[0]!r} instead of the digest")
        digest: str = message[1]
        return digest

    def _merged(self, progress: Progress | None, ends: list[Decoded]) -> Iterator[list[Observation]]:
        """The children's Observations in the file's order, as they come; their results go to ``ends``."""
        shares = len(self._children)
        buffered: list[list[tuple[int, Observation]]] = [[] for _ in range(shares)]
        marks = [0] * shares
        """Per share: every Observation still to come is of this frame number or a later one."""
        done: list[Decoded | None] = [None] * shares
        while any(end is None for end in done):
            # The share that holds the merge back is the one to hear from (the others wait in
            # their bounded queues, then in their pipes: memory stays bounded).
            share = min((number for number in range(shares) if done[number] is None), key=marks.__getitem__)
            message = self._receive(share)
            if progress is not None and share == 0:
                progress(message[1])
            if message[0] == "batch":
                marks[share] = message[2]
                with collector_paused(freeze=True):
                    buffered[share] += unpack(message[3])
            elif message[0] == "end":
                marks[share] = _NO_MORE
                done[share] = message[2]
            released = _release(buffered, min(marks))
            if released:
                yield released
        ends += [end for end in done if end is not None]

    def _receive(self, share: int) -> tuple[Any, ...]:
        """The next message of a share's child; raise what it reports, or ``DecoderDied``."""
        child = self._children[share]
        try:
            data = child.receiver.get()
        except (EOFError, OSError) as exc:
            child.process.join(timeout=5)
            raise DecoderDied(
                f"the decoding process ended before the end of {self.path.name} "
                f"(exit code {child.process.exitcode})"
            ) from exc
        with collector_paused(freeze=True):
            message: tuple[Any, ...] = pickle.loads(data)  # noqa: S301 - our own child, over a pipe
        if message[0] == "error":
            raise message[1]
        if message[0] == "failed":  # an exception that does not pickle, sent as text
            raise DecoderDied(message[1])
        return message

    def close(self) -> None:
        """Stop the children that still run, and release the pipes (idempotent)."""
        children, self._children = self._children, []
        for child in children:
            if child.process.is_alive():
                child.process.kill()
        for child in children:
            child.process.join()
            child.process.close()
            child.receiver.stop()
            child.connection.close()

    def __enter__(self) -> DecodeWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: A frame number past every frame: the mark of a share that has sent everything.
_NO_MORE: Final = 1 << 62
_OBSERVATION: Final = itemgetter(1)


def _release(buffered: list[list[tuple[int, Observation]]], bound: int) -> list[Observation]:
    """Take the buffered Observations of frames before ``bound`` out of every share, in frame order."""
    parts: list[list[tuple[int, Observation]]] = []
    for number, items in enumerate(buffered):
        cut = len(items) if bound >= _NO_MORE else bisect.bisect_left(items, bound, key=itemgetter(0))
        if cut:
            parts.append(items[:cut])
            buffered[number] = items[cut:]
    if len(parts) == 1:  # one share, or one with anything to give: already in order
        return list(map(_OBSERVATION, parts[0]))
    return list(merge_shares(*parts))


@dataclass(slots=True)
class _Child:
    """A decoding process, the pipe it writes to, and the thread that reads it."""

    process: Any
    connection: Connection
    receiver: _Receiver


class _Receiver(threading.Thread):
    """Reads a child's messages as they come, so that it decodes on while this process is busy.

    The pipe itself holds a fraction of one message: without this thread a child would wait for
    each window write, and for the writer's start-up at the beginning of a scan. Messages are
    bounded in bytes (``RECEIVE_BACKLOG_BYTES``), not in number: most chunks of a capture are
    bulk and their messages nearly empty.
    """

    def __init__(self, connection: Connection, name: str, limit: int) -> None:
        """``limit``: bytes held at most (one message more may arrive while it is reached)."""
        super().__init__(name=f"receive {name}", daemon=True)
        self._connection = connection
        self._limit = limit
        self._messages: collections.deque[bytes | BaseException] = collections.deque()
        self._held = 0
        self._changed = threading.Condition()
        self._stopped = False

    def run(self) -> None:
        """Receive until the child closes its end (or ``stop``)."""
        while True:
            item: bytes | BaseException
            try:
                item = self._connection.recv_bytes()
            except (EOFError, OSError) as exc:
                item = exc
            size = len(item) if isinstance(item, bytes) else 0
            with self._changed:
                while self._held > self._limit and not self._stopped:
                    self._changed.wait()
                if self._stopped:
                    return
                self._messages.append(item)
                self._held += size
                self._changed.notify_all()
            if isinstance(item, BaseException):
                return

    def get(self) -> bytes:
        """The next message; raises ``EOFError`` or ``OSError`` when the pipe ended before it."""
        with self._changed:
            while not self._messages:
                self._changed.wait()
            item = self._messages.popleft()
            if isinstance(item, bytes):
                self._held -= len(item)
            self._changed.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """Stop waiting to hand over messages (the connection is closed by the worker, after)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self.join(timeout=5)


def _widen(connection: Connection) -> None:
    """Let the pipe hold ``PIPE_BYTES`` where the system allows it (Linux); leave it as it is otherwise.

    With the default 64 KiB, a child blocked on a full pipe at every other message (20 to 36 ms
    of a scan of the bench capture): the thread that receives its messages here runs only when
    the writer lets go of the interpreter's lock.
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is not None:
        with contextlib.suppress(OSError):  # over the system's pipe-max-size: the default then
            fcntl.fcntl(connection.fileno(), set_size, PIPE_BYTES)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (the pipe would tell it later anyway)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the broken pipe ends the child
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _child(
    send: Connection, parent: int, path: Path, agent: str, partition: Partition, regular: bool
) -> None:
    """A decoding process: read the file, decode a share; send what it finds. The first hashes it.

    A regular file is hashed where it lies once its last Observations are sent, at the lowest
    priority (``sha256_of``): the writer needs the digest only to commit, after the last window,
    and a hash beside the decoding slowed it down, measured on ``bench/bench_scan.py``'s capture
    (a thread of nice 19 in this process: 1.09 s against 1.05 for the scan; two cores). A pipe,
    read once, is hashed as it is read.

    At each chunk of the file (read, or scanned where it is mapped), every Observation of the
    frames decoded so far has been taken from the decoder: they go out with the number of frames
    read, which no later Observation of this share can precede (the merge needs it,
    ``DecodeWorker.windows``).
    """
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def put(message: tuple[Any, ...]) -> None:
        send.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    stats = DecodeStats()
    found: list[tuple[int, Observation]] = []
    first = partition.number == 0
    hasher = Hasher(path.name) if first and not regular else None
    position = 0

    def at_read(done: int) -> None:
        # Called at each chunk: read (``Reader``) or, for a file mapped in memory, scanned.
        nonlocal position
        position = max(position, done)
        put(("batch", position, stats.packets, pack(found)))
        found.clear()

    try:
        with open(path, "rb") as handle, old_objects_frozen():
            if hasher is not None:
                hasher.start()
            reader = Reader(handle, at_read, hasher)
            shares = decode_share(
                cast(BinaryIO, reader), partition, agent=agent, source="pcap", stats=stats, chunk_done=at_read
            )
            for tagged in shares:
                found += tagged
                gc.freeze()
            if hasher is not None:
                reader.drain()
            at_read(reader.done)
            # The end first: the writer aggregates and writes the last window while this
            # process hashes the file (only the commit needs it). At the lowest priority: the
            # next file's decoding processes may be at work beside this one's write already.
            put(("end", position, Decoded(stats)))
            if hasher is not None:
                put(("digest", hasher.hexdigest()))
            elif first:
                lowest_priority()
                put(("digest", sha256_of(path)))
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
        if hasher is not None:
            hasher.stop()
        send.close()


Packed = list[tuple[Any, ...]]
"""Observations with their frame numbers, as flat tuples of their fields (the endpoints' inlined)."""


def pack(tagged: list[tuple[int, Observation]]) -> Packed:
    """Flat tuples: they pickle without a call per Observation or Endpoint."""
    return [
        (frame, ts, kind, value, *src, *dst, attrs, source, agent)
        for frame, (ts, kind, value, src, dst, attrs, source, agent) in tagged
    ]


def unpack(packed: Packed) -> list[tuple[int, Observation]]:
    """What ``pack`` flattened, rebuilt as it was (the Observations were checked when made)."""
    new = tuple.__new__
    return [
        (
            frame,
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
            ),
        )
        for frame, ts, kind, value, sip, smac, sport, dip, dmac, dport, attrs, source, agent in packed
    ]
