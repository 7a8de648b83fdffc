"""DNS, mDNS and LLMNR: crafted messages, hostile bytes, and every DNS-family payload of the corpus."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.dns import DNS, DNSRR, DNSRRSRV
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether, Loopback
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Padding, Raw
from scapy.utils import PcapReader

from collectors import dns, nbns
from collectors._context import PacketContext
from collectors._errors import MalformedPacket, ParseError, Truncated
from collectors._observation import Endpoint, Kind, Observation
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus

CLIENT = Endpoint("10.0.0.2", None, 40000)
SERVER = Endpoint("10.0.0.1", None, 53)
CTX = PacketContext(1_700_000_000.0, CLIENT, SERVER)

QUERY = 0x0100  # RD
RESPONSE = 0x8180  # QR, RD, RA, NOERROR


# --- building messages -------------------------------------------------------------------------


def header(
    flags: int = QUERY, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, ident: int = 0x1234
) -> bytes:
    return struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)


def name(*labels: bytes | str) -> bytes:
    out = b""
    for label in labels:
        raw = label.encode() if isinstance(label, str) else label
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def dotted(text: str) -> bytes:
    return name(*text.split("."))


def question(qname: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return qname + struct.pack(">HH", qtype, qclass)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60, rclass: int = 1) -> bytes:
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


PTR_QNAME = b"\xc0\x0c"  # the question name, always at offset 12


def query(text: str, qtype: int = 1) -> bytes:
    return header() + question(dotted(text), qtype)


def a_response(text: str, *answers: bytes, rcode: int = 0) -> bytes:
    return header(RESPONSE | rcode, an=len(answers)) + question(dotted(text)) + b"".join(answers)


# --- header, questions, observations of classic DNS --------------------------------------------


def test_query_gives_one_dns_query_per_question() -> None:
    obs = dns.observe(query("WWW.Example.COM", 28), CTX, "dns")
    assert len(obs) == 1
    assert obs[0].kind is Kind.DNS_QUERY
    assert obs[0].value == "www.example.com"
    assert obs[0].attrs == {"qtype": "AAAA"}
    assert (obs[0].src, obs[0].dst) == (CLIENT, SERVER)


def test_parse_keeps_the_case_and_the_header_fields() -> None:
    msg = dns.parse(query("WWW.Example.COM", 65))
    assert (msg.id, msg.is_response, msg.opcode, msg.rcode, msg.partial) == (0x1234, False, 0, 0, False)
    assert msg.questions == [dns.Question("WWW.Example.COM", 65, 1)]


def test_unknown_qtype_is_named_the_rfc3597_way() -> None:
    assert dns.observe(query("example.com", 65280), CTX, "dns")[0].attrs["qtype"] == "TYPE65280"
    assert dns.type_name(65) == "HTTPS"
    assert dns.rcode_name(3) == "NXDOMAIN"
    assert dns.rcode_name(23) == "RCODE23"
    assert dns.class_name(0x8001) == "IN"


def test_update_opcode_is_reported() -> None:
    payload = header(flags=5 << 11) + question(dotted("zone.example"), 6)
    assert dns.observe(payload, CTX, "dns")[0].attrs == {"qtype": "SOA", "opcode": "UPDATE"}


def test_response_attributes_addresses_and_cnames_to_the_client() -> None:
    payload = a_response(
        "www.example.com",
        rr(PTR_QNAME, 5, dotted("cdn.example.net"), ttl=300),
        rr(dotted("cdn.example.net"), 1, bytes([93, 184, 216, 34]), ttl=60),
        rr(dotted("cdn.example.net"), 28, bytes.fromhex("20010db8000000000000000000000001"), ttl=120),
    )
    (obs,) = dns.observe(payload, CTX, "dns")
    assert obs.kind is Kind.DNS_ANSWER
    assert obs.value == "www.example.com"
    assert obs.attrs == {
        "rcode": "NOERROR",
        "qtype": "A",
        "addresses": ("93.184.216.34", "2001:db8::1"),
        "cnames": ("cdn.example.net",),
        "ttl": 60,
    }
    # Reversed: the answer comes from the server, but the Observation's src is the client.
    reply_ctx = PacketContext(1.0, SERVER, CLIENT)
    (reply,) = dns.observe(payload, reply_ctx, "dns")
    assert (reply.src, reply.dst) == (CLIENT, SERVER)


def test_nxdomain_response_has_only_the_keys_with_values() -> None:
    (obs,) = dns.observe(a_response("nope.example", rcode=3), CTX, "dns")
    assert obs.attrs == {"rcode": "NXDOMAIN", "qtype": "A"}


def test_response_without_question_says_nothing() -> None:
    payload = header(RESPONSE, qd=0, an=1) + rr(dotted("x.example"), 1, bytes(4))
    assert dns.observe(payload, CTX, "dns") == []


def test_addresses_are_bounded() -> None:
    answers = [rr(PTR_QNAME, 1, bytes([10, 0, i // 256, i % 256])) for i in range(100)]
    (obs,) = dns.observe(a_response("many.example", *answers), CTX, "dns")
    assert len(obs.attrs["addresses"]) == dns.MAX_ITEMS  # type: ignore[arg-type]


# --- names: compression and its guards --------------------------------------------------------


def test_backward_compression_pointers_are_followed() -> None:
    # answer owner = pointer to "example.com" inside the question name (offset 12 + 4).
    payload = a_response("www.example.com", rr(b"\x03cdn\xc0\x10", 1, bytes([1, 2, 3, 4])))
    msg = dns.parse(payload)
    assert msg.answers[0].name == "cdn.example.com"
    assert msg.answers[0].data == "1.2.3.4"


def test_pointer_chain_within_the_cap_is_followed() -> None:
    # A chain of pointers each pointing to the previous one (zeek's max-compression-depth trace).
    body = question(name("a"))
    records = b""
    target = 12
    for _ in range(dns.MAX_POINTERS - 1):
        here = 12 + len(body) + len(records)
        records += rr(struct.pack(">H", 0xC000 | target), 1, bytes(4))
        target = here
    payload = header(RESPONSE, an=dns.MAX_POINTERS - 1) + body + records
    msg = dns.parse(payload)
    assert not msg.partial
    assert {record.name for record in msg.answers} == {"a"}


def test_pointer_chain_past_the_cap_is_refused() -> None:
    # "a" at offset 12, then two-byte pointers, each to the one before it.
    buf = header(qd=0) + name("a")
    previous = 12
    for _ in range(dns.MAX_POINTERS + 1):
        here = len(buf)
        buf += struct.pack(">H", 0xC000 | previous)
        previous = here
    with pytest.raises(MalformedPacket, match="too many"):
        dns.read_name(buf, previous)  # MAX_POINTERS + 1 hops
    assert dns.read_name(buf, previous - 2) == ("a", previous)  # MAX_POINTERS hops


def test_pointer_limits_hold_across_names_already_read() -> None:
    # parse() remembers the names it read; a name ending in a pointer to one of them still has
    # its whole length and all its pointers counted.
    body = question(name("a"))
    records = b""
    target = 12
    for _ in range(dns.MAX_POINTERS + 1):
        here = 12 + len(body) + len(records)
        records += rr(struct.pack(">H", 0xC000 | target), 1, bytes(4))
        target = here
    msg = dns.parse(header(RESPONSE, an=dns.MAX_POINTERS + 1) + body + records)
    assert msg.partial
    assert len(msg.answers) == dns.MAX_POINTERS
    long_name = _name_of_length(200)
    owner = bytes([60]) + b"b" * 60 + b"\xc0\x0c"  # 61 + 202 wire bytes > 255
    msg = dns.parse(header(RESPONSE, an=1) + question(long_name) + rr(owner, 1, bytes(4)))
    assert msg.partial
    assert msg.answers == []
    owner = bytes([40]) + b"b" * 40 + b"\xc0\x0c"  # 41 + 202 = 243: fine
    msg = dns.parse(header(RESPONSE, an=1) + question(long_name) + rr(owner, 1, bytes(4)))
    assert msg.answers[0].name == "b" * 40 + "." + msg.questions[0].name


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (header() + b"\x03www\xc0\x0c" + b"\x00\x01\x00\x01", "backwards"),  # points at itself
        (header() + b"\xc0\x0e\x00\x01\x00\x01" + name("fwd"), "backwards"),  # forward pointer
        (header() + b"\x03www\xc0\x10\x00\x01\x00\x01", "backwards"),  # into its own labels
        (header() + b"\x03www\x40abc\x00\x00\x01\x00\x01", "extended label"),
        (header() + b"\x03www\x80abc\x00\x00\x01\x00\x01", "extended label"),
        (header() + b"\x03www\xc0", "cut short"),
        (header() + b"\x03www\x03co", "past the end"),
        (header() + b"\x03www", "past the end"),
        (header() + name("www", "example") + b"\x00\x01", "cut short"),
        (b"\x12\x34\x01\x00\x00\x01", "header"),
    ],
)
def test_broken_first_question_is_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        dns.parse(payload)
    with pytest.raises(MalformedPacket):
        dns.observe(payload, CTX, "dns")


def _name_of_length(total: int) -> bytes:
    labels = []
    remaining = total
    while remaining > 0:
        size = min(63, remaining)
        labels.append(b"a" * size)
        remaining -= size + 1
    return name(*labels)


def test_name_length_limit_is_tsharks() -> None:
    # tshark 4.0 prints 253 characters and says "<Name too long>" from 254 on (255 wire bytes).
    ok = dns.parse(header() + question(_name_of_length(253)))
    assert len(ok.questions[0].name) == 253
    with pytest.raises(MalformedPacket, match="longer than 255"):
        dns.parse(header() + question(_name_of_length(254)))
    assert len(dns.parse(header() + question(name(*["a"] * 127))).questions[0].name) == 253
    with pytest.raises(MalformedPacket):
        dns.parse(header() + question(name(*["a"] * 128)))


def test_root_name_is_a_dot() -> None:
    msg = dns.parse(header() + question(b"\x00", 2))
    assert msg.questions[0].name == "."
    assert dns.observe(header() + question(b"\x00", 2), CTX, "dns")[0].value == "."


# --- names: odd bytes are shown the way tshark shows them --------------------------------------


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        (b"a\x01b", "a\\001b"),  # ndpi/dns-invalid-chars: www.allyourbasesare\001\002\003ongto.cn
        (b"a\x08b\x0a\x1f", "a\\bb\\n\\037"),  # C escapes where C has one, octal otherwise
        (b"a\x7f", "a\\177"),
        (b"a b", "a b"),
        (b"a.b", "a.b"),  # a dot inside a label is not escaped by tshark either
        (b'A"<b>\\', 'A"<b>\\'),
        ("café".encode(), "café"),
        (b"caf\xe9", "caf\ufffd"),  # bad UTF-8: one replacement character per bad byte
        (b"a\x7f\x80\xff", "a\\177\ufffd\ufffd"),
        (b"xn--mnich-kva", "xn--mnich-kva"),  # IDNA A-labels stay as on the wire, like tshark
    ],
)
def test_labels_are_rendered_like_tshark(label: bytes, shown: str) -> None:
    msg = dns.parse(header() + question(name(label, "com")))
    assert msg.questions[0].name == f"{shown}.com"


def test_escaped_names_stay_printable_in_observations() -> None:
    (obs,) = dns.observe(header() + question(name(b"www", b"all\x04\x05", b"cn")), CTX, "dns")
    assert obs.value == "www.all\\004\\005.cn"
    assert obs.value.isprintable()


def test_blank_name_is_not_observed() -> None:
    # A label made of Unicode spaces strips to nothing: no Observation (which would refuse it).
    payload = header() + question(name("\u3000".encode()))
    assert dns.parse(payload).questions[0].name == "\u3000"
    assert dns.observe(payload, CTX, "dns") == []


# --- truncation: keep what parsed completely ---------------------------------------------------


def test_truncated_answer_keeps_the_complete_ones() -> None:
    full = a_response(
        "www.example.com",
        rr(PTR_QNAME, 1, bytes([192, 0, 2, 1])),  # documentation addresses (RFC 5737), data only
        rr(PTR_QNAME, 1, bytes([192, 0, 2, 2])),
    )
    cut = full[:-3]
    msg = dns.parse(cut)
    assert msg.partial is True
    assert [record.data for record in msg.answers] == ["192.0.2.1"]
    (obs,) = dns.observe(cut, CTX, "dns")
    assert obs.attrs["addresses"] == ("192.0.2.1",)


def test_second_question_broken_keeps_the_first() -> None:
    # ndpi/malformed_dns.pcap: tshark shows the first name and "<Name too long>".
    payload = header(qd=2) + question(dotted("www.xt.com")) + _name_of_length(300)
    msg = dns.parse(payload)
    assert msg.partial
    assert [q.name for q in msg.questions] == ["www.xt.com"]


def test_counts_larger_than_the_message_are_partial_not_fatal() -> None:
    payload = header(qd=1, an=40, ns=40, ar=40) + question(dotted("example.com"))
    msg = dns.parse(payload)
    assert msg.partial
    assert msg.questions
    assert not msg.answers


def test_rdata_of_wrong_size_ends_the_section() -> None:
    msg = dns.parse(a_response("x.example", rr(PTR_QNAME, 1, bytes(5))))
    assert msg.partial
    assert msg.answers == []
    msg = dns.parse(a_response("x.example", rr(PTR_QNAME, 28, bytes(4))))
    assert msg.partial
    assert msg.answers == []


def test_name_in_rdata_must_stay_in_its_record() -> None:
    # CNAME rdlength says 2 but the name is longer: a broken record.
    record = PTR_QNAME + struct.pack(">HHIH", 5, 1, 60, 2) + dotted("cdn.example.net")
    msg = dns.parse(header(RESPONSE, an=1) + question(dotted("x.example")) + record)
    assert msg.partial
    assert msg.answers == []


# --- record types ---------------------------------------------------------------------------


def _svcb_params(*params: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack(">HH", key, len(value)) + value for key, value in params)


def test_https_record_target_alpn_and_hints() -> None:
    v6 = ipaddress.IPv6Address("2606:4700::6810:84e5").packed
    rdata = (
        struct.pack(">H", 1)
        + b"\x00"
        + _svcb_params(
            (1, b"\x02h3\x02h2"),
            (3, b"\x01\xbb"),  # port: not reported
            (4, bytes([104, 16, 132, 229, 104, 16, 133, 229])),
            (6, v6),
        )
    )
    payload = header(RESPONSE, an=1) + question(dotted("cloudflare.com"), 65) + rr(PTR_QNAME, 65, rdata)
    assert dns.parse(payload).answers[0].data == dns.Svcb(
        1, ".", ("h3", "h2"), ("104.16.132.229", "104.16.133.229"), ("2606:4700::6810:84e5",)
    )
    (obs,) = dns.observe(payload, CTX, "dns")
    assert obs.attrs["alpn"] == ("h3", "h2")
    assert obs.attrs["ip_hints"] == ("104.16.132.229", "104.16.133.229", "2606:4700::6810:84e5")
    assert "svcb_targets" not in obs.attrs
    assert "addresses" not in obs.attrs  # hints are not answers


def test_svcb_alias_mode_target_is_reported() -> None:
    rdata = struct.pack(">H", 0) + dotted("foo.example.com")
    payload = header(RESPONSE, an=1) + question(dotted("example.com"), 64) + rr(PTR_QNAME, 64, rdata)
    (obs,) = dns.observe(payload, CTX, "dns")
    assert obs.attrs["svcb_targets"] == ("foo.example.com",)


def test_svcb_parameter_overrunning_its_record_is_broken() -> None:
    rdata = struct.pack(">H", 1) + b"\x00" + struct.pack(">HH", 1, 40) + b"\x02h3"
    payload = header(RESPONSE, an=1) + question(dotted("example.com"), 65) + rr(PTR_QNAME, 65, rdata)
    assert dns.parse(payload).partial


def test_srv_txt_ptr_and_skipped_types() -> None:
    srv = struct.pack(">HHH", 0, 5, 5060) + dotted("sip.example.com")
    txt = b"\x05k1=v1\x00\x06k2=v\xc3\xa9"
    mx = struct.pack(">H", 10) + dotted("mx.example.com")
    payload = (
        header(RESPONSE, an=4)
        + question(dotted("_sip._udp.example.com"), 33)
        + (
            rr(PTR_QNAME, 33, srv)
            + rr(PTR_QNAME, 16, txt)
            + rr(PTR_QNAME, 12, dotted("host.example.com"))
            + rr(PTR_QNAME, 15, mx)
        )
    )
    answers = dns.parse(payload).answers
    assert answers[0].data == dns.Srv(0, 5, 5060, "sip.example.com")
    assert answers[1].data == ("k1=v1", "", "k2=vé")
    assert answers[2].data == "host.example.com"
    assert answers[3].data is None  # MX: skipped by its length


def test_txt_is_bounded() -> None:
    txt = b"".join(b"\xff" + b"x" * 255 for _ in range(40))
    payload = header(RESPONSE, an=1) + question(dotted("t.example"), 16) + rr(PTR_QNAME, 16, txt)
    data = dns.parse(payload).answers[0].data
    assert isinstance(data, tuple)
    assert len(data) == dns.MAX_TXT_STRINGS
    assert all(len(item) == dns.MAX_TXT_CHARS for item in data)


def test_txt_string_overrunning_its_record_is_broken() -> None:
    payload = header(RESPONSE, an=1) + question(dotted("t.example"), 16) + rr(PTR_QNAME, 16, b"\x09short")
    assert dns.parse(payload).partial


# --- mDNS ------------------------------------------------------------------------------------


MDNS_DEVICE = Endpoint("192.168.1.50", None, 5353)
MDNS_GROUP = Endpoint("224.0.0.251", None, 5353)
MDNS_CTX = PacketContext(1.0, MDNS_DEVICE, MDNS_GROUP)


def _kinds(observations: list[Observation]) -> list[tuple[str, str, dict[str, object]]]:
    return [(str(o.kind), o.value, dict(o.attrs)) for o in observations]


def test_mdns_questions_are_services_or_hosts() -> None:
    payload = header(0, qd=3) + (
        question(dotted("_ipp._tcp.local"), 12)
        + question(dotted("Printer-42.local"), 1)
        + question(dotted("_services._dns-sd._udp.local"), 12)
    )
    assert _kinds(dns.observe(payload, MDNS_CTX, "mdns")) == [
        ("mdns.service", "_ipp._tcp.local", {"question": True, "qtype": "PTR"}),
        ("mdns.host", "printer-42.local", {"question": True, "qtype": "A"}),
        ("mdns.service", "_services._dns-sd._udp.local", {"question": True, "qtype": "PTR"}),
    ]


def test_mdns_announcement_reports_every_section() -> None:
    instance = "Infusion Pump 7._ipp._tcp.local"
    records = (
        rr(dotted("_services._dns-sd._udp.local"), 12, dotted("_ipp._tcp.local"))
        + rr(dotted("_ipp._tcp.local"), 12, dotted(instance))
        + rr(dotted(instance), 33, struct.pack(">HHH", 0, 0, 631) + dotted("pump7.local"))
        + rr(dotted(instance), 16, b"\x0dmodel=Alaris8\x00\x05ty=P7")
        + rr(dotted("pump7.local"), 1, bytes([192, 168, 1, 50]), rclass=0x8001)
        + rr(dotted("pump7.local"), 28, bytes.fromhex("fe800000000000000000000000000001"), rclass=0x8001)
        + rr(dotted("50.1.168.192.in-addr.arpa"), 12, dotted("pump7.local"))
    )
    # Three in answers, the rest in additional: mDNS does that.
    payload = header(0x8400, qd=0, an=3, ar=4) + records
    obs = dns.observe(payload, MDNS_CTX, "mdns")
    assert _kinds(obs) == [
        ("mdns.service", "_ipp._tcp.local", {"service_type": "_services._dns-sd._udp.local"}),
        ("mdns.service", instance.lower(), {"service_type": "_ipp._tcp.local"}),
        ("mdns.service", instance.lower(), {"target": "pump7.local", "port": 631}),
        ("mdns.txt", instance.lower(), {"txt": ("model=Alaris8", "ty=P7")}),
        ("mdns.host", "pump7.local", {"reverse": "50.1.168.192.in-addr.arpa"}),
        ("mdns.host", "pump7.local", {"addresses": ("192.168.1.50", "fe80::1")}),
    ]
    # The device announced itself: src is the packet's source, never reversed.
    assert all(o.src == MDNS_DEVICE for o in obs)


def test_mdns_known_answers_in_a_query_are_flagged() -> None:
    payload = header(0, qd=1, an=1, ns=1) + (
        question(dotted("_airplay._tcp.local"), 12)
        + rr(dotted("_airplay._tcp.local"), 12, dotted("Living Room._airplay._tcp.local"))
        # A probe's authority record is the sender's own (RFC 6762 §8.2): not flagged.
        + rr(dotted("me.local"), 1, bytes([192, 168, 1, 50]))
    )
    assert _kinds(dns.observe(payload, MDNS_CTX, "mdns")) == [
        ("mdns.service", "_airplay._tcp.local", {"question": True, "qtype": "PTR"}),
        (
            "mdns.service",
            "living room._airplay._tcp.local",
            {"service_type": "_airplay._tcp.local", "known_answer": True},
        ),
        ("mdns.host", "me.local", {"addresses": ("192.168.1.50",)}),
    ]


def test_mdns_empty_txt_is_not_reported() -> None:
    payload = header(0x8400, qd=0, an=1) + rr(dotted("x._http._tcp.local"), 16, b"\x00")
    assert dns.observe(payload, MDNS_CTX, "mdns") == []


def test_mdns_utf8_instance_names() -> None:
    instance = "Luca\u2019s iMac._smb._tcp.local"
    payload = header(0x8400, qd=0, an=1) + rr(dotted("_smb._tcp.local"), 12, dotted(instance))
    (obs,) = dns.observe(payload, MDNS_CTX, "mdns")
    assert obs.value == "luca\u2019s imac._smb._tcp.local"


def test_mdns_with_scapy_crafted_response() -> None:
    packet = DNS(
        id=0,
        qr=1,
        aa=1,
        qd=[],
        an=[
            DNSRR(rrname="_http._tcp.local.", type="PTR", rdata="web._http._tcp.local."),
            DNSRRSRV(rrname="web._http._tcp.local.", port=8080, target="box.local."),
            DNSRR(rrname="box.local.", type="A", rdata="192.168.1.9"),
        ],
    )
    obs = dns.observe(bytes(packet), MDNS_CTX, "mdns")
    assert _kinds(obs) == [
        ("mdns.service", "web._http._tcp.local", {"service_type": "_http._tcp.local"}),
        ("mdns.service", "web._http._tcp.local", {"target": "box.local", "port": 8080}),
        ("mdns.host", "box.local", {"addresses": ("192.168.1.9",)}),
    ]


# --- LLMNR -----------------------------------------------------------------------------------


def test_llmnr_query_and_answer() -> None:
    ctx = PacketContext(1.0, Endpoint("192.168.1.100", None, 50000), Endpoint("224.0.0.252", None, 5355))
    (asked,) = dns.observe(header(0) + question(dotted("WPAD")), ctx, "llmnr")
    assert (asked.kind, asked.value, dict(asked.attrs)) == (Kind.LLMNR_QUERY, "wpad", {"qtype": "A"})
    answer_ctx = PacketContext(
        1.0, Endpoint("192.168.1.200", None, 5355), Endpoint("192.168.1.100", None, 50000)
    )
    payload = header(0x8000, an=1) + question(dotted("wpad")) + rr(PTR_QNAME, 1, bytes([10, 10, 10, 10]))
    (answered,) = dns.observe(payload, answer_ctx, "llmnr")
    assert dict(answered.attrs) == {"answer": True, "qtype": "A", "addresses": ("10.10.10.10",)}
    assert answered.src.ip == "192.168.1.100"  # reversed: src is the asker


# --- TCP -------------------------------------------------------------------------------------


def _framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)


def test_tcp_stream_with_several_messages() -> None:
    data = _framed(query("one.example"), query("two.example"))
    assert [o.value for o in dns.observe_tcp(data, CTX, "dns")] == ["one.example", "two.example"]


@pytest.mark.parametrize("data", [b"", b"\x00", _framed(query("one.example"))[:-1]])
def test_tcp_incomplete_first_message_is_truncated(data: bytes) -> None:
    with pytest.raises(Truncated):
        dns.observe_tcp(data, CTX, "dns")


def test_tcp_broken_first_message_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        dns.observe_tcp(_framed(b"\x00" * 5), CTX, "dns")


def test_tcp_later_messages_that_are_incomplete_or_broken_are_left_out() -> None:
    data = _framed(query("one.example"), b"\x00" * 5) + b"\x00\x40abc"
    assert [o.value for o in dns.observe_tcp(data, CTX, "dns")] == ["one.example"]
    data = _framed(query("one.example")) + b"\x00\x40abc"
    assert [o.value for o in dns.observe_tcp(data, CTX, "dns")] == ["one.example"]


# --- hostile bytes: only ParseError may escape ------------------------------------------------

SEEDS = [
    query("www.example.com"),
    a_response(
        "www.example.com",
        rr(PTR_QNAME, 5, b"\x03cdn\xc0\x10"),
        rr(b"\x03cdn\xc0\x10", 1, bytes([1, 2, 3, 4])),
        rr(b"\x03cdn\xc0\x10", 28, bytes(16)),
    ),
    header(0x8400, qd=0, an=4)
    + rr(dotted("_ipp._tcp.local"), 12, dotted("p._ipp._tcp.local"))
    + rr(dotted("p._ipp._tcp.local"), 33, struct.pack(">HHH", 0, 0, 631) + dotted("p.local"))
    + rr(dotted("p._ipp._tcp.local"), 16, b"\x03a=b")
    + rr(dotted("1.0.0.10.in-addr.arpa"), 12, dotted("p.local")),
    header(RESPONSE, an=1)
    + question(dotted("example.com"), 65)
    + rr(PTR_QNAME, 65, b"\x00\x01\x00" + _svcb_params((1, b"\x02h2"), (4, bytes(4)), (6, bytes(16)))),
]

MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 2000), st.integers(0, 255)
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
    for proto in ("dns", "mdns", "llmnr"):
        for call in (
            dns.parse,
            lambda d, p=proto: dns.observe(d, CTX, p),
            lambda d, p=proto: dns.observe_tcp(d, CTX, p),
        ):
            with contextlib.suppress(ParseError):
                call(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    _feed_everything(data)
    _feed_everything(header(qd=2, an=3, ns=1, ar=2) + data)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(SEEDS), MUTATIONS)
def test_mutated_messages_raise_only_parse_errors(seed: bytes, mutations: list[tuple[str, int, int]]) -> None:
    _feed_everything(_mutate(seed, mutations))


# --- the corpus: every DNS-family payload -----------------------------------------------------

DNS_PORTS = {53: "dns", 5353: "mdns", 5355: "llmnr", 137: "nbns"}


def dns_family_payloads(path: Path) -> Iterator[tuple[str, str, bytes, PacketContext]]:
    """(transport, protocol, payload, context) of each UDP/TCP payload on a DNS-family port.

    TCP payloads are given per segment, in capture order, per direction (no reassembly here:
    the caller concatenates until the parser stops saying Truncated).
    """
    # Stop scapy at the transport: its own DNS dissection is not what we test.
    conf.layers.filter(
        [Ether, Dot1Q, CookedLinux, Loopback, PPPoE, PPP, IP, IPv6, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
         IPv6ExtHdrDestOpt, UDP, TCP, Raw, Padding]
    )  # fmt: skip
    try:
        with PcapReader(str(path)) as reader:
            for packet in reader:
                ip = packet.getlayer(IP) or packet.getlayer(IPv6)
                l4 = packet.getlayer(UDP) or packet.getlayer(TCP)
                if ip is None or l4 is None or not isinstance(l4.payload, Raw | Padding):
                    continue
                proto = DNS_PORTS.get(l4.dport) or DNS_PORTS.get(l4.sport)
                if proto is None or isinstance(l4.payload, Padding):
                    continue
                payload = bytes(l4.payload.load)
                if isinstance(l4, UDP) and l4.len and l4.len >= 8:
                    payload = payload[: l4.len - 8]
                if not payload:
                    continue
                ctx = PacketContext(
                    float(packet.time), Endpoint(ip.src, None, l4.sport), Endpoint(ip.dst, None, l4.dport)
                )
                yield ("udp" if isinstance(l4, UDP) else "tcp", proto, payload, ctx)
    finally:
        conf.layers.unfilter()


def observe_capture(path: Path) -> tuple[list[Observation], int]:
    """Observations of every DNS-family payload of a capture, and the number of ParseErrors."""
    observations: list[Observation] = []
    errors = 0
    streams: dict[tuple[str | None, str | None, int | None, int | None], bytes] = {}
    for transport, proto, payload, ctx in dns_family_payloads(path):
        try:
            if proto == "nbns":
                if transport == "udp":
                    observations += nbns.observe(payload, ctx)
            elif transport == "udp":
                observations += dns.observe(payload, ctx, proto)
            else:
                key = (ctx.src.ip, ctx.dst.ip, ctx.src.port, ctx.dst.port)
                data = streams.pop(key, b"") + payload
                try:
                    observations += dns.observe_tcp(data, ctx, proto)
                except Truncated:
                    streams[key] = data
        except ParseError:
            errors += 1
    return observations, errors


CORPUS_CAPTURES = corpus_pcaps()


@pytest.mark.corpus
@pytest.mark.parametrize(
    "capture", CORPUS_CAPTURES or [None], ids=lambda p: p.relative_to(PCAP_DIR).as_posix() if p else "absent"
)
def test_corpus_payloads_raise_only_parse_errors(capture: Path | None) -> None:
    """Every DNS-family payload of every corpus capture parses or raises a ParseError, nothing else."""
    require_corpus()
    assert capture is not None
    observe_capture(capture)


@pytest.mark.corpus
def test_corpus_known_names() -> None:
    """A few values tshark also reports, read straight from the captures."""
    require_corpus()
    wikipedia, _ = observe_capture(PCAP_DIR / "zeek" / "wikipedia.pcap")
    values = {(str(o.kind), o.value) for o in wikipedia}
    assert ("dns.query", "upload.wikimedia.org") in values
    assert ("mdns.service", "gemini._sftp-ssh._tcp.local") in values
    assert ("llmnr.query", "brwc0cb383d1f42") in values
    assert ("nbns.name", "WORKGROUP<1d>") in values
    answers = [o for o in wikipedia if o.kind is Kind.DNS_ANSWER and o.value == "meta.wikimedia.org"]
    assert any(o.attrs.get("addresses") == ("208.80.152.2",) for o in answers)
    invalid, errors = observe_capture(PCAP_DIR / "ndpi" / "dns-invalid-chars.pcap")
    assert "www.allyourbasesare\\001\\002\\003ongto.cn" in {o.value for o in invalid}
    assert errors == 0
    loops, errors = observe_capture(PCAP_DIR / "zeek" / "dns__dns-invalid-names.pcap")
    assert errors == 3
    assert loops == []
