"""The passive decoder: link layer → IP → transport → the protocol parsers, on raw bytes.

This is the hot path. Most packets on a hospital link are bulk (TLS application data, ACKs, SMB,
RTP): the loop throws them away after looking at a handful of bytes, without slicing or building
objects. Only packets that can carry an Observation kind reach a parser, and protocols are
recognised by content where ports lie (DICOM and HL7 run on site-specific ports).

Everything the network sends is untrusted: a malformed packet is counted and skipped; a parser
bug is counted too (and re-raised in ``strict`` mode, which the tests use) — nothing stops the loop.
"""

from __future__ import annotations

import heapq
import io
import logging
import mmap
import os
import re
import socket
import stat
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final, cast
from zlib import crc32

from collectors import dhcp, dicom, dns, hl7, http, nbns, quic, snmp, ssdp, tls
from collectors._capture import (
    CHUNK_SIZE,
    PCAPNG_SHB,
    CaptureFormatError,
    CaptureTruncated,
    Frames,
    PcapngReader,
    iter_packets,
)
from collectors._context import PacketContext
from collectors._errors import ParseError, Truncated
from collectors._ipfrag import Defragmenter
from collectors._observation import Endpoint, InvalidObservation, Observation
from collectors._quiet import QuietLogger
from collectors._tcp import MAX_STREAM_BYTES, STREAM_TIMEOUT, Stream, StreamParser, StreamStarts

_LOGGER = logging.getLogger(__name__)
_QUIET = QuietLogger(_LOGGER)

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW_OLD: Final = 12
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276
SUPPORTED_LINKTYPES: Final = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW_OLD,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

ETH_IPV4: Final = 0x0800
ETH_IPV6: Final = 0x86DD
VLAN_TAGS: Final = frozenset({0x8100, 0x88A8, 0x9100})
ETH_PPPOE_SESSION: Final = 0x8864
#: PPP protocol numbers carried by PPPoE → the ethertype of the same network protocol.
PPP_PROTOCOLS: Final = {0x0021: 0x0800, 0x0057: 0x86DD}
MAX_VLAN_TAGS: Final = 4

# IPv6 extension headers that we walk through (RFC 8200 §4 and the IANA registry).
IPV6_EXTENSIONS: Final = frozenset({0, 43, 60, 135, 139, 140})
IPV6_FRAGMENT: Final = 44
IPV6_AH: Final = 51
MAX_IPV6_EXTENSIONS: Final = 8
#: Address and MAC texts a decoder keeps (``Decoder._context``); forgotten all at once beyond.
_MAX_NAMES: Final = 65_536
_tuple_new = tuple.__new__

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

UdpObserve = Callable[[bytes, PacketContext], list[Observation]]


def _dns(payload: bytes, ctx: PacketContext) -> list[Observation]:
    return dns.observe(payload, ctx, "dns")


def _mdns(payload: bytes, ctx: PacketContext) -> list[Observation]:
    return dns.observe(payload, ctx, "mdns")


def _llmnr(payload: bytes, ctx: PacketContext) -> list[Observation]:
    return dns.observe(payload, ctx, "llmnr")


def _dns_tcp(data: bytes, ctx: PacketContext) -> list[Observation]:
    return dns.observe_tcp(data, ctx, "dns")


def _llmnr_tcp(data: bytes, ctx: PacketContext) -> list[Observation]:
    return dns.observe_tcp(data, ctx, "llmnr")


#: TCP ports whose streams start with a length-prefixed DNS message (RFC 1035 §4.2.2, RFC 4795 §2.6).
TCP_NAME_PORTS: Final[dict[int, tuple[StreamParser, str]]] = {
    53: (_dns_tcp, "dns"),
    5355: (_llmnr_tcp, "llmnr"),
}


#: UDP port → (protocol name, parser). Either side's port selects the parser.
UDP_PORTS: Final[dict[int, tuple[str, UdpObserve]]] = {
    53: ("dns", _dns),
    5353: ("mdns", _mdns),
    5355: ("llmnr", _llmnr),
    137: ("nbns", nbns.observe),
    67: ("dhcp", dhcp.observe),
    68: ("dhcp", dhcp.observe),
    1900: ("ssdp", ssdp.observe),
    161: ("snmp", snmp.observe),
    162: ("snmp", snmp.observe),
}

#: First payload bytes of TCP messages we read, recognised whatever the port.
_HTTP_METHOD_INITIALS: Final = http.METHOD_INITIALS
#: Every first byte of a TCP payload worth a look: TLS handshake, DICOM PDU 1/2, MLLP start, HTTP.
_TCP_START_BYTES: Final = frozenset(_HTTP_METHOD_INITIALS | {0x16, 0x01, 0x02, 0x0B})
#: Largest frame accepted in a pcap record (anything larger is a corrupt file).
MAX_FRAME: Final = 1 << 18
_RECORD_LENGTH: Final = struct.Struct("<I")
_RECORD_TIME: Final = struct.Struct("<II")
_PORTS: Final = struct.Struct(">I")


def _byte_class(values: Iterable[int], *, negate: bool = False) -> bytes:
    return b"[" + (b"^" if negate else b"") + b"".join(re.escape(bytes((v,))) for v in sorted(values)) + b"]"


