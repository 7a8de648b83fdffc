"""SNMP parser: BER decoding, agent observations, the community never kept, fuzzing and the corpus."""

from __future__ import annotations

import contextlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.asn1.asn1 import ASN1_OID, ASN1_STRING, ASN1_TIME_TICKS
from scapy.layers.snmp import (
    SNMP,
    SNMPbulk,
    SNMPget,
    SNMPinform,
    SNMPresponse,
    SNMPset,
    SNMPtrapv1,
    SNMPtrapv2,
    SNMPvarbind,
)

from collectors import Endpoint, Kind, MalformedPacket, Observation, PacketContext, ParseError, snmp
from collectors.snmp import SYS_DESCR, SYS_NAME, SYS_OBJECT_ID, VarBindError
from tests.collectors.test_dhcp import udp_payloads
from tests.corpus import PCAP_DIR, require_corpus

COMMUNITY = b"S3cr3t-C0mmunity!"
AGENT = Endpoint("192.0.2.10", "00:00:5e:00:53:0a", 161)
MANAGER = Endpoint("192.0.2.1", "00:00:5e:00:53:01", 40000)


def agent_ctx(**kwargs: object) -> PacketContext:
    return PacketContext(ts=1.5, src=AGENT, dst=MANAGER, **kwargs)  # type: ignore[arg-type]


def system_varbinds() -> list[SNMPvarbind]:
    return [
        SNMPvarbind(oid=ASN1_OID(SYS_DESCR), value=ASN1_STRING(b"Philips IntelliVue MX450 Rev. M.00.03 ")),
        SNMPvarbind(oid=ASN1_OID(SYS_OBJECT_ID), value=ASN1_OID("1.3.6.1.4.1.1234.5")),
        SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.4.0"), value=ASN1_STRING(b"biomed@example.org")),
        SNMPvarbind(oid=ASN1_OID(SYS_NAME), value=ASN1_STRING(b"ICU-Bed-12")),
    ]


def message(pdu: object, version: int = 1, community: bytes = COMMUNITY) -> bytes:
    return bytes(SNMP(version=version, community=community, PDU=pdu))


# --- a small BER encoder, for what scapy cannot build (v3, broken lengths) ----------------------


def tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def octets(value: bytes) -> bytes:
    return tlv(0x04, value)


def oid(text: str) -> bytes:
    arcs = [int(a) for a in text.split(".")]
    out = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def varbind(name: str, value: bytes) -> bytes:
    return tlv(0x30, oid(name) + value)


def pdu(tag: int, *binds: bytes, request_id: int = 7) -> bytes:
    return tlv(tag, integer(request_id) + integer(0) + integer(0) + tlv(0x30, b"".join(binds)))


def v3(scoped_or_encrypted: bytes, flags: int = 0x00) -> bytes:
    header = tlv(0x30, integer(1234) + integer(65507) + octets(bytes([flags])) + integer(3))
    usm = octets(
        tlv(0x30, octets(b"\x80\x00\x1f\x88engine") + integer(1) + integer(2) + octets(b"jdoe-user"))
    )
    return tlv(0x30, integer(3) + header + usm + scoped_or_encrypted)


def scoped(inner_pdu: bytes) -> bytes:
    return tlv(0x30, octets(b"\x80\x00\x1f\x88engine") + octets(b"") + inner_pdu)


# --- parse ---------------------------------------------------------------------------------------


def test_parse_get_response() -> None:
    parsed = snmp.parse(message(SNMPresponse(id=99, varbindlist=system_varbinds())))
    assert parsed.version == 1
    assert parsed.pdu_type == 0xA2
    assert parsed.request_id == 99
    assert parsed.error_status == 0
    assert parsed.varbinds[0] == (SYS_DESCR, b"Philips IntelliVue MX450 Rev. M.00.03 ")
    assert parsed.varbinds[1] == (SYS_OBJECT_ID, "1.3.6.1.4.1.1234.5")
    assert not parsed.encrypted


def test_parse_never_exposes_the_community() -> None:
    parsed = snmp.parse(message(SNMPget(varbindlist=[SNMPvarbind(oid=ASN1_OID(SYS_DESCR))])))
    assert not hasattr(parsed, "community")
    assert COMMUNITY.decode() not in repr(parsed)


