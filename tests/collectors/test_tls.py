"""TLS ClientHello: crafted hellos, JA3/JA4 against published values, hostile bytes, the corpus."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether, Loopback
from scapy.packet import Padding, Raw
from scapy.utils import PcapReader

from collectors import DecodeStats, decode_file, tls
from collectors._context import PacketContext
from collectors._errors import MalformedPacket, ParseError, Truncated
from collectors._observation import Endpoint, Kind
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus

CTX = PacketContext(1_700_000_000.0, Endpoint("10.0.0.2", None, 51234), Endpoint("192.0.2.1", None, 443))

# --- building hellos ---------------------------------------------------------------------------


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u16s(*values: int) -> bytes:
    return struct.pack(f">{len(values)}H", *values)


def ext(ext_type: int, body: bytes = b"") -> bytes:
    return u16(ext_type) + u16(len(body)) + body


def sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + u16(len(name)) + name
    return ext(0x0000, u16(len(entry)) + entry)


def alpn_ext(*protocols: bytes) -> bytes:
    names = b"".join(bytes([len(p)]) + p for p in protocols)
    return ext(0x0010, u16(len(names)) + names)


def versions_ext(*versions: int) -> bytes:
    return ext(0x002B, bytes([2 * len(versions)]) + u16s(*versions))


def list_ext(ext_type: int, *values: int) -> bytes:
    return ext(ext_type, u16(2 * len(values)) + u16s(*values))


def hello_body(
    ciphers: tuple[int, ...] = (0x1301, 0xC02B),
    extensions: tuple[bytes, ...] = (),
    *,
    version: int = 0x0303,
    session_id: bytes = bytes(32),
    with_extensions: bool = True,
) -> bytes:
    body = u16(version) + bytes(range(32)) + bytes([len(session_id)]) + session_id
    body += u16(2 * len(ciphers)) + u16s(*ciphers) + b"\x01\x00"
    if with_extensions:
        block = b"".join(extensions)
        body += u16(len(block)) + block
    return body


def handshake(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, sizes: tuple[int, ...] = (), record_version: int = 0x0301) -> bytes:
    """TLS records carrying ``message``, cut into fragments of the given sizes (the rest in one)."""
    out = b""
    pos = 0
    for size in (*sizes, len(message)):
        fragment = message[pos : pos + size]
        if fragment:
            out += bytes([22]) + u16(record_version) + u16(len(fragment)) + fragment
        pos += size
    return out


# The FoxIO JA4 specification's worked example (technical_details/JA4.md): Chrome's hello with 15
# ciphers, 16 extensions in this order, these signature algorithms, ALPN h2.
SPEC_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014,
                0x009C, 0x009D, 0x002F, 0x0035)  # fmt: skip
SPEC_SIG_ALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def spec_extensions(*, sig_algs: tuple[int, ...] = SPEC_SIG_ALGS, grease: bool = False) -> tuple[bytes, ...]:
    exts = (
        ext(0x001B, b"\x02\x00\x02"),
        sni_ext(b"www.example.com"),
        ext(0x0033, u16(38) + u16(0x001D) + u16(32) + bytes(32)),
        alpn_ext(b"h2", b"http/1.1"),
        ext(0x4469, b"\x00\x03\x02h2"),
        ext(0x0017),
        ext(0x002D, b"\x01\x01"),
        list_ext(0x000D, *sig_algs),
        ext(0x0005, b"\x01\x00\x00\x00\x00"),
        ext(0x0023),
        ext(0x0012),
        versions_ext(*((0x7A7A,) if grease else ()), 0x0304, 0x0303),
        ext(0xFF01, b"\x00"),
        ext(0x000B, b"\x01\x00"),
        list_ext(0x000A, *((0x2A2A,) if grease else ()), 0x001D, 0x0017, 0x0018),
        ext(0x0015, bytes(40)),
    )
    if grease:
        exts = (ext(0x0A0A), *exts, ext(0xDADA, b"\x00"))
    return exts


SPEC_BODY = hello_body(SPEC_CIPHERS, spec_extensions())
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"


# --- ClientHello fields ------------------------------------------------------------------------


def test_parse_client_hello_fields() -> None:
    ch = tls.parse_client_hello(SPEC_BODY)
    assert ch.legacy_version == 0x0303
    assert ch.ciphers == SPEC_CIPHERS
    assert ch.extensions[:4] == (0x001B, 0x0000, 0x0033, 0x0010)
    assert len(ch.extensions) == 16
    assert ch.sni == "www.example.com"
    assert ch.alpn == (b"h2", b"http/1.1")
    assert ch.supported_versions == (0x0304, 0x0303)
    assert ch.sig_algs == SPEC_SIG_ALGS
    assert ch.groups == (0x001D, 0x0017, 0x0018)
    assert ch.ec_point_formats == (0,)
    assert ch.version == 0x0304
    assert not ch.ech


def test_observe_reports_sni_with_fingerprints() -> None:
    [obs] = tls.observe(records(handshake(SPEC_BODY)), CTX)
    assert obs.kind is Kind.TLS_SNI
    assert obs.value == "www.example.com"
    assert obs.src == CTX.src
    assert obs.dst == CTX.dst
    assert obs.attrs == {
        "alpn": ("h2", "http/1.1"),
        "ja4": SPEC_JA4,
        "ja3": tls.ja3(tls.parse_client_hello(SPEC_BODY)),
        "version": "1.3",
        "ech": False,
    }


def test_no_sni_gives_a_fingerprint_observation() -> None:
    """A hello to a bare IP names no server: its JA4 is what identifies the client."""
    body = hello_body(extensions=(alpn_ext(b"h2"),))
    [obs] = tls.observe(records(handshake(body)), CTX)
    assert tls.parse_client_hello(body).sni is None
    assert obs.kind is Kind.TLS_FINGERPRINT
    assert obs.value == obs.attrs["ja4"] == tls.ja4(tls.parse_client_hello(body), "t")
    assert obs.attrs["transport"] == "tcp"
    assert obs.attrs["alpn"] == ("h2",)


# --- JA4 ----------------------------------------------------------------------------------------


def test_ja4_spec_example() -> None:
    assert tls.ja4(tls.parse_client_hello(SPEC_BODY)) == SPEC_JA4


def test_ja4_spec_hash_inputs() -> None:
    """The spec's sorted lists hash to the values it prints."""
    ciphers = "002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
    exts = "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"
    sigs = "0403,0804,0401,0503,0805,0501,0806,0601"
    assert hashlib.sha256(ciphers.encode()).hexdigest()[:12] == "8daaf6152771"
    assert hashlib.sha256(f"{exts}_{sigs}".encode()).hexdigest()[:12] == "e5627efa2ab1"
    assert hashlib.sha256(exts.encode()).hexdigest()[:12] == "6d807ffa2a79"