def _not_ports(ports: Iterable[int]) -> bytes:
    return b"(?!" + b"|".join(re.escape(port.to_bytes(2, "big")) for port in sorted(ports)) + b")"


def _boring_pattern() -> re.Pattern[bytes]:
    """Ethernet frames that cannot carry an Observation, recognised in one regex match.

    IPv4 (optionally behind one 802.1Q tag) without options and not a fragment, carrying:
    TCP whose ports are not DNS/LLMNR and whose payload is absent or starts with a byte no
    recognised message starts with (one alternative per TCP data offset, 5 to 15 words); UDP
    whose ports select no parser and whose payload is not a QUIC long header; or any other
    protocol. Anything else (IPv6, options, fragments, a candidate payload) does not match and is
    decoded in full. ``\\Z`` is the frame's end (the match is bounded by ``endpos``): no payload.
    """
    dull_start = b"(?:" + _byte_class(_TCP_START_BYTES, negate=True) + b"|\\Z)"
    tcp_payload = (
        b"(?:"
        + b"|".join(
            b"["
            + re.escape(bytes((words << 4,)))
            + b"-"
            + re.escape(bytes(((words << 4) | 15,)))
            + b"]"
            + b".{%d}" % (4 * words - 13)
            + dull_start
            for words in range(5, 16)
        )
        + b")"
    )
    tcp_ports = _not_ports(TCP_NAME_PORTS) + b".." + _not_ports(TCP_NAME_PORTS) + b".."
    udp_ports = _not_ports(UDP_PORTS) + b".." + _not_ports(UDP_PORTS) + b".."
    tcp = b"(?P<tcp>\\x06.{10}" + tcp_ports + b".{8}" + tcp_payload + b")"
    udp = b"(?P<udp>\\x11.{10}" + udp_ports + b".{4}(?:[\\x00-\\xbf]|\\Z))"
    # flags + fragment offset: MF clear and offset zero (DF and the reserved bit may be set)
    ipv4 = b"\\x08\\x00\\x45.{5}[\\x00\\x40\\x80\\xc0]\\x00.(?:" + tcp + b"|" + udp + b"|[^\\x06\\x11])"
    return re.compile(b".{12}(?:\\x81\\x00..)?" + ipv4, re.DOTALL)


def _never_boring(buf: Frames, pos: int, endpos: int) -> None:
    """Other link types: every frame is decoded in full."""


_BORING: Final = _boring_pattern()
_NEVER_BORING: Final = _never_boring


def _skippable(match: re.Match[bytes] | None, buf: Frames, port_pairs: Mapping[int, Any]) -> bool:
    """Whether a frame that ``_BORING`` matched (``match``) may be skipped.

    A TCP segment with a dull first byte may still continue a stream start being reassembled:
    only then is it worth reading its ports, and decoding it.
    """
    if match is None:
        return False
    return not (
        port_pairs
        and match.lastgroup == "tcp"
        and _PORTS.unpack_from(buf, match.start("tcp") + 11)[0] in port_pairs
    )


# The optional C version of the scan loop (collectors/_scan.c), built with the package when a C
# compiler is there. It applies the same rule as _BORING; the tests prove both paths agree.
try:
    from collectors import _scan
except ImportError:  # pragma: no cover - exercised on installs without a compiler
    _scan = None  # type: ignore[assignment]
else:
    _scan.init_start_bytes(bytes(sorted(_TCP_START_BYTES)))


@dataclass(slots=True)
class DecodeStats:
    """What the decoder saw: the summary ``lanterne decode`` prints and the daemon exports."""

    packets: int = 0
    decoded: int = 0
    """Packets (or reassembled messages) that produced at least one Observation."""
    malformed: int = 0
    """Packets whose headers or protocol message were broken: counted, skipped."""
    unsupported_link: int = 0
    observations: int = 0
    per_kind: Counter[str] = field(default_factory=Counter)
    malformed_by: Counter[str] = field(default_factory=Counter)
    parser_errors: int = 0
    """Unexpected exceptions from a parser (bugs): counted, never fatal outside strict mode."""
    fragments: int = 0
    streams_evicted: int = 0
    truncated_files: int = 0
    """Captures that ended in the middle of a record (cut short): decoded up to the cut."""

    def add(self, other: DecodeStats, *, packets: bool = True) -> None:
        """Add another decoder's counts (``packets=False``: a share of the same file, counted already)."""
        if packets:
            self.packets += other.packets
        self.decoded += other.decoded
        self.malformed += other.malformed
        self.unsupported_link += other.unsupported_link
        self.observations += other.observations
        self.per_kind.update(other.per_kind)
        self.malformed_by.update(other.malformed_by)
        self.parser_errors += other.parser_errors
        self.fragments += other.fragments
        self.streams_evicted += other.streams_evicted
        self.truncated_files += other.truncated_files

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain data."""
        return {
            "packets": self.packets,
            "decoded": self.decoded,
            "malformed": self.malformed,
            "unsupported_link": self.unsupported_link,
            "observations": self.observations,
            "per_kind": dict(sorted(self.per_kind.items())),
            "malformed_by": dict(sorted(self.malformed_by.items())),
            "parser_errors": self.parser_errors,
            "fragments": self.fragments,
            "streams_evicted": self.streams_evicted,
            "truncated_files": self.truncated_files,
        }


@dataclass(frozen=True, slots=True)
class Partition:
    """Share ``number`` of ``count`` of a capture's traffic, by address pair.

    Frames between the same two addresses, either way, fall in the same share, and with them
    every flow, fragmented datagram and handshake they carry: the state a decoder keeps is per
    address pair, so decoders of different shares never need each other's. Frames whose
    addresses cannot be read are the first share's.
    """

    number: int
    count: int

    def owns(self, a: bytes, b: bytes) -> bool:
        """Whether the frames between addresses ``a`` and ``b`` (packed) are this share's."""
        return (crc32(a) ^ crc32(b)) % self.count == self.number


