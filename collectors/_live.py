"""Live capture: an AF_PACKET socket per interface, filtered in the kernel, read from the event loop.

The socket is opened with protocol 0 (it receives nothing), given the kernel filter of
``collectors._bpf``, a large receive buffer and ``PACKET_AUXDATA``, and only then bound to the
interface with ``ETH_P_ALL``: no unfiltered packet ever reaches it. It is non-blocking and
registered with ``loop.add_reader``; each wakeup drains up to ``batch`` frames with
``recvmsg_into`` into one preallocated buffer and feeds them to a ``Decoder`` (the lean parsers,
never scapy). The kernel strips the outer 802.1Q tag before capture and hands it over as auxiliary
data: it is put back in the frame, so observations keep their VLAN. The kernel's own counters
(``PACKET_STATISTICS``: packets passed by the filter, and those dropped because the buffer was
full) are read every few seconds and accumulated.

Needs ``CAP_NET_RAW`` only: promiscuous mode is a packet-socket membership, and a buffer larger
than ``net.core.rmem_max`` is asked with ``SO_RCVBUFFORCE`` (``CAP_NET_ADMIN``) only when that
capability is there, else capped (``lanterne doctor`` says how to raise the cap).

Errors are graded (after aiodhcpwatcher): ``BlockingIOError`` ends a drain; any other ``OSError``
(the interface went down, was removed, replaced) closes the socket and reopens it after a backoff
that grows to ``MAX_BACKOFF``; an unexpected exception is logged with its traceback and the
capture restarts after a longer backoff. Nothing here can stop the daemon. A frame that makes the
decoder fail is counted and skipped, never a reason to stop capturing.

``FlowAttributor`` is the live pipeline's IP-to-name memory: connections whose ClientHello does
not name the server (no SNI, or ECH's public outer name) are attributed to the name the client
resolved for that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from collectors._bpf import Program, attach
from collectors._decoder import LINKTYPE_ETHERNET, Decoder
from collectors._observation import InvalidObservation, Kind, Observation
from collectors._quiet import QuietLogger

_LOGGER = logging.getLogger(__name__)
_QUIET = QuietLogger(_LOGGER)

ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_ADD_MEMBERSHIP: Final = 1
PACKET_STATISTICS: Final = 6
PACKET_AUXDATA: Final = 8
PACKET_IGNORE_OUTGOING: Final = 23
PACKET_MR_PROMISC: Final = 1
PACKET_OUTGOING: Final = 4
SO_RCVBUFFORCE: Final = 33
TP_STATUS_VLAN_VALID: Final = 1 << 4
TP_STATUS_VLAN_TPID_VALID: Final = 1 << 6
_AUXDATA: Final = struct.Struct("=IIIHHHH")
_STATS: Final = struct.Struct("=II")
_ANCILLARY: Final = socket.CMSG_SPACE(_AUXDATA.size)

#: Bytes read per frame at most: GRO on the capture interface may merge segments up to 64 KiB.
FRAME_BUFFER: Final = 1 << 18
#: Seconds between reads of the kernel counters (and checks that the interface is still the same).
WATCH_INTERVAL: Final = 2.0
#: First and largest wait before reopening after an OSError; unexpected errors start higher.
MIN_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
BUG_BACKOFF: Final = 10.0
MAX_BUG_BACKOFF: Final = 300.0
#: Frames read at shutdown to empty the socket before closing it.
FINAL_DRAIN: Final = 1 << 16

Emit = Callable[[list[Observation]], None]
Opener = Callable[[], socket.socket]


@dataclass(slots=True)
class CaptureStats:
    """One interface's capture counters (the daemon exports them)."""

    frames: int = 0
    """Frames read by Python (after the kernel filter)."""
    bytes: int = 0
    truncated: int = 0
    """Frames longer than the read buffer (cut)."""
    kernel_packets: int = 0
    """Frames the kernel filter passed to the socket (``PACKET_STATISTICS``, accumulated)."""
    kernel_drops: int = 0
    """Frames the kernel dropped because the socket buffer was full."""
    decoder_errors: int = 0
    restarts: int = 0
    errors: int = 0
    running: bool = False
    rcvbuf: int = 0
    """Receive buffer the kernel granted (bytes)."""


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except (OSError, ValueError):
        pass
    return False


