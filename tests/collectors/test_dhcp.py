"""DHCP/BOOTP parser: crafted packets, edge cases, fuzzing and the shared corpus."""

from __future__ import annotations

import contextlib
import functools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import PcapReader

from collectors import Endpoint, Kind, MalformedPacket, Observation, PacketContext, ParseError, dhcp
from tests.corpus import PCAP_DIR, require_corpus

CLIENT_MAC = "00:11:22:33:44:55"
SERVER = Endpoint("192.0.2.1", "66:77:88:99:aa:bb", 67)
BROADCAST = Endpoint("255.255.255.255", "ff:ff:ff:ff:ff:ff", 67)
UNSPECIFIED = Endpoint("0.0.0.0", CLIENT_MAC, 68)


def client_ctx(**kwargs: object) -> PacketContext:
    return PacketContext(ts=1700000000.0, src=UNSPECIFIED, dst=BROADCAST, **kwargs)  # type: ignore[arg-type]


def server_ctx() -> PacketContext:
    return PacketContext(ts=1700000000.0, src=SERVER, dst=Endpoint("192.0.2.50", CLIENT_MAC, 68))


def request(options: list[object], **bootp: object) -> bytes:
    fields: dict[str, Any] = {"op": 1, "chaddr": bytes.fromhex(CLIENT_MAC.replace(":", "")), "xid": 42}
    fields.update(bootp)
    return bytes(BOOTP(**fields) / DHCP(options=[*options, "end"]))


def reply(options: list[object], **bootp: object) -> bytes:
    return request(options, op=2, **bootp)


def raw_options(body: bytes, **bootp: object) -> bytes:
    """A BOOTP header with the cookie and hand-written option bytes."""
    fields: dict[str, Any] = {"op": 1, "chaddr": bytes.fromhex(CLIENT_MAC.replace(":", ""))}
    fields.update(bootp)
    return bytes(BOOTP(**fields))[:236] + b"\x63\x82\x53\x63" + body


def by_kind(observations: list[Observation]) -> dict[Kind, Observation]:
    found: dict[Kind, Observation] = {}
    for obs in observations:
        assert obs.kind not in found, f"two {obs.kind} observations"
        found[obs.kind] = obs
    return found


# --- client messages ---------------------------------------------------------------------------


def test_discover_reports_every_client_identifier() -> None:
    payload = request(
        [
            ("message-type", "discover"),
            ("hostname", b"Infusion-Pump-07"),
            ("vendor_class_id", b"MSFT 5.0"),
            ("param_req_list", [1, 3, 6, 15, 119, 252]),
            ("client_id", b"\x01" + bytes.fromhex("001122334455")),
            ("requested_addr", "192.0.2.50"),
        ]
    )
    found = by_kind(dhcp.observe(payload, client_ctx()))
    assert set(found) == {
        Kind.DHCP_HOSTNAME,
        Kind.DHCP_VENDOR_CLASS,
        Kind.DHCP_FINGERPRINT,
        Kind.DHCP_CLIENT_ID,
    }
    host = found[Kind.DHCP_HOSTNAME]
    assert host.value == "infusion-pump-07"
    assert host.attrs == {"msg_type": "DISCOVER", "requested_ip": "192.0.2.50", "fqdn": None}
    assert found[Kind.DHCP_VENDOR_CLASS].value == "MSFT 5.0"
    assert found[Kind.DHCP_FINGERPRINT].value == "1,3,6,15,119,252"
    assert found[Kind.DHCP_CLIENT_ID].value == "01:00:11:22:33:44:55"
    assert found[Kind.DHCP_CLIENT_ID].attrs == {"msg_type": "DISCOVER", "type": 1}
    for obs in found.values():
        assert obs.attrs["msg_type"] == "DISCOVER"
        # The client has no address yet: 0.0.0.0 never becomes its IP; its MAC is chaddr.
        assert obs.src == Endpoint(None, CLIENT_MAC, 68)
        assert obs.dst == BROADCAST
        assert obs.ts == 1700000000.0


def test_request_binds_the_requested_address_to_the_mac() -> None:
    payload = request(
        [
            ("message-type", "request"),
            ("requested_addr", "192.0.2.50"),
            ("hostname", b"pc1"),
            ("client_id", b"\x01ab"),
        ]
    )
    found = by_kind(dhcp.observe(payload, client_ctx()))
    lease = found[Kind.DHCP_LEASE]
    assert lease.value == "192.0.2.50"
    assert lease.src == Endpoint("192.0.2.50", CLIENT_MAC, 68)
    assert lease.attrs == {
        "msg_type": "REQUEST",
        "lease_time": None,
        "client_id": "01:61:62",
        "hostname": "pc1",
    }


