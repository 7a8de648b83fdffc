"""SNMP v1/v2c/v3 (UDP 161/162): a lean BER reader and sysDescr / sysObjectID / sysName observations.

Whom an observation is about: the agent. A GetResponse, a trap, an inform or a report is sent by
the agent (the managed device), so ``src`` is the packet's source, which is the device that
announced itself (DESIGN §3). Requests carry no device data and give nothing.

The community string is read past and never kept: it is a password. SNMPv3 messages are parsed
through their header; a plaintext scoped PDU (noAuthNoPriv or authNoPriv) is read like v2c, an
encrypted one (authPriv) is opaque and gives nothing. The v3 user name is never kept either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Final, TypeAlias

from collectors._context import PacketContext
from collectors._errors import MalformedPacket
from collectors._observation import Kind, Observation

__all__ = [
    "PDU_NAMES",
    "SYS_DESCR",
    "SYS_NAME",
    "SYS_OBJECT_ID",
    "SnmpMessage",
    "SnmpValue",
    "VarBindError",
    "decode_oid",
    "observe",
    "parse",
]

SYS_DESCR: Final = "1.3.6.1.2.1.1.1.0"
SYS_OBJECT_ID: Final = "1.3.6.1.2.1.1.2.0"
SYS_NAME: Final = "1.3.6.1.2.1.1.5.0"

_SEQUENCE: Final = 0x30
_INTEGER: Final = 0x02
_OCTET_STRING: Final = 0x04
_NULL: Final = 0x05
_OID: Final = 0x06
_IP_ADDRESS: Final = 0x40
#: Counter32, Gauge32 (Unsigned32), TimeTicks, Counter64 and the old UInteger32: unsigned integers.
_UNSIGNED: Final = frozenset({0x41, 0x42, 0x43, 0x46, 0x47})
_OPAQUE: Final = 0x44
_TIMETICKS: Final = 0x43

#: Context-specific constructed PDU tags (RFC 1157, RFC 3416).
PDU_NAMES: Final = {
    0xA0: "get-request",
    0xA1: "get-next-request",
    0xA2: "get-response",
    0xA3: "set-request",
    0xA4: "trap",
    0xA5: "get-bulk-request",
    0xA6: "inform-request",
    0xA7: "snmpV2-trap",
    0xA8: "report",
}
_V1_TRAP: Final = 0xA4
#: PDUs sent by the agent about itself: the only ones whose varbinds describe the device.
_FROM_AGENT: Final = frozenset({0xA2, 0xA4, 0xA6, 0xA7, 0xA8})
_VERSIONS: Final = {0: "v1", 1: "v2c", 3: "v3"}
_V3: Final = 3
_PRIV_FLAG: Final = 0x02

#: A length of more than four bytes would describe more than a datagram can hold.
_MAX_LENGTH_BYTES: Final = 4
#: Longest INTEGER accepted: Counter64 needs 9 bytes (a leading zero keeps it positive).
_MAX_INT_BYTES: Final = 9
#: RFC 2578 §3.5: at most 128 sub-identifiers, each below 2**32.
_MAX_SUBIDS: Final = 128
_MAX_SUBID: Final = 0xFFFFFFFF
#: The first sub-identifier packs two arcs (2.x adds 80), so it may reach 80 past the limit.
_MAX_PACKED: Final = _MAX_SUBID + 80
_MAX_TEXT: Final = 1024


class VarBindError(StrEnum):
    """The v2 exception values a varbind may carry instead of a value (RFC 3416 §3)."""

    NO_SUCH_OBJECT = "noSuchObject"
    NO_SUCH_INSTANCE = "noSuchInstance"
    END_OF_MIB_VIEW = "endOfMibView"


_EXCEPTIONS: Final = {
    0x80: VarBindError.NO_SUCH_OBJECT,
    0x81: VarBindError.NO_SUCH_INSTANCE,
    0x82: VarBindError.END_OF_MIB_VIEW,
}

#: A decoded varbind value: INTEGER and unsigned types as int, OCTET STRING and Opaque as bytes,
#: OBJECT IDENTIFIER and IpAddress as text, NULL as None, a v2 exception as VarBindError.
SnmpValue: TypeAlias = int | bytes | str | VarBindError | None


@dataclass(frozen=True, slots=True)
class SnmpMessage:
    """One SNMP message, without its community or v3 security parameters (never kept)."""

    version: int
    """0 for v1, 1 for v2c, 3 for v3 (the wire value)."""
    pdu_type: int | None
    """The PDU tag (0xA0..0xA8, names in PDU_NAMES); None when a v3 PDU is encrypted."""
    request_id: int | None = None
    """The request id; None for a v1 trap (which has none) or an encrypted v3 PDU."""
    error_status: int = 0
    error_index: int = 0
    varbinds: list[tuple[str, SnmpValue]] = field(default_factory=list)
    """(OID as dotted text, value) in message order."""

    @property
    def encrypted(self) -> bool:
        """Tell whether the PDU is an opaque (privacy-protected) v3 PDU."""
        return self.pdu_type is None


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one TLV header at ``pos``: return (tag, start of value, end of value)."""
    if pos + 2 > end:
        raise MalformedPacket("SNMP element cut short")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise MalformedPacket("SNMP uses no high-tag-number form")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0:
            raise MalformedPacket("SNMP forbids the indefinite length form")
        if count > _MAX_LENGTH_BYTES or pos + count > end:
            raise MalformedPacket("SNMP length field too long")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    stop = pos + length
    if stop > end:
        raise MalformedPacket("SNMP element longer than its container")
    return tag, pos, stop