def test_parse_value_types() -> None:
    binds = [
        varbind("1.3.6.1.2.1.1.3.0", tlv(0x43, b"\x00\xff\xff\xff\xff")),  # TimeTicks, unsigned
        varbind("1.3.6.1.2.1.4.20.1.1.1", tlv(0x40, b"\xc0\x00\x02\x01")),  # IpAddress
        varbind("1.3.6.1.2.1.2.2.1.10.1", tlv(0x46, b"\x00" + b"\xff" * 8)),  # Counter64
        varbind("1.3.6.1.2.1.1.7.0", integer(-5)),
        varbind("1.3.6.1.2.1.1.8.0", tlv(0x05, b"")),
        varbind("1.3.6.1.2.1.1.9.0", tlv(0x80, b"")),
        varbind("1.3.6.1.2.1.1.9.1", tlv(0x82, b"")),
        varbind("1.3.6.1.2.1.1.9.2", tlv(0x44, b"\x01\x02")),  # Opaque
        varbind("1.3.6.1.2.1.1.9.3", tlv(0x45, b"\x01")),  # unknown application type: raw
    ]
    parsed = snmp.parse(tlv(0x30, integer(1) + octets(b"public") + pdu(0xA2, *binds)))
    assert [value for _, value in parsed.varbinds] == [
        0xFFFFFFFF,
        "192.0.2.1",
        2**64 - 1,
        -5,
        None,
        VarBindError.NO_SUCH_OBJECT,
        VarBindError.END_OF_MIB_VIEW,
        b"\x01\x02",
        b"\x01",
    ]


def test_parse_v1_trap() -> None:
    trap = SNMPtrapv1(
        enterprise=ASN1_OID("1.3.6.1.4.1.9"),
        agent_addr="192.0.2.10",
        time_stamp=ASN1_TIME_TICKS(5),
        varbindlist=[SNMPvarbind(oid=ASN1_OID(SYS_NAME), value=ASN1_STRING(b"sw1"))],
    )
    parsed = snmp.parse(message(trap, version=0))
    assert parsed.version == 0
    assert parsed.pdu_type == 0xA4
    assert parsed.request_id is None
    assert parsed.varbinds == [(SYS_NAME, b"sw1")]


def test_parse_long_form_lengths() -> None:
    descr = b"x" * 300  # needs 0x82 lengths at every level
    parsed = snmp.parse(tlv(0x30, integer(1) + octets(b"c") + pdu(0xA2, varbind(SYS_DESCR, octets(descr)))))
    assert parsed.varbinds == [(SYS_DESCR, descr)]


def test_parse_large_oid_arcs() -> None:
    name = tlv(0x06, b"\x88\x37\x8f\xff\xff\xff\x7f\x00")  # 2.999.4294967295.0
    parsed = snmp.parse(tlv(0x30, integer(1) + octets(b"c") + pdu(0xA0, tlv(0x30, name + tlv(0x05, b"")))))
    assert parsed.varbinds == [("2.999.4294967295.0", None)]


def test_decode_oid_first_arcs() -> None:
    assert snmp.decode_oid(b"\x2b\x06\x01") == "1.3.6.1"
    assert snmp.decode_oid(b"\x00") == "0.0"
    assert snmp.decode_oid(b"\x88\x37") == "2.999"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\x2b\x86", "ends inside"),
        (b"\x2b\x80\x01", "minimally"),
        (b"\x2b\x90\x80\x80\x80\x00", "32 bits"),  # 2**32: one past the largest sub-identifier
        (b"\x2b" + b"\xff" * 40 + b"\x7f", "32 bits"),
        (b"\x2b" + b"\x01" * 128, "128"),
    ],
)
def test_decode_oid_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        snmp.decode_oid(raw)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "cut short"),
        (b"\x30", "cut short"),
        (b"\x02\x01\x00", "unexpected type"),
        (b"\x30\x80" + integer(1) + octets(b"c") + b"\x00\x00", "indefinite"),
        (b"\x30\x85\x00\x00\x00\x00\x05", "length field"),
        (b"\x30\x84\x7f\xff\xff\xff" + integer(1), "longer than its container"),
        (b"\x30\x10" + integer(1), "longer than its container"),
        (tlv(0x30, integer(2) + octets(b"c")), "version"),
        (tlv(0x30, tlv(0x02, b"\x00" * 10) + octets(b"c")), "bad size"),
        (tlv(0x30, integer(1) + octets(b"c") + tlv(0xA9, b"")), "unknown type"),
        (tlv(0x30, integer(1) + octets(b"c") + tlv(0xBF, b"\x04")), "high-tag"),
        (tlv(0x30, integer(1) + octets(b"c") + tlv(0xA2, integer(1))), "cut short"),
        (tlv(0x30, integer(1) + octets(b"c") + pdu(0xA2, tlv(0x30, integer(1)))), "varbind name"),
        (tlv(0x30, integer(1) + octets(b"c") + pdu(0xA2, varbind("1.3.6", tlv(0x40, b"\x01")))), "IpAddress"),
    ],
)
def test_parse_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        snmp.parse(payload)


