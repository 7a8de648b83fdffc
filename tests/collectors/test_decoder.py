"""The capture readers and the packet decoder: link types, IP layers, reassembly, hostile input."""

from __future__ import annotations

import contextlib
import io
import random
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName, TLS_Ext_SupportedGroups
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS
from scapy.packet import Packet, Raw

import collectors._decoder
from collectors import (
    CaptureFormatError,
    Decoder,
    DecodeStats,
    Endpoint,
    Kind,
    Observation,
    decode_packets,
    decode_stream,
    iter_packets,
)
from tests.pcapfiles import pcap_bytes, pcapng_section

CLIENT_MAC = "02:00:5e:10:00:01"
SERVER_MAC = "02:00:5e:10:00:02"


def _query(name: str = "chatgpt.com") -> Packet:
    return UDP(sport=40000, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname=name, qtype="A"))


def _ipv4_query(name: str = "chatgpt.com") -> Packet:
    return IP(src="192.0.2.10", dst="192.0.2.53") / _query(name)


def _ether(payload: Packet) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / payload)


def _decode(data: bytes) -> tuple[list[Observation], DecodeStats]:
    stats = DecodeStats()
    return list(decode_stream(io.BytesIO(data), stats=stats, strict=True)), stats


def _names(observations: list[Observation]) -> list[str]:
    return [obs.value for obs in observations if obs.kind is Kind.DNS_QUERY]


# -- capture formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_pcap_variants_give_the_same_observation(big_endian: bool, nanoseconds: bool) -> None:
    data = pcap_bytes(
        [(1700000000.25, _ether(_ipv4_query()))], big_endian=big_endian, nanoseconds=nanoseconds
    )
    observations, stats = _decode(data)
    assert stats.packets == 1
    assert [(o.kind, o.value, o.ts) for o in observations] == [(Kind.DNS_QUERY, "chatgpt.com", 1700000000.25)]
    obs = observations[0]
    assert (obs.src.ip, obs.src.mac, obs.src.port) == ("192.0.2.10", CLIENT_MAC, 40000)
    assert (obs.dst.ip, obs.dst.mac, obs.dst.port) == ("192.0.2.53", SERVER_MAC, 53)


def test_pcapng_reads_every_interface_and_section_with_its_own_link_type_and_resolution() -> None:
    raw_ip = bytes(_ipv4_query("raw.example"))
    first = pcapng_section(
        [(1, None), (101, 9)],  # Ethernet in µs, raw IP in ns
        [(0, 10.5, _ether(_ipv4_query("eth.example"))), (1, 20.25, raw_ip)],
    )
    second = pcapng_section(
        [(113, 0x80 | 10)], [(0, 30.0, bytes(CookedLinux(pkttype=0) / _ipv4_query("sll.example")))]
    )
    observations, stats = _decode(first + second)
    assert stats.packets == 3
    assert [(o.value, round(o.ts, 6)) for o in observations] == [
        ("eth.example", 10.5),
        ("raw.example", 20.25),
        ("sll.example", 30.0),
    ]


def test_big_endian_pcapng_section() -> None:
    data = pcapng_section([(1, None)], [(0, 5.0, _ether(_ipv4_query()))], big_endian=True)
    observations, _ = _decode(data)
    assert _names(observations) == ["chatgpt.com"]


def test_a_capture_cut_short_keeps_what_came_before_and_says_so() -> None:
    data = pcap_bytes([(1.0, _ether(_ipv4_query("a.example"))), (2.0, _ether(_ipv4_query("b.example")))])
    observations, stats = _decode(data[:-10])
    assert _names(observations) == ["a.example"]
    assert stats.truncated_files == 1


def test_not_a_capture_is_a_clear_error() -> None:
    with pytest.raises(CaptureFormatError, match="not a pcap or pcapng"):
        _decode(b"GIF89a" + b"\0" * 40)


def test_corrupt_record_length_is_a_clear_error() -> None:
    data = bytearray(pcap_bytes([(1.0, _ether(_ipv4_query()))]))
    struct.pack_into("<I", data, 24 + 8, 1 << 30)
    with pytest.raises(CaptureFormatError, match="corrupt"):
        _decode(bytes(data))


def test_large_files_are_read_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    import collectors._decoder as decoder_module

    monkeypatch.setattr(decoder_module, "CHUNK_SIZE", 97)  # every record straddles a boundary
    frames = [(float(i), _ether(_ipv4_query(f"host{i}.example"))) for i in range(50)]
    observations, stats = _decode(pcap_bytes(frames))
    assert stats.packets == 50
    assert _names(observations) == [f"host{i}.example" for i in range(50)]


