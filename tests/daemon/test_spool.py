"""The outage spool: bounded, durable, in order, and every batch applied exactly once."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from agent._aggregate import StoreWriter
from agent._spool import (
    MARKER_PREFIX,
    Spool,
    already_applied,
    mark_applied,
    new_batch_id,
    purge_markers,
    window_from_json,
    window_to_json,
)
from agent._window import Aggregator
from collectors import Endpoint, Kind, Observation
from fingerprints import Index, default_index
from store import IngestedFile, open_store


@cache
def _index() -> Index:
    return default_index()


def _window(names: list[str], *, mac: str = "02:00:00:00:00:01") -> Aggregator:
    aggregator = Aggregator(_index())
    client, server = Endpoint("10.0.0.1", mac, 40000), Endpoint("10.0.0.53", "02:00:00:00:00:02", 53)
    observations = [
        Observation(100.0 + i, Kind.DNS_QUERY, name, client, server, {"qtype": "A", "alpn": ("h2", "h3")})
        for i, name in enumerate(names)
    ]
    observations.append(
        Observation(200.0, Kind.DHCP_HOSTNAME, "infpump-7", Endpoint(None, mac, 68), Endpoint(None, None, 67))
    )
    aggregator.add_all(observations)
    return aggregator


def test_a_window_survives_json(tmp_path: Path) -> None:
    window = _window(["chatgpt.com", "chatgpt.com", "example.org"]).drain()
    writer = StoreWriter(_index(), site="lab", agent="l5")
    data = json.loads(json.dumps(window_to_json(window)))
    again = window_from_json(data, writer)
    assert again.observations == window.observations
    assert set(again.evidence) == set(window.evidence)
    assert window.evidence
    for key, (item, first, last, count) in window.evidence.items():
        assert again.evidence[key] == [item, first, last, count]
    assert again.peers == window.peers
    assert again.dhcp_keys == window.dhcp_keys
    assert again.observed == window.observed == 4


def test_append_iterate_discard(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    ids = [new_batch_id() for _ in range(3)]
    for number, batch_id in enumerate(ids):
        assert spool.append(
            batch_id, {"observed": number, "observations": [], "evidence": [], "peers": []}, agent="a"
        )
    assert len(spool) == 3
    assert [batch.id for batch in spool] == ids
    spool.discard({ids[0], ids[2]})
    assert [batch.id for batch in spool] == [ids[1]]
    assert len(Spool(spool.path, max_bytes=1 << 20)) == 1  # counted again when reopened
    spool.discard({ids[1]})
    assert not spool.path.exists()
    assert len(spool) == 0
    assert spool.stats.bytes == 0


def test_the_cap_sheds_whole_windows_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=600)
    window = {"observed": 7, "observations": [["x" * 100]], "evidence": [], "peers": []}
    assert spool.append(new_batch_id(), window, agent="a")
    assert spool.append(new_batch_id(), window, agent="a")
    assert not spool.append(new_batch_id(), window, agent="a")
    assert (spool.stats.shed_batches, spool.stats.shed_observations, len(spool)) == (1, 7, 2)
    assert spool.path.stat().st_size <= 600


def test_a_line_cut_by_a_crash_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    good = new_batch_id()
    spool.append(good, {"observed": 1, "observations": [], "evidence": [], "peers": []}, agent="a")
    with spool.path.open("ab") as handle:
        handle.write(b'{"format": 1, "id": "cut-in-the-mid')
    reopened = Spool(spool.path, max_bytes=1 << 20)
    assert [batch.id for batch in reopened] == [good]
    assert reopened.stats.corrupt_lines == 1
    reopened.discard({good})
    assert not reopened.path.exists()  # the cut line goes with the last applied batch


def test_a_refused_batch_is_kept_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", max_bytes=1 << 20)
    batch_id = new_batch_id()
    spool.append(batch_id, {"observed": 1, "observations": [], "evidence": [], "peers": []}, agent="a")
    (batch,) = list(spool)
    spool.reject(batch)
    spool.discard({batch_id})
    assert json.loads(spool.rejected_path.read_text(encoding="utf-8"))["id"] == batch_id
    assert spool.stats.rejected == 1


def test_batch_ids_are_committed_with_the_batch_and_purged_with_it(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        batch_id = new_batch_id()
        with store.write() as session:
            assert not already_applied(session, batch_id)
            mark_applied(session, batch_id, agent="l5", observations=3, rows=2)
        with store.session() as session:
            assert already_applied(session, batch_id)
            row = session.get(IngestedFile, MARKER_PREFIX + batch_id)
            assert row is not None
            assert row.observations == 3
        other = new_batch_id()

        def failing_write() -> None:
            with store.write() as session:
                mark_applied(session, other, agent="l5", observations=1, rows=1)
                raise RuntimeError("the write failed: nothing of it is kept")

        with pytest.raises(RuntimeError):
            failing_write()
        with store.session() as session:
            assert not already_applied(session, other)
        with store.write() as session:
            assert purge_markers(session, row.ingested_at) == 0
            assert purge_markers(session, row.ingested_at.replace(year=row.ingested_at.year + 1)) == 1
    finally:
        store.dispose()