class Decoder:
    """Turns raw frames into Observations; keeps only bounded per-flow state."""

    def __init__(
        self,
        *,
        agent: str = "lanterne",
        source: str = "pcap",
        stats: DecodeStats | None = None,
        strict: bool = False,
        partition: Partition | None = None,
    ) -> None:
        """``partition``: decode only the packets between the address pairs of this share."""
        self.agent = agent
        self.source = source
        self.stats = stats if stats is not None else DecodeStats()
        self.strict = strict
        self.out: list[Observation] = []
        self.streams = StreamStarts()
        self.defrag = Defragmenter()
        self.quic = quic.QuicTracker()
        #: Use the C scan loop when it is built (tests turn it off to compare both paths).
        self.accelerated = True
        #: The share whose ownership each frame is checked against: none when there is one share.
        self.partition = partition if partition is not None and partition.count > 1 else None
        #: Whether this decoder counts what happens before a packet's addresses are known (one
        #: partition does: every decoder of a file reads every frame).
        self.counts_unowned = partition is None or partition.number == 0
        self.index = 0
        """The number (from 0) of the frame being decoded: set by the loops that call ``feed``."""
        self.tags: list[int] | None = [] if partition is not None else None
        """With a partition: the frame number of each Observation in ``out``, in the same order."""
        self._names: dict[bytes, str] = {}
        """Text of the IPv4 addresses (4 bytes) and MACs (6 bytes) seen lately (``_context``)."""

    # -- entry points ----------------------------------------------------------------------------

    def feed(self, ts: float, linktype: int, buf: Frames, off: int, caplen: int) -> None:
        """Decode one frame found at ``buf[off:off + caplen]``; observations go to ``self.out``."""
        self.stats.packets += 1
        end = off + caplen
        src_mac: bytes | None = None
        dst_mac: bytes | None = None
        vlan: int | None = None
        if linktype == LINKTYPE_ETHERNET:
            if caplen < 14:
                self._unowned_malformed("ethernet")
                return
            ethertype = (buf[off + 12] << 8) | buf[off + 13]
            p = off + 14
            if ethertype in VLAN_TAGS:
                for _ in range(MAX_VLAN_TAGS):
                    if p + 4 > end:
                        self._unowned_malformed("vlan")
                        return
                    vlan = ((buf[p] << 8) | buf[p + 1]) & 0x0FFF
                    ethertype = (buf[p + 2] << 8) | buf[p + 3]
                    p += 4
                    if ethertype not in VLAN_TAGS:
                        break
            if ethertype == ETH_PPPOE_SESSION:
                # PPPoE session header (6 bytes) then the PPP protocol number (RFC 2516).
                if p + 8 > end:
                    self._unowned_malformed("pppoe")
                    return
                ethertype = PPP_PROTOCOLS.get((buf[p + 6] << 8) | buf[p + 7], 0)
                p += 8
            if ethertype not in (ETH_IPV4, ETH_IPV6):
                return
            dst_mac = buf[off : off + 6]
            src_mac = buf[off + 6 : off + 12]
        elif linktype == LINKTYPE_LINUX_SLL:
            if caplen < 16:
                self._unowned_malformed("sll")
                return
            ethertype = (buf[off + 14] << 8) | buf[off + 15]
            p = off + 16
            if ((buf[off + 2] << 8) | buf[off + 3]) == 1 and ((buf[off + 4] << 8) | buf[off + 5]) == 6:
                src_mac = buf[off + 6 : off + 12]  # ARPHRD_ETHER sender address
            if ethertype in VLAN_TAGS and p + 4 <= end:
                vlan = ((buf[p] << 8) | buf[p + 1]) & 0x0FFF
                ethertype = (buf[p + 2] << 8) | buf[p + 3]
                p += 4
        elif linktype == LINKTYPE_LINUX_SLL2:
            if caplen < 20:
                self._unowned_malformed("sll2")
                return
            ethertype = (buf[off] << 8) | buf[off + 1]
            p = off + 20
            if ((buf[off + 8] << 8) | buf[off + 9]) == 1 and buf[off + 11] == 6:
                src_mac = buf[off + 12 : off + 18]
        elif linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OLD, LINKTYPE_IPV4, LINKTYPE_IPV6):
            if caplen < 1:
                self._unowned_malformed("raw")
                return
            version = buf[off] >> 4
            ethertype = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
            p = off
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if caplen < 4:
                self._unowned_malformed("null")
                return
            family = buf[off + 3] if buf[off] == 0 else buf[off]  # host byte order of the writer
            ethertype = ETH_IPV4 if family == 2 else ETH_IPV6 if family in (10, 24, 28, 30) else 0
            p = off + 4
        else:
            if self.counts_unowned:
                self.stats.unsupported_link += 1
            return

        # -- network layer -------------------------------------------------------------------------
        if ethertype == ETH_IPV4:
            if p + 20 > end:
                self._unowned_malformed("ipv4")
                return
            vihl = buf[p]
            ihl = (vihl & 0x0F) << 2
            total = (buf[p + 2] << 8) | buf[p + 3]
            if vihl >> 4 != 4 or ihl < 20 or total < ihl:
                self._unowned_malformed("ipv4")
                return
            partition = self.partition
            if partition is not None and not partition.owns(buf[p + 12 : p + 16], buf[p + 16 : p + 20]):
                return
            ipend = p + total
            ipend = min(ipend, end)  # snap length cut the packet: parse what we have
            proto = buf[p + 9]
            l4 = p + ihl
            frag = ((buf[p + 6] << 8) | buf[p + 7]) & 0x3FFF
            family = socket.AF_INET
            addr_off, addr_len = p + 12, 4
            if frag:
                key = buf[p + 12 : p + 20] + buf[p + 4 : p + 6] + bytes((proto,))
                whole = self.defrag.add(key, ts, (frag & 0x1FFF) << 3, bool(frag & 0x2000), buf[l4:ipend])
                self.stats.fragments += 1
                if whole is None:
                    return
                header = buf[p:l4]
                buf, l4, ipend = header + whole, ihl, ihl + len(whole)
                addr_off, p = 12, 0
        elif ethertype == ETH_IPV6:
            if p + 40 > end:
                self._unowned_malformed("ipv6")
                return
            if buf[p] >> 4 != 6:
                self._unowned_malformed("ipv6")
                return
            partition = self.partition
            if partition is not None and not partition.owns(buf[p + 8 : p + 24], buf[p + 24 : p + 40]):
                return
            ipend = p + 40 + ((buf[p + 4] << 8) | buf[p + 5])
            ipend = min(ipend, end)
            proto = buf[p + 6]
            l4 = p + 40
            family = socket.AF_INET6
            addr_off, addr_len = p + 8, 16
            frag_info: tuple[int, bool, bytes] | None = None
            for _ in range(MAX_IPV6_EXTENSIONS):
                if proto in IPV6_EXTENSIONS:
                    if l4 + 8 > ipend:
                        self._malformed("ipv6")
                        return
                    proto, l4 = buf[l4], l4 + ((buf[l4 + 1] + 1) << 3)
                elif proto == IPV6_FRAGMENT:
                    if l4 + 8 > ipend:
                        self._malformed("ipv6")
                        return
                    offset_flags = (buf[l4 + 2] << 8) | buf[l4 + 3]
                    frag_info = (offset_flags & 0xFFF8, bool(offset_flags & 1), buf[l4 + 4 : l4 + 8])
                    proto, l4 = buf[l4], l4 + 8
                elif proto == IPV6_AH:
                    if l4 + 8 > ipend:
                        self._malformed("ipv6")
                        return
                    proto, l4 = buf[l4], l4 + ((buf[l4 + 1] + 2) << 2)
                else:
                    break
            if l4 > ipend:
                self._malformed("ipv6")
                return
            if frag_info is not None:
                offset, more, ident = frag_info
                if offset == 0 and not more:
                    pass  # an atomic fragment (RFC 6946): nothing to wait for
                else:
                    key = buf[p + 8 : p + 40] + ident + bytes((proto,))
                    whole = self.defrag.add(key, ts, offset, more, buf[l4:ipend])
                    self.stats.fragments += 1
                    if whole is None:
                        return
                    header = buf[p + 8 : p + 40]
                    buf, l4, ipend = header + whole, 32, 32 + len(whole)
                    addr_off = 0
        else:
            return

        self.transport(ts, buf, family, addr_off, addr_len, src_mac, dst_mac, vlan, proto, l4, ipend)

    def transport(
        self,
        ts: float,
        buf: Frames,
        family: int,
        addr_off: int,
        addr_len: int,
        src_mac: bytes | None,
        dst_mac: bytes | None,
        vlan: int | None,
        proto: int,
        l4: int,
        ipend: int,
    ) -> None:
        """Dispatch a TCP or UDP segment whose network header was read (``l4`` is where it starts)."""
        if proto == PROTO_TCP:
            if l4 + 20 > ipend:
                self._malformed("tcp")
                return
            pl = l4 + ((buf[l4 + 12] >> 4) << 2)
            if pl >= ipend:
                return  # no payload: SYN, ACK, FIN…
            sport = (buf[l4] << 8) | buf[l4 + 1]
            dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
            b0 = buf[pl]
            parser: StreamParser | None = None
            name = ""
            if b0 == 0x16:
                if pl + 6 <= ipend and buf[pl + 1] == 0x03 and buf[pl + 5] == 0x01:
                    parser, name = tls.observe, "tls"
            elif b0 in _HTTP_METHOD_INITIALS:
                if b0 == 0x48 and buf[pl : pl + 7] == b"HTTP/1.":  # "H": a response, or HEAD
                    parser, name = http.observe_response, "http"
                elif http.is_request_start(buf[pl : pl + 16]):
                    parser, name = http.observe_request, "http"
            elif b0 == 0x0B:
                if hl7.is_mllp_start(buf[pl : pl + 8]):
                    parser, name = hl7.observe, "hl7"
            elif b0 in (0x01, 0x02) and dicom.is_pdu_start(buf[pl : pl + 12]):
                parser, name = dicom.observe, "dicom"
            if parser is None and (sport in TCP_NAME_PORTS or dport in TCP_NAME_PORTS):
                parser, name = TCP_NAME_PORTS.get(dport) or TCP_NAME_PORTS[sport]
            ports = (sport << 16) | dport
            if parser is None:
                if ports in self.streams.port_pairs:
                    key = buf[addr_off : addr_off + 2 * addr_len] + buf[l4 : l4 + 4]
                    stream = self.streams.streams.get(key)
                    if stream is not None:
                        seq = int.from_bytes(buf[l4 + 4 : l4 + 8], "big")
                        self._continue_stream(key, ports, stream, seq, ts, buf[pl:ipend])
                return
            key = buf[addr_off : addr_off + 2 * addr_len] + buf[l4 : l4 + 4]
            if ports in self.streams.port_pairs:
                self.streams.close(key, ports)  # a new message restarts the stream
            ctx = self._context(ts, family, buf, addr_off, addr_len, src_mac, dst_mac, sport, dport, vlan)
            data = buf[pl:ipend]
            try:
                self._emit(parser(data, ctx))
            except Truncated:
                if len(data) < MAX_STREAM_BYTES:
                    seq = int.from_bytes(buf[l4 + 4 : l4 + 8], "big")
                    stream = Stream(parser, ctx, name, (seq + len(data)) & 0xFFFFFFFF, bytearray(data), ts)
                    self.streams.open(key, ports, stream)
                else:
                    self._malformed(name)
            except (ParseError, InvalidObservation):
                self._malformed(name)
            except Exception:
                if self.strict:
                    raise
                self._parser_error(name)
        elif proto == PROTO_UDP:
            if l4 + 8 > ipend:
                self._malformed("udp")
                return
            sport = (buf[l4] << 8) | buf[l4 + 1]
            dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
            ulen = (buf[l4 + 4] << 8) | buf[l4 + 5]
            pl = l4 + 8
            uend = l4 + ulen
            if ulen < 8:
                self._malformed("udp")
                return
            uend = min(uend, ipend)
            if pl >= uend:
                return
            handler = UDP_PORTS.get(dport) or UDP_PORTS.get(sport)
            if handler is None:
                b0 = buf[pl]
                if b0 & 0xC0 != 0xC0 or not quic.is_long_header_initial(buf[pl : pl + 64]):
                    return
                handler = ("quic", self.quic.observe)
            name, observe = handler
            ctx = self._context(ts, family, buf, addr_off, addr_len, src_mac, dst_mac, sport, dport, vlan)
            try:
                self._emit(observe(buf[pl:uend], ctx))
            except (ParseError, InvalidObservation):
                self._malformed(name)
            except Exception:
                if self.strict:
                    raise
                self._parser_error(name)

    def scan_pcap(self, buf: Frames, pos: int, limit: int, linktype: int, resolution: float) -> int:
        """Decode the complete little-endian pcap records in ``buf[pos:limit]``; return where the rest starts.

        The hot loop of file decoding. Most frames are bulk that can carry no Observation: one
        match of the compiled ``_BORING`` pattern (C speed, no object but the match) recognises
        them, and the loop moves on. Everything else goes through ``feed``.
        """
        feed = self.feed
        port_pairs = self.streams.port_pairs
        record_length = _RECORD_LENGTH.unpack_from
        record_time = _RECORD_TIME.unpack_from
        skipped = 0
        if _scan is not None and linktype == LINKTYPE_ETHERNET and self.accelerated:
            # The C loop skips boring frames by the same rule and stops at each frame to decode
            # (a decoded frame may open a stream, which changes what the next ones are).
            scan = _scan.scan_pcap
            transport = self.transport
            stats = self.stats
            partition = self.partition
            while True:
                pos, skipped_now, hit, l4 = scan(buf, pos, limit, port_pairs)
                skipped += skipped_now
                if hit < 0:
                    break
                caplen = record_length(buf, hit + 8)[0]
                if caplen > MAX_FRAME:
                    raise CaptureFormatError(f"corrupt pcap record (length {caplen})")
                sec, frac = record_time(buf, hit)
                frame = hit + 16
                pos = frame + caplen
                ip = l4 - 20
                total = (buf[ip + 2] << 8) | buf[ip + 3] if l4 else 0
                self.index = stats.packets + skipped
                if total < 20:  # not plain IPv4 TCP/UDP (or a bad length): the full path decides
                    feed(sec + frac * resolution, linktype, buf, frame, caplen)
                    continue
                # Plain IPv4 (the C loop checked Ethernet, one optional 802.1Q tag, IHL 5, no
                # fragment): go straight to the transport layer instead of re-reading headers.
                stats.packets += 1
                if partition is not None and not partition.owns(buf[ip + 12 : ip + 16], buf[ip + 16 : l4]):
                    continue
                vlan = ((buf[frame + 14] << 8) | buf[frame + 15]) & 0x0FFF if ip != frame + 14 else None
                transport(
                    sec + frac * resolution,
                    buf,
                    socket.AF_INET,
                    ip + 12,
                    4,
                    buf[frame + 6 : frame + 12],
                    buf[frame : frame + 6],
                    vlan,
                    buf[ip + 9],
                    l4,
                    ip + total if ip + total < pos else pos,
                )
            self.stats.packets += skipped
            return pos
        boring = _BORING.match if linktype == LINKTYPE_ETHERNET else _NEVER_BORING
        while True:
            frame = pos + 16
            if frame > limit:
                break
            caplen = record_length(buf, pos + 8)[0]
            if caplen > MAX_FRAME:
                raise CaptureFormatError(f"corrupt pcap record (length {caplen})")
            end = frame + caplen
            if end > limit:
                break
            if _skippable(boring(buf, frame, end), buf, port_pairs):
                skipped += 1
            else:
                sec, frac = record_time(buf, pos)
                self.index = self.stats.packets + skipped
                feed(sec + frac * resolution, linktype, buf, frame, caplen)
            pos = end
        self.stats.packets += skipped
        return pos

    def scan_pcapng(self, buf: Frames, pos: int, limit: int, reader: PcapngReader) -> int:
        """Decode the complete pcapng blocks in ``buf[pos:limit]``; return where the rest starts.

        ``scan_pcap`` for pcapng (what Wireshark and dumpcap write): in a little-endian section,
        the C loop skips the boring frames of Ethernet interfaces and stops at every other block,
        which ``reader`` reads (section and interface headers, the frames to decode, the format
        errors). Without the C loop, or in a big-endian section, the ``_BORING`` pattern skips
        boring Ethernet frames one by one.
        """
        feed = self.feed
        stats = self.stats
        port_pairs = self.streams.port_pairs
        read_block = reader.read_block
        scan = _scan.scan_pcapng if _scan is not None and self.accelerated else None
        boring = _BORING.match
        skipped = 0
        while True:
            fast = False
            if scan is not None and reader.order == "<":
                fast = True
                pos, skipped_now, hit, _l4 = scan(buf, pos, limit, port_pairs, reader.ethernet)
                skipped += skipped_now
                if hit < 0:
                    break
            if limit - pos < 12:
                break
            length, packet = read_block(buf, pos, limit)
            if pos + length > limit:
                break
            pos += length
            if packet is None:
                continue
            ts, linktype, _, frame, caplen = packet
            if (
                not fast
                and linktype == LINKTYPE_ETHERNET
                and _skippable(boring(buf, frame, frame + caplen), buf, port_pairs)
            ):
                skipped += 1
                continue
            self.index = stats.packets + skipped
            feed(ts, linktype, buf, frame, caplen)
        stats.packets += skipped
        return pos

    def flush(self) -> list[Observation]:
        """Hand over the observations decoded so far."""
        out, self.out = self.out, []
        if self.tags is not None:
            self.tags = []
        return out

    def flush_tagged(self) -> list[tuple[int, Observation]]:
        """Hand over the observations decoded so far with the number of the frame of each."""
        assert self.tags is not None, "only the decoder of a share numbers its frames"
        tagged = list(zip(self.tags, self.out, strict=True))
        self.out, self.tags = [], []
        return tagged

    # -- helpers (off the hot path: only packets that reach a parser get here) --------------------

    def _context(
        self,
        ts: float,
        family: int,
        buf: Frames,
        addr_off: int,
        addr_len: int,
        src_mac: bytes | None,
        dst_mac: bytes | None,
        sport: int,
        dport: int,
        vlan: int | None,
    ) -> PacketContext:
        if family == socket.AF_INET:
            # The same few thousand addresses and MACs come back packet after packet: their text
            # is looked up (``inet_ntop`` and ``hex`` cost more than the lookup). IPv4 text from
            # ``inet_ntop`` and MACs from ``hex(":")`` are canonical: the Endpoints need no check.
            names = self._names
            if len(names) >= _MAX_NAMES:
                names.clear()
            raw = buf[addr_off : addr_off + 4]
            src_ip = names.get(raw)
            if src_ip is None:
                src_ip = names[raw] = socket.inet_ntop(family, raw)
            raw = buf[addr_off + 4 : addr_off + 8]
            dst_ip = names.get(raw)
            if dst_ip is None:
                dst_ip = names[raw] = socket.inet_ntop(family, raw)
            src_text = dst_text = None
            if src_mac:  # as below: no MAC (None, or nothing left of the frame) is None
                src_text = names.get(src_mac)
                if src_text is None:
                    src_text = names[src_mac] = src_mac.hex(":")
            if dst_mac:
                dst_text = names.get(dst_mac)
                if dst_text is None:
                    dst_text = names[dst_mac] = dst_mac.hex(":")
            return PacketContext(
                ts,
                _tuple_new(Endpoint, (src_ip, src_text, sport)),
                _tuple_new(Endpoint, (dst_ip, dst_text, dport)),
                self.source,
                self.agent,
                vlan,
            )
        src_ip = socket.inet_ntop(family, buf[addr_off : addr_off + addr_len])
        dst_ip = socket.inet_ntop(family, buf[addr_off + addr_len : addr_off + 2 * addr_len])
        return PacketContext(
            ts,
            Endpoint.from_packet(src_ip, src_mac.hex(":") if src_mac else None, sport),
            Endpoint.from_packet(dst_ip, dst_mac.hex(":") if dst_mac else None, dport),
            self.source,
            self.agent,
            vlan,
        )

    def _continue_stream(
        self, key: bytes, ports: int, stream: Stream, seq: int, ts: float, payload: bytes
    ) -> None:
        if ts - stream.last_ts > STREAM_TIMEOUT:
            self.streams.close(key, ports)
            return
        stream.last_ts = ts
        if not self.streams.extend(stream, seq, payload):
            return
        try:
            self._emit(stream.parser(bytes(stream.data), stream.ctx))
        except Truncated:
            if len(stream.data) < MAX_STREAM_BYTES:
                return
            self._malformed(stream.protocol)
        except (ParseError, InvalidObservation):
            self._malformed(stream.protocol)
        except Exception:
            if self.strict:
                raise
            self._parser_error(stream.protocol)
        self.streams.close(key, ports)

    def _emit(self, observations: list[Observation]) -> None:
        if observations:
            if self.tags is not None:
                self.tags += [self.index] * len(observations)
            stats = self.stats
            stats.decoded += 1
            stats.observations += len(observations)
            per_kind = stats.per_kind
            for obs in observations:
                per_kind[obs.kind] += 1
            self.out += observations

    def _unowned_malformed(self, protocol: str) -> None:
        """A frame broken before its addresses could be read: one partition counts it."""
        if self.counts_unowned:
            self._malformed(protocol)

    def _malformed(self, protocol: str) -> None:
        self.stats.malformed += 1
        self.stats.malformed_by[protocol] += 1

    def _parser_error(self, protocol: str) -> None:
        self.stats.parser_errors += 1
        self.stats.malformed_by[protocol] += 1
        _QUIET.exception("unexpected error in the %s parser (packet skipped)", protocol)


