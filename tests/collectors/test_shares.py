"""A capture decoded in shares (by address pair) and merged gives exactly what one decoder gives.

``lanterne scan`` decodes a large file in two processes, each taking the frames of half of the
address pairs (``Partition``); the frames are merged back by number. That is only right if no
decoder state crosses address pairs, and if every count is made once: both are checked here on
every capture of the corpus (fragments, TCP and QUIC reassembly, DHCP, broken captures...), the
bundled demo and the benchmark's generator, against the plain decoder.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from collectors import (
    CaptureFormatError,
    DecodeStats,
    Observation,
    Partition,
    decode_share,
    decode_stream,
    merge_shares,
)
from tests.agent.test_scan import capture
from tests.corpus import PCAP_DIR, corpus_pcaps

DEMO = Path(__file__).resolve().parents[2] / "agent" / "demo" / "hospital.pcap"


def _serial(data: bytes) -> tuple[list[Observation], DecodeStats] | str:
    stats = DecodeStats()
    try:
        return list(decode_stream(io.BytesIO(data), agent="a", stats=stats)), stats
    except CaptureFormatError as exc:
        return f"error: {exc}"


def _shared(data: bytes, count: int) -> tuple[list[Observation], DecodeStats, list[int]] | str:
    shares: list[list[tuple[int, Observation]]] = []
    total = DecodeStats()
    for number in range(count):
        stats = DecodeStats()
        try:
            tagged = [
                item
                for chunk in decode_share(io.BytesIO(data), Partition(number, count), agent="a", stats=stats)
                for item in chunk
            ]
        except CaptureFormatError as exc:
            return f"error: {exc}"
        assert [frame for frame, _ in tagged] == sorted(frame for frame, _ in tagged), "a share is in order"
        if number:
            assert stats.packets == total.packets, "every share reads every frame"
        total.add(stats, packets=number == 0)
        shares.append(tagged)
    return list(merge_shares(*shares)), total, [len(share) for share in shares]


def _check(data: bytes) -> list[int]:
    serial = _serial(data)
    sizes: list[int] = []
    for count in (2, 3):
        shared = _shared(data, count)
        if isinstance(serial, str) or isinstance(shared, str):
            assert shared == serial
            continue
        observations, stats, sizes = shared
        assert observations == serial[0]
        assert stats.to_dict() == serial[1].to_dict()
    return sizes


@pytest.mark.corpus
@pytest.mark.parametrize("capture", corpus_pcaps(), ids=lambda p: p.relative_to(PCAP_DIR).as_posix())
def test_shares_of_a_corpus_capture_merge_into_its_decoding(capture: Path) -> None:
    _check(capture.read_bytes())


def test_shares_of_the_demo_merge_into_its_decoding() -> None:
    sizes = _check(DEMO.read_bytes())
    assert all(sizes), "each of three shares got some of the demo's hosts"


def test_shares_of_many_hosts_spread_and_merge_into_their_decoding(tmp_path: Path) -> None:
    """200 workstations asking one resolver: the pairs spread over the shares."""
    path = capture(tmp_path / "many.pcap", packets=3000, clients=200, names=["chatgpt.com", "a.org"], seed=3)
    sizes = _check(path.read_bytes())
    assert min(sizes) > sum(sizes) / 6, f"the address pairs spread over the shares: {sizes}"


def test_a_capture_cut_short_is_counted_once() -> None:
    data = DEMO.read_bytes()
    cut = data[: len(data) // 2 + 7]
    serial = _serial(cut)
    assert not isinstance(serial, str)
    assert serial[1].truncated_files == 1
    _check(cut)


def test_a_share_is_every_frame_between_its_address_pairs() -> None:
    """Either direction of a pair, IPv4 and IPv6 alike, falls in one share."""
    a4, b4 = bytes([10, 0, 0, 7]), bytes([192, 0, 2, 10])
    a6, b6 = bytes(15) + b"\x01", bytes.fromhex("20010db8") + bytes(11) + b"\x05"
    for a, b in ((a4, b4), (a6, b6)):
        owners = [number for number in range(3) if Partition(number, 3).owns(a, b)]
        assert len(owners) == 1
        assert Partition(owners[0], 3).owns(b, a)


def _read(data: bytes) -> tuple[list[Observation], dict[str, object]] | str:
    stats = DecodeStats()
    try:
        return list(decode_stream(io.BytesIO(data), agent="a", stats=stats)), stats.to_dict()
    except CaptureFormatError as exc:
        return f"error: {exc}"


def _mapped(path: Path) -> tuple[list[Observation], dict[str, object]] | str:
    stats = DecodeStats()
    try:
        with open(path, "rb") as handle:
            return list(decode_stream(handle, agent="a", stats=stats)), stats.to_dict()
    except CaptureFormatError as exc:
        return f"error: {exc}"


@pytest.mark.corpus
@pytest.mark.parametrize("capture", corpus_pcaps(), ids=lambda p: p.relative_to(PCAP_DIR).as_posix())
def test_a_capture_file_mapped_in_memory_decodes_as_read(capture: Path) -> None:
    """Regular pcap files are scanned where they lie (mmap); the chunked reads give the same."""
    assert _mapped(capture) == _read(capture.read_bytes())


def test_files_mapped_in_memory_cut_short_or_across_chunks_decode_as_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collectors._decoder

    data = DEMO.read_bytes()
    monkeypatch.setattr(collectors._decoder, "CHUNK_SIZE", 4096)  # records straddle chunks
    for name, content in (("whole", data), ("cut", data[: len(data) // 3 + 5]), ("head", data[:30])):
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(content)
        mapped, read = _mapped(path), _read(content)
        assert mapped == read, name
        assert not isinstance(mapped, str)
        assert mapped[1]["truncated_files"] == (0 if name == "whole" else 1)


def test_the_chunk_hook_marks_where_every_observation_before_it_was_taken(tmp_path: Path) -> None:
    """What the scan's decoding processes rely on to merge their shares while they run."""
    import collectors._decoder

    path = tmp_path / "demo.pcap"
    path.write_bytes(DEMO.read_bytes())
    stats = DecodeStats()
    marks: list[tuple[int, int, int]] = []
    taken: list[int] = []

    def chunk_done(done: int) -> None:
        marks.append((done, stats.packets, len(taken)))

    with open(path, "rb") as handle, pytest.MonkeyPatch.context() as patch:
        patch.setattr(collectors._decoder, "CHUNK_SIZE", 8192)
        for chunk in decode_share(handle, Partition(0, 1), agent="a", stats=stats, chunk_done=chunk_done):
            taken += [frame for frame, _ in chunk]
    assert len(marks) > 10
    assert marks[-1][0] == path.stat().st_size
    for _done, frames, count in marks:
        assert all(frame < frames for frame in taken[:count])
        assert all(frame >= frames for frame in taken[count:])


def _resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total = 0
    inside = False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = fields[-1] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="/proc/self/smaps is Linux's")
def test_scanned_pages_of_a_mapped_capture_are_let_go(tmp_path: Path) -> None:
    """A capture mapped in memory must not stay resident as it is scanned (the scan's memory bound)."""
    import mmap

    from collectors._decoder import release_pages

    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (32 << 12))  # 8 MiB
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        pages = range(0, len(mapped), mmap.PAGESIZE)
        assert all(mapped[offset + 7] == 7 for offset in pages), "every page read (resident now)"
        assert _resident_kib(path) >= 7 << 10
        release_pages(mapped, 0, len(mapped))
        assert _resident_kib(path) < 1 << 10
        assert mapped[12345] == 12345 % 256, "the pages come back from the page cache when read again"
