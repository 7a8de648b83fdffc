"""Every capture of the corpus (~30 of them deliberately broken) decodes: bad packets are counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collectors import DecodeStats, decode_file
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus

pytestmark = pytest.mark.corpus

#: Captures built to be broken (named so by their upstream projects): the decoder must count
#: malformed packets in them rather than raise.
BROKEN = (
    "ndpi/dhcp-fuzz.pcapng",
    "zeek/dns__dns-invalid-names.pcap",
    "pcapplusplus/Packet++Test__PacketExamples__dns_stack_overflow.pcap",
    "pcapplusplus/Packet++Test__PacketExamples__ipv4-malformed.pcap",
    "tcpdump/dns-badlabel.pcap",
    "tcpdump/snmp-heapoverflow-1.pcap",
    "zeek/snmp__snmp-oid-subidentifier-too-long.pcap",
)


@pytest.mark.parametrize("capture", corpus_pcaps(), ids=lambda p: p.relative_to(PCAP_DIR).as_posix())
def test_capture_decodes_without_an_escaping_exception(capture: Path) -> None:
    stats = DecodeStats()
    observations = list(decode_file(capture, stats=stats, strict=True))
    assert stats.parser_errors == 0
    assert stats.packets > 0
    assert stats.observations == len(observations)
    assert sum(stats.per_kind.values()) == len(observations)


def test_broken_captures_are_counted_not_fatal() -> None:
    require_corpus()
    for name in BROKEN:
        stats = DecodeStats()
        list(decode_file(PCAP_DIR / name, stats=stats, strict=True))
        assert stats.malformed > 0, name
        assert sum(stats.malformed_by.values()) >= stats.malformed, name


def test_lanterne_decode_reads_the_whole_corpus_in_one_run() -> None:
    """The CLI: JSON lines on stdout, the summary on stderr, exit 0, whatever the corpus holds."""
    captures = corpus_pcaps()
    if not captures:
        require_corpus()
    done = subprocess.run(
        [sys.executable, "-m", "agent", "decode", "--agent", "sensor-1", *map(str, captures)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) > 1000
    first = json.loads(lines[0])
    assert set(first) == {"ts", "kind", "value", "src", "dst", "attrs", "source", "agent"}
    assert {json.loads(line)["agent"] for line in lines[:200]} == {"sensor-1"}
    assert "packets read" in done.stderr
    assert "malformed" in done.stderr