def _expect(data: bytes, pos: int, end: int, want: int, what: str) -> tuple[int, int]:
    tag, start, stop = _header(data, pos, end)
    if tag != want:
        raise MalformedPacket(f"SNMP {what} has an unexpected type")
    return start, stop


def _integer(data: bytes, start: int, stop: int, *, signed: bool = True) -> int:
    size = stop - start
    if size == 0 or size > _MAX_INT_BYTES:
        raise MalformedPacket("SNMP integer of a bad size")
    return int.from_bytes(data[start:stop], "big", signed=signed)


@lru_cache(maxsize=4096)  # the same few OIDs recur in every walk and poll
def decode_oid(raw: bytes) -> str:
    """Decode the contents of a BER OBJECT IDENTIFIER as dotted text; raise MalformedPacket if invalid."""
    if not raw:
        raise MalformedPacket("SNMP OID is empty")
    if max(raw) < 0x80:
        # Every sub-identifier fits one byte (the common case): no loop in Python.
        if len(raw) >= _MAX_SUBIDS:
            raise MalformedPacket("SNMP OID has more than 128 sub-identifiers")
        first = min(raw[0] // 40, 2)
        head = f"{first}.{raw[0] - first * 40}"
        return f"{head}.{'.'.join(map(str, raw[1:]))}" if len(raw) > 1 else head
    if raw[-1] & 0x80:
        raise MalformedPacket("SNMP OID ends inside a sub-identifier")
    subids: list[int] = []
    value = 0
    # One step per byte: bounded by the OID length (itself bounded by the datagram).
    for byte in raw:
        if byte == 0x80 and value == 0:
            raise MalformedPacket("SNMP OID sub-identifier is not minimally encoded")
        value = (value << 7) | (byte & 0x7F)
        if value > _MAX_PACKED:
            raise MalformedPacket("SNMP OID sub-identifier exceeds 32 bits")
        if byte & 0x80:
            continue
        if subids:
            if value > _MAX_SUBID:
                raise MalformedPacket("SNMP OID sub-identifier exceeds 32 bits")
            subids.append(value)
            if len(subids) > _MAX_SUBIDS:
                raise MalformedPacket("SNMP OID has more than 128 sub-identifiers")
        else:
            # The first sub-identifier packs the first two arcs (X.690 §8.19.4).
            first = min(value // 40, 2)
            subids += (first, value - first * 40)
        value = 0
    return ".".join(map(str, subids))


def _value(data: bytes, tag: int, start: int, stop: int) -> SnmpValue:
    if tag in (_OCTET_STRING, _OPAQUE):
        return data[start:stop]
    if tag == _INTEGER:
        return _integer(data, start, stop)
    if tag == _OID:
        return decode_oid(data[start:stop])
    if tag in _UNSIGNED:
        return _integer(data, start, stop, signed=False)
    if tag == _NULL:
        return None
    if tag == _IP_ADDRESS:
        if stop - start != 4:
            raise MalformedPacket("SNMP IpAddress is not four bytes")
        return ".".join(map(str, data[start:stop]))
    exception = _EXCEPTIONS.get(tag)
    if exception is not None:
        return exception
    return data[start:stop]  # an unknown application type: kept raw, never interpreted


def _varbinds(data: bytes, pos: int, end: int) -> list[tuple[str, SnmpValue]]:
    start, stop = _expect(data, pos, end, _SEQUENCE, "varbind list")
    out: list[tuple[str, SnmpValue]] = []
    pos = start
    # Each varbind consumes at least six bytes: the loop is bounded by the datagram.
    while pos < stop:
        if pos + 4 <= stop and data[pos] == _SEQUENCE and data[pos + 2] == _OID:
            bind_size = data[pos + 1]
            oid_size = data[pos + 3]
            if bind_size < 0x80 and oid_size < 0x80:
                # Short-form varbind and name (nearly all of them): read inline, no helper calls.
                bind_stop = pos + 2 + bind_size
                oid_stop = pos + 4 + oid_size
                if bind_stop > stop or oid_stop > bind_stop:
                    raise MalformedPacket("SNMP element longer than its container")
                tag, value_start, value_stop = _header(data, oid_stop, bind_stop)
                out.append((decode_oid(data[pos + 4 : oid_stop]), _value(data, tag, value_start, value_stop)))
                pos = bind_stop
                continue
        bind_start, bind_stop = _expect(data, pos, stop, _SEQUENCE, "varbind")
        oid_start, oid_stop = _expect(data, bind_start, bind_stop, _OID, "varbind name")
        tag, value_start, value_stop = _header(data, oid_stop, bind_stop)
        out.append((decode_oid(data[oid_start:oid_stop]), _value(data, tag, value_start, value_stop)))
        pos = bind_stop
    return out


def _pdu(data: bytes, pos: int, end: int, version: int) -> SnmpMessage:
    tag, start, stop = _header(data, pos, end)
    if tag not in PDU_NAMES:
        raise MalformedPacket("SNMP PDU of an unknown type")
    if tag == _V1_TRAP:
        # Trap-PDU (RFC 1157): enterprise, agent-addr, generic-trap, specific-trap, time-stamp.
        pos = _expect(data, start, stop, _OID, "trap enterprise")[1]
        pos = _expect(data, pos, stop, _IP_ADDRESS, "trap agent address")[1]
        pos = _expect(data, pos, stop, _INTEGER, "generic trap")[1]
        pos = _expect(data, pos, stop, _INTEGER, "specific trap")[1]
        pos = _expect(data, pos, stop, _TIMETICKS, "trap time stamp")[1]
        return SnmpMessage(version, tag, None, 0, 0, _varbinds(data, pos, stop))
    id_start, id_stop = _expect(data, start, stop, _INTEGER, "request id")
    status_start, status_stop = _expect(data, id_stop, stop, _INTEGER, "error status")
    index_start, index_stop = _expect(data, status_stop, stop, _INTEGER, "error index")
    return SnmpMessage(
        version,
        tag,
        _integer(data, id_start, id_stop),
        _integer(data, status_start, status_stop),
        _integer(data, index_start, index_stop),
        _varbinds(data, index_stop, stop),
    )


def _v3(data: bytes, pos: int, end: int) -> SnmpMessage:
    # msgGlobalData: msgID, msgMaxSize, msgFlags (one octet), msgSecurityModel.
    start, stop = _expect(data, pos, end, _SEQUENCE, "v3 header")
    inner = _expect(data, start, stop, _INTEGER, "v3 message id")[1]
    inner = _expect(data, inner, stop, _INTEGER, "v3 max size")[1]
    flags_start, inner = _expect(data, inner, stop, _OCTET_STRING, "v3 flags")
    if inner - flags_start != 1:
        raise MalformedPacket("SNMP v3 flags are not one octet")
    flags = data[flags_start]
    _expect(data, inner, stop, _INTEGER, "v3 security model")
    # msgSecurityParameters (engine id, user name, auth and priv parameters) are skipped whole.
    pos = _expect(data, stop, end, _OCTET_STRING, "v3 security parameters")[1]
    tag, start, stop = _header(data, pos, end)
    if tag == _OCTET_STRING:
        if not flags & _PRIV_FLAG:
            raise MalformedPacket("SNMP v3 PDU encrypted without the privacy flag")
        return SnmpMessage(_V3, None)
    if tag != _SEQUENCE:
        raise MalformedPacket("SNMP v3 scoped PDU has an unexpected type")
    # ScopedPDU: contextEngineID, contextName, then the PDU itself.
    pos = _expect(data, start, stop, _OCTET_STRING, "v3 context engine id")[1]
    pos = _expect(data, pos, stop, _OCTET_STRING, "v3 context name")[1]
    return _pdu(data, pos, stop, _V3)


def parse(payload: bytes) -> SnmpMessage:
    """Decode one SNMP message (v1, v2c, v3); raise MalformedPacket on anything that breaks BER/SNMP."""
    data = payload
    start, stop = _expect(data, 0, len(data), _SEQUENCE, "message")
    version_start, pos = _expect(data, start, stop, _INTEGER, "version")
    version = _integer(data, version_start, pos)
    if version not in _VERSIONS:
        raise MalformedPacket("SNMP version is not 1, 2c or 3")
    if version == _V3:
        return _v3(data, pos, stop)
    # The community is skipped here and never leaves this function.
    pos = _expect(data, pos, stop, _OCTET_STRING, "community")[1]
    return _pdu(data, pos, stop, version)


def _text(raw: bytes) -> str:
    return raw[:_MAX_TEXT].decode("utf-8", "replace").strip().strip("\x00").strip()


def observe(payload: bytes, ctx: PacketContext) -> list[Observation]:
    """Return sysDescr / sysObjectID / sysName observations of the agent sending this message."""
    message = parse(payload)
    pdu = message.pdu_type
    if pdu is None or pdu not in _FROM_AGENT:
        return []
    out: list[Observation] = []
    attrs = None
    for oid, value in message.varbinds:
        if oid == SYS_DESCR and isinstance(value, bytes):
            kind, text = Kind.SNMP_SYSDESCR, _text(value)
        elif oid == SYS_NAME and isinstance(value, bytes):
            kind, text = Kind.SNMP_SYSNAME, _text(value)
        elif oid == SYS_OBJECT_ID and isinstance(value, str) and not isinstance(value, VarBindError):
            kind, text = Kind.SNMP_SYSOBJECTID, value
        else:
            continue
        if not text:
            continue
        if attrs is None:
            attrs = {"version": _VERSIONS[message.version], "pdu": PDU_NAMES[pdu]}
        # The sender of an agent PDU is the device: src stays the packet's source (no reverse).
        out.append(ctx.observation(kind, text, attrs))
    return out