def test_ja4_without_signature_algorithms_has_no_underscore() -> None:
    body = hello_body(SPEC_CIPHERS, spec_extensions(sig_algs=()))
    assert tls.ja4(tls.parse_client_hello(body)) == "t13d1516h2_8daaf6152771_6d807ffa2a79"


def test_ja4_quic_transport() -> None:
    assert tls.ja4(tls.parse_client_hello(SPEC_BODY), "q") == "q" + SPEC_JA4[1:]


def test_grease_is_ignored_everywhere() -> None:
    body = hello_body(
        (0x3A3A, *SPEC_CIPHERS), spec_extensions(sig_algs=(0x5A5A, *SPEC_SIG_ALGS), grease=True)
    )
    ch = tls.parse_client_hello(body)
    assert 0x0A0A in ch.extensions
    assert 0x3A3A in ch.ciphers
    assert ch.version == 0x0304  # the GREASE 0x7a7a in supported_versions is not "highest"
    assert tls.ja4(ch) == SPEC_JA4
    assert tls.ja3(ch) == tls.ja3(tls.parse_client_hello(SPEC_BODY))


def test_grease_values() -> None:
    assert all(tls.is_grease(0x0A0A + 0x1010 * i) for i in range(16))
    assert not tls.is_grease(0x0A1A)
    assert not tls.is_grease(0xEEEE)  # a signature algorithm some clients send: not GREASE


