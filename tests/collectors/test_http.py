"""HTTP/1.x request and response heads: Host, User-Agent, Server, and never the path or query."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.http import HTTP, HTTPRequest, HTTPResponse
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Padding, Raw
from scapy.utils import PcapReader

from collectors import (
    Endpoint,
    Kind,
    MalformedPacket,
    PacketContext,
    ParseError,
    Truncated,
    decode_file,
    http,
)
from tests.conformance.fields_http_hl7 import FIELDS, NORMALISE
from tests.corpus import captures_with_truth, require_corpus, truth_of

CLIENT = Endpoint(ip="10.1.2.3", port=51234)
SERVER = Endpoint(ip="10.9.8.7", port=80)
CTX = PacketContext(ts=1_700_000_000.0, src=CLIENT, dst=SERVER)


def request(*headers: str, line: str = "GET /index.html HTTP/1.1", eol: str = "\r\n") -> bytes:
    """Build a request head from text lines."""
    return (eol.join([line, *headers]) + eol + eol).encode()


def by_kind(observations: list, kind: Kind) -> list:
    return [o for o in observations if o.kind is kind]


# --- requests --------------------------------------------------------------------------------------


def test_host_and_user_agent_from_a_scapy_request() -> None:
    raw = bytes(
        HTTP()
        / HTTPRequest(
            Method=b"GET",
            Path=b"/chat?q=1",
            Http_Version=b"HTTP/1.1",
            Host=b"ChatGPT.com:8443",
            User_Agent=b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        )
    )
    assert http.is_request_start(raw)
    obs = http.observe_request(raw, CTX)
    host, agent = by_kind(obs, Kind.HTTP_HOST), by_kind(obs, Kind.HTTP_USER_AGENT)
    assert [o.value for o in host] == ["chatgpt.com"]
    assert host[0].attrs == {"method": "GET", "version": "1.1", "port": 8443}
    assert host[0].src == CLIENT
    assert host[0].dst == SERVER
    assert [o.value for o in agent] == ["Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"]


def test_header_names_are_case_insensitive_and_the_first_host_wins() -> None:
    raw = request("hOsT: first.example", "HOST: second.example", "user-AGENT: ua/1")
    obs = http.observe_request(raw, CTX)
    assert [o.value for o in obs] == ["first.example", "ua/1"]


def test_folded_header_lines_are_unfolded() -> None:
    raw = request("Host: h.example", "User-Agent: Lab/1.0", "  (Linux;", "\tRT)", "Accept: */*")
    (agent,) = by_kind(http.observe_request(raw, CTX), Kind.HTTP_USER_AGENT)
    assert agent.value == "Lab/1.0 (Linux; RT)"


def test_bare_lf_line_endings() -> None:
    raw = request("Host: lf.example", "User-Agent: lf/1", eol="\n")
    assert [o.value for o in http.observe_request(raw, CTX)] == ["lf.example", "lf/1"]


def test_no_host_header_and_origin_form_gives_only_the_user_agent() -> None:
    obs = http.observe_request(request("User-Agent: x/1", line="GET /a HTTP/1.0"), CTX)
    assert [(o.kind, o.value) for o in obs] == [(Kind.HTTP_USER_AGENT, "x/1")]


def test_absolute_form_gives_the_host_but_never_the_path() -> None:
    line = "GET http://user:secret@Proxy-Target.example:8080/patients/NIR-1850775123456?x=DUPONT HTTP/1.1"
    (host,) = http.observe_request(request(line=line), CTX)
    assert host.value == "proxy-target.example"
    assert host.attrs == {"method": "GET", "version": "1.1", "port": 8080, "proxy": True}
    text = json.dumps(host.to_dict())
    for secret in ("patients", "NIR-", "DUPONT", "secret", "user"):
        assert secret not in text


def test_absolute_form_with_a_host_header_keeps_the_header() -> None:
    raw = request("Host: header.example", line="GET HTTP://target.example/ HTTP/1.1")
    (host,) = http.observe_request(raw, CTX)
    assert host.value == "header.example"
    assert host.attrs["proxy"] is True


def test_connect_gives_host_and_port() -> None:
    (host,) = http.observe_request(request(line="CONNECT api.openai.com:443 HTTP/1.1"), CTX)
    assert host.value == "api.openai.com"
    assert host.attrs["port"] == 443
    assert host.attrs["method"] == "CONNECT"


@pytest.mark.parametrize(
    ("header", "host", "port"),
    [
        ("[2001:db8::1]:8080", "2001:db8::1", 8080),
        ("[2001:db8::1]", "2001:db8::1", None),
        ("2001:db8::1", "2001:db8::1", None),
        ("host.example:notaport", "host.example", None),
        ("host.example:99999", "host.example", None),
        ("host.example.", "host.example", None),
    ],
)
def test_host_port_forms(header: str, host: str, port: int | None) -> None:
    (obs,) = http.observe_request(request(f"Host: {header}"), CTX)
    assert obs.value == host
    assert obs.attrs.get("port") == port


def test_raw_utf8_host_becomes_idna_and_punycode_stays() -> None:
    (obs,) = http.observe_request(request("Host: münchen.example"), CTX)
    assert obs.value == "xn--mnchen-3ya.example"
    (obs,) = http.observe_request(request("Host: www.love.xn--55qx5d"), CTX)
    assert obs.value == "www.love.xn--55qx5d"


def test_non_utf8_user_agent_is_read_as_latin1() -> None:
    raw = b"GET / HTTP/1.1\r\nUser-Agent: Caf\xe9Client/1 \xff\r\n\r\n"
    (agent,) = http.observe_request(raw, CTX)
    assert agent.value == "CaféClient/1 ÿ"


def test_control_characters_are_escaped_and_whitespace_only_values_dropped() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: \x0c\r\nUser-Agent: a\x01b\r\n\r\n"
    (agent,) = http.observe_request(raw, CTX)
    assert agent.value == "a\\x01b"


def test_empty_user_agent_gives_nothing() -> None:
    assert http.observe_request(request("User-Agent:", "Host:"), CTX) == []


def test_header_block_over_the_cap_uses_the_complete_lines() -> None:
    head = request("Host: big.example", "User-Agent: big/1").rstrip(b"\r\n") + b"\r\n"
    raw = head + b"Cookie: " + b"a" * (http.MAX_HEADER_BYTES + 100)
    assert [o.value for o in http.observe_request(raw, CTX)] == ["big.example", "big/1"]


def test_truncated_until_the_blank_line() -> None:
    raw = request("Host: t.example", "User-Agent: t/1")
    for cut in (1, 5, 20, len(raw) - 2):
        with pytest.raises(Truncated):
            http.observe_request(raw[:cut], CTX)
    assert len(http.observe_request(raw, CTX)) == 2


def test_http09_rtsp_and_sip_are_not_ours() -> None:
    assert http.observe_request(b"GET /zeek.html\n", CTX) == []
    rtsp = b"OPTIONS rtsp://cam.example/stream RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: vlc\r\n\r\n"
    assert http.observe_request(rtsp, CTX) == []
    sip = b"OPTIONS sip:a@b.example SIP/2.0\r\nUser-Agent: phone\r\n\r\n"
    assert http.observe_request(sip, CTX) == []


def test_unknown_method_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        http.observe_request(b"FETCH / HTTP/1.1\r\n\r\n", CTX)


def test_start_line_longer_than_the_cap_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        http.observe_request(b"GET /" + b"a" * http.MAX_HEADER_BYTES, CTX)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1", True),
        (b"PROPFIND /dav/ HTTP/1.1", True),
        (b"OPTIONS * HTTP/1.1", True),
        (b"GET/ HTTP/1.1", False),
        (b"GETX / HTTP/1.1", False),
        (b"get / HTTP/1.1", False),
        (b"HTTP/1.1 200 OK", False),
        (b"", False),
        (b"GE", False),
        (b"\x16\x03\x01\x02\x00", False),
    ],
)
def test_is_request_start(data: bytes, expected: bool) -> None:
    assert http.is_request_start(data) is expected


def test_method_initials_cover_every_method() -> None:
    for method in (b"GET", b"PROPFIND", b"UNLOCK", b"MKCOL", b"SEARCH", b"REPORT", b"LOCK"):
        assert method[0] in http.METHOD_INITIALS
        assert http.is_request_start(method + b" / HTTP/1.1")


# --- responses -------------------------------------------------------------------------------------


def test_server_banner_is_reversed_to_the_server() -> None:
    raw = bytes(HTTP() / HTTPResponse(Status_Code=b"200", Reason_Phrase=b"OK", Server=b"Orthanc/1.12.1"))
    raw += b"<html><title>Patient DUPONT</title></html>"
    assert http.is_response_start(raw)
    (server,) = http.observe_response(raw, PacketContext(ts=1.0, src=SERVER, dst=CLIENT))
    assert server.kind is Kind.HTTP_SERVER
    assert server.value == "Orthanc/1.12.1"
    assert server.src == CLIENT
    assert server.dst == SERVER
    assert server.attrs == {"status": 200, "version": "1.1"}
    assert "DUPONT" not in json.dumps(server.to_dict())  # no passive title: it could name a patient


def test_response_without_server_header_gives_nothing() -> None:
    assert http.observe_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", CTX) == []


def test_response_truncated_and_malformed() -> None:
    with pytest.raises(Truncated):
        http.observe_response(b"HTTP/1.1 200 OK\r\nServer: x", CTX)
    with pytest.raises(MalformedPacket):
        http.observe_response(b"HTTP/1.1 abc\r\nServer: x\r\n\r\n", CTX)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"HTTP/1.1 200 OK", True), (b"HTTP/1.0", True), (b"HTTP/2 200", False), (b"http/1.1 200", False)],
)
def test_is_response_start(data: bytes, expected: bool) -> None:
    assert http.is_response_start(data) is expected


# --- hostile input ---------------------------------------------------------------------------------

_SEEDS = [
    request("Host: a.example:80", "User-Agent: ua/1", "X: y", "  folded"),
    request(line="CONNECT h.example:443 HTTP/1.1"),
    request(line="GET http://h.example/p?q HTTP/1.0"),
    b"HTTP/1.1 200 OK\r\nServer: s/1\r\n\r\nbody",
]


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Seeds with bytes flipped, cut or inserted."""
    return st.tuples(
        st.integers(0, len(seed)), st.integers(0, len(seed)), st.binary(max_size=8), st.booleans()
    ).map(lambda t: (seed[: t[0]] + t[2] + seed[t[0] + (1 if t[3] else 0) :])[: max(t[1], 4)])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.sampled_from(_SEEDS).flatmap(mutations))