def test_renewing_request_binds_ciaddr() -> None:
    ctx = PacketContext(ts=1.0, src=Endpoint("192.0.2.50", CLIENT_MAC, 68), dst=SERVER)
    found = by_kind(dhcp.observe(request([("message-type", "request")], ciaddr="192.0.2.50"), ctx))
    assert found[Kind.DHCP_LEASE].value == "192.0.2.50"
    assert found[Kind.DHCP_LEASE].src.mac == CLIENT_MAC


def test_discover_binds_nothing() -> None:
    payload = request([("message-type", "discover"), ("requested_addr", "192.0.2.50")])
    assert dhcp.observe(payload, client_ctx()) == []


def test_relayed_request_does_not_take_the_relay_address() -> None:
    relay = Endpoint("198.51.100.1", "aa:aa:aa:aa:aa:aa", 67)
    ctx = PacketContext(ts=1.0, src=relay, dst=SERVER)
    payload = request([("message-type", "discover"), ("hostname", b"ward3-pc")], giaddr="198.51.100.1")
    (host,) = dhcp.observe(payload, ctx)
    assert host.src == Endpoint(None, CLIENT_MAC, 67)


def test_non_ethernet_hardware_takes_the_frame_mac_when_not_relayed() -> None:
    ctx = PacketContext(ts=1.0, src=Endpoint("192.0.2.9", "02:00:00:00:00:09", 68), dst=SERVER)
    payload = request([("message-type", "inform"), ("hostname", b"r0")], htype=0, hlen=0, ciaddr="192.0.2.9")
    found = by_kind(dhcp.observe(payload, ctx))
    assert found[Kind.DHCP_HOSTNAME].src == Endpoint("192.0.2.9", "02:00:00:00:00:09", 68)
    assert found[Kind.DHCP_LEASE].value == "192.0.2.9"


def test_locally_administered_mac_is_kept_as_is() -> None:
    payload = request(
        [("message-type", "discover"), ("hostname", b"phone")], chaddr=bytes.fromhex("da0011223344")
    )
    (host,) = dhcp.observe(payload, client_ctx())
    assert host.src.mac == "da:00:11:22:33:44"


def test_vlan_of_the_context_reaches_every_observation() -> None:
    payload = request([("message-type", "request"), ("requested_addr", "192.0.2.50"), ("hostname", b"a")])
    observations = dhcp.observe(payload, client_ctx(vlan=42))
    assert observations
    assert all(obs.attrs["vlan"] == 42 for obs in observations)


# --- server messages ---------------------------------------------------------------------------


def test_ack_is_about_the_client_built_from_chaddr_and_yiaddr() -> None:
    payload = reply(
        [
            ("message-type", "ack"),
            ("lease_time", 3600),
            ("server_id", "192.0.2.1"),
            ("hostname", b"assigned"),
        ],
        yiaddr="192.0.2.50",
    )
    found = by_kind(dhcp.observe(payload, server_ctx()))
    lease = found[Kind.DHCP_LEASE]
    assert lease.value == "192.0.2.50"
    assert lease.src == Endpoint("192.0.2.50", CLIENT_MAC, 68)
    assert lease.dst == SERVER
    assert lease.attrs == {"msg_type": "ACK", "lease_time": 3600, "client_id": None, "hostname": "assigned"}
    assert found[Kind.DHCP_HOSTNAME].src == lease.src


def test_ack_to_inform_binds_ciaddr() -> None:
    (lease,) = dhcp.observe(reply([("message-type", "ack")], ciaddr="192.0.2.77"), server_ctx())
    assert lease.kind is Kind.DHCP_LEASE
    assert lease.value == "192.0.2.77"


def test_offer_and_nak_bind_nothing() -> None:
    assert dhcp.observe(reply([("message-type", "offer")], yiaddr="192.0.2.50"), server_ctx()) == []
    assert dhcp.observe(reply([("message-type", "nak")]), server_ctx()) == []


def test_ack_without_an_address_binds_nothing() -> None:
    assert dhcp.observe(reply([("message-type", "ack")]), server_ctx()) == []


# --- host names --------------------------------------------------------------------------------


