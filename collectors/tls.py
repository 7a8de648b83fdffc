"""TLS ClientHello: server name, ALPN, version, ECH, and the JA3 and JA4 client fingerprints.

``observe`` reads the first bytes of a TCP client stream (TLS records, a ClientHello possibly
spread over several records and segments); ``parse_client_hello``, ``ja4`` and ``ja3`` are pure
and reused by the QUIC collector, whose CRYPTO stream carries the same handshake message.

Only the ClientHello's metadata is read: no key share, session ticket or early data is kept.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final, Literal

from collectors._context import PacketContext
from collectors._errors import MalformedPacket, Truncated
from collectors._observation import Attrs, Kind, Observation, normalise_name

__all__ = [
    "GREASE",
    "ClientHello",
    "client_hello_attrs",
    "handshake_message",
    "is_grease",
    "ja3",
    "ja4",
    "observe",
    "parse_client_hello",
    "server_name",
    "version_name",
]

_U16: Final = struct.Struct(">H")
_EXT_HEADER: Final = struct.Struct(">HH")
_RECORD_HEADER: Final = struct.Struct(">BHH")

CONTENT_HANDSHAKE: Final = 22
HANDSHAKE_CLIENT_HELLO: Final = 1

EXT_SERVER_NAME: Final = 0x0000
EXT_SUPPORTED_GROUPS: Final = 0x000A
EXT_EC_POINT_FORMATS: Final = 0x000B
EXT_SIGNATURE_ALGORITHMS: Final = 0x000D
EXT_ALPN: Final = 0x0010
EXT_SUPPORTED_VERSIONS: Final = 0x002B
EXT_ENCRYPTED_CLIENT_HELLO: Final = 0xFE0D

#: A TLSPlaintext fragment is at most 2^14 bytes (RFC 8446 §5.1); some stacks overshoot a little.
MAX_RECORD_LEN: Final = 16384 + 2048
#: Largest ClientHello accepted: post-quantum key shares make them a few KiB, never this big.
MAX_HELLO_LEN: Final = 65536
#: Records walked before giving up (each carries at least one byte of the handshake).
MAX_RECORDS: Final = 4096
#: ALPN protocols kept (the Observation keeps at most 64 items anyway).
MAX_ALPN: Final = 32

#: JA4's two-character version codes (FoxIO JA4 spec, "TLS and DTLS Version").
_JA4_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_VERSION_NAMES: Final = {
    0x0304: "1.3",
    0x0303: "1.2",
    0x0302: "1.1",
    0x0301: "1.0",
    0x0300: "ssl3",
    0x0002: "ssl2",
    0xFEFF: "dtls1.0",
    0xFEFD: "dtls1.2",
    0xFEFC: "dtls1.3",
}
_ZERO_HASH: Final = "000000000000"
_BLANK_NAMES: Final = frozenset({"", "."})
#: Extensions JA4 shows in its first part, so leaves out of the extension hash.
_NAMED_EXTENSIONS: Final = frozenset({EXT_SERVER_NAME, EXT_ALPN})
#: Extensions whose content parse_client_hello reads.
_WANTED: Final = frozenset(
    {
        EXT_SERVER_NAME,
        EXT_ALPN,
        EXT_SUPPORTED_VERSIONS,
        EXT_SIGNATURE_ALGORITHMS,
        EXT_SUPPORTED_GROUPS,
        EXT_EC_POINT_FORMATS,
    }
)


#: RFC 8701 GREASE code points (0x0a0a, 0x1a1a ... 0xfafa): a set lookup beats arithmetic here.
GREASE: Final = frozenset(0x0A0A + 0x1010 * i for i in range(16))


def is_grease(value: int) -> bool:
    """Tell whether a 16-bit code point is a GREASE value."""
    return value in GREASE


@dataclass(slots=True)
class ClientHello:
    """The fields of a ClientHello that fingerprints and names are made of (GREASE kept)."""

    legacy_version: int
    random: bytes
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    """Extension types in wire order."""
    sni: str | None
    """First host_name of server_name, decoded; None when absent or empty."""
    alpn: tuple[bytes, ...]
    """ALPN protocol names as sent (opaque bytes; JA4 needs the raw first one)."""
    supported_versions: tuple[int, ...]
    sig_algs: tuple[int, ...]
    groups: tuple[int, ...]
    ec_point_formats: tuple[int, ...]

    @property
    def version(self) -> int:
        """Highest non-GREASE supported_versions entry, else the legacy version."""
        real = [v for v in self.supported_versions if v not in GREASE]
        return max(real) if real else self.legacy_version

    @property
    def ech(self) -> bool:
        """Whether the hello carries an encrypted_client_hello extension."""
        return EXT_ENCRYPTED_CLIENT_HELLO in self.extensions


def version_name(version: int) -> str:
    """Name a TLS version code: ``1.3``, ``1.2``... ``1.3-draft-23``, else its hex."""
    name = _VERSION_NAMES.get(version)
    if name is not None:
        return name
    if version >> 8 == 0x7F:
        return f"1.3-draft-{version & 0xFF}"
    return f"0x{version:04x}"


def server_name(raw: bytes) -> str | None:
    """Decode a host name from the wire: ASCII as is (A-labels stay A-labels), else UTF-8 with
    replacement; None when it is blank or only dots once normalised."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
    return text if normalise_name(text) not in _BLANK_NAMES else None