def test_only_parse_errors_escape(data: bytes) -> None:
    for candidate in (data, b"GET " + data, b"HTTP/1.1 " + data):
        http.is_request_start(candidate)
        http.is_response_start(candidate)
        for observe in (http.observe_request, http.observe_response):
            with contextlib.suppress(ParseError):
                observe(candidate, CTX)


# --- real captures ---------------------------------------------------------------------------------

#: Bytes reassembled per TCP direction, as the decoder does.
STREAM_CAP = 16 * 1024


def tcp_streams(path: Path) -> list[tuple[tuple[str, int, str, int], float, bytes]]:
    """Reassemble the first bytes of each TCP direction with scapy, independently of the decoder."""
    segments: dict[tuple[str, int, str, int], list[tuple[int, float, bytes]]] = {}
    initial: dict[tuple[str, int, str, int], int] = {}
    with PcapReader(str(path)) as reader:
        for packet in reader:
            ip = packet.getlayer(IP) or packet.getlayer(IPv6)
            if ip is None and packet.haslayer(Raw):
                # Link types scapy does not know (BSD loopback): find the IP header by its version.
                load = bytes(packet[Raw].load)
                for offset in (0, 4):
                    version = load[offset] >> 4 if len(load) > offset else 0
                    if version in (4, 6):
                        ip = (IP if version == 4 else IPv6)(load[offset:])
                        break
            if ip is None or not ip.haslayer(TCP):
                continue
            tcp = ip[TCP]
            key = (str(ip.src), int(tcp.sport), str(ip.dst), int(tcp.dport))
            payload = bytes(tcp.payload)
            if tcp.haslayer(Padding):
                payload = payload[: len(payload) - len(tcp[Padding])]
            if tcp.flags & 0x02:  # SYN: the stream starts at ISN + 1
                initial[key] = (int(tcp.seq) + 1) % 2**32
            if payload:
                segments.setdefault(key, []).append((int(tcp.seq), float(packet.time), payload))
    streams = []
    for key, parts in segments.items():
        base = initial.get(key, min(seq for seq, _, _ in parts))
        buffer = bytearray()
        first_ts = parts[0][1]
        for seq, _ts, payload in sorted(parts, key=lambda part: (part[0] - base) % 2**32):
            offset = (seq - base) % 2**32
            if offset > len(buffer) or offset > STREAM_CAP:
                break  # a hole: the decoder stops there too
            buffer[offset : offset + len(payload)] = payload
        streams.append((key, first_ts, bytes(buffer[:STREAM_CAP])))
    return streams


