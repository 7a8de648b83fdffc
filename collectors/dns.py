"""DNS, mDNS/DNS-SD and LLMNR: one wire format (RFC 1035), three ways of reading it.

``parse`` turns a message into a ``DnsMessage``; ``observe`` and ``observe_tcp`` turn it into
Observations following the conventions of each protocol (see ``_observe_dns``,
``_observe_mdns`` and ``_observe_llmnr``).

Robustness policy, applied the same way everywhere:

- The header and the first record (the first question, or the first answer when there is no
  question) must parse, otherwise the message is ``MalformedPacket``.
- After that, records are kept up to the first one that is broken or cut short (a truncated
  response is common in the wild); ``DnsMessage.partial`` says a section was cut. Observations
  are built from the complete records only, and nothing is raised.
- Compression pointers must point strictly before the run of labels that holds them (so a
  name cannot loop), at most ``MAX_POINTERS`` of them per name; a name is at most 255 bytes
  on the wire (hence at most 127 labels); the 0x40/0x80 label types are refused.

Names are kept in their wire (IDNA A-label) form, as tshark shows them: ASCII stays as is,
other bytes are read as UTF-8 with replacement, and control characters are escaped the way
tshark prints them (``\\n``, ``\\001``...), so a hostile label can never reach a log raw.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, TypeAlias

from collectors._context import PacketContext
from collectors._errors import MalformedPacket, Truncated
from collectors._observation import AttrValue, Kind, Observation

__all__ = [
    "DnsMessage",
    "Question",
    "ResourceRecord",
    "Srv",
    "Svcb",
    "class_name",
    "observe",
    "observe_tcp",
    "parse",
    "rcode_name",
    "read_name",
    "type_name",
]

#: Compression pointers followed in one name; real encoders need a handful, the cap stops
#: chains built to burn CPU (a backwards-only chain could otherwise be ~32k hops long).
MAX_POINTERS: Final = 64
#: Longest name on the wire, length bytes included (RFC 1035 §3.1).
MAX_NAME_WIRE: Final = 255
#: Values kept per observation attribute list (the Observation bound, applied early).
MAX_ITEMS: Final = 64
#: TXT strings kept per record, and characters kept per string: a summary, not the payload.
MAX_TXT_STRINGS: Final = 32
MAX_TXT_CHARS: Final = 255
#: DNS messages read from the start of one TCP stream.
MAX_TCP_MESSAGES: Final = 32

_HEADER: Final = struct.Struct(">HHHHHH")
_QFIXED: Final = struct.Struct(">HH")
_RRFIXED: Final = struct.Struct(">HHIH")
_SRVFIXED: Final = struct.Struct(">HHH")

T_A: Final = 1
T_NS: Final = 2
T_CNAME: Final = 5
T_PTR: Final = 12
T_TXT: Final = 16
T_AAAA: Final = 28
T_SRV: Final = 33
T_DNAME: Final = 39
T_SVCB: Final = 64
T_HTTPS: Final = 65

_TYPE_NAMES: Final = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO",
    15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC",
    33: "SRV", 35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS",
    44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
    50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
    253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA", 32769: "DLV",
}  # fmt: skip
_RCODE_NAMES: Final = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE",
)  # fmt: skip
_OPCODE_NAMES: Final = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
_CLASS_NAMES: Final = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}

# tshark's rendering of control characters in a label (epan format_text): C escapes, else octal.
_C_ESCAPES: Final = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}
_ESCAPE_TABLE: Final = {i: _C_ESCAPES.get(i, f"\\{i:03o}") for i in (*range(32), 127)}

_REVERSE_SUFFIXES: Final = (".in-addr.arpa", ".ip6.arpa")


def type_name(rtype: int) -> str:
    """Return the mnemonic of a record type, or ``TYPEnnn`` (RFC 3597) for an unknown one."""
    return _TYPE_NAMES.get(rtype) or f"TYPE{rtype}"


def rcode_name(rcode: int) -> str:
    """Return the mnemonic of a response code, or ``RCODEnn``."""
    return _RCODE_NAMES[rcode] if rcode < len(_RCODE_NAMES) else f"RCODE{rcode}"


def class_name(rclass: int) -> str:
    """Return the mnemonic of a class (mDNS's top bit masked), or ``CLASSnnn``."""
    rclass &= 0x7FFF
    return _CLASS_NAMES.get(rclass) or f"CLASS{rclass}"


@dataclass(slots=True, frozen=True)
class Srv:
    """SRV record data (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(slots=True, frozen=True)
class Svcb:
    """SVCB/HTTPS record data (RFC 9460): the target and the parameters worth reporting."""

    priority: int
    target: str
    alpn: tuple[str, ...] = ()
    ipv4hint: tuple[str, ...] = ()
    ipv6hint: tuple[str, ...] = ()


_Attrs: TypeAlias = dict[str, AttrValue]

#: A/AAAA: address text; CNAME/PTR/NS/DNAME: a name; TXT: its strings; None: type not decoded.
RData: TypeAlias = str | Srv | Svcb | tuple[str, ...] | None


@dataclass(slots=True)
class Question:
    """One entry of the question section."""

    name: str
    qtype: int
    qclass: int


@dataclass(slots=True)
class ResourceRecord:
    """One resource record; ``data`` is decoded for the types listed in ``RData``."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    data: RData


@dataclass(slots=True)
class DnsMessage:
    """A parsed DNS, mDNS or LLMNR message."""

    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)
    answers: list[ResourceRecord] = field(default_factory=list)
    authority: list[ResourceRecord] = field(default_factory=list)
    additional: list[ResourceRecord] = field(default_factory=list)
    partial: bool = False
    """A section ended early (truncated or broken record): later records are missing."""

    @property
    def is_response(self) -> bool:
        """QR bit."""
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        """OPCODE field."""
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        """RCODE field (header bits only; the EDNS extension is not applied)."""
        return self.flags & 0xF


