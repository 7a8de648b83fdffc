"""DHCPv4 / BOOTP (UDP 67/68): host name, vendor class, option 55 fingerprint, client id and leases.

The client is the subject of every observation: ``src`` is the client (its MAC from ``chaddr``,
its address when known) and ``dst`` the server side, whichever way the packet travels. Server
replies (OFFER/ACK) are turned around: the client endpoint is built from ``chaddr``/``yiaddr``.

Options are read from the options field, then from ``file`` and ``sname`` when option 52 says
they are overloaded (RFC 2131 §4.1); an option that appears more than once is concatenated
(RFC 3396). A packet without the magic cookie is plain BOOTP with nothing to report.
"""

from __future__ import annotations

import contextlib
from typing import Final

from collectors._context import PacketContext
from collectors._errors import MalformedPacket
from collectors._observation import AttrValue, Endpoint, InvalidObservation, Kind, Observation, normalise_name

__all__ = ["MESSAGE_TYPES", "decode_hostname", "observe"]

#: Fixed BOOTP header (RFC 951) up to the end of ``file``; the magic cookie follows.
_HEADER_LEN: Final = 236
_COOKIE: Final = b"\x63\x82\x53\x63"
_OPTIONS_AT: Final = _HEADER_LEN + 4
_SNAME = slice(44, 108)
_FILE = slice(108, 236)
_ZERO_IP: Final = b"\x00\x00\x00\x00"

_OPT_PAD: Final = 0
_OPT_END: Final = 255
_OPT_HOSTNAME: Final = 12
_OPT_REQUESTED_IP: Final = 50
_OPT_LEASE_TIME: Final = 51
_OPT_OVERLOAD: Final = 52
_OPT_MSG_TYPE: Final = 53
_OPT_PARAM_LIST: Final = 55
_OPT_VENDOR_CLASS: Final = 60
_OPT_CLIENT_ID: Final = 61
_OPT_FQDN: Final = 81

#: Option 53 values (RFC 2132, 3203, 4388, 6926, 7724).
MESSAGE_TYPES: Final = {
    1: "DISCOVER",
    2: "OFFER",
    3: "REQUEST",
    4: "DECLINE",
    5: "ACK",
    6: "NAK",
    7: "RELEASE",
    8: "INFORM",
    9: "FORCERENEW",
    10: "LEASEQUERY",
    11: "LEASEUNASSIGNED",
    12: "LEASEUNKNOWN",
    13: "LEASEACTIVE",
    14: "BULKLEASEQUERY",
    15: "LEASEQUERYDONE",
    16: "ACTIVELEASEQUERY",
    17: "LEASEQUERYSTATUS",
    18: "TLS",
}
#: Messages that bind an address to the client's MAC (the store's endpoint identity).
_LEASE_FROM_SERVER: Final = frozenset({"ACK", "BOOTREPLY"})
_LEASE_FROM_CLIENT: Final = frozenset({"REQUEST", "INFORM"})

#: Addresses that never identify a host; compared against, never bound to.
_NOT_A_HOST: Final = frozenset({"0.0.0.0", "255.255.255.255", None})  # noqa: S104
_MAX_TEXT: Final = 255  # an option is at most 255 bytes; concatenated ones are cut to one option's worth
_NUL_AND_SPACE: Final = b"\x00 \t\r\n"


def _ip_text(raw: bytes) -> str:
    """Format four bytes as dotted quad (cheaper than ipaddress for the hot path)."""
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def decode_hostname(raw: bytes) -> str:
    """Decode an untrusted host name: IDNA (``xn--`` labels) first, then UTF-8 with replacement."""
    raw = raw.strip(_NUL_AND_SPACE)[:_MAX_TEXT]
    if raw.isascii():
        text = raw.decode("ascii")
        if "xn--" in text.lower():
            labels = []
            for label in text.split("."):
                if label[:4].lower() == "xn--":
                    # A bad punycode label is kept as sent: it is still what the host said.
                    with contextlib.suppress(UnicodeError):
                        label = label.lower().encode("ascii").decode("idna")
                labels.append(label)
            text = ".".join(labels)
        return text.strip()
    return raw.decode("utf-8", "replace").strip()


