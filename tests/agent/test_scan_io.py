"""How ``Scanner.scan`` reads a file: once, hashing what the decoder reads, whatever the file ends with."""

from __future__ import annotations

import builtins
import gc
import hashlib
from pathlib import Path
from typing import Any

import pytest

from agent._pipeline import Scanner
from fingerprints import Index, load_index
from store import open_store
from tests.agent.test_scan import T0, capture, dns_query
from tests.pcapfiles import pcapng_section


@pytest.fixture(scope="module")
def index() -> Index:
    return load_index(with_recog=False)


def _scan(tmp_path: Path, index: Index, path: Path) -> Any:
    store = open_store(f"sqlite:///{tmp_path / 'io.db'}")
    try:
        return Scanner(store, index, site="s", agent="a").scan(path)
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("packets", "tail"),
    [(300, b""), (300, b"\x00" * 7), (60_000, b"")],
    ids=["clean", "cut-record", "several-chunks"],
)
def test_the_stored_hash_is_the_files_whole_content(
    tmp_path: Path, index: Index, packets: int, tail: bytes
) -> None:
    path = capture(tmp_path / "c.pcap", packets=packets, clients=5, names=["chatgpt.com"], seed=2)
    path.write_bytes(path.read_bytes() + tail)
    report = _scan(tmp_path, index, path)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.decode.packets == packets


def test_pcapng_is_hashed_whole_too(tmp_path: Path, index: Index) -> None:
    frames = [dns_query(T0 + i, "f4:8e:38:00:00:01", "10.1.0.1", "claude.ai", i) for i in range(50)]
    path = tmp_path / "c.pcapng"
    path.write_bytes(pcapng_section([(1, None)], [(0, ts, frame) for ts, frame in frames]))
    report = _scan(tmp_path, index, path)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.decode.observations == 50


def test_a_new_file_is_read_once(tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    path = capture(tmp_path / "c.pcap", packets=2000, clients=20, names=["chatgpt.com"], seed=3)
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    report = _scan(tmp_path, index, path)
    assert not report.skipped
    assert len(opened) == 1


def test_the_collector_is_left_as_it_was(tmp_path: Path, index: Index) -> None:
    path = capture(tmp_path / "c.pcap", packets=500, clients=5, names=["chatgpt.com"], seed=4)
    assert gc.isenabled()
    _scan(tmp_path, index, path)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
