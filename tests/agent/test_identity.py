"""Endpoint identity on SQLite and PostgreSQL: MACs, gateways, random MACs, DHCP bindings, provisional IPs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from agent._aggregate import FlushResult, StoreWriter
from agent._identity import (
    DhcpFacts,
    IdentityResolver,
    Pseudonymiser,
    Span,
    stable_client_id,
    usable_ip,
    usable_mac,
)
from agent._window import Aggregator
from collectors import Endpoint, Kind, Observation
from fingerprints import Index, load_index
from store import Detection, EndpointAlias, IdentityKind, ObservationAggregate, Store, open_store
from store import Endpoint as EndpointRow
from tests.store.dburl import BACKENDS, temporary_database

SITE = "ch-test"
T0 = 1_760_000_000.0
ROUTER = "00:00:0c:9f:f0:01"  # a Cisco HSRP MAC: globally administered
PHILIPS = "00:09:fb:12:34:56"  # Philips Medizin Systeme OUI
RANDOM_A = "da:a1:19:00:00:0a"  # locally administered (randomised) MACs
RANDOM_B = "ee:a1:19:00:00:0b"
SERVER = Endpoint("192.0.2.10", ROUTER, 443)


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


def obs(
    ts: float,
    value: str,
    ip: str | None,
    mac: str | None,
    *,
    kind: Kind = Kind.TLS_SNI,
    dst: Endpoint = SERVER,
    attrs: dict[str, Any] | None = None,
) -> Observation:
    return Observation(
        T0 + ts, kind, value, Endpoint(ip, mac, 50000 if ip else None), dst, attrs or {}, "pcap", "a1"
    )


def dhcp(
    ts: float, mac: str, *, cid: str | None = None, host: str | None = None, lease: str | None = None
) -> list[Observation]:
    """What collectors.dhcp reports for one message of a client."""
    server = Endpoint("10.0.0.1", ROUTER, 67)
    client = Endpoint(None, mac, 68)
    out: list[Observation] = []
    if cid:
        out.append(
            Observation(
                T0 + ts, Kind.DHCP_CLIENT_ID, cid, client, server, {"msg_type": "REQUEST"}, "pcap", "a1"
            )
        )
    if host:
        out.append(
            Observation(
                T0 + ts, Kind.DHCP_HOSTNAME, host, client, server, {"msg_type": "REQUEST"}, "pcap", "a1"
            )
        )
    if lease:
        attrs = {"msg_type": "ACK", "lease_time": 3600, "client_id": cid, "hostname": host}
        out.append(
            Observation(
                T0 + ts, Kind.DHCP_LEASE, lease, Endpoint(lease, mac, 68), server, attrs, "pcap", "a1"
            )
        )
    return out


class Site:
    """One site's writer, fed window after window (one resolver: its memory spans windows)."""

    def __init__(self, store: Store, index: Index, pseudonymiser: Pseudonymiser | None = None) -> None:
        self.store = store
        self.index = index
        self.writer = StoreWriter(
            index, site=SITE, agent="a1", resolver=IdentityResolver(SITE, pseudonymiser=pseudonymiser)
        )

    def window(self, observations: Iterable[Observation]) -> FlushResult:
        aggregator = Aggregator(self.index)
        aggregator.add_all(observations)
        with self.store.write() as session:
            return self.writer.write(session, aggregator.drain())

    def endpoints(self) -> list[EndpointRow]:
        with self.store.session() as session:
            return list(session.scalars(select(EndpointRow).order_by(EndpointRow.id)))

    def live(self) -> list[EndpointRow]:
        return [row for row in self.endpoints() if row.merged_into is None]

    def aliases(self) -> dict[str, int]:
        with self.store.session() as session:
            rows = session.execute(select(EndpointAlias.alias, EndpointAlias.endpoint_id))
            return dict(rows.all())

    def counts(self) -> dict[int, int]:
        with self.store.session() as session:
            query = select(ObservationAggregate.endpoint_id, func.sum(ObservationAggregate.count)).group_by(
                ObservationAggregate.endpoint_id
            )
            return {endpoint_id: int(total) for endpoint_id, total in session.execute(query)}


@pytest.fixture
def site(store: Store, index: Index) -> Site:
    return Site(store, index)