def open_packet_socket(
    iface: str,
    program: Program,
    *,
    rcvbuf: int,
    promiscuous: bool,
    ignore_outgoing: bool = False,
) -> socket.socket:
    """An AF_PACKET socket on ``iface`` with ``program`` attached before any packet can arrive."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing until bound
    try:
        attach(sock, program)
        if _has_net_admin():
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        if ignore_outgoing:
            # Before Linux 4.20 this option does not exist: the read loop skips them by packet type.
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((iface, ETH_P_ALL))
        if promiscuous:
            index = socket.if_nametoindex(iface)
            membership = struct.pack("=iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def restore_vlan(frame: bytes, auxdata: bytes) -> bytes:
    """Put back the 802.1Q tag the kernel stripped (``struct tpacket_auxdata`` says which one)."""
    if len(auxdata) < _AUXDATA.size or len(frame) < 14:
        return frame
    status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(auxdata)
    if not status & TP_STATUS_VLAN_VALID:
        return frame
    if not status & TP_STATUS_VLAN_TPID_VALID or not tpid:
        tpid = 0x8100  # kernels before 3.14 do not say which TPID: 802.1Q is the common one
    return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]


class LiveCapture:
    """One interface: open, read from the loop, reopen after failures, until stopped."""

    def __init__(
        self,
        iface: str,
        emit: Emit,
        *,
        opener: Opener,
        decoder: Decoder,
        batch: int = 512,
        ignore_outgoing: bool = False,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self.iface = iface
        self.emit = emit
        self.opener = opener
        self.decoder = decoder
        self.batch = batch
        self.ignore_outgoing = ignore_outgoing
        self.watch_interval = watch_interval
        self.stats = CaptureStats()
        self._buffer = bytearray(FRAME_BUFFER)
        self._view = memoryview(self._buffer)
        self._sock: socket.socket | None = None
        self._ifindex: int | None = None
        self._failure: asyncio.Future[BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the supervisor ------------------------------------------------------------------------------

    async def async_run(self) -> None:
        """Capture until cancelled; failures close the socket and reopen it after a growing backoff."""
        self._loop = asyncio.get_running_loop()
        backoff = MIN_BACKOFF
        bug_backoff = BUG_BACKOFF
        try:
            while True:
                try:
                    self._open()
                except PermissionError as exc:
                    self._log_permission(exc)
                    await asyncio.sleep(MAX_BACKOFF)
                    continue
                except OSError as exc:
                    self.stats.errors += 1
                    _QUIET.warning("cannot capture on %s (retrying): %s", self.iface, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                opened = time.monotonic()
                failure = await self._async_watch()
                self._close()
                self.stats.restarts += 1
                if time.monotonic() - opened > MAX_BACKOFF:  # it had been healthy: start small again
                    backoff, bug_backoff = MIN_BACKOFF, BUG_BACKOFF
                if isinstance(failure, OSError):
                    _QUIET.warning("capture on %s failed (reopening): %s", self.iface, failure)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                else:
                    _LOGGER.error(
                        "capture on %s stopped by an unexpected error (restarting in %.0f s)",
                        self.iface,
                        bug_backoff,
                        exc_info=failure,
                    )
                    await asyncio.sleep(bug_backoff)
                    bug_backoff = min(bug_backoff * 2, MAX_BUG_BACKOFF)
        finally:
            self._final_drain()
            self._close()

    def _open(self) -> None:
        sock = self.opener()
        assert self._loop is not None
        self._sock = sock
        self._failure = self._loop.create_future()
        try:
            self._ifindex = socket.if_nametoindex(self.iface)
        except OSError:
            self._ifindex = None
        self.stats.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self.stats.running = True
        _LOGGER.info("capturing on %s (receive buffer %d KiB)", self.iface, self.stats.rcvbuf >> 10)

    async def _async_watch(self) -> BaseException:
        """Wait for a failure, reading the kernel counters and checking the interface meanwhile."""
        assert self._failure is not None
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(self._failure), self.watch_interval)
            except TimeoutError:
                pass
            self.poll_kernel_stats()
            if self._ifindex is not None:
                try:
                    index: int | None = socket.if_nametoindex(self.iface)
                except OSError:
                    index = None
                if index != self._ifindex:  # removed, or replaced by a new device of the same name
                    return OSError(errno.ENODEV, f"interface {self.iface} was replaced")

    def _fail(self, exc: BaseException) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(exc)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        self.stats.running = False
        if sock is None:
            return
        self.poll_kernel_stats(sock)
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()

    def _log_permission(self, exc: OSError) -> None:
        self.stats.errors += 1
        if os.geteuid() == 0:
            _LOGGER.error("cannot capture on %s: %s", self.iface, exc)
        else:
            _QUIET.warning(
                "cannot capture on %s without CAP_NET_RAW (run 'lanterne doctor' for the fix): %s",
                self.iface,
                exc,
            )

    # -- reading -----------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Drain up to ``batch`` frames (the loop calls this again while the socket stays readable)."""
        try:
            self._drain(self.batch)
        except OSError as exc:
            self._fail(exc)
        except Exception as exc:  # graded: this capture restarts, the daemon goes on
            self._fail(exc)

    def _drain(self, limit: int) -> int:
        sock = self._sock
        if sock is None:
            return 0
        recv = sock.recvmsg_into
        buffers = [self._view]
        view = self._view
        feed = self.decoder.feed
        stats = self.stats
        ignore_outgoing = self.ignore_outgoing
        now = time.time()
        read = 0
        while read < limit:
            try:
                size, ancillary, flags, address = recv(buffers, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            read += 1
            if ignore_outgoing and address and address[2] == PACKET_OUTGOING:
                continue
            stats.frames += 1
            stats.bytes += size
            if flags & socket.MSG_TRUNC:
                stats.truncated += 1
            frame = bytes(view[:size])
            for level, kind, data in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    frame = restore_vlan(frame, data)
            try:
                feed(now, LINKTYPE_ETHERNET, frame, 0, len(frame))
            except Exception:  # one hostile frame must not stop the capture
                stats.decoder_errors += 1
                _QUIET.exception("the decoder failed on a frame from %s (skipped)", self.iface)
        if read:
            observations = self.decoder.flush()
            if observations:
                self.emit(observations)
        return read

    def _final_drain(self) -> None:
        """Read what is left in the socket (shutdown: SIGTERM must not lose what already arrived)."""
        if self._sock is None:
            return
        try:
            self._drain(FINAL_DRAIN)
        except Exception:  # best effort at shutdown
            _QUIET.exception("error while draining %s at shutdown", self.iface)

    def poll_kernel_stats(self, sock: socket.socket | None = None) -> None:
        """Add the kernel's counters since the last read (reading resets them)."""
        sock = sock or self._sock
        if sock is None or sock.family != socket.AF_PACKET:
            return
        try:
            packets, drops = _STATS.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size))
        except OSError:
            return
        self.stats.kernel_packets += packets
        self.stats.kernel_drops += drops