def _name(text: str) -> str:
    """Return ``text`` as Observation will store it, or "" when only dots and spaces would remain."""
    name = normalise_name(text)
    # Observation normalises once more, and normalise_name is not idempotent on mixed dots and spaces.
    return name if normalise_name(name).strip(". ") else ""


def _decode_text(raw: bytes) -> str:
    return raw.strip(_NUL_AND_SPACE)[:_MAX_TEXT].decode("utf-8", "replace").strip()


def _dns_wire_name(raw: bytes) -> bytes:
    """Turn RFC 1035 wire labels (option 81 with the E flag) into dotted text bytes."""
    labels = []
    pos = 0
    end = len(raw)
    # Each label consumes at least one byte, so the loop is bounded by the option length.
    while pos < end:
        size = raw[pos]
        if size == 0:
            break
        if size > 63 or pos + 1 + size > end:
            raise MalformedPacket("DHCP option 81 carries a bad DNS label")
        labels.append(raw[pos + 1 : pos + 1 + size])
        pos += 1 + size
    return b".".join(labels)


def _fqdn(raw: bytes) -> str:
    """The name of option 81 (RFC 4702): three bytes of flags and rcodes, then the name."""
    if len(raw) < 3:
        raise MalformedPacket("DHCP option 81 shorter than its fixed part")
    name = raw[3:]
    if raw[0] & 0x04:  # E flag: canonical wire format; otherwise the deprecated ASCII form
        name = _dns_wire_name(name)
    return decode_hostname(name)


def _read_options(data: bytes, start: int, end: int, options: dict[int, bytes]) -> None:
    """Add the options found in ``data[start:end]`` to ``options`` (repeated codes concatenated)."""
    pos = start
    # Each step consumes at least one byte: the loop is bounded by the field length.
    while pos < end:
        code = data[pos]
        if code == _OPT_END:
            return
        if code == _OPT_PAD:
            pos += 1
            continue
        if pos + 1 >= end:
            raise MalformedPacket("DHCP option without its length byte")
        size = data[pos + 1]
        value_end = pos + 2 + size
        if value_end > end:
            raise MalformedPacket("DHCP option runs past the end of its field")
        value = data[pos + 2 : value_end]
        previous = options.get(code)
        options[code] = value if previous is None else previous + value
        pos = value_end
    # A missing End option is tolerated: many small stacks omit it, and what came before is sound.


