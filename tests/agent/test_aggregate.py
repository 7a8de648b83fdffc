"""Aggregation: counts per key, bounded windows, evidence per rule, detections merged across scans."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from agent._aggregate import FlushResult, StoreWriter, product_key
from agent._identity import IdentityResolver
from agent._window import Aggregator, Window
from collectors import Endpoint, Kind, Observation
from fingerprints import Index, load_catalog, load_index
from fingerprints import Index as FingerprintIndex
from store import Detection, ObservationAggregate, Store, open_store
from tests.fingerprints.conftest import KINDS_CATALOG
from tests.store.dburl import BACKENDS, temporary_database

SITE = "ch-test"
T0 = 1_760_000_000.0
CLIENT = Endpoint("10.1.0.5", "f4:8e:38:12:34:56", 50000)  # a Dell workstation: its OUI names nothing
OTHER = Endpoint("10.1.0.6", "f4:8e:38:12:34:57", 50001)
MONITOR = Endpoint("10.1.0.7", "00:09:fb:12:34:56", 50002)  # Philips Medizin Systeme: medical-looking
SERVER = Endpoint("192.0.2.10", "00:00:0c:9f:f0:01", 443)


def obs(
    ts: float,
    value: str,
    *,
    src: Endpoint = CLIENT,
    dst: Endpoint = SERVER,
    kind: Kind = Kind.TLS_SNI,
    **attrs: Any,
) -> Observation:
    return Observation(T0 + ts, kind, value, src, dst, attrs, "pcap", "a1")


@pytest.fixture(scope="module")
def index() -> Index:
    return load_index(with_recog=False)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with temporary_database(request.param, tmp_path) as url:
        opened = open_store(url)
        try:
            yield opened
        finally:
            opened.dispose()


def write(
    store: Store, index: Index, observations: Iterable[Observation], writer: StoreWriter | None = None
) -> FlushResult:
    aggregator = Aggregator(index)
    aggregator.add_all(observations)
    writer = writer or StoreWriter(index, site=SITE, agent="a1")
    with store.write() as session:
        return writer.write(session, aggregator.drain())


def detections(store: Store) -> dict[str, Detection]:
    with store.session() as session:
        return {row.product_key: row for row in session.scalars(select(Detection))}


# -- the aggregator alone ---------------------------------------------------------------------------


def test_counts_times_and_the_newest_attributes(index: Index) -> None:
    aggregator = Aggregator(index)
    aggregator.add_all(
        [
            obs(5, "a.example", alpn=("h2",)),
            obs(1, "a.example", alpn=("http/1.1",)),  # older, out of capture order
            obs(9, "a.example", dst=Endpoint("192.0.2.99", SERVER.mac, 443), alpn=("h3",)),
        ]
    )
    window = aggregator.drain()
    (record,) = window.observations.values()
    assert record == [3, T0 + 1, T0 + 9, {"alpn": ("h3",)}, "192.0.2.99"]
    assert window.observed == 3
    assert len(aggregator) == 0  # drained


def test_the_window_is_bounded_and_counts_what_it_sheds(index: Index) -> None:
    aggregator = Aggregator(index, max_keys=10, max_evidence=3, max_peers=2)
    flood = [
        obs(i, f"{i}.random-subdomain.example", dst=Endpoint(f"192.0.2.{i % 250}", SERVER.mac, 53))
        for i in range(25)
    ]
    aggregator.add_all(flood)
    aggregator.add_all([obs(30, "0.random-subdomain.example")])  # a kept key keeps counting
    aggregator.add_all([obs(31 + i, f"x{i}.chatgpt.com") for i in range(5)])
    assert aggregator.full
    assert len(aggregator) == 10
    stats = aggregator.stats
    # Shedding counts sightings, not distinct keys: the 6 later ones all hit the full peer set.
    assert (stats.observations, stats.shed_observations, stats.shed_peers) == (31, 20, 23 + 6)
    window = aggregator.drain()
    assert window.observations[CLIENT.ip, CLIENT.mac, Kind.TLS_SNI, "0.random-subdomain.example"][0] == 2
    assert len(window.evidence) <= 3


def test_source_spans_are_those_of_the_counted_records(index: Index) -> None:
    """Kept as the Observations come, they equal the spans read from the records; shed ones count nowhere."""
    rng = random.Random(7)
    sources = [Endpoint(f"10.2.0.{i}", f"02:00:00:00:00:{i:02x}", 40000 + i) for i in range(1, 30)]
    times = rng.sample(range(100_000), 3000)  # no two alike: "the last" is one observation
    observations = [
        obs(ts / 10, f"h{rng.randrange(150)}.example", src=rng.choice(sources), vlan=rng.randrange(1, 5))
        for ts in times
    ]
    aggregator = Aggregator(index, max_keys=2000)
    aggregator.add_all(observations)
    assert aggregator.stats.shed_observations > 0
    window = aggregator.drain()
    assert window.spans == Window.spans_of(window.observations)
    assert set(window.spans) == {(ip, mac) for ip, mac, _, _ in window.observations}


def test_a_sources_last_vlan_is_that_of_its_last_observation(index: Index) -> None:
    aggregator = Aggregator(index)
    aggregator.add_all(
        [obs(5, "a.example", vlan=10), obs(9, "b.example", vlan=20), obs(7, "a.example", vlan=30)]
    )
    aggregator.add_all([obs(9, "a.example", vlan=40)])  # as late as the latest: it arrived after it
    span = aggregator.drain().spans[CLIENT.ip, CLIENT.mac]
    assert span == [T0 + 5, T0 + 9, {"vlan": 40}]


def test_evidence_is_per_sighting_and_rule(index: Index) -> None:
    aggregator = Aggregator(index)
    aggregator.add_all([obs(3, "chatgpt.com"), obs(1, "ab.chatgpt.com"), obs(2, "chatgpt.com", src=OTHER)])
    window = aggregator.drain()
    mine = window.evidence[CLIENT.ip, CLIENT.mac, "openai-chatgpt:chatgpt"]
    assert (mine[0].value, mine[1], mine[2], mine[3]) == ("ab.chatgpt.com", T0 + 1, T0 + 3, 2)
    assert window.evidence[OTHER.ip, OTHER.mac, "openai-chatgpt:chatgpt"][3] == 1


def test_server_side_evidence_is_about_the_server(tmp_path: Path) -> None:
    kinds = FingerprintIndex(load_catalog(KINDS_CATALOG))
    pacs = Endpoint("10.7.0.2", "00:09:fb:00:00:02", 80)
    aggregator = Aggregator(kinds)
    aggregator.add_all([obs(0, "DemoPACS/12 (Linux)", kind=Kind.HTTP_SERVER, dst=pacs)])
    window = aggregator.drain()
    assert list(window.evidence) == [(pacs.ip, pacs.mac, "demo-pacs:server")]
    assert (pacs.ip, pacs.mac) in window.sightings()


# -- writing windows --------------------------------------------------------------------------------


def test_two_addresses_of_one_device_asking_the_same_name(store: Store, index: Index) -> None:
    # Both sightings resolve to one endpoint: the rows merge before the upsert (PostgreSQL refuses
    # one ON CONFLICT statement that touches a key twice).
    second = Endpoint("fe80::209:fbff:fe12:3456", CLIENT.mac, 50002)
    result = write(store, index, [obs(0, "a.example"), obs(1, "a.example", src=second)])
    assert (result.observations, result.rows) == (2, 1)
    with store.session() as session:
        (row,) = session.scalars(select(ObservationAggregate)).all()
    assert (row.count, row.first_seen, row.last_seen) == (
        2,
        datetime.fromtimestamp(T0, UTC),
        datetime.fromtimestamp(T0 + 1, UTC),
    )


def test_a_detection_and_its_evidence(store: Store, index: Index) -> None:
    result = write(
        store, index, [obs(0, "chatgpt.com"), obs(60, "chatgpt.com"), obs(30, "cdn.oaistatic.com")]
    )
    assert result.detections == {"openai-chatgpt": {next(iter(result.endpoints))}}
    detection = detections(store)["openai-chatgpt"]
    assert (detection.product_id, detection.vendor, detection.category) == (
        "openai-chatgpt",
        "OpenAI",
        "llm_chat",
    )
    assert detection.confidence >= 0.9
    by_rule = {entry["rule"]: entry for entry in detection.evidence}
    assert set(by_rule) == {"openai-chatgpt:chatgpt", "openai-chatgpt:oaistatic"}
    entry = by_rule["openai-chatgpt:chatgpt"]
    assert (entry["value"], entry["count"], entry["kind"]) == ("chatgpt.com", 2, "tls.sni")
    assert entry["first_seen"] < entry["last_seen"]
    assert (detection.first_seen, detection.last_seen) == (
        datetime.fromtimestamp(T0, UTC),
        datetime.fromtimestamp(T0 + 60, UTC),
    )


def test_evidence_merges_across_scans(store: Store, index: Index) -> None:
    write(store, index, [obs(1000, "chatgpt.com")])
    before = detections(store)["openai-chatgpt"]
    # A later scan of an older capture: the first sighting moves back, with its value; counts add.
    write(store, index, [obs(10, "old.chatgpt.com"), obs(2000, "files.oaiusercontent.com")])
    after = detections(store)["openai-chatgpt"]
    assert after.id == before.id
    by_rule = {entry["rule"]: entry for entry in after.evidence}
    assert by_rule["openai-chatgpt:chatgpt"]["value"] == "old.chatgpt.com"
    assert by_rule["openai-chatgpt:chatgpt"]["count"] == 2
    assert "openai-chatgpt:oaiusercontent" in by_rule
    assert after.first_seen == datetime.fromtimestamp(T0 + 10, UTC)
    assert after.last_seen == datetime.fromtimestamp(T0 + 2000, UTC)
    assert after.confidence >= before.confidence


def test_a_detection_no_longer_supported_is_removed(store: Store, index: Index) -> None:
    write(store, index, [obs(0, "a.example")])
    with store.write() as session:
        endpoint_id = session.scalar(select(func.min(ObservationAggregate.endpoint_id)))
        assert endpoint_id is not None
        # Evidence of a rule the catalogue no longer has (renamed or removed since).
        session.add(
            Detection(
                site=SITE,
                product_key="gone-product",
                product_id="gone-product",
                endpoint_id=endpoint_id,
                confidence=0.9,
                evidence=[
                    {
                        "rule": "gone-product:api",
                        "kind": "tls.sni",
                        "value": "api.gone.example",
                        "first_seen": "2025-01-01T00:00:00.000000+00:00",
                        "last_seen": "2025-01-01T00:00:00.000000+00:00",
                        "count": 4,
                    }
                ],
                roles=[],
                catalog_version="old",
                first_seen=datetime(2025, 1, 1, tzinfo=UTC),
                last_seen=datetime(2025, 1, 1, tzinfo=UTC),
            )
        )
    result = write(store, index, [obs(5, "chatgpt.com")])
    assert result.removed_detections == 1
    assert set(detections(store)) == {"openai-chatgpt"}


def test_unknowns_are_keyed_by_vendor_and_only_when_of_interest(store: Store, index: Index) -> None:
    # A Philips patient-monitor OUI alone: weak, names no product, but medical-looking.
    result = write(store, index, [obs(0, "time.example", kind=Kind.DNS_QUERY, src=MONITOR)])
    assert set(result.detections) == {"unknown:Philips"}
    (row,) = detections(store).values()
    assert (row.product_id, row.vendor, row.category) == ("unknown", "Philips", "medical_device")
    assert row.evidence[0]["rule"] == "philips-patient-monitoring:oui-patient-monitoring"
    # A workstation asking for the same name is nothing anyone needs to review.
    assert write(store, index, [obs(1, "time.example", kind=Kind.DNS_QUERY)]).detections == {}


def test_product_key() -> None:
    from fingerprints import Detection as Assessed

    assert product_key(Assessed("openai-chatgpt", "OpenAI", None, 0.9, ())) == "openai-chatgpt"
    assert product_key(Assessed("unknown", "Philips", None, 0.2, ())) == "unknown:Philips"


def test_the_agent_reports_its_heartbeat(store: Store, index: Index) -> None:
    from store import Agent

    writer = StoreWriter(index, site=SITE, agent="sonde-rea", resolver=IdentityResolver(SITE))
    write(store, index, [obs(0, "a.example")], writer)
    with store.session() as session:
        agent = session.get_one(Agent, "sonde-rea")
    assert (agent.site, agent.catalog_version) == (SITE, index.version)


def test_stored_entries_without_times_take_the_detections(store: Store, index: Index) -> None:
    # Evidence written by another tool (an import, a test helper) may carry only rule, kind, value.
    write(store, index, [obs(500, "a.example")])
    old = datetime(2025, 6, 1, tzinfo=UTC)
    with store.write() as session:
        endpoint_id = session.scalar(select(func.min(ObservationAggregate.endpoint_id)))
        assert endpoint_id is not None
        session.add(
            Detection(
                site=SITE,
                product_key="openai-chatgpt",
                product_id="openai-chatgpt",
                endpoint_id=endpoint_id,
                confidence=0.9,
                evidence=[{"rule": "openai-chatgpt:chatgpt", "kind": "tls.sni", "value": "chatgpt.com"}],
                roles=[],
                catalog_version="x",
                first_seen=old,
                last_seen=old,
            )
        )
    write(store, index, [obs(600, "cdn.oaistatic.com")])
    detection = detections(store)["openai-chatgpt"]
    by_rule = {entry["rule"]: entry for entry in detection.evidence}
    assert set(by_rule) == {"openai-chatgpt:chatgpt", "openai-chatgpt:oaistatic"}
    assert by_rule["openai-chatgpt:chatgpt"]["first_seen"].startswith("2025-06-01")
    assert detection.first_seen == old