# -- flow attribution ----------------------------------------------------------------------------------

#: Bounds on how long a DNS answer attributes its addresses (its TTL, clamped).
MIN_ATTRIBUTION_TTL: Final = 60.0
MAX_ATTRIBUTION_TTL: Final = 3600.0
_AMBIGUOUS: Final = ""
_K = TypeVar("_K")


@dataclass(slots=True)
class AttributionStats:
    """What the IP-to-name memory learnt, attributed and forgot."""

    learned: int = 0
    attributed: int = 0
    evicted: int = 0


class FlowAttributor:
    """A bounded IP-to-name memory fed by ``dns.answer``; names hellos that do not name their server.

    Two LRU maps: (client IP, server IP) -> name, which disambiguates shared (CDN) addresses per
    client, and server IP -> name, used when the sensor did not see the client's own lookup and
    only if every recent answer for that address gave the same name. A ClientHello without SNI
    (``tls.fingerprint``) to an address so learnt becomes a ``tls.sni`` (or ``quic.sni``) of the
    name, and an ECH hello (whose SNI is the provider's public name) a second one of the real
    name; both carry ``attributed_from = "dns"``. The kinds stay those of the evidence they
    replace, so the catalogue's host rules apply unchanged, and the attribute says how weak it is.
    """

    def __init__(self, max_entries: int = 32_768) -> None:
        self.max_entries = max_entries
        self.stats = AttributionStats()
        self._pairs: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._servers: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs) + len(self._servers)

    def clear(self) -> None:
        """Forget everything (memory pressure)."""
        self.stats.evicted += len(self)
        self._pairs.clear()
        self._servers.clear()

    def _remember(self, table: OrderedDict[_K, tuple[str, float]], key: _K, value: tuple[str, float]) -> None:
        if key in table:
            table.move_to_end(key)
        elif len(table) >= self.max_entries:
            table.popitem(last=False)
            self.stats.evicted += 1
        table[key] = value

    def learn(self, obs: Observation) -> None:
        """Remember the addresses of a ``dns.answer`` (src is the client that asked)."""
        addresses = obs.attrs.get("addresses")
        if not isinstance(addresses, tuple) or not addresses:
            return
        ttl = obs.attrs.get("ttl")
        lifetime = float(ttl) if isinstance(ttl, int) else MIN_ATTRIBUTION_TTL
        expiry = obs.ts + min(max(lifetime, MIN_ATTRIBUTION_TTL), MAX_ATTRIBUTION_TTL)
        name, client = obs.value, obs.src.ip
        pairs, servers = self._pairs, self._servers
        for address in addresses:
            if not isinstance(address, str):
                continue
            self.stats.learned += 1
            if client is not None:
                self._remember(pairs, (client, address), (name, expiry))
            known = servers.get(address)
            if known is not None and known[0] != name and known[1] >= obs.ts:
                name_for_server = _AMBIGUOUS  # a shared address: only per-client answers count
            else:
                name_for_server = name
            self._remember(servers, address, (name_for_server, expiry))

    def name_of(self, client: str | None, server: str | None, ts: float) -> str | None:
        """The name ``client`` resolved for ``server`` (or the unambiguous name of ``server``)."""
        if server is None:
            return None
        if client is not None:
            known = self._pairs.get((client, server))
            if known is not None and known[1] >= ts:
                return known[0]
        known = self._servers.get(server)
        if known is not None and known[1] >= ts and known[0]:
            return known[0]
        return None

    def process(self, observations: list[Observation]) -> list[Observation]:
        """Learn from the answers among ``observations``; return the attributed observations they imply."""
        extra: list[Observation] = []
        for obs in observations:
            kind = obs.kind
            if kind is Kind.DNS_ANSWER:
                self.learn(obs)
            elif kind is Kind.TLS_FINGERPRINT or (
                (kind is Kind.TLS_SNI or kind is Kind.QUIC_SNI) and obs.attrs.get("ech") is True
            ):
                attributed = self._attribute(obs)
                if attributed is not None:
                    extra.append(attributed)
        return extra

    def _attribute(self, obs: Observation) -> Observation | None:
        name = self.name_of(obs.src.ip, obs.dst.ip, obs.ts)
        if name is None or name == obs.value:
            return None
        if obs.kind is Kind.TLS_FINGERPRINT:
            kind = Kind.QUIC_SNI if obs.attrs.get("transport") == "quic" else Kind.TLS_SNI
            attrs: dict[str, object] = {"attributed_from": "dns", "ja4": obs.value}
        else:
            kind = obs.kind
            attrs = {"attributed_from": "dns", "outer_sni": obs.value}
        for key in ("alpn", "version", "vlan"):
            if key in obs.attrs:
                attrs[key] = obs.attrs[key]
        try:
            attributed = Observation(obs.ts, kind, name, obs.src, obs.dst, attrs, obs.source, obs.agent)
        except InvalidObservation:
            return None
        self.stats.attributed += 1
        return attributed
