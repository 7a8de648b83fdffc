"""NetBIOS Name Service (RFC 1001/1002, UDP 137): the names a Windows-style host claims or seeks.

Each question name and each resource-record name becomes an ``nbns.name`` Observation whose value
is tshark's display form ``NAME<XX>`` (15 characters with trailing spaces stripped, bytes outside
printable ASCII shown as ``<xx>``, then the suffix byte, then ``.scope`` if any), so that
``WORKSTATION<00>`` and ``WORKGROUP<1d>`` read the same here as in Wireshark.

The message is DNS-shaped: the DNS name reader (with its loop guards) is reused. Names that are
not a valid first-level encoding (32 letters ``A``-``P``) are skipped, not fatal; the structure
follows the same policy as DNS: the header and first record must parse, later broken records
end the message quietly.
"""

from __future__ import annotations

import struct
from typing import Final

from collectors._context import PacketContext
from collectors._errors import MalformedPacket
from collectors._observation import AttrValue, Kind, Observation
from collectors.dns import read_name

__all__ = ["decode_name", "observe"]

_HEADER: Final = struct.Struct(">HHHHHH")
_RRFIXED: Final = struct.Struct(">HHIH")

T_NB: Final = 0x20
T_NBSTAT: Final = 0x21

_OPCODES: Final = {
    0: "query",
    5: "registration",
    6: "release",
    7: "wack",
    8: "refresh",
    9: "refresh",
    15: "multihomed_registration",
}
#: Addresses kept per name (a multi-homed host lists a few; a hostile packet could list 10k).
MAX_ADDRESSES: Final = 64
#: Distinct names reported per packet.
MAX_NAMES: Final = 64

# Byte -> how tshark shows it inside a NetBIOS name: printable ASCII as is, else <xx>.
_NB_CHAR: Final = tuple(chr(b) if 0x20 <= b <= 0x7E else f"<{b:02x}>" for b in range(256))
_A: Final = ord("A")


def decode_name(encoded: str) -> tuple[str, int] | None:
    """Return the display name (``NAME<XX>[.scope]``) and suffix of an encoded name, or None.

    ``encoded`` is the name as the DNS reader returns it: 32 letters ``A``-``P`` (two per byte
    of the 16-byte NetBIOS name), then ``.scope`` if any.
    """
    if len(encoded) < 32 or (len(encoded) > 32 and encoded[32] != "."):
        return None
    raw = bytearray(16)
    for i in range(16):
        high = ord(encoded[2 * i]) - _A
        low = ord(encoded[2 * i + 1]) - _A
        if not (0 <= high < 16 and 0 <= low < 16):
            return None
        raw[i] = (high << 4) | low
    suffix = raw[15]
    text = "".join([_NB_CHAR[b] for b in raw[:15]]).rstrip(" ") + f"<{suffix:02x}>" + encoded[32:]
    return text, suffix


def observe(payload: bytes, ctx: PacketContext) -> list[Observation]:
    """Observations of one NBNS datagram: one per distinct name, with addresses from NB records."""
    if len(payload) < 12:
        raise MalformedPacket("NBNS message shorter than its header")
    _ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(payload)
    opcode = (flags >> 11) & 0xF
    response = bool(flags & 0x8000)
    end = len(payload)
    # name -> (suffix, addresses); insertion order = first seen.
    names: dict[str, tuple[int, list[str]]] = {}
    pos = 12
    parsed = 0
    try:
        for _ in range(qdcount):
            encoded, pos = read_name(payload, pos)
            if pos + 4 > end:
                raise MalformedPacket("NBNS question cut short")
            pos += 4
            parsed += 1
            decoded = decode_name(encoded)
            if decoded is not None and len(names) < MAX_NAMES:
                names.setdefault(decoded[0], (decoded[1], []))
        for _ in range(ancount + nscount + arcount):
            encoded, pos = read_name(payload, pos)
            if pos + 10 > end:
                raise MalformedPacket("NBNS record header cut short")
            rtype, _rclass, _ttl, rdlength = _RRFIXED.unpack_from(payload, pos)
            pos += 10
            stop = pos + rdlength
            if stop > end:
                raise MalformedPacket("NBNS record data cut short")
            parsed += 1
            decoded = decode_name(encoded)
            if decoded is not None and (decoded[0] in names or len(names) < MAX_NAMES):
                addresses = names.setdefault(decoded[0], (decoded[1], []))[1]
                # NB data is (flags, IPv4) pairs; a WACK's data is only flags, no address.
                if rtype == T_NB and opcode != 7:
                    for at in range(pos + 2, stop - 3, 6):
                        if len(addresses) >= MAX_ADDRESSES:
                            break
                        ip = "%d.%d.%d.%d" % tuple(payload[at : at + 4])  # noqa: UP031 - fast path
                        if ip not in addresses:
                            addresses.append(ip)
            pos = stop
    except MalformedPacket:
        if not parsed:
            raise
    opname = _OPCODES.get(opcode) or f"opcode{opcode}"
    out: list[Observation] = []
    for name, (suffix, addresses) in names.items():
        attrs: dict[str, AttrValue] = {"suffix": suffix, "opcode": opname}
        if response:
            attrs["answer"] = True
        if addresses:
            attrs["addresses"] = tuple(addresses)
        out.append(ctx.observation(Kind.NBNS_NAME, name, attrs))
    return out