def decode_stream(
    handle: BinaryIO,
    *,
    agent: str = "lanterne",
    source: str = "pcap",
    stats: DecodeStats | None = None,
    strict: bool = False,
    chunk_done: Callable[[int], None] | None = None,
) -> Iterator[Observation]:
    """Decode a pcap/pcapng stream, yielding Observations as they are found.

    ``chunk_done``: see ``decode_share`` (a file mapped in memory is not read: no progress else).
    """
    decoder = Decoder(agent=agent, source=source, stats=stats, strict=strict)
    for _ in _run(decoder, handle, chunk_done):
        yield from decoder.flush()


def decode_share(
    handle: BinaryIO,
    partition: Partition,
    *,
    agent: str = "lanterne",
    source: str = "pcap",
    stats: DecodeStats | None = None,
    strict: bool = False,
    chunk_done: Callable[[int], None] | None = None,
) -> Iterator[list[tuple[int, Observation]]]:
    """Decode one share of a pcap/pcapng stream: lists of (frame number, Observation), in order.

    Merged by frame number (``merge_shares``), the shares of a file give the Observations of
    ``decode_stream`` in its order, and their ``stats`` added up (``DecodeStats.add``) its counts.
    Every share reads and counts every frame (``packets``): the merged count takes one share's.
    ``chunk_done``: for a pcap file mapped in memory (see ``_run``), called with the bytes
    decoded so far before each next chunk, once every Observation before it was taken.
    """
    decoder = Decoder(agent=agent, source=source, stats=stats, strict=strict, partition=partition)
    for _ in _run(decoder, handle, chunk_done):
        yield decoder.flush_tagged()