def test_iter_packets_yields_offsets_into_the_file_not_copies() -> None:
    frame = _ether(_ipv4_query())
    ((ts, linktype, buf, off, caplen),) = list(iter_packets(io.BytesIO(pcap_bytes([(3.5, frame)]))))
    assert (ts, linktype, buf[off : off + caplen]) == (3.5, 1, frame)


# -- link layers -----------------------------------------------------------------------------------


def test_vlan_and_qinq_tags_are_walked_and_the_inner_vlan_is_kept() -> None:
    single = bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / Dot1Q(vlan=42) / _ipv4_query("one.example"))
    double = bytes(
        Ether(src=CLIENT_MAC, dst=SERVER_MAC) / Dot1AD(vlan=7) / Dot1Q(vlan=300) / _ipv4_query("two.example")
    )
    observations = decode_packets([(1.0, single), (2.0, double)])
    assert [(o.value, o.attrs.get("vlan")) for o in observations] == [
        ("one.example", 42),
        ("two.example", 300),
    ]
    assert observations[0].src.mac == CLIENT_MAC


def test_linux_cooked_v1_and_v2_keep_the_sender_mac() -> None:
    sll = bytes(
        CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=bytes.fromhex("02005e100001") + b"\0\0")
    )
    sll += bytes(_ipv4_query())
    assert decode_packets([(1.0, sll)], linktype=113)[0].src.mac == CLIENT_MAC
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, bytes.fromhex("02005e100001") + b"\0\0")
    sll2 += bytes(_ipv4_query())
    assert decode_packets([(1.0, sll2)], linktype=276)[0].src.mac == CLIENT_MAC


@pytest.mark.parametrize("linktype", [101, 12, 228])
def test_raw_ip_link_types(linktype: int) -> None:
    observations = decode_packets([(1.0, bytes(_ipv4_query()))], linktype=linktype)
    assert _names(observations) == ["chatgpt.com"]
    assert observations[0].src.mac is None


def test_bsd_loopback_in_either_byte_order() -> None:
    for header in (struct.pack("<I", 2), struct.pack(">I", 2)):
        assert _names(decode_packets([(1.0, header + bytes(_ipv4_query()))], linktype=0)) == ["chatgpt.com"]


# -- network layer ---------------------------------------------------------------------------------


def test_ipv6_extension_headers_are_walked() -> None:
    packet = (
        IPv6(src="2001:db8::10", dst="2001:db8::53")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / _query("v6.example")
    )
    (obs,) = decode_packets([(1.0, _ether(packet))])
    assert (obs.value, obs.src.ip, obs.dst.ip) == ("v6.example", "2001:db8::10", "2001:db8::53")


def test_ipv4_options_are_skipped() -> None:
    packet = IP(src="192.0.2.10", dst="192.0.2.53", options=b"\x01\x01\x01\x00") / _query()
    assert _names(decode_packets([(1.0, _ether(packet))])) == ["chatgpt.com"]


def test_fragmented_ipv4_and_ipv6_datagrams_are_reassembled_in_any_order() -> None:
    long_name = ".".join([f"label{i:02d}" for i in range(20)]) + ".example"
    v4 = fragment(_ipv4_query(long_name), fragsize=64)
    v6 = fragment6(
        IPv6(src="2001:db8::10", dst="2001:db8::53") / IPv6ExtHdrFragment() / _query(long_name), 120
    )
    assert len(v4) > 2
    assert len(v6) > 1
    frames = [(1.0, _ether(f)) for f in reversed(v4)] + [(2.0, _ether(f)) for f in v6]
    observations = decode_packets(frames)
    assert _names(observations) == [long_name, long_name]


def test_truncated_ip_header_is_counted_as_malformed() -> None:
    decoder = Decoder(strict=True)
    frame = _ether(_ipv4_query())[:20]
    decoder.feed(1.0, 1, frame, 0, len(frame))
    assert decoder.stats.malformed == 1
    assert decoder.flush() == []


# -- TCP stream starts -----------------------------------------------------------------------------


def _client_hello(sni: str) -> bytes:
    hello = TLSClientHello(
        ciphers=[0x1301, 0x1302, 0xC02B],
        ext=[
            TLS_Ext_ServerName(servernames=[ServerName(servername=sni.encode())]),
            TLS_Ext_SupportedGroups(groups=[29]),
        ],
    )
    return bytes(TLS(msg=[hello]))


def _tcp_segments(data: bytes, sizes: list[int], seq: int = 1000) -> list[Packet]:
    segments, offset = [], 0
    for size in sizes:
        chunk = data[offset : offset + size]
        segments.append(
            IP(src="192.0.2.10", dst="198.51.100.1")
            / TCP(sport=50000, dport=443, flags="PA", seq=seq + offset)
            / Raw(chunk)
        )
        offset += size
    assert offset == len(data)
    return segments


