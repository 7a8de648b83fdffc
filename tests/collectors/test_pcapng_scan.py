"""pcapng files are scanned like pcap files (boring frames skipped), and decode as packet by packet.

The reference is the reader every format once went through: ``iter_packets`` yields each packet
and the decoder decodes it in full (``Decoder.feed``), nothing skipped. The scan loops
(``Decoder.scan_pcapng``, with the C loop and without it) must give exactly its Observations
and counts, from a file mapped in memory and from a stream read in chunks.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import CookedLinux, Ether
from scapy.packet import Raw

import collectors._decoder as decoder_module
from collectors import CaptureFormatError, DecodeStats, decode_file, decode_stream
from collectors._capture import CaptureTruncated, iter_packets
from collectors._decoder import Decoder
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus
from tests.pcapfiles import pcapng_section

Outcome = tuple[list[dict[str, Any]], dict[str, Any]]

PCAPNGS = [path for path in corpus_pcaps() if path.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"]


def _packet_by_packet(data: bytes) -> Outcome:
    """Every packet of ``data`` decoded in full, as the generic reader does it (the reference)."""
    stats = DecodeStats()
    decoder = Decoder(stats=stats)
    observations = []
    outcome: object = None
    try:
        for ts, linktype, buf, off, caplen in iter_packets(io.BytesIO(data)):
            decoder.index = stats.packets
            decoder.feed(ts, linktype, buf, off, caplen)
            observations += decoder.flush()
    except CaptureTruncated:
        stats.truncated_files += 1
    except CaptureFormatError as exc:
        outcome = type(exc).__name__
    observations += decoder.flush()
    stats.streams_evicted += decoder.streams.evicted
    return [obs.to_dict() for obs in observations], {**stats.to_dict(), "outcome": outcome}


def _scanned(data: bytes, tmp_path: Path, *, mapped: bool) -> Outcome:
    """``data`` through the scan loops: a file mapped in memory, or a stream read in chunks."""
    stats = DecodeStats()
    outcome: object = None
    observations = []
    try:
        if mapped:
            path = tmp_path / "capture.pcapng"
            path.write_bytes(data)
            observations = [obs.to_dict() for obs in decode_file(path, stats=stats, strict=True)]
        else:
            observations = [
                obs.to_dict() for obs in decode_stream(io.BytesIO(data), stats=stats, strict=True)
            ]
    except CaptureFormatError as exc:
        outcome = type(exc).__name__
    return observations, {**stats.to_dict(), "outcome": outcome}


def _every_way(data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """The scan loops, mapped and read, with and without the C loop, all equal to the reference."""
    reference = _packet_by_packet(data)
    for accelerator in (decoder_module._scan, None):
        monkeypatch.setattr(decoder_module, "_scan", accelerator)
        for mapped in (True, False):
            assert _scanned(data, tmp_path, mapped=mapped) == reference, (accelerator, mapped)
    return reference


def _dns(name: str, sport: int = 40000) -> bytes:
    query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\0\0\1\0\1"
    return bytes(IP(src="10.1.0.5", dst="10.0.0.53") / UDP(sport=sport, dport=53) / Raw(query))


def _bulk(number: int) -> bytes:
    """A TLS application-data segment: boring, skipped by the scan loops."""
    payload = b"\x17\x03\x03" + bytes(200)
    return bytes(
        IP(src="10.1.0.5", dst="192.0.2.10") / TCP(sport=50000, dport=443, seq=number, flags="A") / payload
    )


def _frames(count: int) -> list[tuple[int, float, bytes]]:
    """Ethernet frames (interface 0) mixing bulk and DNS queries."""
    mac = Ether(src="f4:8e:38:12:34:56", dst="00:00:0c:9f:f0:01")
    frames = []
    for number in range(count):
        payload = _dns(f"host{number}.example") if number % 5 == 0 else _bulk(number)
        frames.append((0, 1_700_000_000 + number / 1000, bytes(mac / IP(payload))))
    return frames


@pytest.mark.corpus
@pytest.mark.parametrize("capture", PCAPNGS, ids=lambda p: p.relative_to(PCAP_DIR).as_posix())
def test_every_corpus_pcapng_decodes_as_packet_by_packet(
    capture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_corpus()
    _every_way(capture.read_bytes(), tmp_path, monkeypatch)


def test_the_corpus_holds_pcapng_files() -> None:
    """The test above has captures to read (the shared corpus has 17 of them)."""
    require_corpus()
    assert len(PCAPNGS) >= 10


def _simple_block(frame: bytes) -> bytes:
    """A Simple Packet Block (interface 0, no timestamp)."""
    body = struct.pack("<I", len(frame)) + frame + bytes(-len(frame) % 4)
    return struct.pack("<II", 3, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _sll(name: str) -> bytes:
    return bytes(CookedLinux(pkttype=0) / IP(_dns(name)))


def test_sections_interfaces_and_block_kinds_beside_skipped_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sections (little- then big-endian), Ethernet beside Linux cooked, a simple packet block."""
    # A raw IP frame that reads as a boring Ethernet frame (bytes 12-14: 08 00 45, no fragment,
    # "protocol" 53): only its interface's link type says it must be decoded.
    raw = bytes(
        IP(src="8.0.69.1", dst="10.0.0.53") / UDP(sport=16384, dport=53) / Raw(_dns("raw.example")[28:])
    )
    first = pcapng_section(
        [(1, None), (113, 9), (101, None)],
        [*_frames(40), (1, 1_700_000_001.5, _sll("sll.example")), (2, 1_700_000_002.0, raw)],
    )
    simple = _simple_block(bytes(Ether(src="f4:8e:38:12:34:57") / IP(_dns("spb.example"))))
    second = pcapng_section([(1, 0x80 | 20)], _frames(30), big_endian=True)
    observations, stats = _every_way(first + simple + second, tmp_path, monkeypatch)
    values = [item["value"] for item in observations]
    assert "sll.example" in values
    assert "raw.example" in values
    assert "spb.example" in values
    assert values.count("host0.example") == 2  # once per section
    assert stats["packets"] == 40 + 2 + 1 + 30