_HTTP_KEYS = ("http_hosts", "http_user_agents", "http_servers")


def _differences() -> set[tuple[str, str, str, str]]:
    """Differences with tshark that are explained in the shared differences file."""
    path = Path(__file__).resolve().parents[1] / "conformance" / "tshark_differences.yaml"
    if not path.is_file():
        return set()
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return {(e["capture"], e["field"], str(e["value"]), e["side"]) for e in entries if isinstance(e, dict)}


def _captures() -> list[Path]:
    return [p for p in captures_with_truth() if any(truth_of(p).get(k) for k in _HTTP_KEYS)] + [
        p
        for p in captures_with_truth()
        if p.name.endswith(("HttpMalformedResponse.pcapng", "ssl-to-http-server.pcap"))
    ]


@pytest.mark.corpus
@pytest.mark.parametrize("capture", _captures() or [None], ids=lambda p: p.name if p else "no-corpus")
def test_http_fields_match_tshark(capture: Path | None) -> None:
    corpus = require_corpus()
    assert capture is not None
    name = capture.relative_to(corpus / "pcap").as_posix()
    truth = truth_of(capture)
    observations = list(decode_file(capture))
    known = _differences()
    for key in _HTTP_KEYS:
        expected = {v for raw in truth.get(key) or [] if (v := NORMALISE[key](raw)) is not None}
        got = FIELDS[key](observations)
        unexplained = {(name, key, v, "tshark_only") for v in expected - got} | {
            (name, key, v, "lanterne_only") for v in got - expected
        }
        assert unexplained <= known, f"{name} {key}: {sorted(unexplained - known)}"


@pytest.mark.corpus
def test_partial_request_waits_for_more_bytes() -> None:
    corpus = require_corpus()
    capture = corpus / "pcap" / "pcapplusplus" / "Packet++Test__PacketExamples__PartialHttpRequest.pcap"
    ((_, _, data),) = tcp_streams(capture)
    with pytest.raises(Truncated):
        http.observe_request(data, CTX)
    assert not by_kind(list(decode_file(capture)), Kind.HTTP_HOST)  # tshark shows nothing either