def test_option_81_alone_gives_the_host_name() -> None:
    fqdn_ascii = b"\x00\x00\x00" + b"Scanner.Radiology.example."
    (host,) = dhcp.observe(
        raw_options(b"\x35\x01\x01" + bytes([81, len(fqdn_ascii)]) + fqdn_ascii), client_ctx()
    )
    assert host.value == "scanner.radiology.example"
    assert host.attrs == {"msg_type": "DISCOVER", "requested_ip": None, "option": 81}


def test_option_81_in_wire_format_with_hostname() -> None:
    wire = b"\x04\x00\x00" + b"\x03mri\x07example\x00"
    body = b"\x35\x01\x03" + b"\x0c\x03mri" + bytes([81, len(wire)]) + wire + b"\xff"
    (host,) = dhcp.observe(raw_options(body), client_ctx())
    assert host.value == "mri"
    assert host.attrs["fqdn"] == "mri.example"


def test_option_81_bad_wire_label_is_malformed() -> None:
    wire = b"\x04\x00\x00\x09mri"
    with pytest.raises(MalformedPacket):
        dhcp.observe(raw_options(bytes([81, len(wire)]) + wire + b"\xff"), client_ctx())


def test_idna_hostname_is_decoded() -> None:
    (host,) = dhcp.observe(request([("hostname", b"xn--caf-dma.example")]), client_ctx())
    assert host.value == "café.example"


def test_bad_punycode_is_kept_as_sent() -> None:
    (host,) = dhcp.observe(request([("hostname", b"xn--zz--.lan")]), client_ctx())
    assert host.value == "xn--zz--.lan"


def test_bad_utf8_hostname_is_replaced_not_fatal() -> None:
    (host,) = dhcp.observe(request([("hostname", b"pc-\xff\xfe-01")]), client_ctx())
    assert host.value == "pc-\ufffd\ufffd-01"


def test_control_characters_are_escaped_and_nul_padding_dropped() -> None:
    (host,) = dhcp.observe(request([("hostname", b"evil\x1b[31m\x00\x00")]), client_ctx())
    assert host.value == "evil\\x1b[31m"


def test_empty_or_nul_only_values_give_nothing() -> None:
    body = b"\x35\x01\x01\x0c\x00\x3c\x02\x00\x00\x37\x00\x3d\x00\xff"
    assert dhcp.observe(raw_options(body), client_ctx()) == []


@pytest.mark.parametrize(
    "body",
    [
        b"\x0c\x01\x0b",  # vertical tab: whitespace to str.strip, not to bytes.strip
        b"\x0c\x02\xc2\xa0",  # no-break space
        b"\x0c\x03. .",
        b"\x51\x04\x00\x00\x00\x0b",
        b"\x51\x05\x00\x00\x00..",
        b"\x51\x04\x04\x00\x00\x00",  # wire format, root name only
    ],
)
def test_names_of_only_spaces_or_dots_give_nothing(body: bytes) -> None:
    assert dhcp.observe(raw_options(b"\x35\x01\x01" + body + b"\xff"), client_ctx()) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12).map(lambda b: bytes(b" .\x0b\x0c\x1c\x85\xa0a\xc2"[x % 9] for x in b)))
def test_names_made_of_dots_and_spaces_never_break_the_observation(name: bytes) -> None:
    body = (
        b"\x35\x01\x01" + bytes([12, len(name)]) + name + bytes([81, len(name) + 3]) + b"\x00\x00\x00" + name
    )
    for obs in dhcp.observe(raw_options(body + b"\xff"), client_ctx()):
        assert obs.value.strip(". ")


def test_repeated_options_are_concatenated() -> None:
    # RFC 3396: a long option split into several consecutive instances.
    body = b"\x35\x01\x01\x0c\x05long-\x0c\x04name\xff"
    (host,) = dhcp.observe(raw_options(body), client_ctx())
    assert host.value == "long-name"


# --- framing -----------------------------------------------------------------------------------


def test_option_overload_reads_file_and_sname() -> None:
    file_field = b"\x0c\x04pump\xff".ljust(128, b"\x00")
    sname_field = b"\x3c\x05Baxtr\xff".ljust(64, b"\x00")
    payload = raw_options(b"\x35\x01\x01\x34\x01\x03\xff", file=file_field, sname=sname_field)
    found = by_kind(dhcp.observe(payload, client_ctx()))
    assert found[Kind.DHCP_HOSTNAME].value == "pump"
    assert found[Kind.DHCP_VENDOR_CLASS].value == "Baxtr"


