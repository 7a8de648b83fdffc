"""Capture file readers: pcap (µs and ns) and pcapng (every section and interface), read in chunks.

The readers never copy a packet: they yield ``(ts, linktype, buf, offset, caplen)`` where ``buf`` is a
chunk of the file, so the decoder can throw away bulk packets after looking at a few bytes. Memory
stays bounded by the chunk size whatever the size of the file.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from typing import BinaryIO, Final

#: Bytes read at a time; a record larger than this is still read whole (the chunk grows for it).
CHUNK_SIZE: Final = 1 << 22
#: Largest packet record accepted; anything larger means the file is corrupt (pcap cannot resync).
MAX_RECORD: Final = 1 << 18

PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"

Frames = bytes | mmap.mmap
"""Where frames are read: a chunk of a capture, or the whole capture file mapped in memory."""
Packet = tuple[float, int, Frames, int, int]


class CaptureFormatError(ValueError):
    """The file is not a capture we can read, or its framing is corrupt past recovery."""


class CaptureTruncated(CaptureFormatError):
    """The file ends in the middle of a record (a capture cut short): what came before is good."""


class _Chunks:
    """A forward-only byte window over a file, refilled in large chunks."""

    __slots__ = ("buf", "eof", "handle", "pos")

    def __init__(self, handle: BinaryIO, first: bytes = b"") -> None:
        self.handle = handle
        self.buf = first
        self.pos = 0
        self.eof = False

    def ensure(self, size: int) -> bool:
        """Make ``size`` bytes available at ``pos``; False at end of file."""
        while len(self.buf) - self.pos < size:
            if self.eof:
                return False
            more = self.handle.read(max(CHUNK_SIZE, size))
            if not more:
                self.eof = True
                return False
            self.buf = self.buf[self.pos :] + more
            self.pos = 0
        return True


def sniff_format(head: bytes) -> str:
    """Return ``pcap`` or ``pcapng`` from the first four bytes of a file."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_SHB:
        return "pcapng"
    raise CaptureFormatError("not a pcap or pcapng file (unknown magic number)")


def iter_packets(handle: BinaryIO) -> Iterator[Packet]:
    """Yield every packet of a pcap or pcapng stream as ``(ts, linktype, buf, offset, caplen)``."""
    head = handle.read(4)
    if len(head) < 4:
        raise CaptureFormatError("file too short to be a capture")
    if sniff_format(head) == "pcap":
        yield from _iter_pcap(_Chunks(handle, head))
    else:
        yield from _iter_pcapng(_Chunks(handle, head))


def _iter_pcap(chunks: _Chunks) -> Iterator[Packet]:
    if not chunks.ensure(24):
        raise CaptureFormatError("pcap global header is truncated")
    order, resolution = PCAP_MAGICS[chunks.buf[0:4]]
    # The upper bits carry the FCS length (libpcap LT_LINKTYPE keeps the low 26 bits).
    linktype = struct.unpack_from(order + "I", chunks.buf, 20)[0] & 0x03FFFFFF
    chunks.pos = 24
    record = struct.Struct(order + "IIII")
    unpack = record.unpack_from
    while True:
        buf = chunks.buf
        pos = chunks.pos
        if len(buf) - pos < 16:
            if not chunks.ensure(16):
                if len(chunks.buf) - chunks.pos:
                    raise CaptureTruncated("capture ends inside a record header")
                return
            buf, pos = chunks.buf, chunks.pos
        sec, frac, caplen, _origlen = unpack(buf, pos)
        if caplen > MAX_RECORD:
            raise CaptureFormatError(f"corrupt record: length {caplen} at file offset ~{pos}")
        end = pos + 16 + caplen
        if end > len(buf):
            if not chunks.ensure(16 + caplen):
                raise CaptureTruncated("capture ends inside a packet")
            buf, pos = chunks.buf, chunks.pos
            end = pos + 16 + caplen
        chunks.pos = end
        yield sec + frac * resolution, linktype, buf, pos + 16, caplen


