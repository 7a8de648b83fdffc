"""Writers for small pcap and pcapng files, so tests can build captures byte by byte."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence


def pcap_bytes(
    frames: Iterable[tuple[float, bytes]],
    *,
    linktype: int = 1,
    big_endian: bool = False,
    nanoseconds: bool = False,
) -> bytes:
    """A classic pcap file holding ``(timestamp, frame)`` records."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    scale = 1_000_000_000 if nanoseconds else 1_000_000
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
    for ts, frame in frames:
        sec = int(ts)
        frac = round((ts - sec) * scale)
        out += struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame
    return bytes(out)


def _block(block_type: int, body: bytes, order: str = "<") -> bytes:
    body = body + b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def pcapng_section(
    interfaces: Sequence[tuple[int, int | None]],
    packets: Iterable[tuple[int, float, bytes]],
    *,
    big_endian: bool = False,
) -> bytes:
    """One pcapng section: interfaces ``(linktype, tsresol option or None)`` and ``(iface, ts, frame)``."""
    order = ">" if big_endian else "<"
    out = bytearray(_block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order))
    resolutions = []
    for linktype, tsresol in interfaces:
        options = b""
        if tsresol is not None:
            options = (
                struct.pack(order + "HH", 9, 1)
                + bytes((tsresol,))
                + b"\0\0\0"
                + struct.pack(order + "HH", 0, 0)
            )
        out += _block(1, struct.pack(order + "HHI", linktype, 0, 262144) + options, order)
        exponent = 6 if tsresol is None else tsresol & 0x7F
        resolutions.append(2**exponent if tsresol is not None and tsresol & 0x80 else 10**exponent)
    for iface, ts, frame in packets:
        units = round(ts * resolutions[iface])
        header = struct.pack(order + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
        out += _block(6, header + frame, order)
    return bytes(out)