def test_ja4_no_extensions_at_all() -> None:
    """An old hello without an extension block: count 00, no ALPN, JA4_c all zeros."""
    ch = tls.parse_client_hello(hello_body((0x0035, 0x002F), version=0x0301, with_extensions=False))
    assert ch.extensions == ()
    assert tls.ja4(ch) == f"t10i020000_{hashlib.sha256(b'002f,0035').hexdigest()[:12]}_000000000000"


def test_ja4_only_sni_and_alpn_gives_zero_extension_hash() -> None:
    """Like Arkime's https3-301-get: JA4_c is zeros when SNI/ALPN are the only extensions."""
    ch = tls.parse_client_hello(hello_body((0x0035,), (sni_ext(b"a.example"),), version=0x0301))
    assert tls.ja4(ch) == f"t10d010100_{hashlib.sha256(b'0035').hexdigest()[:12]}_000000000000"


def test_ja4_no_ciphers() -> None:
    ch = tls.parse_client_hello(hello_body((), (ext(0x0017),)))
    assert tls.ja4(ch).split("_")[1] == "000000000000"


def test_ja4_counts_are_capped_at_99() -> None:
    ciphers = tuple(range(1, 121))
    extensions = tuple(ext(0x1000 + i) for i in range(110))
    ch = tls.parse_client_hello(hello_body(ciphers, extensions))
    assert tls.ja4(ch)[:10] == "t12i999900"


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"h", "hh"),
        (b"", "00"),
        # The spec's non-alphanumeric examples: first and last characters of the hex.
        (b"\xab", "ab"),
        (b"\xab\xcd", "ad"),
        (b"\x30\xab", "3b"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ],
)
def test_ja4_alpn_characters(first: bytes, expected: str) -> None:
    ch = tls.parse_client_hello(hello_body(extensions=(alpn_ext(first, b"h2"),)))
    assert tls.ja4(ch)[8:10] == expected


def test_ja4_without_alpn() -> None:
    ch = tls.parse_client_hello(hello_body(extensions=(sni_ext(b"a.example"),)))
    assert tls.ja4(ch)[8:10] == "00"


def test_attrs_cache_is_keyed_on_everything_the_attrs_depend_on() -> None:
    base = tls.parse_client_hello(SPEC_BODY)
    first = tls.client_hello_attrs(base, "t")
    first["ja4"] = "mutated by a caller"
    assert tls.client_hello_attrs(base, "t")["ja4"] == SPEC_JA4  # callers get copies
    assert str(tls.client_hello_attrs(base, "q")["ja4"]).startswith("q13")
    other_alpn = tls.parse_client_hello(hello_body(SPEC_CIPHERS, (*spec_extensions()[:3], alpn_ext(b"h3"))))
    assert tls.client_hello_attrs(other_alpn, "t")["alpn"] == ("h3",)
    no_versions = tls.parse_client_hello(hello_body(SPEC_CIPHERS, spec_extensions()[:11]))
    assert tls.client_hello_attrs(no_versions, "t")["version"] == "1.2"


def test_huge_hellos_are_not_cached() -> None:
    tls._ATTRS_CACHE.clear()
    huge = tls.parse_client_hello(hello_body(tuple(range(1, 400)), (sni_ext(b"a.example"),)))
    tls.client_hello_attrs(huge, "t")
    assert not tls._ATTRS_CACHE
    tls.client_hello_attrs(tls.parse_client_hello(SPEC_BODY), "t")
    assert len(tls._ATTRS_CACHE) == 1


# --- versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("legacy", "supported", "name", "code"),
    [
        (0x0301, (), "1.0", "10"),
        (0x0302, (), "1.1", "11"),
        (0x0303, (), "1.2", "12"),
        (0x0303, (0x0304, 0x0303), "1.3", "13"),
        (0x0300, (), "ssl3", "s3"),
        (0x0303, (0x7F17, 0x0303), "1.3-draft-23", "00"),  # Chrome 67 canary, as in the corpus
        (0x0303, (0x2A2A, 0x0303), "1.2", "12"),
        (0x0303, (0xFB1A,), "0xfb1a", "00"),
    ],
)
def test_versions(legacy: int, supported: tuple[int, ...], name: str, code: str) -> None:
    exts = (sni_ext(b"v.example"), versions_ext(*supported)) if supported else (sni_ext(b"v.example"),)
    [obs] = tls.observe(records(handshake(hello_body(extensions=exts, version=legacy))), CTX)
    assert obs.attrs["version"] == name
    assert str(obs.attrs["ja4"])[1:3] == code