def test_a_mac_on_the_segment_is_the_identity(site: Site) -> None:
    site.window([obs(0, "a.example", "10.1.0.5", PHILIPS), obs(1, "b.example", "10.1.0.6", PHILIPS)])
    (endpoint,) = site.endpoints()
    assert (endpoint.identity_kind, endpoint.identity, endpoint.mac) == (IdentityKind.MAC, PHILIPS, PHILIPS)
    assert endpoint.randomized_mac is False
    assert endpoint.ip == "10.1.0.6"  # the newest address
    assert endpoint.vendor is not None
    assert "philips" in endpoint.vendor.lower()
    assert site.aliases() == {f"mac:{PHILIPS}": endpoint.id}


def test_a_fixed_mac_keeps_its_dhcp_host_name_without_merging_by_it(site: Site) -> None:
    site.window(dhcp(0, PHILIPS, host="iu22-echo"))
    site.window(dhcp(5, "00:09:fb:00:00:99", host="iu22-echo"))
    endpoints = site.endpoints()
    assert [row.hostname for row in endpoints] == ["iu22-echo", "iu22-echo"]
    assert [row.identity_kind for row in endpoints] == [IdentityKind.MAC, IdentityKind.MAC]


def test_a_gateway_mac_is_never_an_identity(site: Site) -> None:
    # Routed traffic: one source MAC (the router's) carries many addresses.
    routed = [obs(i, "x.example", f"10.9.0.{i + 1}", ROUTER) for i in range(12)]
    routed.append(obs(20, "y.example", "9.9.9.9", ROUTER))  # a remote (global) client: no identity
    result = site.window(routed)
    endpoints = site.endpoints()
    assert ROUTER not in {row.identity for row in endpoints}
    assert {row.identity_kind for row in endpoints} == {IdentityKind.IP_UNBOUND}
    assert sorted(row.identity for row in endpoints) == sorted(f"10.9.0.{i + 1}" for i in range(12))
    assert result.unattributed == 1
    assert site.writer.resolver.gateways == {ROUTER}


def test_random_macs_of_one_device_merge_by_client_id(site: Site) -> None:
    site.window([*dhcp(0, RANDOM_A, cid="ff:00:00:00:01:00:01"), obs(1, "a.example", "10.2.0.5", RANDOM_A)])
    site.window(
        [*dhcp(100, RANDOM_B, cid="ff:00:00:00:01:00:01"), obs(101, "b.example", "10.2.0.9", RANDOM_B)]
    )
    (endpoint,) = site.endpoints()
    assert (endpoint.identity_kind, endpoint.identity) == (
        IdentityKind.DHCP_CLIENT_ID,
        "ff:00:00:00:01:00:01",
    )
    assert endpoint.randomized_mac is True
    assert endpoint.mac == RANDOM_B
    aliases = site.aliases()
    assert aliases[f"mac:{RANDOM_A}"] == aliases[f"mac:{RANDOM_B}"] == endpoint.id


def test_a_client_id_that_only_repeats_the_random_mac_merges_nothing(site: Site) -> None:
    site.window(dhcp(0, RANDOM_A, cid="01:" + RANDOM_A))
    site.window(dhcp(10, RANDOM_B, cid="01:" + RANDOM_B))
    assert len(site.endpoints()) == 2
    assert not stable_client_id("01:" + RANDOM_A, RANDOM_A)
    assert stable_client_id("ff:12", RANDOM_A)


def test_random_macs_merge_by_host_name_unless_it_is_generic(site: Site) -> None:
    site.window(dhcp(0, RANDOM_A, host="pompe-rea-17"))
    site.window(dhcp(50, RANDOM_B, host="pompe-rea-17"))
    (endpoint,) = site.endpoints()
    assert (endpoint.identity_kind, endpoint.identity, endpoint.hostname) == (
        IdentityKind.DHCP_HOSTNAME,
        "pompe-rea-17",
        "pompe-rea-17",
    )
    site.window(dhcp(60, "fa:00:00:00:00:01", host="iphone"))
    site.window(dhcp(70, "fa:00:00:00:00:02", host="iphone"))
    assert len(site.endpoints()) == 3


def test_a_random_mac_is_rekeyed_when_its_client_id_appears(site: Site) -> None:
    site.window([obs(0, "a.example", "10.2.0.5", RANDOM_A)])
    (before,) = site.endpoints()
    assert (before.identity_kind, before.randomized_mac) == (IdentityKind.MAC, True)
    site.window(dhcp(10, RANDOM_A, cid="ff:aa:bb"))
    (after,) = site.endpoints()
    assert after.id == before.id
    assert (after.identity_kind, after.identity) == (IdentityKind.DHCP_CLIENT_ID, "ff:aa:bb")