def test_a_client_hello_split_over_segments_is_reassembled_even_out_of_order() -> None:
    hello = _client_hello("eu.api.nabla.com")
    first, second, third = _tcp_segments(hello, [20, 30, len(hello) - 50])
    observations = decode_packets([(1.0, _ether(p)) for p in (first, third, second)])
    assert [(o.kind, o.value) for o in observations] == [(Kind.TLS_SNI, "eu.api.nabla.com")]


def test_retransmitted_segments_do_not_corrupt_the_stream() -> None:
    hello = _client_hello("chatgpt.com")
    first, second = _tcp_segments(hello, [40, len(hello) - 40])
    observations = decode_packets([(1.0, _ether(p)) for p in (first, first, second, second)])
    assert [o.value for o in observations] == ["chatgpt.com"]


def test_stream_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import collectors._tcp as tcp_module

    monkeypatch.setattr(tcp_module, "MAX_STREAMS", 16)
    hello = _client_hello("chatgpt.com")
    decoder = Decoder(strict=True)
    for port in range(100):
        start = (
            IP(src="192.0.2.10", dst="198.51.100.1")
            / TCP(sport=20000 + port, dport=443, seq=1)
            / Raw(hello[:30])
        )
        frame = _ether(start)
        decoder.feed(float(port), 1, frame, 0, len(frame))
    assert len(decoder.streams.streams) <= 16
    assert decoder.streams.evicted >= 84
    assert sum(decoder.streams.port_pairs.values()) == len(decoder.streams.streams)


# -- hostile input ---------------------------------------------------------------------------------


def _seed_frames() -> list[bytes]:
    hello = _client_hello("x.example")
    return [
        _ether(_ipv4_query()),
        _ether(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / _query()),
        bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / Dot1Q(vlan=5) / _ipv4_query()),
        _ether(_tcp_segments(hello, [len(hello)])[0]),
    ]


# Built once: crafting with scapy is slow, and every frame names both MACs so that scapy never
# tries to resolve one (it would look for it on the network).
SEED_FRAMES = _seed_frames()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=3),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.integers(0, 255)), max_size=8),
    cut=st.integers(min_value=0, max_value=400),
    linktype=st.sampled_from([1, 101, 113, 276, 0]),
)
def test_mutated_frames_never_raise(seed: int, flips: list[tuple[int, int]], cut: int, linktype: int) -> None:
    """Random byte flips and truncations of real frames: counted, skipped, never an exception."""
    frame = bytearray(SEED_FRAMES[seed])
    for position, value in flips:
        if position < len(frame):
            frame[position] = value
    data = bytes(frame[: cut or len(frame)])
    decoder = Decoder(strict=True)
    decoder.feed(1.0, linktype, data, 0, len(data))
    decoder.feed(1.0, linktype, data, 0, len(data))
    assert decoder.stats.parser_errors == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([1, 101, 113, 276, 0, 12, 229]))
def test_random_bytes_never_raise(data: bytes, linktype: int) -> None:
    decoder = Decoder(strict=True)
    decoder.feed(0.0, linktype, data, 0, len(data))
    assert decoder.stats.packets == 1


def test_random_capture_files_fail_cleanly_or_decode() -> None:
    rng = random.Random(7)
    good = pcap_bytes([(1.0, f) for f in SEED_FRAMES])
    for _ in range(200):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(CaptureFormatError):
            _decode(bytes(data))


def test_packet_endpoints_from_the_name_cache_are_those_made_afresh() -> None:
    """``Decoder._context`` looks IPv4 and MAC texts up: the Endpoints are those ``from_packet`` makes."""
    decoder = Decoder(agent="a")
    rng = random.Random(3)
    for _ in range(3000):
        buf = bytes(rng.randrange(256) for _ in range(8)) if rng.random() < 0.5 else bytes([10, 0, 0, 1] * 2)
        src_mac = rng.choice([None, b"", bytes([2, 0, 0, 0, 0, rng.randrange(4)]), b"\xff" * 6])
        dst_mac = rng.choice([None, bytes([0, 0x1B, 0x21, 0, 0, rng.randrange(4)])])
        ports = rng.randrange(65536), rng.randrange(65536)
        ctx = decoder._context(1.5, socket.AF_INET, buf, 0, 4, src_mac, dst_mac, *ports, None)
        src_ip, dst_ip = socket.inet_ntop(socket.AF_INET, buf[:4]), socket.inet_ntop(socket.AF_INET, buf[4:8])
        assert ctx.src == Endpoint(src_ip, src_mac.hex(":") if src_mac else None, ports[0])
        assert ctx.dst == Endpoint(dst_ip, dst_mac.hex(":") if dst_mac else None, ports[1])
    assert 0 < len(decoder._names) <= collectors._decoder._MAX_NAMES