def test_nesting_is_bounded_by_the_fixed_structure() -> None:
    # A deeply nested value is just an unknown value: the reader never recurses into it.
    nested = b"\x05\x00"
    for _ in range(5000):
        nested = tlv(0x30, nested)
    parsed = snmp.parse(tlv(0x30, integer(1) + octets(b"c") + pdu(0xA2, varbind("1.3.6.1", nested))))
    assert len(parsed.varbinds) == 1


def test_malformed_messages_never_mention_the_community() -> None:
    good = message(SNMPresponse(varbindlist=system_varbinds()))
    reasons: list[str] = []
    for cut in range(len(good)):
        try:
            snmp.parse(good[:cut])
        except ParseError as exc:
            reasons.append(str(exc))
    assert len(reasons) == len(good)
    text = "\n".join(reasons)
    assert COMMUNITY.decode() not in text
    assert COMMUNITY.hex() not in text


# --- v3 ------------------------------------------------------------------------------------------


def test_v3_encrypted_pdu_is_skipped_cleanly() -> None:
    payload = v3(octets(b"\x8a\x1f" * 40), flags=0x03)
    parsed = snmp.parse(payload)
    assert parsed.version == 3
    assert parsed.encrypted
    assert parsed.varbinds == []
    assert snmp.observe(payload, agent_ctx()) == []


def test_v3_plaintext_response_is_read() -> None:
    payload = v3(scoped(pdu(0xA2, varbind(SYS_NAME, octets(b"R1.lab.local")))), flags=0x01)
    (obs,) = snmp.observe(payload, agent_ctx())
    assert obs.kind is Kind.SNMP_SYSNAME
    assert obs.value == "R1.lab.local"
    assert obs.attrs == {"version": "v3", "pdu": "get-response"}
    assert "jdoe-user" not in json.dumps(obs.to_dict())


def test_v3_report_with_counters_gives_nothing() -> None:
    report = pdu(0xA8, varbind("1.3.6.1.6.3.15.1.1.4.0", tlv(0x41, b"\x05")))
    assert snmp.observe(v3(scoped(report), flags=0x04), agent_ctx()) == []


def test_v3_encrypted_without_privacy_flag_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="privacy"):
        snmp.parse(v3(octets(b"\x00" * 16), flags=0x00))


def test_v3_bad_flags_are_malformed() -> None:
    header = tlv(0x30, integer(1) + integer(65507) + octets(b"\x00\x00") + integer(3))
    with pytest.raises(MalformedPacket, match="flags"):
        snmp.parse(tlv(0x30, integer(3) + header + octets(b"") + scoped(pdu(0xA0))))


# --- observe ------------------------------------------------------------------------------------


def test_get_response_reports_the_agent_as_src() -> None:
    observations = snmp.observe(message(SNMPresponse(varbindlist=system_varbinds())), agent_ctx())
    assert [(o.kind, o.value) for o in observations] == [
        (Kind.SNMP_SYSDESCR, "Philips IntelliVue MX450 Rev. M.00.03"),
        (Kind.SNMP_SYSOBJECTID, "1.3.6.1.4.1.1234.5"),
        (Kind.SNMP_SYSNAME, "ICU-Bed-12"),
    ]
    for obs in observations:
        assert obs.src == AGENT  # the device answering
        assert obs.dst == MANAGER
        assert obs.attrs == {"version": "v2c", "pdu": "get-response"}