def _parse_options(payload: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    _read_options(payload, _OPTIONS_AT, len(payload), options)
    overload = options.get(_OPT_OVERLOAD)
    if overload:
        # RFC 2131 §4.1: read ``file`` first, then ``sname``; option 52 inside them is not honoured.
        flag = overload[0]
        if flag & 1:
            _read_options(payload, _FILE.start, _FILE.stop, options)
        if flag & 2:
            _read_options(payload, _SNAME.start, _SNAME.stop, options)
    return options


def _make(
    ctx: PacketContext, kind: Kind, value: str, ends: tuple[Endpoint, Endpoint], attrs: dict[str, AttrValue]
) -> Observation:
    """Build one observation about the client: ``ctx.observation`` with our own (client, server) ends."""
    if ctx.vlan is not None:
        attrs["vlan"] = ctx.vlan
    return Observation(ctx.ts, kind, value, ends[0], ends[1], attrs, ctx.source, ctx.agent)


def _bindable(ip: str) -> bool:
    """Tell whether a dotted quad can be a client's own address (not 0.0.0.0, broadcast, multicast)."""
    first = int(ip.partition(".")[0])
    return ip not in _NOT_A_HOST and not 224 <= first <= 239


def observe(payload: bytes, ctx: PacketContext) -> list[Observation]:
    """Return the observations of one DHCP/BOOTP datagram; raise MalformedPacket if it is broken."""
    if len(payload) < _HEADER_LEN:
        raise MalformedPacket("BOOTP message shorter than its fixed header")
    op = payload[0]
    if op not in (1, 2):
        raise MalformedPacket("BOOTP op is neither request nor reply")
    if payload[_HEADER_LEN:_OPTIONS_AT] != _COOKIE:
        return []  # plain BOOTP (RFC 951 vendor area) or a bad cookie: no DHCP options to trust
    options = _parse_options(payload)

    msg_code = options.get(_OPT_MSG_TYPE)
    if msg_code:
        msg_type = MESSAGE_TYPES.get(msg_code[0], str(msg_code[0]))
    else:
        msg_type = "BOOTREQUEST" if op == 1 else "BOOTREPLY"

    # chaddr is a MAC only for Ethernet (htype 1, hlen 6); randomised MACs are kept as sent.
    chaddr_mac = payload[28:34].hex(":") if payload[1] == 1 and payload[2] == 6 else None
    ciaddr = payload[12:16]
    ciaddr_ip = _ip_text(ciaddr) if ciaddr != _ZERO_IP else None
    relayed = payload[24:28] != _ZERO_IP
    requested = options.get(_OPT_REQUESTED_IP)
    requested_ip = _ip_text(requested) if requested is not None and len(requested) == 4 else None

    try:
        if op == 1:
            # Client to server. Once relayed (giaddr set) the packet's source is the relay, not the client.
            sender = ctx.src
            client_ip = None if relayed or sender.ip in _NOT_A_HOST else sender.ip
            client_mac = chaddr_mac or (None if relayed else sender.mac)
            client = Endpoint(client_ip or ciaddr_ip, client_mac, sender.port)
            server = ctx.dst
        else:
            # Server to client: the reply is about the client; the server is the packet's source.
            yiaddr = payload[16:20]
            client_ip = _ip_text(yiaddr) if yiaddr != _ZERO_IP else ciaddr_ip
            client = Endpoint(client_ip, chaddr_mac, ctx.dst.port)
            server = ctx.src
    except InvalidObservation as exc:  # pragma: no cover - the addresses above are well formed
        raise MalformedPacket("DHCP client address cannot be represented") from exc

    ends = (client, server)
    out: list[Observation] = []
    # Normalised here, as Observation would: a name of only spaces or dots must give nothing.
    raw_host = options.get(_OPT_HOSTNAME)
    hostname = _name(decode_hostname(raw_host)) if raw_host else ""
    raw_fqdn = options.get(_OPT_FQDN)
    fqdn = _name(_fqdn(raw_fqdn)) if raw_fqdn is not None else ""
    if hostname:
        attrs: dict[str, AttrValue] = {"msg_type": msg_type, "requested_ip": requested_ip}
        attrs["fqdn"] = fqdn or None
        out.append(_make(ctx, Kind.DHCP_HOSTNAME, hostname, ends, attrs))
    elif fqdn:
        attrs = {"msg_type": msg_type, "requested_ip": requested_ip, "option": _OPT_FQDN}
        out.append(_make(ctx, Kind.DHCP_HOSTNAME, fqdn, ends, attrs))

    raw_vendor = options.get(_OPT_VENDOR_CLASS)
    vendor = _decode_text(raw_vendor) if raw_vendor else ""
    if vendor:
        out.append(_make(ctx, Kind.DHCP_VENDOR_CLASS, vendor, ends, {"msg_type": msg_type}))

    params = options.get(_OPT_PARAM_LIST)
    if params:
        fingerprint = ",".join(map(str, params))
        out.append(_make(ctx, Kind.DHCP_FINGERPRINT, fingerprint, ends, {"msg_type": msg_type}))

    raw_client_id = options.get(_OPT_CLIENT_ID)
    client_id = raw_client_id.hex(":") if raw_client_id else None
    if raw_client_id and client_id:
        attrs = {"msg_type": msg_type, "type": raw_client_id[0]}
        out.append(_make(ctx, Kind.DHCP_CLIENT_ID, client_id, ends, attrs))

    bound_ip: str | None = None
    if msg_type in _LEASE_FROM_SERVER:
        bound_ip = client.ip  # yiaddr, or ciaddr for an ACK to an INFORM (the client already owns it)
    elif msg_type in _LEASE_FROM_CLIENT:
        bound_ip = requested_ip or ciaddr_ip
    if bound_ip is not None and _bindable(bound_ip):
        lease = options.get(_OPT_LEASE_TIME)
        attrs = {
            "msg_type": msg_type,
            "lease_time": int.from_bytes(lease, "big") if lease is not None and len(lease) == 4 else None,
            "client_id": client_id,
            "hostname": hostname or fqdn or None,
        }
        bound = Endpoint(bound_ip, client.mac, client.port)
        out.append(_make(ctx, Kind.DHCP_LEASE, bound_ip, (bound, server), attrs))
    return out