def test_without_overload_file_and_sname_are_not_options() -> None:
    file_field = b"\x0c\x04pump\xff".ljust(128, b"\x00")
    assert dhcp.observe(raw_options(b"\x35\x01\x01\xff", file=file_field), client_ctx()) == []


def test_overload_flag_one_reads_only_file() -> None:
    sname_field = b"\x0c\x04pump\xff".ljust(64, b"\x00")
    assert dhcp.observe(raw_options(b"\x35\x01\x01\x34\x01\x01\xff", sname=sname_field), client_ctx()) == []


def test_missing_end_option_is_tolerated() -> None:
    (host,) = dhcp.observe(raw_options(b"\x35\x01\x01\x0c\x02pc"), client_ctx())
    assert host.value == "pc"


def test_padding_between_options() -> None:
    (host,) = dhcp.observe(raw_options(b"\x00\x00\x35\x01\x01\x00\x0c\x02pc\x00\xff"), client_ctx())
    assert host.value == "pc"


def test_bad_cookie_is_plain_bootp_with_nothing_to_report() -> None:
    payload = bytearray(request([("message-type", "discover"), ("hostname", b"pc")]))
    payload[236:240] = b"\x00\x00\x00\x00"
    assert dhcp.observe(bytes(payload), client_ctx()) == []


def test_unknown_message_type_is_numbered() -> None:
    (host,) = dhcp.observe(raw_options(b"\x35\x01\x6a\x0c\x02pc\xff"), client_ctx())
    assert host.attrs["msg_type"] == "106"


def test_bootp_without_message_type() -> None:
    (host,) = dhcp.observe(raw_options(b"\x0c\x02pc\xff"), client_ctx())
    assert host.attrs["msg_type"] == "BOOTREQUEST"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "shorter"),
        (b"\x01" * 235, "shorter"),
        (b"\x03" + b"\x00" * 239 + b"\xff", "op"),
        (None, "past the end"),
        (None, "length byte"),
    ],
)
def test_malformed(payload: bytes | None, reason: str) -> None:
    if payload is None:
        payload = raw_options(b"\x0c\x10pc") if reason == "past the end" else raw_options(b"\x35\x01\x01\x0c")
    with pytest.raises(MalformedPacket, match=reason):
        dhcp.observe(payload, client_ctx())


def test_truncated_fuzz_corpus_packet_is_malformed() -> None:
    # ndpi/dhcp-fuzz.pcapng: option 60 claims 49 bytes where 37 remain.
    body = b"\x35\x01\x6a\x0c\x07MK03862\x3c\x31MSFT 5.0" + b"\x00" * 28
    with pytest.raises(MalformedPacket):
        dhcp.observe(raw_options(body), client_ctx())


def test_decode_hostname_directly() -> None:
    assert dhcp.decode_hostname(b"  Host\x00") == "Host"
    assert dhcp.decode_hostname(b"XN--BCHER-KVA.example") == "bücher.example"
    assert dhcp.decode_hostname(b"") == ""


# --- fuzzing -----------------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    return [
        request(
            [
                ("message-type", "request"),
                ("hostname", b"pc"),
                ("vendor_class_id", b"v"),
                ("param_req_list", [1, 3]),
                ("client_id", b"\x01abcdef"),
                ("requested_addr", "192.0.2.5"),
                ("lease_time", 60),
            ]
        ),
        reply([("message-type", "ack"), ("lease_time", 60)], yiaddr="192.0.2.5"),
        raw_options(b"\x35\x01\x01\x34\x01\x03\xff", file=b"\x0c\x01a\xff", sname=b"\x3c\x01b\xff"),
        raw_options(b"\x51\x0a\x04\x00\x00\x03abc\x00\x00\xff"),
    ]


def _check(payload: bytes) -> None:
    try:
        observations = dhcp.observe(payload, client_ctx())
    except ParseError:
        return
    for obs in observations:
        assert obs.value
        assert "msg_type" in obs.attrs
        json.dumps(obs.to_dict())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(payload: bytes) -> None:
    _check(payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=240, max_size=400).map(lambda b: b[:236] + b"\x63\x82\x53\x63" + b[240:]))