def _u16_list(data: bytes, start: int, end: int) -> tuple[int, ...]:
    count = (end - start) >> 1
    return struct.unpack_from(f">{count}H", data, start) if count else ()


def _sni(data: bytes, start: int, end: int) -> str | None:
    # server_name_list<1..2^16-1> of (name_type, opaque HostName<1..2^16-1>); first host_name wins.
    if end - start < 2:
        return None
    list_end = start + 2 + _U16.unpack_from(data, start)[0]
    if list_end > end:
        return None
    pos = start + 2
    while pos + 3 <= list_end:
        name_type = data[pos]
        name_len = _U16.unpack_from(data, pos + 1)[0]
        pos += 3
        if pos + name_len > list_end:
            return None
        if name_type == 0:
            return server_name(data[pos : pos + name_len]) if name_len else None
        pos += name_len
    return None


def _alpn(data: bytes, start: int, end: int) -> tuple[bytes, ...]:
    # ProtocolNameList: a u16 length, then u8-prefixed names.
    if end - start < 2:
        return ()
    list_end = min(start + 2 + _U16.unpack_from(data, start)[0], end)
    pos = start + 2
    names: list[bytes] = []
    while pos < list_end and len(names) < MAX_ALPN:
        name_len = data[pos]
        pos += 1
        if pos + name_len > list_end:
            break
        names.append(data[pos : pos + name_len])
        pos += name_len
    return tuple(names)