# --- ECH, names -------------------------------------------------------------------------------


def test_ech_extension_is_flagged() -> None:
    body = hello_body(
        extensions=(sni_ext(b"cloudflare-ech.com"), ext(0xFE0D, b"\x00\x00\x01\x00\x01" + bytes(40)))
    )
    [obs] = tls.observe(records(handshake(body)), CTX)
    assert obs.value == "cloudflare-ech.com"  # the outer, public name
    assert obs.attrs["ech"] is True


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"WWW.Example.COM.", "www.example.com"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),  # A-labels stay as on the wire
        ("bücher.example".encode(), "bücher.example"),
        (b"bad\xff.example", "bad\ufffd.example"),
        (b"ctl\x01.example", "ctl\\x01.example"),
        (b"192.168.1.70", "192.168.1.70"),
    ],
)
def test_server_names_are_decoded_defensively(raw: bytes, value: str) -> None:
    [obs] = tls.observe(records(handshake(hello_body(extensions=(sni_ext(raw),)))), CTX)
    assert obs.value == value


@pytest.mark.parametrize("raw", [b"", b".", b"   "])
def test_blank_server_names_name_no_server(raw: bytes) -> None:
    [obs] = tls.observe(records(handshake(hello_body(extensions=(sni_ext(raw),)))), CTX)
    assert obs.kind is Kind.TLS_FINGERPRINT


def test_first_host_name_wins() -> None:
    entries = b"\x01" + u16(3) + b"abc" + b"\x00" + u16(5) + b"first" + b"\x00" + u16(6) + b"second"
    body = hello_body(extensions=(ext(0x0000, u16(len(entries)) + entries),))
    assert tls.parse_client_hello(body).sni == "first"


def test_broken_inner_extension_leaves_field_empty() -> None:
    """A bad ALPN list does not hide the server name; the outer framing stays strict."""
    body = hello_body(extensions=(sni_ext(b"ok.example"), ext(0x0010, u16(40) + b"\x02h2")))
    ch = tls.parse_client_hello(body)
    assert ch.sni == "ok.example"
    assert ch.alpn == (b"h2",)
    broken_sni = ext(0x0000, u16(50) + b"\x00" + u16(2) + b"ab")
    assert tls.parse_client_hello(hello_body(extensions=(broken_sni,))).sni is None


# --- records and segments --------------------------------------------------------------------


def test_hello_split_across_records() -> None:
    message = handshake(SPEC_BODY)
    data = records(message, (3, 100, 50))  # the handshake header itself is split
    [obs] = tls.observe(data, CTX)
    assert obs.attrs["ja4"] == SPEC_JA4


def test_hello_split_across_segments_is_truncated_until_complete() -> None:
    data = records(handshake(SPEC_BODY), (200,))
    for cut in (1, 4, 5, 6, 9, 100, 204, 205, 206, 300, len(data) - 1):
        with pytest.raises(Truncated):
            tls.observe(data[:cut], CTX)
    assert tls.observe(data, CTX)[0].value == "www.example.com"


def test_bytes_after_the_hello_are_ignored() -> None:
    data = records(handshake(SPEC_BODY)) + bytes([20, 3, 3, 0, 1, 1]) + bytes([23, 3, 3, 0, 3]) + b"abc"
    assert len(tls.observe(data, CTX)) == 1