def test_fuzz_random_options_after_a_good_cookie(payload: bytes) -> None:
    _check(payload)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_seeds()), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_real_packets(seed: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for position, byte in edits:
        if position < len(data):
            data[position] = byte
    _check(bytes(data))
    _check(bytes(data[: len(data) // 2 + 120]))


# --- corpus ------------------------------------------------------------------------------------


#: Every port the DHCP, SNMP and SSDP tests read: one scapy pass per capture serves all three.
_OUR_PORTS = frozenset({67, 68, 161, 162, 1900})


@functools.cache
def _our_udp(path: Path) -> tuple[tuple[PacketContext, bytes], ...]:
    found: list[tuple[PacketContext, bytes]] = []
    try:
        reader = PcapReader(str(path))
    except Exception:  # a capture scapy cannot read is not these parsers' concern
        return ()
    with reader:
        for packet in reader:
            if UDP not in packet:
                continue
            udp = packet[UDP]
            if udp.sport not in _OUR_PORTS and udp.dport not in _OUR_PORTS:
                continue
            net = packet[IP] if IP in packet else packet.getlayer(IPv6)
            eth = packet.getlayer(Ether)
            src = Endpoint(net.src if net else None, eth.src if eth else None, udp.sport)
            dst = Endpoint(net.dst if net else None, eth.dst if eth else None, udp.dport)
            # The bytes as captured: bytes(udp.payload) would let scapy re-encode what it dissected.
            payload = udp.payload.original or b""
            if udp.len is not None and udp.len >= 8:
                payload = payload[: udp.len - 8]
            found.append((PacketContext(float(packet.time), src, dst), payload))
    return tuple(found)


def udp_payloads(path: Path, ports: frozenset[int]) -> list[tuple[PacketContext, bytes]]:
    """The UDP payloads of a capture to or from ``ports``, with their context (scapy, test only)."""
    assert ports <= _OUR_PORTS
    return [(ctx, data) for ctx, data in _our_udp(path) if ctx.src.port in ports or ctx.dst.port in ports]


def _corpus_observations(name: str) -> list[Observation]:
    require_corpus()
    out: list[Observation] = []
    for ctx, payload in udp_payloads(PCAP_DIR / name, frozenset({67, 68})):
        try:
            out += dhcp.observe(payload, ctx)
        except ParseError:
            continue
    return out


@pytest.mark.corpus
def test_corpus_sweep_only_parse_errors_escape() -> None:
    require_corpus()
    seen = 0
    for path in sorted(PCAP_DIR.rglob("*")):
        if path.suffix not in {".pcap", ".pcapng", ".cap"}:
            continue
        for ctx, payload in udp_payloads(path, frozenset({67, 68})):
            seen += 1
            try:
                observations = dhcp.observe(payload, ctx)
            except ParseError:
                continue
            for obs in observations:
                assert obs.attrs["msg_type"]
            # Mutations of real packets too: truncations at random points.
            rng = random.Random(seen)
            for _ in range(5):
                with contextlib.suppress(ParseError):
                    dhcp.observe(payload[: rng.randrange(len(payload) + 1)], ctx)
    assert seen > 50


@pytest.mark.corpus
def test_corpus_zeek_dhcp_trace() -> None:
    observations = _corpus_observations("zeek/dhcp__dhcp.pcap")
    assert {o.value for o in observations if o.kind is Kind.DHCP_HOSTNAME} == {"btest.is.cool"}
    assert {o.value for o in observations if o.kind is Kind.DHCP_VENDOR_CLASS} == {"ArubaAP"}
    leases = {(o.value, o.src.mac, o.attrs["msg_type"]) for o in observations if o.kind is Kind.DHCP_LEASE}
    assert ("128.2.6.189", "90:b1:1c:99:49:29", "ACK") in leases


@pytest.mark.corpus
def test_corpus_option_overload() -> None:
    observations = _corpus_observations("suricata-verify/dhcp-option-52-overload__input.pcap")
    assert {o.value for o in observations if o.kind is Kind.DHCP_VENDOR_CLASS} == {"udhcp 1.36.1"}
    fingerprints = {o.value for o in observations if o.kind is Kind.DHCP_FINGERPRINT}
    assert "1,3,6,12,15,28,42,54,66,67,119" in fingerprints


@pytest.mark.corpus
def test_corpus_device_join_fingerprints() -> None:
    observations = _corpus_observations("ndpi/android.pcap")
    assert {o.value for o in observations if o.kind is Kind.DHCP_FINGERPRINT} == {
        "1,121,3,6,15,119,252,95,44,46",
        "1,3,6,15,26,28,51,58,59,43",
    }
    assert {o.value for o in observations if o.kind is Kind.DHCP_VENDOR_CLASS} == {"android-dhcp-9"}