def test_v1_version_label() -> None:
    observations = snmp.observe(message(SNMPresponse(varbindlist=system_varbinds()), version=0), agent_ctx())
    assert {o.attrs["version"] for o in observations} == {"v1"}


@pytest.mark.parametrize("request_pdu", [SNMPget, SNMPset, SNMPbulk])
def test_requests_give_nothing(request_pdu: type) -> None:
    payload = message(request_pdu(varbindlist=system_varbinds()))
    assert snmp.observe(payload, PacketContext(ts=1.0, src=MANAGER, dst=AGENT)) == []


def test_v1_trap_sysname() -> None:
    trap = SNMPtrapv1(
        enterprise=ASN1_OID("1.3.6.1.4.1.9"),
        agent_addr="192.0.2.10",
        time_stamp=ASN1_TIME_TICKS(5),
        varbindlist=[SNMPvarbind(oid=ASN1_OID(SYS_NAME), value=ASN1_STRING(b"sw1"))],
    )
    (obs,) = snmp.observe(message(trap, version=0), agent_ctx())
    assert obs.kind is Kind.SNMP_SYSNAME
    assert obs.attrs == {"version": "v1", "pdu": "trap"}


@pytest.mark.parametrize(("agent_pdu", "name"), [(SNMPtrapv2, "snmpV2-trap"), (SNMPinform, "inform-request")])
def test_v2_notifications(agent_pdu: type, name: str) -> None:
    observations = snmp.observe(message(agent_pdu(varbindlist=system_varbinds())), agent_ctx())
    assert len(observations) == 3
    assert {o.attrs["pdu"] for o in observations} == {name}


def test_error_response_with_null_values_gives_nothing() -> None:
    binds = tlv(0x30, varbind(SYS_DESCR, tlv(0x05, b"")))
    response = tlv(0xA2, integer(7) + integer(2) + integer(1) + binds)  # noSuchName, index 1
    assert snmp.observe(tlv(0x30, integer(0) + octets(COMMUNITY) + response), agent_ctx()) == []


def test_wrong_value_types_are_ignored() -> None:
    binds = [
        SNMPvarbind(oid=ASN1_OID(SYS_OBJECT_ID), value=ASN1_STRING(b"1.3.6.1.4.1.9")),
        SNMPvarbind(oid=ASN1_OID(SYS_DESCR), value=ASN1_OID("1.3.6.1")),
        SNMPvarbind(oid=ASN1_OID(SYS_NAME), value=ASN1_STRING(b"\x00 \x00")),
    ]
    assert snmp.observe(message(SNMPresponse(varbindlist=binds)), agent_ctx()) == []


def test_bad_utf8_sysdescr_is_replaced() -> None:
    binds = [SNMPvarbind(oid=ASN1_OID(SYS_DESCR), value=ASN1_STRING(b"Pump \xff\xfe v2\x00"))]
    (obs,) = snmp.observe(message(SNMPresponse(varbindlist=binds)), agent_ctx())
    assert obs.value == "Pump \ufffd\ufffd v2"


def test_other_oids_are_not_kinds() -> None:
    binds = [
        SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.4.0"), value=ASN1_STRING(b"me@example.org")),
        SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.6.0"), value=ASN1_STRING(b"Ward 3")),
        SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.1"), value=ASN1_STRING(b"not the instance")),
    ]
    assert snmp.observe(message(SNMPresponse(varbindlist=binds)), agent_ctx()) == []


def test_vlan_reaches_attrs() -> None:
    observations = snmp.observe(message(SNMPresponse(varbindlist=system_varbinds())), agent_ctx(vlan=7))
    assert {o.attrs["vlan"] for o in observations} == {7}


def test_community_appears_nowhere_in_the_observations() -> None:
    payloads = [
        message(SNMPresponse(varbindlist=system_varbinds())),
        message(SNMPtrapv2(varbindlist=system_varbinds())),
        message(SNMPinform(varbindlist=system_varbinds())),
    ]
    text = json.dumps([o.to_dict() for p in payloads for o in snmp.observe(p, agent_ctx())])
    assert "ICU-Bed-12" in text
    assert COMMUNITY.decode() not in text
    assert COMMUNITY.hex() not in text