def _run(
    decoder: Decoder, handle: BinaryIO, chunk_done: Callable[[int], None] | None = None
) -> Iterator[None]:
    """Decode ``handle``, pausing whenever ``decoder.out`` holds Observations.

    A regular file holding a little-endian pcap or a pcapng is mapped in memory and scanned
    where it lies: no chunk is copied (a sixth of the decoding time of a mostly-bulk capture).
    Anything else (a pipe, a file-like object) is read in chunks; a big-endian pcap, packet by
    packet.
    """
    mapped = _mapped(handle)
    if mapped is not None:
        with mapped:
            yield from _decode_mapped(decoder, mapped, chunk_done)
        decoder.stats.streams_evicted += decoder.streams.evicted
        return
    head = handle.read(24)
    try:
        if head[:4] in FAST_PCAP_MAGICS and len(head) == 24:
            yield from _decode_chunks(decoder, handle, _pcap_scan(decoder, head))
        elif head[:4] == PCAPNG_SHB:
            scan = partial(decoder.scan_pcapng, reader=PcapngReader())
            yield from _decode_chunks(decoder, _Prepend(head, handle), scan)
        else:
            feed = decoder.feed
            stats = decoder.stats
            for ts, linktype, buf, off, caplen in iter_packets(cast(BinaryIO, _Prepend(head, handle))):
                decoder.index = stats.packets
                feed(ts, linktype, buf, off, caplen)
                if decoder.out:
                    yield
    except CaptureTruncated:
        if decoder.counts_unowned:
            decoder.stats.truncated_files += 1
    decoder.stats.streams_evicted += decoder.streams.evicted


