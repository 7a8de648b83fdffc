"""NetBIOS name service: crafted datagrams, hostile bytes, and the corpus captures tshark has seen."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import nbns
from collectors._context import PacketContext
from collectors._errors import MalformedPacket, ParseError
from collectors._observation import Endpoint, Kind
from collectors.dns import read_name
from tests.collectors.test_dns import MUTATIONS, _mutate, observe_capture
from tests.conformance.fields_dns import FIELDS, NORMALISE
from tests.corpus import PCAP_DIR, require_corpus, truth_of

HOST = Endpoint("192.168.1.20", None, 137)
BROADCAST = Endpoint("192.168.1.255", None, 137)
CTX = PacketContext(1.0, HOST, BROADCAST)


def encode(name: bytes, suffix: int, scope: str = "") -> bytes:
    """First-level encode a NetBIOS name (RFC 1001 §14.1) as a DNS-style name."""
    raw = name.ljust(15, b" ")[:15] + bytes([suffix])
    letters = bytes(c for b in raw for c in (0x41 + (b >> 4), 0x41 + (b & 0xF)))
    out = b"\x20" + letters
    for label in filter(None, scope.split(".")):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def header(flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", 0x8001, flags, qd, an, ns, ar)


def nb_record(owner: bytes, *addresses: str, ttl: int = 300000, rtype: int = 0x20) -> bytes:
    rdata = b"".join(b"\x60\x00" + bytes(int(x) for x in a.split(".")) for a in addresses)
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


QUERY = 0x0110  # name query, RD, broadcast
REGISTRATION = 0x2910  # registration, RD, broadcast
POSITIVE_ANSWER = 0x8500  # response, name query, AA, RD


def test_name_query() -> None:
    payload = header(QUERY) + encode(b"WORKGROUP", 0x1D) + b"\x00\x20\x00\x01"
    (obs,) = nbns.observe(payload, CTX)
    assert obs.kind is Kind.NBNS_NAME
    assert obs.value == "WORKGROUP<1d>"  # NBNS keeps its case
    assert dict(obs.attrs) == {"suffix": 0x1D, "opcode": "query"}
    assert (obs.src, obs.dst) == (HOST, BROADCAST)


def test_registration_merges_the_question_and_its_record() -> None:
    payload = (
        header(REGISTRATION, ar=1)
        + encode(b"MDJR98", 0x03)
        + b"\x00\x20\x00\x01"
        + nb_record(b"\xc0\x0c", "192.168.239.129")
    )
    (obs,) = nbns.observe(payload, CTX)
    assert obs.value == "MDJR98<03>"
    assert dict(obs.attrs) == {"suffix": 3, "opcode": "registration", "addresses": ("192.168.239.129",)}


def test_positive_answer_lists_every_address() -> None:
    payload = header(POSITIVE_ANSWER, qd=0, an=1) + nb_record(
        encode(b"FILESRV", 0x20), "10.0.0.5", "10.1.0.5"
    )
    (obs,) = nbns.observe(payload, CTX)
    assert dict(obs.attrs) == {
        "suffix": 0x20,
        "opcode": "query",
        "answer": True,
        "addresses": ("10.0.0.5", "10.1.0.5"),
    }


def test_wack_carries_no_address() -> None:
    # A WACK's NB data is only flags (RFC 1002 §4.2.16).
    payload = (
        header(0xBC00, qd=0, an=1) + encode(b"HOST", 0) + struct.pack(">HHIH", 0x20, 1, 2, 2) + b"\x29\x10"
    )
    (obs,) = nbns.observe(payload, CTX)
    assert dict(obs.attrs) == {"suffix": 0, "opcode": "wack", "answer": True}


@pytest.mark.parametrize(
    ("name", "suffix", "scope", "shown"),
    [
        (b"\x01\x02__MSBROWSE__\x02", 0x01, "", "<01><02>__MSBROWSE__<02><01>"),
        (b"*" + b"\x00" * 14, 0x00, "", "*" + "<00>" * 15),  # ndpi/netbios.pcap: the wildcard name
        (b"MARTIN ROSENAU", 0x03, "", "MARTIN ROSENAU<03>"),  # inner space kept, trailing ones stripped
        (b"PC-7\xe9", 0x20, "", "PC-7<e9><20>"),
        (b"HOST", 0x00, "corp.example", "HOST<00>.corp.example"),
    ],
)
def test_names_are_shown_like_tshark(name: bytes, suffix: int, scope: str, shown: str) -> None:
    payload = header(QUERY) + encode(name, suffix, scope) + b"\x00\x20\x00\x01"
    (obs,) = nbns.observe(payload, CTX)
    assert obs.value == shown
    assert obs.attrs["suffix"] == suffix


@pytest.mark.parametrize(
    "encoded",
    [
        b"\x20" + b"a" * 32 + b"\x00",  # lower case: not first-level encoding
        b"\x20" + b"Q" * 32 + b"\x00",  # letters past P
        b"\x1f" + b"A" * 31 + b"\x00",  # odd length
        b"\x04HOST\x00",  # a plain DNS name
    ],
)
def test_names_that_are_not_netbios_are_skipped(encoded: bytes) -> None:
    assert nbns.decode_name(nbns_name_text(encoded)) is None
    assert nbns.observe(header(QUERY) + encoded + b"\x00\x20\x00\x01", CTX) == []


def nbns_name_text(encoded: bytes) -> str:
    return read_name(encoded, 0)[0]


def test_node_status_answer_reports_its_owner_name() -> None:
    # NBSTAT (0x21) answer: the record name is reported; the name table inside is not parsed.
    table = b"\x01" + b"HOST           \x00" + b"\x04\x00" + bytes(6)
    owner = encode(b"*" + b"\x00" * 14, 0)
    payload = header(0x8400, qd=0, an=1) + owner + struct.pack(">HHIH", 0x21, 1, 0, len(table)) + table
    (obs,) = nbns.observe(payload, CTX)
    assert obs.value == "*" + "<00>" * 15
    assert "addresses" not in obs.attrs


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x01\x01\x10\x00\x01",
        header(QUERY) + encode(b"HOST", 0)[:20],
        header(QUERY) + encode(b"HOST", 0) + b"\x00\x20",
        header(QUERY) + b"\xc0\x0c\x00\x20\x00\x01",  # a pointer to itself
    ],
)
def test_broken_first_record_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedPacket):
        nbns.observe(payload, CTX)


def test_broken_later_record_keeps_what_came_before() -> None:
    payload = header(REGISTRATION, ar=1) + encode(b"HOST", 0) + b"\x00\x20\x00\x01" + b"\xc0\x0c\x00\x20"
    (obs,) = nbns.observe(payload, CTX)
    assert obs.value == "HOST<00>"
    assert "addresses" not in obs.attrs


def test_addresses_and_names_are_bounded() -> None:
    many = [f"10.0.{i // 256}.{i % 256}" for i in range(200)]
    payload = header(POSITIVE_ANSWER, qd=0, an=1) + nb_record(encode(b"BIG", 0), *many[:100])
    (obs,) = nbns.observe(payload, CTX)
    assert len(obs.attrs["addresses"]) == nbns.MAX_ADDRESSES  # type: ignore[arg-type]
    names = b"".join(encode(f"N{i}".encode(), 0) + b"\x00\x20\x00\x01" for i in range(100))
    assert len(nbns.observe(header(QUERY, qd=100) + names, CTX)) == nbns.MAX_NAMES


# --- hostile bytes ----------------------------------------------------------------------------

SEEDS = [
    header(QUERY) + encode(b"WORKGROUP", 0x1D) + b"\x00\x20\x00\x01",
    header(REGISTRATION, ar=1)
    + encode(b"MDJR98", 3, "scope")
    + b"\x00\x20\x00\x01"
    + nb_record(b"\xc0\x0c", "1.2.3.4"),
    header(POSITIVE_ANSWER, qd=0, an=1) + nb_record(encode(b"FILESRV", 0x20), "10.0.0.5", "10.1.0.5"),
]


def _feed(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        nbns.observe(data, CTX)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    _feed(data)
    _feed(header(REGISTRATION, qd=1, ar=2) + data)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(SEEDS), MUTATIONS)
def test_mutated_datagrams_raise_only_parse_errors(
    seed: bytes, mutations: list[tuple[str, int, int]]
) -> None:
    _feed(_mutate(seed, mutations))


# --- the corpus -------------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("capture", ["arkime/nbns.pcap", "ndpi/netbios.pcap", "zeek/wikipedia.pcap"])
def test_names_equal_tsharks(capture: str) -> None:
    """The NBNS names of these captures are exactly tshark's (read without the decoder)."""
    require_corpus()
    path = PCAP_DIR / capture
    observations, errors = observe_capture(path)
    assert errors == 0
    expected = {NORMALISE["nbns_names"](name) for name in truth_of(path)["nbns_names"]}
    assert FIELDS["nbns_names"](observations) == expected
