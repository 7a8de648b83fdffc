"""HL7 v2 over MLLP: the MSH segment of a message, and nothing past it.

A message's other segments carry the patient (PID: name, birth date, identifiers): they are
never decoded, not even scanned. Only the bytes up to the first segment terminator are read.
"""

from __future__ import annotations

from typing import Final

from collectors._context import PacketContext
from collectors._errors import MalformedPacket, Truncated
from collectors._observation import Kind, Observation

#: MLLP start block, then the MSH segment's name.
_START: Final = b"\x0bMSH"
#: An MSH segment longer than this is not an MSH segment (they are ~100-300 bytes).
MAX_MSH_BYTES: Final = 4 * 1024
#: Bytes that can end the MSH segment: CR (the standard), LF (some interfaces), the MLLP end block.
_TERMINATORS: Final = (b"\r", b"\n", b"\x1c")


def is_mllp_start(data: bytes) -> bool:
    """Tell whether ``data`` starts an MLLP frame holding an HL7 v2 message (0x0B then ``MSH``)."""
    return data[:4] == _START


def _msh_end(data: bytes) -> int:
    """Return the offset of the MSH segment terminator, or raise Truncated/MalformedPacket."""
    limit = min(len(data), MAX_MSH_BYTES + 1)
    end = -1
    for terminator in _TERMINATORS:
        # From 5: byte 4 is MSH-1, the field separator, checked by the caller.
        pos = data.find(terminator, 5, limit if end < 0 else end)
        if pos >= 0:
            end = pos
    if end >= 0:
        return end
    if len(data) > MAX_MSH_BYTES:
        raise MalformedPacket("HL7 MSH segment longer than its cap")
    raise Truncated("HL7 MSH segment not complete")


def _text(raw: bytes) -> str:
    """Decode MSH text: UTF-8 when it is, else ISO-8859-1 (the usual MSH-18 of European sites)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _field(fields: list[str], number: int, component: str) -> str | None:
    """Return MSH-``number`` (MSH-1 being the separator itself), its components joined by ``^``."""
    if number > len(fields):
        return None
    value = fields[number - 1].strip()
    if component != "^":
        value = value.replace(component, "^")
    return value or None


def observe(data: bytes, ctx: PacketContext) -> list[Observation]:
    """Read the MSH segment of an MLLP-framed message into an ``hl7.header`` Observation.

    The Observation's ``src`` is the sender of the message, whom MSH-3/MSH-4 name; an ACK is
    therefore seen from the receiving system's side of the connection.
    """
    if data[:4] != _START:
        if len(data) < 4 and _START.startswith(data):
            raise Truncated("HL7 message too short")
        raise MalformedPacket("not an MLLP frame holding an MSH segment")
    if data[4:5] in _TERMINATORS:
        raise MalformedPacket("HL7 MSH segment without a field separator")
    # Slice before decoding: nothing past the MSH terminator is ever turned into text.
    segment = _text(data[1 : _msh_end(data)])
    separator = segment[3]
    fields = segment.split(separator, 12)
    if len(fields) < 9 or not fields[1]:
        raise MalformedPacket("HL7 MSH segment without a message type")
    component = fields[1][0]
    parts = fields[8].split(component)
    message_type = parts[0].strip()
    if not message_type:
        raise MalformedPacket("HL7 MSH segment without a message type")
    event = parts[1].strip() if len(parts) > 1 else ""
    if event:
        message_type = f"{message_type}^{event}"
    version = fields[11].split(component, 1)[0].strip() if len(fields) > 11 else ""
    attrs = {
        "sending_app": _field(fields, 3, component),
        "sending_facility": _field(fields, 4, component),
        "receiving_app": _field(fields, 5, component),
        "receiving_facility": _field(fields, 6, component),
        "version": version or None,
        "processing_id": _field(fields, 11, component),
    }
    return [ctx.observation(Kind.HL7_HEADER, message_type, attrs)]