def _u16_vector(data: bytes, start: int, end: int, prefix: int) -> tuple[int, ...]:
    # A vector of u16 with a 1- or 2-byte length prefix; a vector overrunning its extension is cut.
    if end - start < prefix:
        return ()
    length = data[start] if prefix == 1 else _U16.unpack_from(data, start)[0]
    start += prefix
    return _u16_list(data, start, min(start + length, end))


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse a ClientHello handshake body (after the 4-byte handshake header).

    The outer framing (session id, cipher suites, compression, the extension list) must be
    sound or MalformedPacket is raised; a broken inner extension only leaves its field empty,
    as a passive observer still wants the server name of a hello with, say, a bad ALPN list.
    """
    n = len(body)
    if n < 38:
        raise MalformedPacket("ClientHello shorter than its fixed fields")
    sid_len = body[34]
    if sid_len > 32:
        raise MalformedPacket("ClientHello session id longer than 32 bytes")
    pos = 35 + sid_len
    if pos + 2 > n:
        raise MalformedPacket("ClientHello ends before its cipher suites")
    cs_len = _U16.unpack_from(body, pos)[0]
    pos += 2
    if cs_len & 1 or pos + cs_len > n:
        raise MalformedPacket("ClientHello cipher suite list is broken")
    ciphers = _u16_list(body, pos, pos + cs_len)
    pos += cs_len
    if pos >= n:
        raise MalformedPacket("ClientHello ends before its compression methods")
    pos += 1 + body[pos]
    if pos > n:
        raise MalformedPacket("ClientHello compression methods overrun the message")

    extensions: list[int] = []
    found: dict[int, int] = {}  # wanted extension type -> offset of its first occurrence
    if pos < n:  # extensions are optional before TLS 1.2 (RFC 5246 §7.4.1.2)
        if pos + 2 > n:
            raise MalformedPacket("ClientHello extension list length is cut")
        end = pos + 2 + _U16.unpack_from(body, pos)[0]
        pos += 2
        if end > n:
            raise MalformedPacket("ClientHello extension list overruns the message")
        # The hot loop: only walk the headers here. An extension overrunning the list leaves
        # pos past its end (checked once below); a header past the message is a struct.error.
        # Each extension takes at least 4 bytes, so this runs at most ~16k times.
        unpack = _EXT_HEADER.unpack_from
        append = extensions.append
        try:
            while pos < end:
                ext_type, ext_len = unpack(body, pos)
                append(ext_type)
                if ext_type in _WANTED and ext_type not in found:
                    found[ext_type] = pos
                pos += 4 + ext_len
        except struct.error:
            raise MalformedPacket("ClientHello extension header is cut") from None
        if pos != end:
            raise MalformedPacket("ClientHello extension overruns the list")
    return ClientHello(
        legacy_version=(body[0] << 8) | body[1],
        random=body[2:34],
        ciphers=ciphers,
        extensions=tuple(extensions),
        sni=_sni(body, *_span(body, found[EXT_SERVER_NAME])) if EXT_SERVER_NAME in found else None,
        alpn=_alpn(body, *_span(body, found[EXT_ALPN])) if EXT_ALPN in found else (),
        supported_versions=_vector(body, found, EXT_SUPPORTED_VERSIONS, 1),
        sig_algs=_vector(body, found, EXT_SIGNATURE_ALGORITHMS, 2),
        groups=_vector(body, found, EXT_SUPPORTED_GROUPS, 2),
        ec_point_formats=_point_formats(body, found),
    )


def _span(body: bytes, header: int) -> tuple[int, int]:
    return header + 4, header + 4 + _U16.unpack_from(body, header + 2)[0]


def _vector(body: bytes, found: dict[int, int], ext_type: int, prefix: int) -> tuple[int, ...]:
    header = found.get(ext_type)
    return () if header is None else _u16_vector(body, *_span(body, header), prefix)


def _point_formats(body: bytes, found: dict[int, int]) -> tuple[int, ...]:
    header = found.get(EXT_EC_POINT_FORMATS)
    if header is None:
        return ()
    start, end = _span(body, header)
    return tuple(body[start + 1 : min(start + 1 + body[start], end)]) if start < end else ()


def _is_alnum(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _ja4_alpn(first: bytes) -> str:
    if not first:
        return "00"
    head, tail = first[0], first[-1]
    if _is_alnum(head) and _is_alnum(tail):
        return chr(head) + chr(tail)
    # Non-alphanumeric ends: first and last characters of the hex of the whole value.
    text = first.hex()
    return text[0] + text[-1]


def _no_grease(values: tuple[int, ...]) -> list[int]:
    # Most lists carry no GREASE at all: test that in C before filtering in Python.
    return list(values) if GREASE.isdisjoint(values) else [v for v in values if v not in GREASE]


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _hex4(values: list[int]) -> str:
    # 4-digit lower-case hex, comma-separated, formatted in C by bytes.hex(sep, 2).
    return struct.pack(f">{len(values)}H", *values).hex(",", 2)


def ja4(ch: ClientHello, transport: Literal["t", "q", "d"] = "t") -> str:
    """The FoxIO JA4 fingerprint of a ClientHello (``t`` TCP, ``q`` QUIC, ``d`` DTLS)."""
    ciphers = _no_grease(ch.ciphers)
    extensions = _no_grease(ch.extensions)
    sig_algs = _no_grease(ch.sig_algs)
    part_a = (
        f"{transport}{_JA4_VERSIONS.get(ch.version, '00')}"
        f"{'d' if EXT_SERVER_NAME in extensions else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}"
        f"{_ja4_alpn(ch.alpn[0] if ch.alpn else b'')}"
    )
    if ciphers:
        ciphers.sort()
        part_b = _hash12(_hex4(ciphers))
    else:
        part_b = _ZERO_HASH
    hashed = [e for e in extensions if e not in _NAMED_EXTENSIONS]
    if hashed:
        hashed.sort()
        text = _hex4(hashed)
        if sig_algs:
            text += "_" + _hex4(sig_algs)
        part_c = _hash12(text)
    else:
        part_c = _ZERO_HASH
    return f"{part_a}_{part_b}_{part_c}"


def _dashed(values: tuple[int, ...]) -> str:
    # %-formatting a tuple converts the integers faster than "-".join(map(str, ...)).
    if not GREASE.isdisjoint(values):
        values = tuple(v for v in values if v not in GREASE)
    return ("-%d" * len(values) % values)[1:]


def ja3(ch: ClientHello) -> str:
    """The JA3 fingerprint: md5 of ``version,ciphers,extensions,groups,point_formats``, GREASE removed."""
    text = (
        f"{ch.legacy_version},{_dashed(ch.ciphers)},{_dashed(ch.extensions)},"
        f"{_dashed(ch.groups)},{_dashed(ch.ec_point_formats)}"
    )
    # JA3 is defined on MD5; it is an identifier here, not a security control.
    return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()


_Shape = tuple[str, int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...],
               tuple[int, ...], tuple[bytes, ...]]  # fmt: skip
_Summary = dict[str, str | bool | tuple[str, ...]]
#: Attrs by hello shape: a device or an application sends the same hello, but for its random,
#: session id and key share, on every connection, and hashing this tuple costs far less than
#: the two fingerprints. (Browsers that permute extensions or GREASE per connection just miss.)
_ATTRS_CACHE: dict[_Shape, _Summary] = {}
_ATTRS_CACHE_SIZE: Final = 2048
#: Hellos with more code points than this are not cached, so hostile ones cannot fill memory
#: (2048 entries of at most this many integers: a few MiB).
_ATTRS_CACHE_MAX_ITEMS: Final = 200


def client_hello_attrs(ch: ClientHello, transport: Literal["t", "q"]) -> _Summary:
    """The attrs of a tls.sni / quic.sni observation."""
    shape: _Shape = (
        transport,
        ch.legacy_version,
        ch.ciphers,
        ch.extensions,
        ch.groups,
        ch.ec_point_formats,
        ch.sig_algs,
        ch.supported_versions,
        ch.alpn,
    )
    attrs = _ATTRS_CACHE.get(shape)
    if attrs is None:
        attrs = {
            "alpn": tuple(p.decode("utf-8", "replace") for p in ch.alpn if p),
            "ja4": ja4(ch, transport),
            "ja3": ja3(ch),
            "version": version_name(ch.version),
            "ech": ch.ech,
        }
        items = len(ch.ciphers) + len(ch.extensions) + len(ch.groups) + len(ch.sig_algs) + len(ch.alpn)
        items += len(ch.supported_versions) + len(ch.ec_point_formats) + sum(map(len, ch.alpn)) // 8
        if items <= _ATTRS_CACHE_MAX_ITEMS:
            if len(_ATTRS_CACHE) >= _ATTRS_CACHE_SIZE:
                _ATTRS_CACHE.clear()  # rare: cheaper than an LRU's bookkeeping on every hit
            _ATTRS_CACHE[shape] = attrs
    return dict(attrs)


def _check_hello_start(fragment: bytes) -> int:
    # The first four handshake bytes: the message type must be ClientHello; returns its full size.
    if fragment[0] != HANDSHAKE_CLIENT_HELLO:
        raise MalformedPacket("first handshake message is not a ClientHello")
    size = 4 + int.from_bytes(fragment[1:4], "big")
    if size > MAX_HELLO_LEN:
        raise MalformedPacket("ClientHello larger than any real one")
    return size


def handshake_message(data: bytes) -> bytes:
    """Return the ClientHello body from the start of a TLS client stream, across records.

    Raises Truncated while the hello continues past ``data``, MalformedPacket when the records
    or the handshake header are not those of a ClientHello.
    """
    n = len(data)
    if n < 5:
        raise Truncated("TLS record header incomplete")
    content, version, length = _RECORD_HEADER.unpack_from(data, 0)
    if content != CONTENT_HANDSHAKE or version >> 8 != 3:
        raise MalformedPacket("stream does not start with a TLS handshake record")
    if not 0 < length <= MAX_RECORD_LEN:
        raise MalformedPacket("TLS record length out of range")
    # Fast path: the whole ClientHello sits in the first record (the usual case).
    if length >= 4 and n >= 9:
        size = _check_hello_start(data[5:9])
        if size <= length:
            if n < 5 + size:
                raise Truncated("TLS record incomplete")
            return data[9 : 5 + size]
    parts: list[bytes] = []
    have = 0
    size = -1
    pos = 0
    for _ in range(MAX_RECORDS):
        if n - pos < 5:
            raise Truncated("TLS record header incomplete")
        content, version, length = _RECORD_HEADER.unpack_from(data, pos)
        if content != CONTENT_HANDSHAKE or version >> 8 != 3:
            raise MalformedPacket("ClientHello interrupted by a non-handshake record")
        if not 0 < length <= MAX_RECORD_LEN:
            raise MalformedPacket("TLS record length out of range")
        start = pos + 5
        pos = start + length
        fragment = data[start : min(pos, n)]
        parts.append(fragment)
        have += len(fragment)
        if size < 0 and have >= 4:
            size = _check_hello_start(b"".join(parts)[:4])
        if size >= 0 and have >= size:
            return b"".join(parts)[4:size]
        if pos > n:
            raise Truncated("TLS record incomplete")
    raise MalformedPacket("ClientHello spread over too many records")


def observe(data: bytes, ctx: PacketContext) -> list[Observation]:
    """Observe the ClientHello at the start of a TCP client stream: a tls.sni, else a tls.fingerprint."""
    ch = parse_client_hello(handshake_message(data))
    attrs: Attrs = client_hello_attrs(ch, "t")
    if ch.sni is None:
        # A hello to a bare IP: its fingerprints are the only thing that identifies the client.
        return [ctx.observation(Kind.TLS_FINGERPRINT, str(attrs["ja4"]), {**attrs, "transport": "tcp"})]
    return [ctx.observation(Kind.TLS_SNI, ch.sni, attrs)]