#: ``madvise(MADV_DONTNEED)`` where the platform has it (Linux): scanned pages are let go.
_DONTNEED: Final = getattr(mmap, "MADV_DONTNEED", 0) if hasattr(mmap.mmap, "madvise") else 0

#: Little-endian pcap (µs and ns): what libpcap writes on every common machine; read by the fast loop.
FAST_PCAP_MAGICS: Final = {b"\xd4\xc3\xb2\xa1": 1e-6, b"\x4d\x3c\xb2\xa1": 1e-9}


def _mapped(handle: BinaryIO) -> mmap.mmap | None:
    """``handle`` mapped read-only: a regular file (read from its start) of a fast-path pcap or a pcapng."""
    try:
        descriptor = handle.fileno()
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_size < 24 or handle.tell() != 0:
            return None
        mapped = mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if mapped[:4] not in FAST_PCAP_MAGICS and mapped[:4] != PCAPNG_SHB:
        mapped.close()
        return None
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    return mapped


def release_pages(mapped: mmap.mmap, start: int, end: int) -> None:
    """Drop the whole pages of ``mapped[start:end]`` from this process (a file's stay cached)."""
    if not _DONTNEED:
        return
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapped.madvise(_DONTNEED, first, last - first)


Scan = Callable[[Frames, int, int], int]
"""A scan loop over ``buf[pos:limit]`` (``Decoder.scan_pcap``...): returns where the incomplete rest is."""