def test_blocks_across_chunk_boundaries_and_cut_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small chunks (blocks straddle them), and files cut anywhere: the same as packet by packet."""
    monkeypatch.setattr(decoder_module, "CHUNK_SIZE", 1000)
    data = pcapng_section([(1, None)], _frames(120))
    observations, stats = _every_way(data, tmp_path, monkeypatch)
    assert len(observations) == 24
    assert stats["truncated_files"] == 0
    ends = set()
    pos = 0
    while pos < len(data):
        pos += struct.unpack_from("<I", data, pos + 4)[0]
        ends.add(pos)
    rng = random.Random(4)
    for cut in sorted(rng.sample(range(1, len(data)), 25)):
        observations, stats = _every_way(data[:cut], tmp_path, monkeypatch)
        assert stats["truncated_files"] == (cut not in ends)


def test_mutated_pcapng_files_decode_the_same_with_and_without_the_c_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte flips in block headers, lengths, interfaces and frames: both loops decide the same."""
    if decoder_module._scan is None:
        pytest.skip("the C accelerator was not built (no C compiler at install time)")
    rng = random.Random(20261129)
    seeds = [pcapng_section([(1, None), (101, None)], _frames(60))]
    seeds += [path.read_bytes() for path in PCAPNGS if path.stat().st_size < 300_000]
    for _ in range(200):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        mapped = bool(rng.getrandbits(1))  # a file mapped in memory, or a stream: both loops alike
        results = []
        for accelerator in (decoder_module._scan, None):
            monkeypatch.setattr(decoder_module, "_scan", accelerator)
            results.append(_scanned(bytes(data), tmp_path, mapped=mapped))
        assert results[0] == results[1]


@pytest.mark.parametrize("block_type", [1, 2, 3, 6])
def test_a_block_too_short_for_its_fields_is_a_format_error(block_type: int) -> None:
    """Not a struct error, nor fields read from the next block."""
    section = pcapng_section([(1, None)], _frames(2))
    short = struct.pack("<II", block_type, 12) + struct.pack("<I", 12)
    data = section + short + pcapng_section([(1, None)], _frames(1))[28:]
    with pytest.raises(CaptureFormatError, match="too short"):
        list(decode_stream(io.BytesIO(data)))


def test_a_pcapng_file_is_scanned_where_it_lies_and_reports_its_progress(tmp_path: Path) -> None:
    """A regular pcapng file is mapped, as a pcap is: the scan reports each chunk's offset."""
    path = tmp_path / "capture.pcapng"
    data = pcapng_section([(1, None)], _frames(300))
    path.write_bytes(data)
    done: list[int] = []
    with open(path, "rb") as handle:
        observations = list(decode_stream(handle, chunk_done=done.append))
    assert len(observations) == 60
    assert done[0] == 0
    assert done[-1] == len(data)