def _label_text(raw: bytes) -> str:
    """Decode dotted label bytes the way tshark shows them (slow path: non-ASCII or controls)."""
    return raw.decode("utf-8", "replace").translate(_ESCAPE_TABLE)


#: Names already read in one message, by start offset: raw dotted bytes, wire length (with the
#: final zero), pointers followed, text. Records point back at the same few names (``c0 0c``),
#: so a response reads each of them once.
_Memo: TypeAlias = dict[int, tuple[bytes, int, int, str]]


def read_name(buf: bytes, pos: int, memo: _Memo | None = None) -> tuple[str, int]:
    """Read the (possibly compressed) name at ``pos``; return its text (``.`` for the root) and
    the offset just after it. Shared with the NBNS parser.
    """
    if memo is None:
        memo = {}
    start = pos
    end = len(buf)
    labels: list[bytes] = []
    after = -1
    # Start of the current run of labels: a pointer must go strictly before it, so the run
    # starts strictly decrease and no name can loop.
    run_start = pos
    wire = 1
    hops = 0
    while True:
        if pos >= end:
            raise MalformedPacket("DNS name runs past the end of the message")
        length = buf[pos]
        if length == 0:
            pos += 1
            break
        if length < 0x40:
            pos += 1
            stop = pos + length
            if stop > end:
                raise MalformedPacket("DNS label runs past the end of the message")
            wire += length + 1
            if wire > MAX_NAME_WIRE:
                raise MalformedPacket("DNS name longer than 255 bytes")
            labels.append(buf[pos:stop])
            pos = stop
        elif length >= 0xC0:
            if pos + 1 >= end:
                raise MalformedPacket("DNS compression pointer cut short")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if after < 0:
                after = pos + 2
            if target >= run_start:
                raise MalformedPacket("DNS compression pointer does not point backwards")
            hops += 1
            known = memo.get(target)
            if known is not None:
                # The name at ``target`` was read from there with the same checks; only the
                # totals (length, pointers) depend on what precedes it here.
                suffix, suffix_wire, suffix_hops, suffix_text = known
                wire += suffix_wire - 1
                hops += suffix_hops
                if wire > MAX_NAME_WIRE:
                    raise MalformedPacket("DNS name longer than 255 bytes")
                if hops > MAX_POINTERS:
                    raise MalformedPacket("too many DNS compression pointers in one name")
                if not labels:
                    memo[start] = (suffix, wire, hops, suffix_text)
                    return suffix_text, after
                if suffix:
                    labels.append(suffix)
                break
            if hops > MAX_POINTERS:
                raise MalformedPacket("too many DNS compression pointers in one name")
            pos = run_start = target
        else:
            raise MalformedPacket("DNS extended label type")
    if after < 0:
        after = pos
    if not labels:
        memo[start] = (b"", wire, hops, ".")
        return ".", after
    raw = b".".join(labels)
    if raw.isascii():
        text = raw.decode("ascii")
        if not text.isprintable():
            text = text.translate(_ESCAPE_TABLE)
    else:
        text = _label_text(raw)
    memo[start] = (raw, wire, hops, text)
    return text, after