def _pcap_scan(decoder: Decoder, head: Frames) -> Scan:
    """``decoder.scan_pcap`` for the little-endian pcap whose global header is ``head``."""
    resolution = FAST_PCAP_MAGICS[bytes(head[:4])]
    linktype = int.from_bytes(head[20:24], "little") & 0x03FFFFFF
    return partial(decoder.scan_pcap, linktype=linktype, resolution=resolution)


def _decode_mapped(
    decoder: Decoder, mapped: mmap.mmap, chunk_done: Callable[[int], None] | None
) -> Iterator[None]:
    """The scan loop over a mapped pcap or pcapng file, ``CHUNK_SIZE`` bytes at a time (records never split).

    The pages scanned are let go as the loop goes (they stay in the page cache): the process
    holds a chunk of the file at a time, as when it reads it.
    """
    if mapped[:4] == PCAPNG_SHB:
        scan: Scan = partial(decoder.scan_pcapng, reader=PcapngReader())
        pos = 0
    else:
        scan = _pcap_scan(decoder, mapped[:24])
        pos = 24
    size = len(mapped)
    while pos < size:
        if chunk_done is not None:
            chunk_done(pos)
        end = scan(mapped, pos, min(pos + CHUNK_SIZE, size))
        if decoder.out:
            yield
        if end == pos:  # not even one whole record before the end of the file
            if decoder.counts_unowned:
                decoder.stats.truncated_files += 1
            break
        release_pages(mapped, pos, end)
        pos = end
    if chunk_done is not None:
        chunk_done(size)


