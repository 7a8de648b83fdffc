"""ARP sweep of the directly attached allowed subnets: which addresses are alive, and their MACs.

An ARP request is the gentlest probe there is (every IPv4 stack answers it in the kernel), and
knowing which hosts are alive first spares every other probe the hosts that are not there. The
sweep asks each target once per attempt through the safety gate (one packet each, paced by the
global rate limit, retried once on silence) and listens for the replies on the same socket.

The socket is a raw ``AF_PACKET`` socket bound to the interface and to the ARP ethertype: the
kernel delivers ARP frames only, which is narrower and cheaper than a BPF program, and it needs
``CAP_NET_RAW`` only. It is non-blocking and read from the event loop (``add_reader``). Frames are
built and parsed with ``struct``: scapy's import is heavy and opens sockets on its own, the daemon
does not carry it (tests use scapy to craft and check frames). The socket is injected
(``socket_factory``) so tests drive the real ``add_reader`` path with a socket pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from collectors._observation import Endpoint, Kind, Observation, mac_from_bytes
from collectors.probe._errors import ProbeError, ProbeTimeout
from collectors.probe._gate import Probe, ProbeTicket, SafetyGate

_LOGGER = logging.getLogger(__name__)

SOURCE: Final = "probe.arp"
ETH_P_ARP: Final = 0x0806
#: Seconds to wait for a reply: a neighbour answers within milliseconds or not at all.
DEFAULT_ARP_TIMEOUT: Final = 1.0
_BROADCAST: Final = b"\xff" * 6
_ARP_HEADER: Final = struct.Struct("!HHBBH6s4s6s4s")
_ETHERNET: Final = struct.Struct("!6s6sH")
_REQUEST: Final = 1
_REPLY: Final = 2
# ioctl requests of <linux/sockios.h>.
_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_SIOCGIFNETMASK: Final = 0x891B
_SIOCGIFHWADDR: Final = 0x8927
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8


@dataclass(frozen=True, slots=True)
class Interface:
    """An IPv4 interface of this machine: its name, address, attached network and MAC."""

    name: str
    address: str
    network: ipaddress.IPv4Network
    mac: str


class ArpSocket(Protocol):
    """What the sweep needs of its socket (a raw AF_PACKET socket, or a test's socket pair)."""

    def fileno(self) -> int:
        """The descriptor for ``add_reader``."""
        ...

    def send(self, data: bytes, /) -> int:
        """Send one frame."""
        ...

    def recv(self, size: int, /) -> bytes:
        """Receive one frame (non-blocking)."""
        ...

    def close(self) -> None:
        """Close it."""
        ...


def build_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """An Ethernet broadcast ARP who-has ``target_ip`` tell ``src_ip`` (42 bytes; the NIC pads it)."""
    sender_mac = bytes.fromhex(src_mac.replace(":", ""))
    ethernet = _ETHERNET.pack(_BROADCAST, sender_mac, ETH_P_ARP)
    arp = _ARP_HEADER.pack(
        1,  # hardware type: Ethernet
        0x0800,  # protocol type: IPv4
        6,
        4,
        _REQUEST,
        sender_mac,
        socket.inet_aton(src_ip),
        b"\x00" * 6,
        socket.inet_aton(target_ip),
    )
    return ethernet + arp


def parse_reply(frame: bytes) -> tuple[str, str] | None:
    """(sender IP, sender MAC) of an Ethernet/IPv4 ARP reply; None for anything else."""
    if len(frame) < _ETHERNET.size + _ARP_HEADER.size:
        return None
    _dst, _src, ethertype = _ETHERNET.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sender_mac, sender_ip, _tmac, _tip = _ARP_HEADER.unpack_from(
        frame, _ETHERNET.size
    )
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4 or op != _REPLY:
        return None
    if sender_mac in (_BROADCAST, b"\x00" * 6) or sender_mac[0] & 0x01:
        return None  # a multicast or empty sender MAC is not a host's
    return socket.inet_ntoa(sender_ip), mac_from_bytes(sender_mac)


def open_arp_socket(interface: str) -> socket.socket:
    """A non-blocking raw socket on ``interface`` that receives ARP frames only (needs CAP_NET_RAW)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((interface, ETH_P_ARP))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))


def local_interfaces(names: Iterable[str] | None = None) -> list[Interface]:
    """The IPv4 interfaces that are up (not loopback unless named), with address, network and MAC."""
    wanted = None if names is None else set(names)
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            if wanted is not None and name not in wanted:
                continue
            try:
                flags = struct.unpack_from("H", _ioctl(sock, _SIOCGIFFLAGS, name), 16)[0]
                if not flags & _IFF_UP or (flags & _IFF_LOOPBACK and wanted is None):
                    continue
                address = socket.inet_ntoa(_ioctl(sock, _SIOCGIFADDR, name)[20:24])
                netmask = socket.inet_ntoa(_ioctl(sock, _SIOCGIFNETMASK, name)[20:24])
                hwaddr = _ioctl(sock, _SIOCGIFHWADDR, name)[18:24]
            except OSError:
                continue  # no IPv4 address on it
            network = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
            found.append(Interface(name, address, network, mac_from_bytes(hwaddr)))
    return found


def arp_observation(
    ip: str, mac: str, interface: str, *, agent: str = "lanterne", ts: float | None = None
) -> Observation:
    """``arp.host``: the device at ``ip`` answered with ``mac`` (it announced itself: ``src``)."""
    when = time.time() if ts is None else ts
    return Observation(
        when,
        Kind.ARP_HOST,
        ip,
        Endpoint(ip=ip, mac=mac),
        attrs={"interface": interface},
        source=SOURCE,
        agent=agent,
    )


class ArpSweeper:
    """Sweeps the targets of one directly attached interface."""

    def __init__(
        self,
        gate: SafetyGate,
        interface: Interface,
        *,
        socket_factory: Callable[[str], ArpSocket] = open_arp_socket,
        timeout: float = DEFAULT_ARP_TIMEOUT,
    ) -> None:
        self.gate = gate
        self.interface = interface
        self.timeout = timeout
        self._socket_factory = socket_factory
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._answered: dict[str, str] = {}
        self._wanted: frozenset[str] = frozenset()

    def _on_readable(self, sock: ArpSocket) -> None:
        # Drain what is there; a burst of replies arrives when many requests went out at once.
        for _ in range(256):
            try:
                frame = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _LOGGER.debug("ARP socket read failed: %s", exc)
                return
            reply = parse_reply(frame)
            if reply is None:
                continue
            ip, mac = reply
            future = self._pending.get(ip)
            if future is not None and not future.done():
                future.set_result(mac)
            elif ip in self._wanted and ip not in self._answered:
                self._answered[ip] = mac  # a late reply to an attempt that gave up: still alive

    async def async_sweep(self, targets: Sequence[str]) -> dict[str, str]:
        """Ask every target; return the addresses that answered with their MACs (OSError: no socket)."""
        self._wanted = frozenset(targets)
        loop = asyncio.get_running_loop()
        sock = self._socket_factory(self.interface.name)
        loop.add_reader(sock.fileno(), self._on_readable, sock)
        try:
            results = await asyncio.gather(*(self._ask(sock, ip) for ip in targets), return_exceptions=True)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
        for ip, result in zip(targets, results, strict=True):
            if isinstance(result, str):
                self._answered[ip] = result
            elif isinstance(result, BaseException) and not isinstance(result, ProbeError):
                raise result
        return dict(self._answered)

    async def async_dry_run(self, targets: Sequence[str]) -> None:
        """Record the requests a sweep would send (dry run: no socket is opened, nothing is sent)."""
        for ip in targets:
            with contextlib.suppress(ProbeError):
                await self.gate.run(self._probe(ip), _never)

    def _probe(self, ip: str) -> Probe:
        what = f"ARP who-has {ip} tell {self.interface.address} on {self.interface.name}"
        return Probe(ip, "arp", None, what, packets=1, interface=self.interface.name, timeout=self.timeout)

    async def _ask(self, sock: ArpSocket, ip: str) -> str:
        if ip in self._answered:
            return self._answered[ip]
        frame = build_request(self.interface.mac, self.interface.address, ip)
        probe = self._probe(ip)

        async def action(ticket: ProbeTicket) -> str:
            if ip in self._answered:  # the reply to the previous attempt came late
                ticket.note("answered late")
                return self._answered[ip]
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._pending[ip] = future
            try:
                sock.send(frame)
                async with asyncio.timeout(ticket.timeout):
                    mac = await future
            except TimeoutError as exc:
                raise ProbeTimeout("no ARP reply") from exc
            except OSError as exc:
                raise ProbeError("the ARP request could not be sent") from exc
            finally:
                self._pending.pop(ip, None)
            ticket.note(f"is-at {mac}")
            return mac

        return await self.gate.run(probe, action)


async def _never(ticket: ProbeTicket) -> str:
    """The action of a dry-run probe: the gate never calls it."""
    raise AssertionError(f"a dry-run probe was sent: {ticket.probe.what}")