def test_handshake_message_returns_the_body() -> None:
    assert tls.handshake_message(records(handshake(SPEC_BODY), (1, 1, 1, 1, 1))) == SPEC_BODY


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes([23, 3, 3, 0, 5]) + bytes(5), "handshake"),  # application data
        (bytes([22, 2, 0, 0, 5]) + bytes(5), "handshake"),  # not TLS 1.x framing
        (bytes([22, 3, 1, 0, 0]), "length"),  # an empty record
        (bytes([22, 3, 1, 0x48, 1]) + bytes(10), "length"),  # a record over 16 KiB + 2 KiB
        (records(b"\x02\x00\x00\x04" + bytes(4)), "ClientHello"),  # a ServerHello
        (records(b"\x01\xff\xff\xff"), "larger"),  # a 16 MiB hello
        (records(handshake(SPEC_BODY), (100,))[:105] + bytes([21, 3, 3, 0, 2, 2, 40]), "non-handshake"),
    ],
)
def test_broken_records_are_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        tls.observe(data, CTX)


@pytest.mark.parametrize(
    "body",
    [
        bytes(37),  # shorter than version + random + session id length
        hello_body(session_id=bytes(33)),
        hello_body()[:36],  # cut inside the session id
        hello_body(ciphers=())[:-3] + b"\x00\x03\x13\x01\x01\x00",  # odd cipher list
        hello_body(with_extensions=False)[:-2],  # no compression methods
        hello_body(with_extensions=False) + b"\x05",  # one byte where the extension length goes
        hello_body(extensions=(ext(0x0017),))[:-1],  # extension list overruns the message
        hello_body(with_extensions=False) + u16(4) + b"\x00\x17\x00\x08" + bytes(8),  # ext overruns list
        hello_body(extensions=(ext(0x0017),))[:-4] + u16(6) + b"\x00\x17\x00\x00\x00\x05",  # cut header
    ],
)
def test_broken_hellos_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPacket):
        tls.parse_client_hello(body)


def test_ja3_format() -> None:
    """JA3 is md5 of "version,ciphers,extensions,groups,formats" in decimal, GREASE removed."""
    body = hello_body(
        (0x2A2A, 0xC02B, 0x0035),
        (ext(0x0A0A), sni_ext(b"a.example"), list_ext(0x000A, 0x1A1A, 29, 23), ext(0x000B, b"\x02\x00\x01")),
    )
    expected = hashlib.md5(b"771,49195-53,0-10-11,29-23,0-1").hexdigest()
    assert tls.ja3(tls.parse_client_hello(body)) == expected


# --- hostile bytes -------------------------------------------------------------------------


SEEDS = [
    records(handshake(SPEC_BODY)),
    records(handshake(SPEC_BODY), (7, 300)),
    records(handshake(hello_body((0x3A3A, *SPEC_CIPHERS), spec_extensions(grease=True)))),
    records(
        handshake(hello_body(extensions=(sni_ext(b"x.example"), alpn_ext(b"\xab"), ext(0xFE0D, b"\x00"))))
    ),
    records(handshake(hello_body(version=0x0301, with_extensions=False))),
]

MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 4000), st.integers(0, 255)
    ),
    max_size=6,
)


def _mutate(seed: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(seed)
    for op, where, byte in mutations:
        at = where % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] = byte
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete" and at < len(data):
            del data[at]
    return bytes(data)


def _feed_everything(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        tls.observe(data, CTX)
    with contextlib.suppress(ParseError):
        tls.handshake_message(data)
    for body in (data, data[9:]):
        with contextlib.suppress(ParseError):
            ch = tls.parse_client_hello(body)
            tls.ja4(ch)
            tls.ja4(ch, "q")
            tls.ja3(ch)
            tls.client_hello_attrs(ch, "t")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    _feed_everything(data)
    _feed_everything(bytes([22, 3, 1]) + u16(len(data) + 4) + b"\x01" + len(data).to_bytes(3, "big") + data)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(SEEDS), MUTATIONS)
def test_mutated_hellos_raise_only_parse_errors(seed: bytes, mutations: list[tuple[str, int, int]]) -> None:
    _feed_everything(_mutate(seed, mutations))


# --- the corpus --------------------------------------------------------------------------------