def _decode_chunks(decoder: Decoder, handle: BinaryIO | _Prepend, scan: Scan) -> Iterator[None]:
    """The scan loop over a stream read in chunks (past a pcap's global header; a pcapng from its start)."""
    tail = b""
    while True:
        chunk = handle.read(CHUNK_SIZE)
        if not chunk:
            break
        start = 0
        if tail:
            # Finish the record that straddles the chunk boundary on a small joined copy, rather
            # than copying the whole chunk behind the tail.
            joined = tail + chunk[: 2 * MAX_FRAME]
            pos = scan(joined, 0, len(joined))
            if pos >= len(tail):
                start = pos - len(tail)
            else:
                chunk = joined + chunk[2 * MAX_FRAME :]
        pos = scan(chunk, start, len(chunk))
        tail = chunk[pos:]
        if decoder.out:
            yield
    if tail:
        raise CaptureTruncated("capture ends inside a packet")


class _Prepend:
    """A read-only file that first returns bytes already read from another one."""

    __slots__ = ("_handle", "_head")

    def __init__(self, head: bytes, handle: BinaryIO) -> None:
        self._head = head
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        """Read like a file."""
        if self._head:
            if size < 0:
                data, self._head = self._head + self._handle.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._handle.read(size - len(data))
            return data
        return self._handle.read(size)


def decode_file(
    path: str | Path,
    *,
    agent: str = "lanterne",
    source: str = "pcap",
    stats: DecodeStats | None = None,
    strict: bool = False,
) -> Iterator[Observation]:
    """Decode a capture file (pcap or pcapng), yielding its Observations in capture order."""
    with open(path, "rb") as handle:
        yield from decode_stream(handle, agent=agent, source=source, stats=stats, strict=strict)


def decode_packets(
    frames: Iterable[tuple[float, bytes]], *, linktype: int = LINKTYPE_ETHERNET, strict: bool = True
) -> list[Observation]:
    """Decode in-memory frames (tests and probes): ``(ts, frame bytes)`` pairs of one link type."""
    decoder = Decoder(strict=strict)
    for ts, frame in frames:
        decoder.feed(ts, linktype, frame, 0, len(frame))
    return decoder.flush()


def merge_shares(*shares: Iterable[tuple[int, Observation]]) -> Iterator[Observation]:
    """The Observations of a file's shares (``decode_share``, flattened) in the file's order."""
    for _, observation in heapq.merge(*shares, key=_frame_number):
        yield observation


def _frame_number(item: tuple[int, Observation]) -> int:
    return item[0]
