"""The C scan loop (collectors/_scan.c) and the pure-Python one decode everything identically."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

import collectors._decoder as decoder_module
from collectors import DecodeStats, decode_stream
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus
from tests.pcapfiles import pcap_bytes

pytestmark = pytest.mark.skipif(
    decoder_module._scan is None, reason="the C accelerator was not built (no C compiler at install time)"
)


def _decode_both(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[dict[str, object]], dict[str, object]]:
    results = []
    for accelerator in (decoder_module._scan, None):
        monkeypatch.setattr(decoder_module, "_scan", accelerator)
        stats = DecodeStats()
        try:
            observations = [
                obs.to_dict() for obs in decode_stream(io.BytesIO(data), stats=stats, strict=True)
            ]
            outcome: object = None
        except decoder_module.CaptureFormatError as exc:
            observations, outcome = [], type(exc).__name__
        results.append((observations, {**stats.to_dict(), "outcome": outcome}))
    (fast, fast_stats), (slow, slow_stats) = results
    assert fast == slow
    assert fast_stats == slow_stats
    return fast, fast_stats


def test_the_compiled_ports_are_the_decoders_ports() -> None:
    udp, tcp = decoder_module._scan.ports_used()
    assert udp == frozenset(decoder_module.UDP_PORTS)
    assert tcp == frozenset(decoder_module.TCP_NAME_PORTS)


@pytest.mark.corpus
@pytest.mark.parametrize("capture", corpus_pcaps(), ids=lambda p: p.relative_to(PCAP_DIR).as_posix())
def test_every_corpus_capture_decodes_the_same_both_ways(
    capture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_corpus()
    _decode_both(capture.read_bytes(), monkeypatch)


@pytest.mark.corpus
def test_mutated_corpus_captures_decode_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte flips in real pcap files (headers, ports, lengths): both loops take the same decisions."""
    require_corpus()
    rng = random.Random(20261128)
    captures = [p for p in corpus_pcaps() if p.suffix == ".pcap" and p.stat().st_size < 200_000]
    for _ in range(300):
        data = bytearray(rng.choice(captures).read_bytes())
        for _ in range(rng.randrange(1, 20)):
            data[rng.randrange(24, len(data))] = rng.randrange(256)
        _decode_both(bytes(data), monkeypatch)


def test_random_frames_decode_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random Ethernet/IPv4 frames built to reach every branch of the rule."""
    rng = random.Random(7)
    frames = []
    for _ in range(3000):
        header = bytearray(rng.randbytes(12))
        header += rng.choice([b"\x08\x00", b"\x81\x00\x00\x05\x08\x00", b"\x86\xdd", rng.randbytes(2)])
        ip = bytearray(rng.randbytes(20))
        ip[0] = rng.choice([0x45, 0x45, 0x46, 0x40])
        ip[6] = rng.choice([0x00, 0x40, 0x20, 0x80, 0x41])
        ip[7] = rng.choice([0, 0, 1])
        ip[9] = rng.choice([6, 6, 17, 17, 1])
        ports = rng.choice([53, 443, 5353, 5355, 137, 1900, 161, 50000, 8080]).to_bytes(2, "big")
        l4 = bytearray(ports + rng.randbytes(2) + rng.randbytes(8))
        l4 += bytes([rng.choice([0x50, 0x80, 0x40, 0xF0]) | rng.randrange(16)]) + rng.randbytes(7)
        payload = bytes([rng.choice([0x16, 0x17, 0x00, ord("G"), 0xC3, 0x40, 0x0B])]) + rng.randbytes(
            rng.randrange(0, 60)
        )
        frame = bytes(header + ip + l4 + payload)[: rng.randrange(10, 200)]
        frames.append((float(len(frames)), frame))
    _decode_both(pcap_bytes(frames), monkeypatch)