def tcp_stream_starts(path: Path) -> Iterator[tuple[bytes, PacketContext]]:
    """The start of every TCP stream (each direction) beginning with a TLS handshake record.

    Segments are appended in capture order while the parser says Truncated, as the decoder does;
    yields the bytes on each attempt.
    """
    conf.layers.filter([Ether, Dot1Q, CookedLinux, Loopback, IP, IPv6, TCP, Raw, Padding])
    pending: dict[tuple[str, str, int, int], bytes] = {}
    try:
        with PcapReader(str(path)) as reader:
            for packet in reader:
                ip = packet.getlayer(IP) or packet.getlayer(IPv6)
                tcp = packet.getlayer(TCP)
                if ip is None or tcp is None or not isinstance(tcp.payload, Raw):
                    continue
                key = (ip.src, ip.dst, tcp.sport, tcp.dport)
                payload = bytes(tcp.payload.load)
                data = pending.pop(key, b"") + payload
                if key not in pending and not data.startswith(b"\x16\x03"):
                    continue
                ctx = PacketContext(
                    float(packet.time), Endpoint(ip.src, None, tcp.sport), Endpoint(ip.dst, None, tcp.dport)
                )
                yield data, ctx
                if len(data) < 16384:
                    pending[key] = data
    finally:
        conf.layers.unfilter()


def observe_capture(path: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    done: set[tuple[str | None, int | None, str | None, int | None]] = set()
    for data, ctx in tcp_stream_starts(path):
        flow = (ctx.src.ip, ctx.src.port, ctx.dst.ip, ctx.dst.port)
        if flow in done:
            continue
        try:
            found += [(o.value, str(o.attrs["ja4"])) for o in tls.observe(data, ctx)]
        except Truncated:
            continue
        except ParseError:
            pass
        done.add(flow)
    return found


CORPUS_CAPTURES = corpus_pcaps()


@pytest.mark.corpus
@pytest.mark.parametrize(
    "capture", CORPUS_CAPTURES or [None], ids=lambda p: p.relative_to(PCAP_DIR).as_posix() if p else "absent"
)
def test_corpus_streams_raise_only_parse_errors(capture: Path | None) -> None:
    """Every TCP stream start of every corpus capture parses or raises a ParseError, nothing else."""
    require_corpus()
    assert capture is not None
    observe_capture(capture)


# Arkime's expected sessions (arkime/arkime-expected/*.test) carry its JA4 for these hellos.
ARKIME_JA4 = {
    "tls-split-client-hello.pcap": ("clients2.google.com", "t13d1516h2_8daaf6152771_02713d6af862"),
    "curl-enabled-tls13.pcap": ("enabled.tls13.com", "t13d0413h2_16476d049b0b_ffceb19bae65"),
    "https3-301-get.pcap": ("www.github.com", "t10d230100_6a57a6f57151_000000000000"),
    "tls-alpn-h2.pcap": ("www.cloudflare.com", "t12d4605h2_85626a9a5f7f_aaf95bb78ec9"),
    "tls13.pcap": ("blog.cloudflare.com", "t00d1815h2_a30347de7a75_2a77702ff8e0"),  # TLS 1.3 draft 18
}


@pytest.mark.corpus
@pytest.mark.parametrize("capture", sorted(ARKIME_JA4))
def test_corpus_ja4_matches_arkime(capture: str) -> None:
    """Through the decoder (two of these captures are BSD loopback, which scapy leaves raw)."""
    require_corpus()
    stats = DecodeStats()
    found = {
        (o.value, o.attrs["ja4"])
        for o in decode_file(PCAP_DIR / "arkime" / capture, stats=stats, strict=True)
        if o.kind is Kind.TLS_SNI
    }
    assert found == {ARKIME_JA4[capture]}
    assert stats.parser_errors == 0


@pytest.mark.corpus
def test_corpus_split_hello_and_kyber() -> None:
    """A ClientHello over several segments, and Chrome's post-quantum hello (1.7 KB)."""
    require_corpus()
    kyber = observe_capture(PCAP_DIR / "zeek" / "tls__chrome-1250-tls-x25519-kyber.pcap")
    assert kyber == [("lh3.google.com", "t13d1516h2_8daaf6152771_02713d6af862")]
    assert observe_capture(PCAP_DIR / "ndpi" / "tls_missing_ch_frag.pcap") == []
