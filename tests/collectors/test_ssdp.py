"""SSDP parser: NOTIFY / M-SEARCH / search responses, LOCATION reduction, fuzzing and the corpus."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import Endpoint, Kind, MalformedPacket, Observation, PacketContext, ParseError, ssdp
from tests.collectors.test_dhcp import udp_payloads
from tests.corpus import PCAP_DIR, require_corpus

DEVICE = Endpoint("192.0.2.20", "00:00:5e:00:53:14", 1900)
MULTICAST = Endpoint("239.255.255.250", "01:00:5e:7f:ff:fa", 1900)


def ctx(**kwargs: object) -> PacketContext:
    return PacketContext(ts=2.0, src=DEVICE, dst=MULTICAST, **kwargs)  # type: ignore[arg-type]


def http_message(start: str, *headers: str, eol: str = "\r\n") -> bytes:
    return (eol.join([start, *headers]) + eol + eol).encode()


NOTIFY = http_message(
    "NOTIFY * HTTP/1.1",
    "HOST: 239.255.255.250:1900",
    "CACHE-CONTROL: max-age=1800",
    "lOCATION: http://192.0.2.20:49152/description.xml?patient=123",
    "Server: Linux/3.14 UPnP/1.0 GE-Healthcare-Gateway/2.1",
    "NT: upnp:rootdevice",
    "NTS: ssdp:alive",
    "USN: uuid:2f402f80-da50-11e1-9b23-00178816b1d8::upnp:rootdevice",
)


def by_kind(observations: list[Observation]) -> dict[Kind, Observation]:
    return {obs.kind: obs for obs in observations}


def test_notify_reports_server_and_location() -> None:
    found = by_kind(ssdp.observe(NOTIFY, ctx()))
    server = found[Kind.SSDP_SERVER]
    assert server.value == "Linux/3.14 UPnP/1.0 GE-Healthcare-Gateway/2.1"
    assert server.src == DEVICE
    assert server.dst == MULTICAST
    assert server.attrs == {
        "method": "NOTIFY",
        "nt": "upnp:rootdevice",
        "st": None,
        "usn": "uuid:2f402f80-da50-11e1-9b23-00178816b1d8::upnp:rootdevice",
        "nts": "ssdp:alive",
    }
    location = found[Kind.SSDP_LOCATION]
    assert location.value == "http://192.0.2.20:49152"
    assert location.attrs["path_present"] is True


def test_the_location_path_and_query_are_never_kept() -> None:
    text = json.dumps([o.to_dict() for o in ssdp.observe(NOTIFY, ctx())])
    assert "description.xml" not in text
    assert "patient" not in text


def test_search_response() -> None:
    payload = http_message(
        "HTTP/1.1 200 OK",
        "CACHE-CONTROL: max-age=100",
        "EXT:",
        "LOCATION: http://[fe80::1]:80/rootDesc.xml",
        "SERVER: FreeRTOS/9 UPnP/1.1 Pump/1.0",
        "ST: urn:schemas-upnp-org:device:InfusionPump:1",
        "USN: uuid:abc::urn:schemas-upnp-org:device:InfusionPump:1",
    )
    found = by_kind(ssdp.observe(payload, ctx()))
    assert found[Kind.SSDP_SERVER].attrs["method"] == "RESPONSE"
    assert found[Kind.SSDP_SERVER].attrs["st"] == "urn:schemas-upnp-org:device:InfusionPump:1"
    assert found[Kind.SSDP_LOCATION].value == "http://[fe80::1]:80"


def test_m_search_user_agent_is_not_kept() -> None:
    payload = http_message(
        "M-SEARCH * HTTP/1.1",
        "HOST: 239.255.255.250:1900",
        'MAN: "ssdp:discover"',
        "MX: 1",
        "ST: urn:dial-multiscreen-org:service:dial:1",
        "USER-AGENT: Google Chrome/99.0.4844.74 Mac OS X",
    )
    assert ssdp.observe(payload, ctx()) == []


def test_byebye_without_server_still_reports_location() -> None:
    payload = http_message(
        "NOTIFY * HTTP/1.1", "NT: upnp:rootdevice", "NTS: ssdp:byebye", "LOCATION: http://192.0.2.20/"
    )
    (location,) = ssdp.observe(payload, ctx())
    assert location.value == "http://192.0.2.20:80"
    assert location.attrs["path_present"] is False
    assert location.attrs["nts"] == "ssdp:byebye"


def test_bare_lf_line_endings_and_trailing_nul() -> None:
    payload = http_message("NOTIFY * HTTP/1.1", "SERVER: x/1", eol="\n") + b"\x00"
    (server,) = ssdp.observe(payload, ctx())
    assert server.value == "x/1"


def test_headers_end_at_the_empty_line() -> None:
    payload = http_message("NOTIFY * HTTP/1.1", "NT: a") + b"SERVER: smuggled/1\r\n\r\n"
    assert ssdp.observe(payload, ctx()) == []


def test_first_header_wins_and_values_are_bounded() -> None:
    payload = http_message("NOTIFY * HTTP/1.1", "SERVER: first/1", "SERVER: second/2", "USN: " + "u" * 5000)
    (server,) = ssdp.observe(payload, ctx())
    assert server.value == "first/1"
    usn = server.attrs["usn"]
    assert isinstance(usn, str)
    assert len(usn) == 256


def test_header_count_is_bounded() -> None:
    filler = [f"X-{i}: y" for i in range(1000)]
    payload = http_message("NOTIFY * HTTP/1.1", *filler, "SERVER: late/1")
    assert ssdp.observe(payload, ctx()) == []


def test_hostile_bytes_are_replaced_and_escaped() -> None:
    payload = b"NOTIFY * HTTP/1.1\r\nSERVER: bad\xff\xfe \x1b[2Jbanner\r\n\r\n"
    (server,) = ssdp.observe(payload, ctx())
    assert server.value == "bad\ufffd\ufffd \\x1b[2Jbanner"


def test_vlan_reaches_attrs() -> None:
    assert {o.attrs["vlan"] for o in ssdp.observe(NOTIFY, ctx(vlan=12))} == {12}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://192.0.2.1:7406/rootDesc.xml", ("http://192.0.2.1:7406", True)),
        ("HTTP://Device.Example:8080", ("http://device.example:8080", False)),
        ("http://192.0.2.1/", ("http://192.0.2.1:80", False)),
        ("https://192.0.2.1?x=1", ("https://192.0.2.1:443", True)),
        ("http://admin:hunter2@192.0.2.1:81/x", ("http://192.0.2.1:81", True)),
        ("http://[2001:db8::1]:8080/desc", ("http://[2001:db8::1]:8080", True)),
        ("http://[2001:db8::1]/desc", ("http://[2001:db8::1]:80", True)),
        ("ftp://192.0.2.1/desc.xml", ("ftp://192.0.2.1", True)),
        ("http://192.0.2.1#frag", ("http://192.0.2.1:80", True)),
    ],
)
def test_reduce_location(url: str, expected: tuple[str, bool]) -> None:
    assert ssdp.reduce_location(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "/rootDesc.xml",
        "192.0.2.1:80/desc",
        "http://",
        "http://:80/",
        "http://host:99999/",
        "http://host:8o/",
        "http://[2001:db8::1/",
        "http://[2001:db8::1]x/",
        "ht tp://host/",
        "http://ho st/",
    ],
)
def test_reduce_location_refuses_what_is_not_a_url(url: str) -> None:
    assert ssdp.reduce_location(url) is None


def test_unusable_location_gives_no_location_observation() -> None:
    payload = http_message("NOTIFY * HTTP/1.1", "LOCATION: /rootDesc.xml")
    assert ssdp.observe(payload, ctx()) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\r\n\r\n",
        b"\x00\x01\x02garbage",
        b"GET\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"NOTIFY * SIP/2.0\r\nSERVER: x\r\n\r\n",
        b"<?xml version='1.0'?><soap:Envelope/>",
    ],
)
def test_not_ssdp_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedPacket):
        ssdp.observe(payload, ctx())


# --- fuzzing -----------------------------------------------------------------------------------


def _check(payload: bytes) -> None:
    try:
        observations = ssdp.observe(payload, ctx())
    except ParseError:
        return
    for obs in observations:
        assert obs.value
        if obs.kind is Kind.SSDP_LOCATION:
            assert "/" not in obs.value.partition("://")[2]
        json.dumps(obs.to_dict())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(payload: bytes) -> None:
    _check(payload)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_random_text_after_a_start_line(body: str) -> None:
    _check(b"NOTIFY * HTTP/1.1\r\n" + body.encode("utf-8", "surrogatepass"))
    _check(b"NOTIFY * HTTP/1.1\r\nLOCATION: " + body.encode("utf-8", "surrogatepass") + b"\r\n\r\n")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(NOTIFY)), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_real_packets(edits: list[tuple[int, int]]) -> None:
    data = bytearray(NOTIFY)
    for position, byte in edits:
        if position < len(data):
            data[position] = byte
    _check(bytes(data))


# --- corpus ------------------------------------------------------------------------------------


@pytest.mark.corpus
def test_corpus_sweep_only_parse_errors_escape() -> None:
    require_corpus()
    seen = 0
    for path in sorted(PCAP_DIR.rglob("*")):
        if path.suffix not in {".pcap", ".pcapng", ".cap"}:
            continue
        for packet_ctx, payload in udp_payloads(path, frozenset({1900})):
            seen += 1
            with contextlib.suppress(ParseError):
                ssdp.observe(payload, packet_ctx)
            for cut in range(0, len(payload), 7):
                with contextlib.suppress(ParseError):
                    ssdp.observe(payload[:cut], packet_ctx)
    assert seen >= 6


@pytest.mark.corpus
def test_corpus_tomato_router_notify() -> None:
    require_corpus()
    ((packet_ctx, payload),) = udp_payloads(
        PCAP_DIR / "suricata-verify/sip-ssdp-pm__ssdp.pcap", frozenset({1900})
    )
    found = by_kind(ssdp.observe(payload, packet_ctx))
    assert found[Kind.SSDP_SERVER].value.startswith("UPnP/Tomato 1.28.7500")
    assert found[Kind.SSDP_LOCATION].value == "http://192.168.1.1:7406"
    assert found[Kind.SSDP_SERVER].src.ip == "192.168.1.1"


@pytest.mark.corpus
def test_corpus_non_standard_port_is_not_ours() -> None:
    # ndpi/ssdp-m-search.pcap sends M-SEARCH to UDP 32412: the decoder never hands it to us.
    require_corpus()
    assert udp_payloads(PCAP_DIR / "ndpi/ssdp-m-search.pcap", frozenset({1900})) == []