@lru_cache(maxsize=4096)
def _ipv6_text(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def _ipv4_text(raw: bytes) -> str:
    return "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])  # noqa: UP031 - fastest form here


def _read_strings(buf: bytes, pos: int, stop: int, limit: int) -> tuple[str, ...]:
    """Read length-prefixed character strings (TXT, ALPN ids) in ``buf[pos:stop]``."""
    items: list[str] = []
    while pos < stop:
        length = buf[pos]
        pos += 1
        if pos + length > stop:
            raise MalformedPacket("character string runs past its record")
        if len(items) < limit:
            items.append(_label_text(buf[pos : pos + min(length, MAX_TXT_CHARS)]))
        pos += length
    return tuple(items)


def _read_svcb(buf: bytes, pos: int, stop: int, memo: _Memo) -> Svcb:
    """Read SVCB/HTTPS data: priority, target, and the alpn/ipv4hint/ipv6hint parameters."""
    if stop - pos < 3:
        raise MalformedPacket("SVCB record too short")
    priority = int.from_bytes(buf[pos : pos + 2])
    target, pos = read_name(buf, pos + 2, memo)
    alpn: tuple[str, ...] = ()
    v4: list[str] = []
    v6: list[str] = []
    while pos < stop:
        if pos + 4 > stop:
            raise MalformedPacket("SVCB parameter header cut short")
        key = int.from_bytes(buf[pos : pos + 2])
        length = int.from_bytes(buf[pos + 2 : pos + 4])
        pos += 4
        vend = pos + length
        if vend > stop:
            raise MalformedPacket("SVCB parameter runs past its record")
        if key == 1:
            alpn = _read_strings(buf, pos, vend, MAX_ITEMS)
        elif key == 4:
            v4.extend(_ipv4_text(buf[i : i + 4]) for i in range(pos, vend - 3, 4))
        elif key == 6:
            v6.extend(_ipv6_text(buf[i : i + 16]) for i in range(pos, vend - 15, 16))
        pos = vend
    return Svcb(priority, target, alpn, tuple(v4[:MAX_ITEMS]), tuple(v6[:MAX_ITEMS]))


def _read_rdata(buf: bytes, rtype: int, pos: int, stop: int, memo: _Memo) -> RData:
    """Decode the data of the record types Lanterne reports; None for the others."""
    if rtype == T_A:
        if stop - pos != 4:
            raise MalformedPacket("A record is not 4 bytes")
        return _ipv4_text(buf[pos:stop])
    if rtype == T_AAAA:
        if stop - pos != 16:
            raise MalformedPacket("AAAA record is not 16 bytes")
        return _ipv6_text(buf[pos:stop])
    if rtype in (T_CNAME, T_PTR, T_NS, T_DNAME):
        name, after = read_name(buf, pos, memo)
        if after > stop:
            raise MalformedPacket("name runs past its record")
        return name
    if rtype == T_SRV:
        if stop - pos < 7:
            raise MalformedPacket("SRV record too short")
        priority, weight, port = _SRVFIXED.unpack_from(buf, pos)
        target, after = read_name(buf, pos + 6, memo)
        if after > stop:
            raise MalformedPacket("SRV target runs past its record")
        return Srv(priority, weight, port, target)
    if rtype == T_TXT:
        return _read_strings(buf, pos, stop, MAX_TXT_STRINGS)
    if rtype in (T_HTTPS, T_SVCB):
        return _read_svcb(buf, pos, stop, memo)
    return None


def _read_record(buf: bytes, pos: int, memo: _Memo) -> tuple[ResourceRecord, int]:
    name, pos = read_name(buf, pos, memo)
    if pos + 10 > len(buf):
        raise MalformedPacket("resource record header cut short")
    rtype, rclass, ttl, rdlength = _RRFIXED.unpack_from(buf, pos)
    pos += 10
    stop = pos + rdlength
    if stop > len(buf):
        raise MalformedPacket("resource record data cut short")
    return ResourceRecord(name, rtype, rclass, ttl, _read_rdata(buf, rtype, pos, stop, memo)), stop


def parse(payload: bytes) -> DnsMessage:
    """Parse one DNS/mDNS/LLMNR message (see the module docstring for what is tolerated)."""
    if len(payload) < 12:
        raise MalformedPacket("DNS message shorter than its header")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(payload)
    questions: list[Question] = []
    answers: list[ResourceRecord] = []
    authority: list[ResourceRecord] = []
    additional: list[ResourceRecord] = []
    partial = False
    memo: _Memo = {}
    pos = 12
    try:
        if qdcount:
            end = len(payload)
            unpack = _QFIXED.unpack_from
            for _ in range(qdcount):
                name, pos = read_name(payload, pos, memo)
                if pos + 4 > end:
                    raise MalformedPacket("question cut short")
                qtype, qclass = unpack(payload, pos)
                pos += 4
                questions.append(Question(name, qtype, qclass))
        for _ in range(ancount):
            record, pos = _read_record(payload, pos, memo)
            answers.append(record)
        for _ in range(nscount):
            record, pos = _read_record(payload, pos, memo)
            authority.append(record)
        for _ in range(arcount):
            record, pos = _read_record(payload, pos, memo)
            additional.append(record)
    except MalformedPacket:
        if not (questions or answers):
            raise
        partial = True
    return DnsMessage(ident, flags, questions, answers, authority, additional, partial)


# --- observations ---------------------------------------------------------------------------


def _is_service_name(name: str) -> bool:
    """Tell whether a DNS-SD name has a ``_tcp``/``_udp`` label (service type or instance)."""
    return "._tcp" in name or "._udp" in name or name.startswith(("_tcp.", "_udp."))


def _add(
    out: list[Observation], ctx: PacketContext, kind: Kind, name: str, attrs: _Attrs, *, reverse: bool = False
) -> None:
    """Append an Observation of ``name``, unless it is blank (e.g. one label of Unicode spaces):
    the Observation refuses a name that strips to nothing, and a blank name says nothing anyway.
    """
    if name.strip():
        out.append(ctx.observation(kind, name, attrs, reverse=reverse))


def _observe_dns(msg: DnsMessage, ctx: PacketContext) -> list[Observation]:
    """Queries: one ``dns.query`` per question. Responses: one ``dns.answer`` per question, src = client."""
    out: list[Observation] = []
    if not msg.is_response:
        opcode = msg.opcode
        for question in msg.questions:
            attrs: _Attrs = {"qtype": type_name(question.qtype)}
            if opcode:
                attrs["opcode"] = _OPCODE_NAMES.get(opcode) or str(opcode)
            _add(out, ctx, Kind.DNS_QUERY, question.name, attrs)
        return out
    if not msg.questions:
        return out
    addresses: list[str] = []
    cnames: list[str] = []
    alpn: list[str] = []
    hints: list[str] = []
    targets: list[str] = []
    ttl = -1
    for record in msg.answers:
        rtype = record.rtype
        data = record.data
        if rtype in (T_A, T_AAAA) and isinstance(data, str):
            if len(addresses) < MAX_ITEMS:
                addresses.append(data)
        elif rtype == T_CNAME and isinstance(data, str):
            if len(cnames) < MAX_ITEMS:
                cnames.append(data)
        else:
            if isinstance(data, Svcb):
                # HTTPS/SVCB: the protocols offered (h3 means QUIC will follow) and address hints.
                alpn.extend(a for a in data.alpn if a not in alpn)
                hints.extend(h for h in (*data.ipv4hint, *data.ipv6hint) if h not in hints)
                if data.target != "." and data.target not in targets:
                    targets.append(data.target)
            continue
        if ttl < 0 or record.ttl < ttl:
            ttl = record.ttl
    base: _Attrs = {"rcode": rcode_name(msg.rcode)}
    if addresses:
        base["addresses"] = tuple(addresses)
    if cnames:
        base["cnames"] = tuple(cnames)
    if ttl >= 0:
        base["ttl"] = ttl
    if alpn:
        base["alpn"] = tuple(alpn[:MAX_ITEMS])
    if hints:
        base["ip_hints"] = tuple(hints[:MAX_ITEMS])
    if targets:
        base["svcb_targets"] = tuple(targets[:MAX_ITEMS])
    for question in msg.questions:
        attrs = {**base, "qtype": type_name(question.qtype)}
        _add(out, ctx, Kind.DNS_ANSWER, question.name, attrs, reverse=True)
    return out


def _observe_llmnr(msg: DnsMessage, ctx: PacketContext) -> list[Observation]:
    """One ``llmnr.query`` per question; a response adds ``answer`` and addresses, src = asker."""
    out: list[Observation] = []
    if not msg.is_response:
        for question in msg.questions:
            _add(out, ctx, Kind.LLMNR_QUERY, question.name, {"qtype": type_name(question.qtype)})
        return out
    addresses = tuple(
        record.data
        for record in msg.answers[:MAX_ITEMS]
        if record.rtype in (T_A, T_AAAA) and isinstance(record.data, str)
    )
    names = [q.name for q in msg.questions] or list(dict.fromkeys(r.name for r in msg.answers[:MAX_ITEMS]))
    qtypes = {q.name: type_name(q.qtype) for q in msg.questions}
    for name in names:
        attrs: _Attrs = {"answer": True}
        if name in qtypes:
            attrs["qtype"] = qtypes[name]
        if addresses:
            attrs["addresses"] = addresses
        _add(out, ctx, Kind.LLMNR_QUERY, name, attrs, reverse=True)
    return out


def _observe_mdns(msg: DnsMessage, ctx: PacketContext) -> list[Observation]:
    """Questions, then PTR/SRV/TXT/A/AAAA records of every section; src = the sender, always."""
    out: list[Observation] = []
    for question in msg.questions:
        kind = Kind.MDNS_SERVICE if _is_service_name(question.name.lower()) else Kind.MDNS_HOST
        attrs: _Attrs = {"question": True, "qtype": type_name(question.qtype)}
        _add(out, ctx, kind, question.name, attrs)
    # In a query, the answer section holds "known answers" (RFC 6762 §7.1): what the querier
    # already heard from *other* devices. They are reported but flagged, since src did not
    # announce them; the authority section of a query is the sender's own probe (§8.2).
    known = not msg.is_response
    hosts: dict[str, list[str]] = {}
    host_known: dict[str, bool] = {}
    for section, flagged in ((msg.answers, known), (msg.authority, False), (msg.additional, False)):
        for record in section:
            rtype = record.rtype
            data = record.data
            extra: _Attrs = {"known_answer": True} if flagged else {}
            if rtype in (T_A, T_AAAA) and isinstance(data, str):
                addresses = hosts.setdefault(record.name, [])
                if data not in addresses and len(addresses) < MAX_ITEMS:
                    addresses.append(data)
                host_known[record.name] = host_known.get(record.name, True) and flagged
            elif rtype == T_PTR and isinstance(data, str):
                owner = record.name
                lowered = owner.lower()
                if lowered.endswith(_REVERSE_SUFFIXES):
                    _add(out, ctx, Kind.MDNS_HOST, data, {"reverse": owner, **extra})
                elif _is_service_name(lowered):
                    _add(out, ctx, Kind.MDNS_SERVICE, data, {"service_type": owner, **extra})
            elif rtype == T_SRV and isinstance(data, Srv):
                attrs = {"target": data.target, "port": data.port, **extra}
                _add(out, ctx, Kind.MDNS_SERVICE, record.name, attrs)
            elif rtype == T_TXT and isinstance(data, tuple):
                strings = tuple(s for s in data if s)
                if strings:
                    _add(out, ctx, Kind.MDNS_TXT, record.name, {"txt": strings, **extra})
    for host, addresses in hosts.items():
        attrs = {"addresses": tuple(addresses)}
        if host_known[host]:
            attrs["known_answer"] = True
        _add(out, ctx, Kind.MDNS_HOST, host, attrs)
    return out


def _observe_message(msg: DnsMessage, ctx: PacketContext, proto: str) -> list[Observation]:
    if proto == "mdns":
        return _observe_mdns(msg, ctx)
    if proto == "llmnr":
        return _observe_llmnr(msg, ctx)
    return _observe_dns(msg, ctx)


def observe(payload: bytes, ctx: PacketContext, proto: str) -> list[Observation]:
    """Observations of one UDP payload; ``proto`` is ``dns``, ``mdns`` or ``llmnr``."""
    return _observe_message(parse(payload), ctx, proto)


def observe_tcp(data: bytes, ctx: PacketContext, proto: str) -> list[Observation]:
    """Observations of the start of a DNS-over-TCP stream (2-byte length before each message).

    Raises ``Truncated`` when the first message is not complete yet, ``MalformedPacket`` when
    it is broken; later messages that are incomplete or broken are left out.
    """
    out: list[Observation] = []
    pos = 0
    end = len(data)
    for index in range(MAX_TCP_MESSAGES):
        if pos + 2 > end:
            if index == 0:
                raise Truncated("DNS over TCP: length prefix not complete")
            break
        length = int.from_bytes(data[pos : pos + 2])
        pos += 2
        if pos + length > end:
            if index == 0:
                raise Truncated("DNS over TCP: message not complete")
            break
        message = data[pos : pos + length]
        pos += length
        try:
            out.extend(_observe_message(parse(message), ctx, proto))
        except MalformedPacket:
            if index == 0:
                raise
            break
        if pos == end:
            break
    return out