def _tsresol(options: bytes, order: str) -> float:
    """Read if_tsresol (option 9) from an Interface Description Block's options; default µs."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = options[pos + 4]
            exponent = value & 0x7F
            return float(2.0**-exponent if value & 0x80 else 10.0**-exponent)
        pos += 4 + ((length + 3) & ~3)
    return 1e-6


def _iter_pcapng(chunks: _Chunks) -> Iterator[Packet]:
    reader = PcapngReader()
    while True:
        if not chunks.ensure(12):
            if len(chunks.buf) - chunks.pos:
                raise CaptureTruncated("capture ends inside a block header")
            return
        length, packet = reader.read_block(chunks.buf, chunks.pos, len(chunks.buf))
        if chunks.pos + length > len(chunks.buf):
            if not chunks.ensure(length):
                raise CaptureTruncated("capture ends inside a block")
            length, packet = reader.read_block(chunks.buf, chunks.pos, len(chunks.buf))
        chunks.pos += length
        if packet is not None:
            yield packet


#: The shortest well-formed block of each type that carries fixed fields (type and length, the
#: fields, the length again): a shorter one would have its fields read from the next block.
_SHORTEST_BLOCK: Final = {1: 20, 2: 32, 3: 16, 6: 32}
#: Link type of Ethernet frames (the only ones the scan loops may skip without decoding).
_ETHERNET: Final = 1


class PcapngReader:
    """The blocks of a pcapng stream, one at a time: the state a section carries between them.

    A section header sets the byte order and starts a new list of interfaces; each interface
    description adds one (its link type and time resolution); packet blocks name theirs.
    ``ethernet`` holds, per interface of the current section, 1 when it is Ethernet: the C scan
    loop (``collectors._scan.scan_pcapng``) skips boring frames of those interfaces only.
    """

    __slots__ = ("ethernet", "interfaces", "order")

    def __init__(self) -> None:
        self.order = "<"
        self.interfaces: list[tuple[int, float]] = []
        self.ethernet = b""

    def read_block(self, buf: Frames, pos: int, limit: int) -> tuple[int, Packet | None]:
        """Read the block at ``pos`` (12 bytes at least before ``limit``): its length, and its packet if any.

        When ``pos + length > limit`` the block is not complete yet: only its header was read
        (read it again with more data). Raises ``CaptureFormatError`` for a corrupt block.
        """
        if buf[pos : pos + 4] == PCAPNG_SHB:
            magic = buf[pos + 8 : pos + 12]
            if magic == b"\x4d\x3c\x2b\x1a":
                self.order = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                self.order = ">"
            else:
                raise CaptureFormatError("pcapng section header with a bad byte-order magic")
            self.interfaces = []  # a new section starts a new interface list
            self.ethernet = b""
        order = self.order
        block_type, block_len = struct.unpack_from(order + "II", buf, pos)
        if block_len < 12 or block_len % 4 or block_len > MAX_RECORD + 64:
            raise CaptureFormatError(f"corrupt pcapng block length {block_len}")
        if pos + block_len > limit:
            return block_len, None
        if block_len < _SHORTEST_BLOCK.get(block_type, 12):
            raise CaptureFormatError(f"pcapng block of type {block_type} too short ({block_len} bytes)")
        body = pos + 8
        interfaces = self.interfaces
        if block_type == 6:  # Enhanced Packet Block
            iface, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(order + "IIIII", buf, body)
            if iface >= len(interfaces) or caplen > block_len - 32:
                raise CaptureFormatError("enhanced packet block refers to an unknown interface or overflows")
            linktype, resolution = interfaces[iface]
            return block_len, (((ts_hi << 32) | ts_lo) * resolution, linktype, buf, body + 20, caplen)
        if block_type == 3:  # Simple Packet Block: interface 0, no timestamp
            if not interfaces:
                raise CaptureFormatError("simple packet block before any interface")
            (orig,) = struct.unpack_from(order + "I", buf, body)
            return block_len, (0.0, interfaces[0][0], buf, body + 4, min(orig, block_len - 16))
        if block_type == 2:  # obsolete Packet Block
            iface, _drops, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(order + "HHIIII", buf, body)
            if iface >= len(interfaces) or caplen > block_len - 32:
                raise CaptureFormatError("packet block refers to an unknown interface or overflows")
            linktype, resolution = interfaces[iface]
            return block_len, (((ts_hi << 32) | ts_lo) * resolution, linktype, buf, body + 20, caplen)
        if block_type == 1:  # Interface Description Block
            linktype = struct.unpack_from(order + "H", buf, body)[0]
            options = bytes(buf[body + 8 : pos + block_len - 4])
            interfaces.append((linktype, _tsresol(options, order)))
            self.ethernet += b"\x01" if linktype == _ETHERNET else b"\x00"
        # every other block (name resolution, statistics, custom…) is skipped by its length
        return block_len, None