def test_many_random_macs_better_known_at_once_are_rekeyed_in_one_statement(site: Site) -> None:
    macs = [f"da:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(300)]
    site.window([obs(i, "a.example", f"10.3.{i // 250}.{i % 250 + 1}", mac) for i, mac in enumerate(macs)])
    before = {row.mac: row.id for row in site.endpoints()}
    assert len(before) == len(macs)
    updates: list[tuple[str, bool]] = []

    def seen(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE ENDPOINTS"):
            updates.append((statement, executemany))

    event.listen(site.store.engine, "before_cursor_execute", seen)
    try:
        site.window([item for i, mac in enumerate(macs) for item in dhcp(1000 + i, mac, cid=f"ff:{i:04x}")])
    finally:
        event.remove(site.store.engine, "before_cursor_execute", seen)
    after = site.endpoints()
    assert {row.mac: row.id for row in after} == before  # the same endpoints, re-keyed in place
    assert {(row.mac, row.identity_kind, row.identity) for row in after} == {
        (mac, IdentityKind.DHCP_CLIENT_ID, f"ff:{i:04x}") for i, mac in enumerate(macs)
    }
    assert all(row.randomized_mac for row in after)
    assert [executemany for _, executemany in updates] == [True], updates


def test_two_devices_of_a_window_that_are_one_stored_endpoint(site: Site) -> None:
    # The store already knows RANDOM_A and client id ff:77 as one device. This window shows
    # RANDOM_A with another client id (its group is resolved first: "cid:00:11" sorts first),
    # and a fixed MAC announcing ff:77 (randomisation turned off), which upgrades the identity.
    site.window(dhcp(0, RANDOM_A, cid="ff:77"))
    site.window([*dhcp(10, RANDOM_A, cid="00:11"), *dhcp(11, PHILIPS, cid="ff:77")])
    (endpoint,) = site.endpoints()
    assert (endpoint.identity_kind, endpoint.identity) == (IdentityKind.MAC, PHILIPS)
    aliases = site.aliases()
    assert aliases[f"mac:{RANDOM_A}"] == aliases[f"mac:{PHILIPS}"] == aliases["cid:ff:77"] == endpoint.id
    assert aliases["cid:00:11"] == endpoint.id


def test_two_endpoints_merge_when_a_client_id_joins_them(site: Site) -> None:
    site.window([obs(0, "a.example", "10.2.0.5", RANDOM_A), obs(1, "same.example", "10.2.0.5", RANDOM_A)])
    site.window([obs(10, "b.example", "10.2.0.6", RANDOM_B), obs(11, "same.example", "10.2.0.6", RANDOM_B)])
    assert len(site.live()) == 2
    result = site.window([*dhcp(20, RANDOM_A, cid="ff:01"), *dhcp(21, RANDOM_B, cid="ff:01")])
    assert result.merged == 1
    (survivor,) = site.live()
    merged = [row for row in site.endpoints() if row.merged_into is not None]
    assert [row.merged_into for row in merged] == [survivor.id]
    # Every observation now belongs to the survivor, and the shared name was merged into one row.
    assert site.counts() == {survivor.id: 6}
    with site.store.session() as session:
        rows = session.scalars(
            select(ObservationAggregate).where(ObservationAggregate.value == "same.example")
        ).all()
    assert [(row.endpoint_id, row.count) for row in rows] == [(survivor.id, 2)]


def test_an_address_without_a_mac_goes_to_its_dhcp_lease_holder(site: Site) -> None:
    # Zeek-like input: no MAC on the observation, but the window's DHCP ACK bound the address.
    site.window([*dhcp(0, PHILIPS, lease="10.3.0.44"), obs(5, "telemetry.example", "10.3.0.44", None)])
    (endpoint,) = site.endpoints()
    assert endpoint.identity == PHILIPS
    assert site.counts() == {endpoint.id: 2}
    # A later window relies on the stored lease...
    site.window([obs(600, "later.example", "10.3.0.44", None)])
    assert site.counts() == {endpoint.id: 3}
    # ...until it expires: then the address is a provisional endpoint, never the old holder's.
    site.window([obs(3 * 3600, "much-later.example", "10.3.0.44", None)])
    assert {row.identity_kind for row in site.endpoints()} == {IdentityKind.MAC, IdentityKind.IP_UNBOUND}


def test_a_provisional_endpoint_merges_into_the_device_once_bound(site: Site) -> None:
    site.window([obs(0, "a.example", "10.4.0.8", None), obs(1, "b.example", "10.4.0.8", None)])
    (provisional,) = site.endpoints()
    assert (provisional.identity_kind, provisional.identity) == (IdentityKind.IP_UNBOUND, "10.4.0.8")
    result = site.window(dhcp(30, PHILIPS, lease="10.4.0.8"))
    assert result.merged == 1
    (device,) = site.live()
    assert device.identity == PHILIPS
    stale = next(row for row in site.endpoints() if row.id == provisional.id)
    assert stale.merged_into == device.id
    assert site.counts() == {device.id: 3}
    assert "ip:10.4.0.8" not in site.aliases()
    # After the lease, the address is a new question: a new provisional endpoint can exist.
    site.window([obs(4 * 3600, "c.example", "10.4.0.8", None)])
    assert [row.identity_kind for row in site.live()] == [IdentityKind.MAC, IdentityKind.IP_UNBOUND]


def test_remote_addresses_without_a_binding_are_not_endpoints(site: Site) -> None:
    result = site.window([obs(0, "a.example", "9.9.9.9", None)])
    assert site.endpoints() == []
    assert (result.unattributed, result.observations) == (1, 0)


def test_configured_local_networks(store: Store, index: Index) -> None:
    import ipaddress

    resolver = IdentityResolver(SITE, local_networks=[ipaddress.ip_network("9.9.0.0/16")])
    assert resolver.is_local("9.9.9.9")
    assert not resolver.is_local("10.0.0.1")
    assert IdentityResolver(SITE).is_local("100.64.0.1")  # shared (CGNAT) space is not global
    with store.write() as session:
        result = resolver.resolve(session, {("9.9.9.9", None): Span(T0, T0)})
    assert len(result.endpoints) == 1


def test_pseudonymous_mode_stores_no_clear_identifier(store: Store, index: Index) -> None:
    key = b"0123456789abcdef-test-key"
    site = Site(store, index, Pseudonymiser(key))
    site.window(
        [
            *dhcp(0, PHILIPS, cid="ff:09", host="poste-dr-martin", lease="10.5.0.3"),
            obs(1, "chatgpt.com", "10.5.0.3", PHILIPS),
            obs(2, "b.example", "10.5.0.77", None),
        ]
    )
    hashed = Pseudonymiser(key)
    texts: list[str] = []
    for row in site.endpoints():
        texts += [str(value) for value in (row.identity, row.mac, row.ip, row.hostname) if value is not None]
    texts += list(site.aliases())
    with store.session() as session:
        texts += [str(value) for value in session.scalars(select(ObservationAggregate.value))]
        texts += [str(value) for value in session.scalars(select(ObservationAggregate.attrs))]
        evidence = [str(value) for value in session.scalars(select(Detection.evidence))]
    assert evidence  # the Philips OUI makes an unknown:Philips detection whose evidence is a MAC
    texts += evidence
    blob = "\n".join(texts)
    for clear in (PHILIPS, "10.5.0.3", "10.5.0.77", "poste-dr-martin", "ff:09"):
        assert clear not in blob
    assert hashed(PHILIPS) in blob
    assert "chatgpt.com" in blob  # what was used is kept; who used it is not
    assert hashed("x") == Pseudonymiser(key)("x") != Pseudonymiser(b"another-key-of-16+b")("x")
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymiser(b"short")


def test_address_and_mac_predicates() -> None:
    assert usable_mac(PHILIPS)
    assert not usable_mac("01:00:5e:00:00:fb")  # multicast
    assert not usable_mac("ff:ff:ff:ff:ff:ff")
    assert not usable_mac("00:00:00:00:00:00")
    assert usable_ip("10.0.0.1")
    assert usable_ip("2001:db8::1")
    for bad in ("0.0.0.0", "255.255.255.255", "224.0.0.251", "ff02::fb", "::"):
        assert not usable_ip(bad), bad


def test_leases_are_backdated_by_half_a_lease() -> None:
    lease = DhcpFacts.lease("10.0.0.9", PHILIPS, T0, T0 + 10, 7200)
    assert (lease.valid_from, lease.valid_until) == (T0 - 3600, T0 + 10 + 7200)
    assert DhcpFacts.lease("10.0.0.9", PHILIPS, T0, T0, None).valid_until == T0 + 3600
