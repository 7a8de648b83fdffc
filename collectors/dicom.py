"""DICOM upper layer: the A-ASSOCIATE-RQ and -AC PDUs that open every DICOM association.

Read: the called and calling AE titles, the proposed abstract syntaxes (SOP classes: "CT Image
Storage" says what the device is), and the implementation class UID and version name.
Never read: P-DATA-TF PDUs (they carry the data sets: patient name, images) and the User
Identity sub-item (it can carry a user name and password).
"""

from __future__ import annotations

from typing import Final

from collectors._context import PacketContext
from collectors._errors import MalformedPacket, Truncated
from collectors._observation import Kind, Observation

_RQ: Final = 0x01
_AC: Final = 0x02
#: PDU header (6) + protocol version (2) + reserved (2) + two AE titles (32) + reserved (32).
_FIXED: Final = 74
#: Largest PDU length believed at the start of a stream (a real RQ is a few KiB at most).
_MAX_PDU_LENGTH: Final = 1 << 20
#: Past this many bytes, parse the complete items already there instead of waiting for more
#: (below the decoder's 16 KiB reassembly cap, which would otherwise drop the association).
MAX_READ_BYTES: Final = 12 * 1024
#: Abstract syntaxes kept per association; more are counted, not listed.
MAX_ABSTRACT_SYNTAXES: Final = 16
#: Items walked at most (a PDU may propose up to 128 presentation contexts).
_MAX_ITEMS: Final = 256

_ITEM_PRESENTATION_RQ: Final = 0x20
_ITEM_PRESENTATION_AC: Final = 0x21
_ITEM_USER_INFO: Final = 0x50
_SUB_ABSTRACT_SYNTAX: Final = 0x30
_SUB_MAX_LENGTH: Final = 0x51
_SUB_IMPL_CLASS_UID: Final = 0x52
_SUB_IMPL_VERSION: Final = 0x55


def is_pdu_start(data: bytes) -> bool:
    """Tell whether ``data`` starts an A-ASSOCIATE-RQ/-AC PDU (type, reserved, length, version 1)."""
    return (
        len(data) >= 10
        and data[0] in (_RQ, _AC)
        and data[1] == 0
        and data[6:8] == b"\x00\x01"
        and _FIXED - 6 <= int.from_bytes(data[2:6]) <= _MAX_PDU_LENGTH
    )


def _text(raw: bytes) -> str:
    """Decode an AE title or UID (default repertoire: ASCII; padding is spaces or NULs)."""
    return raw.decode(errors="replace").strip(" \x00")


def _items(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """Return ``(type, value start, value end)`` of each complete item in ``data[start:end]``."""
    items: list[tuple[int, int, int]] = []
    offset = start
    while offset + 4 <= end and len(items) < _MAX_ITEMS:
        item_type = data[offset]
        length = int.from_bytes(data[offset + 2 : offset + 4])
        value_end = offset + 4 + length
        if value_end > end:
            break  # cut by the read cap (the caller checked the PDU itself is complete)
        items.append((item_type, offset + 4, value_end))
        offset = value_end
    return items


def observe(data: bytes, ctx: PacketContext) -> list[Observation]:
    """Read an A-ASSOCIATE-RQ or -AC PDU into a ``dicom.association`` Observation; [] otherwise."""
    if not data:
        raise Truncated("DICOM PDU header not complete")
    pdu_type = data[0]
    if pdu_type not in (_RQ, _AC):
        return []  # P-DATA (data sets), release, abort, reject: never read
    if len(data) < 6:
        raise Truncated("DICOM PDU header not complete")
    length = int.from_bytes(data[2:6])
    if data[1] != 0 or length < _FIXED - 6 or length > _MAX_PDU_LENGTH:
        raise MalformedPacket("DICOM A-ASSOCIATE PDU header is not valid")
    if len(data) >= 8 and data[6:8] != b"\x00\x01":
        raise MalformedPacket("DICOM protocol version is not 1")
    end = 6 + length
    if len(data) < end:
        if len(data) < MAX_READ_BYTES:
            raise Truncated("DICOM A-ASSOCIATE PDU not complete")
        end = len(data)  # very large proposal: read the complete items present
    called = _text(data[10:26])
    calling = _text(data[26:42])
    is_rq = pdu_type == _RQ
    syntaxes: list[str] = []
    proposed = accepted = 0
    max_length: int | None = None
    impl_uid: str | None = None
    impl_version: str | None = None
    for item_type, start, stop in _items(data, _FIXED, end):
        if item_type == _ITEM_PRESENTATION_RQ and is_rq:
            proposed += 1
            # Context id (1) and reserved (3), then abstract and transfer syntax sub-items.
            for sub_type, sub_start, sub_stop in _items(data, start + 4, stop):
                if sub_type == _SUB_ABSTRACT_SYNTAX:
                    uid = _text(data[sub_start:sub_stop])
                    if uid and uid not in syntaxes and len(syntaxes) < MAX_ABSTRACT_SYNTAXES:
                        syntaxes.append(uid)
        elif item_type == _ITEM_PRESENTATION_AC and not is_rq:
            proposed += 1
            if stop - start >= 3 and data[start + 2] == 0:  # result/reason 0: acceptance
                accepted += 1
        elif item_type == _ITEM_USER_INFO:
            # Sub-items 0x58/0x59 (user identity) are skipped unread: they may hold credentials.
            for sub_type, sub_start, sub_stop in _items(data, start, stop):
                if sub_type == _SUB_MAX_LENGTH and sub_stop - sub_start == 4:
                    max_length = int.from_bytes(data[sub_start:sub_stop])
                elif sub_type == _SUB_IMPL_CLASS_UID:
                    impl_uid = _text(data[sub_start:sub_stop]) or None
                elif sub_type == _SUB_IMPL_VERSION:
                    impl_version = _text(data[sub_start:sub_stop]) or None
    attrs: dict[str, str | int | tuple[str, ...] | None] = {
        "pdu": "rq" if is_rq else "ac",
        "calling_ae": calling,
        "called_ae": called,
        "impl_class_uid": impl_uid,
        "impl_version": impl_version,
        "max_length": max_length,
        "contexts": proposed,
    }
    if is_rq:
        attrs["abstract_syntaxes"] = tuple(syntaxes)
    else:
        attrs["accepted_contexts"] = accepted
    return [ctx.observation(Kind.DICOM_ASSOCIATION, f"{calling} -> {called}", attrs, reverse=not is_rq)]