# --- fuzzing -----------------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    return [
        message(SNMPresponse(varbindlist=system_varbinds())),
        message(SNMPget(varbindlist=system_varbinds())),
        message(
            SNMPtrapv1(
                enterprise=ASN1_OID("1.3.6.1.4.1.9"),
                agent_addr="192.0.2.10",
                time_stamp=ASN1_TIME_TICKS(5),
                varbindlist=system_varbinds(),
            ),
            version=0,
        ),
        v3(scoped(pdu(0xA2, varbind(SYS_NAME, octets(b"R1")))), flags=0x01),
        v3(octets(b"\x00" * 32), flags=0x03),
    ]


def _check(payload: bytes) -> None:
    try:
        snmp.parse(payload)
        observations = snmp.observe(payload, agent_ctx())
    except ParseError as exc:
        reason = str(exc)
        observations = []
    else:
        reason = json.dumps([o.to_dict() for o in observations])
    assert COMMUNITY.decode() not in reason


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(payload: bytes) -> None:
    _check(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_in_a_message_frame(body: bytes) -> None:
    _check(tlv(0x30, integer(1) + octets(COMMUNITY) + body))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_seeds()), st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=6))
def test_fuzz_mutated_real_packets(seed: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for position, byte in edits:
        if position < len(data):
            data[position] = byte
    _check(bytes(data))
    _check(bytes(data[: len(data) * 2 // 3]))


# --- corpus ------------------------------------------------------------------------------------

_SNMP_PORTS = frozenset({161, 162})


def _corpus(name: str) -> list[tuple[PacketContext, bytes]]:
    require_corpus()
    return udp_payloads(PCAP_DIR / name, _SNMP_PORTS)


def _observe_all(packets: list[tuple[PacketContext, bytes]]) -> list[Observation]:
    out: list[Observation] = []
    for ctx, payload in packets:
        with contextlib.suppress(ParseError):
            out += snmp.observe(payload, ctx)
    return out


@pytest.mark.corpus
def test_corpus_sweep_only_parse_errors_escape() -> None:
    require_corpus()
    seen = 0
    for path in sorted(PCAP_DIR.rglob("*")):
        if path.suffix not in {".pcap", ".pcapng", ".cap"}:
            continue
        for ctx, payload in udp_payloads(path, _SNMP_PORTS):
            seen += 1
            with contextlib.suppress(ParseError):
                snmp.observe(payload, ctx)
            rng = random.Random(seen)
            for _ in range(5):
                mutated = bytearray(payload)
                if mutated:
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                with contextlib.suppress(ParseError):
                    snmp.observe(bytes(mutated[: rng.randrange(len(mutated) + 1)]), ctx)
    assert seen > 300


@pytest.mark.corpus
def test_corpus_snmpwalk_sysdescr_from_the_agent() -> None:
    observations = _observe_all(_corpus("zeek/snmp__snmpwalk-short.pcap"))
    found = {(o.kind, o.value, o.src.ip) for o in observations}
    assert (
        Kind.SNMP_SYSDESCR,
        "Linux ubuntu-512mb-sfo2-01 4.4.0-31-generic #50~14.04.1-Ubuntu SMP "
        "Wed Jul 13 01:07:32 UTC 2016 x86_64",
        "138.68.10.203",
    ) in found
    assert (Kind.SNMP_SYSOBJECTID, "1.3.6.1.4.1.8072.3.2.10", "138.68.10.203") in found
    assert (Kind.SNMP_SYSNAME, "ubuntu-512mb-sfo2-01", "138.68.10.203") in found


@pytest.mark.corpus
def test_corpus_ndpi_snmp_v1_v2c_v3_and_communities_not_kept() -> None:
    observations = _observe_all(_corpus("ndpi/snmp.pcap"))
    assert {o.value for o in observations if o.kind is Kind.SNMP_SYSNAME} == {"R1.lab.local"}
    assert {o.attrs["version"] for o in observations} == {"v1", "v2c", "v3"}
    text = json.dumps([o.to_dict() for o in observations])
    for community in ("public", "public2c", "adsl"):
        assert community not in text


@pytest.mark.corpus
def test_corpus_oid_subidentifier_too_long_is_malformed() -> None:
    ((_, payload),) = _corpus("zeek/snmp__snmp-oid-subidentifier-too-long.pcap")
    with pytest.raises(MalformedPacket, match="minimally encoded"):
        snmp.parse(payload)
