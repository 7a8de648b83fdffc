"""Endpoint identity: which device an Observation is about (DESIGN §5).

A *sighting* is an (IP, MAC) pair as a packet showed it. It is resolved to an endpoint row,
best identity first:

1. the MAC, when it was seen on the monitored segment as a source, is unicast, and is not a
   gateway's (a MAC that shows many addresses routes them: ``GATEWAY_MIN_IPS``);
2. randomised (locally administered) MACs of one device are merged through their DHCP client
   id (option 61, unless it is just the random MAC again), then through a DHCP host name that
   is not generic (``iPhone`` names nobody);
3. an IP without a usable MAC goes to the device a DHCP lease bound it to at that time (server
   ACK with its lease time, or the client's request), or to a device seen with that address on
   the segment in the same window;
4. only as a last resort, a local IP becomes a provisional ``ip_unbound`` endpoint, merged into
   the bound device (``merged_into`` set, aggregates re-pointed) once a binding appears. Remote
   addresses without a binding are never endpoints: they are counted as unattributed.

Every key that leads to an endpoint is an alias (``mac:``, ``cid:``, ``host:``, ``lease:``,
``ip:``), so later windows, agents and scans find the same row. In pseudonymous mode (DESIGN
§10) MACs, addresses, client ids and host names are stored as keyed hashes (HMAC-SHA256,
truncated): the grouping above runs on the clear values in memory, the store never sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, Final

from sqlalchemy import Row, delete, select, update
from sqlalchemy.orm import Session

from agent._window import Sighting
from collectors import Kind, is_locally_administered
from fingerprints import mac_vendor
from store import (
    Detection,
    Endpoint,
    EndpointAlias,
    IdentityKind,
    ObservationAggregate,
    among,
    upsert_aliases,
    upsert_endpoints,
    upsert_observations,
)

#: A MAC seen with at least this many IPv4 (or four times as many IPv6) addresses is a router's.
GATEWAY_MIN_IPS: Final = 8
#: Addresses remembered per MAC to detect gateways, and MACs remembered (least recent forgotten).
MAX_TRACKED_MACS: Final = 65_536
#: A lease without a lease time (a client's REQUEST or INFORM) is trusted this long.
DEFAULT_LEASE_SECONDS: Final = 3600
#: Host names that many devices share: never a reason to merge two random MACs.
GENERIC_HOSTNAMES: Final = frozenset(
    {
        "android",
        "android-phone",
        "client",
        "debian",
        "default",
        "desktop",
        "dhcp",
        "espressif",
        "galaxy",
        "host",
        "imac",
        "ipad",
        "iphone",
        "laptop",
        "localhost",
        "macbook",
        "macbook-air",
        "macbook-pro",
        "none",
        "pc",
        "printer",
        "raspberrypi",
        "ubuntu",
        "unknown",
        "user",
        "windows",
    }
)
#: Observation kinds whose value names the client itself: hashed too in pseudonymous mode.
CLIENT_NAME_KINDS: Final = frozenset(
    {Kind.DHCP_HOSTNAME, Kind.DHCP_CLIENT_ID, Kind.DHCP_LEASE, Kind.NBNS_NAME, Kind.MDNS_HOST}
)
_NOT_A_HOST: Final = frozenset({"0.0.0.0", "255.255.255.255"})  # noqa: S104 - compared, never bound
_PSEUDONYM_HEX: Final = 24  # 96 bits: no collision among a hospital's devices, short in exports
#: Bulk statements on rows never loaded as ORM objects: no session synchronisation to do.
_BULK: Final = {"synchronize_session": False}


class Pseudonymiser:
    """Keyed hashes of client identifiers: ``h:`` + HMAC-SHA256(key, value), truncated."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonymisation key needs at least 16 bytes")
        self._key = key
        # The same few thousand identifiers come back in every window: hash each once.
        self._cached = lru_cache(maxsize=65_536)(self._hash)

    def _hash(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return "h:" + digest.hexdigest()[:_PSEUDONYM_HEX]

    def __call__(self, value: str) -> str:
        """The pseudonym of ``value`` (stable for one key)."""
        return self._cached(value)


def _clear(value: str) -> str:
    return value


@dataclass(slots=True)
class Span:
    """When a sighting was seen (epoch seconds), and on which VLAN last."""

    first: float
    last: float
    vlan: int | None = None

    def widen(self, other: Span) -> None:
        """Extend to cover ``other``."""
        self.first = min(self.first, other.first)
        if other.last >= self.last:
            self.last = other.last
            if other.vlan is not None:
                self.vlan = other.vlan


@dataclass(frozen=True, slots=True)
class Lease:
    """An address bound to a client MAC by DHCP, and when the binding holds."""

    ip: str
    mac: str
    valid_from: float
    last: float
    valid_until: float


@dataclass(slots=True)
class DhcpFacts:
    """What a window's DHCP traffic says about devices: client ids, host names, leases."""

    client_ids: dict[str, str] = field(default_factory=dict)
    """MAC -> client id (hex), the newest."""
    hostnames: dict[str, str] = field(default_factory=dict)
    """MAC -> DHCP host name, the newest."""
    leases: list[Lease] = field(default_factory=list)

    @staticmethod
    def lease(ip: str, mac: str, first: float, last: float, lease_time: object) -> Lease:
        """A lease from aggregated ``dhcp.lease`` observations (first/last message, lease time)."""
        seconds = lease_time if isinstance(lease_time, int) and lease_time > 0 else DEFAULT_LEASE_SECONDS
        # Clients renew at half the lease: an address renewed at ``first`` was held since at least
        # half a lease before; a brand-new lease backdated that far is harmless (DHCP servers
        # do not hand out an address that was in use moments ago).
        return Lease(ip, mac, first - seconds / 2, last, last + seconds)


@dataclass(slots=True)
class Resolution:
    """A window's sightings resolved to endpoint ids, and what resolving them did."""

    endpoints: dict[Sighting, int] = field(default_factory=dict)
    merged: dict[int, int] = field(default_factory=dict)
    """Endpoint merged in this window -> the endpoint it was merged into."""
    inherited_evidence: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """Survivor -> the stored detection evidence of the endpoints merged into it (to re-assess)."""
    created: int = 0
    unattributed: int = 0
    """Sightings with no identity: a remote address without a binding, or no address at all."""
    gateways: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Component:
    """MACs (and their client ids and host names) that are one device, as this window shows it."""

    macs: set[str] = field(default_factory=set)
    cids: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    """Host names that merge random MACs (not generic ones)."""
    hostname: str | None = None
    """The DHCP host name the device gave, whatever its MAC (shown, never a merge key)."""
    span: Span | None = None
    ip: tuple[float, str] | None = None
    mac: tuple[float, str] | None = None
    endpoint_id: int | None = None


@dataclass(slots=True)
class _Stored:
    """The columns of a stored endpoint that resolution needs."""

    id: int
    kind: IdentityKind
    identity: str
    randomized: bool
    merged_into: int | None
    first_seen: datetime
    last_seen: datetime


def _fixed_macs(macs: set[str]) -> list[str]:
    """The device's burnt-in (not locally administered) MACs, sorted."""
    if len(macs) == 1:  # most devices: no generator, no sort
        (mac,) = macs
        return [] if is_locally_administered(mac) else [mac]
    return sorted(mac for mac in macs if not is_locally_administered(mac))


def _rank(kind: IdentityKind, randomized: bool) -> int:
    """How good an identity is: lower is better (DESIGN §5 precedence)."""
    if kind is IdentityKind.MAC:
        return 3 if randomized else 0
    return {IdentityKind.DHCP_CLIENT_ID: 1, IdentityKind.DHCP_HOSTNAME: 2}.get(kind, 4)


@lru_cache(maxsize=65_536)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


@lru_cache(maxsize=16_384)
def usable_mac(mac: str) -> bool:
    """Whether a MAC can identify one device (unicast, not all zeros)."""
    return not int(mac[:2], 16) & 0x01 and mac != "00:00:00:00:00:00"


@lru_cache(maxsize=65_536)
def usable_ip(ip: str) -> bool:
    """Whether a canonical address can be one device's (unicast, specified)."""
    if "." in ip and ":" not in ip:  # IPv4: string tests, no parsing (thousands per window)
        first = ip.partition(".")[0]
        return first.isdigit() and not 224 <= int(first) <= 239 and ip not in _NOT_A_HOST
    address = _address(ip)
    return address is not None and not (address.is_multicast or address.is_unspecified)


def stable_client_id(client_id: str, mac: str) -> bool:
    """Whether a DHCP client id says more than the MAC it came with (type 1 + the MAC says nothing)."""
    return client_id.replace(":", "") != "01" + mac.replace(":", "")


def _stamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _UnionFind:
    """Keys joined into devices (a handful per window: no ranks needed)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        parent = self.parent.setdefault(key, key)
        while parent != key:
            grand = self.parent[parent]
            self.parent[key] = grand
            key, parent = parent, grand
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class IdentityResolver:
    """Resolves sightings to endpoints of one site, window after window (state kept bounded)."""

    def __init__(
        self,
        site: str,
        *,
        pseudonymiser: Callable[[str], str] | None = None,
        gateway_min_ips: int = GATEWAY_MIN_IPS,
        local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        max_tracked_macs: int = MAX_TRACKED_MACS,
    ) -> None:
        self.site = site
        self.pseudonym: Callable[[str], str] = pseudonymiser or _clear
        self.pseudonymous = pseudonymiser is not None
        self.gateway_min_ips = gateway_min_ips
        self.local_networks = tuple(local_networks) if local_networks is not None else None
        self.max_tracked_macs = max_tracked_macs
        self._addresses: OrderedDict[str, set[str]] = OrderedDict()
        self.gateways: set[str] = set()

    # -- gateways and locality ---------------------------------------------------------------------

    def _track(self, mac: str, ip: str) -> None:
        """Remember that ``mac`` carried ``ip``; promote it to gateway past the threshold."""
        if mac in self.gateways:
            return
        seen = self._addresses.get(mac)
        if seen is None:
            if len(self._addresses) >= self.max_tracked_macs:
                self._addresses.popitem(last=False)
            seen = self._addresses[mac] = set()
        else:
            self._addresses.move_to_end(mac)
        seen.add(ip)
        v4 = sum(1 for item in seen if ":" not in item)
        if v4 >= self.gateway_min_ips or len(seen) - v4 >= 4 * self.gateway_min_ips:
            self.gateways.add(mac)
            del self._addresses[mac]
        elif len(seen) > 5 * self.gateway_min_ips:  # bounded even for an IPv6-only flood
            seen.pop()

    def is_local(self, ip: str) -> bool:
        """Whether ``ip`` may be a device of the site (any non-global address unless configured)."""
        address = _address(ip)
        if address is None:
            return False
        if self.local_networks is not None:
            return any(address in network for network in self.local_networks)
        return not address.is_global  # private, link-local, shared (CGNAT) and documentation ranges

    # -- resolution ----------------------------------------------------------------------------------

    def resolve(
        self,
        session: Session,
        sightings: Mapping[Sighting, Span],
        peers: Iterable[Sighting] = (),
        dhcp: DhcpFacts | None = None,
    ) -> Resolution:
        """Resolve a window's sightings to endpoint ids, creating and merging endpoints as needed."""
        dhcp = dhcp or DhcpFacts()
        result = Resolution()
        for ip, mac in (*sightings, *peers):
            if ip is not None and mac is not None and usable_mac(mac) and usable_ip(ip):
                self._track(mac, ip)
        result.gateways = frozenset(self.gateways)

        by_mac: dict[str, Span] = {}
        ip_of_mac: dict[str, tuple[float, str]] = {}
        mac_of_ip: dict[str, tuple[float, str]] = {}
        by_ip: dict[str, Span] = {}
        for (ip, mac), span in sightings.items():
            if mac is not None and usable_mac(mac) and mac not in self.gateways:
                known = by_mac.get(mac)
                if known is None:
                    by_mac[mac] = Span(span.first, span.last, span.vlan)
                else:
                    known.widen(span)
                if ip is not None and usable_ip(ip):
                    if ip_of_mac.get(mac, (-1.0, ""))[0] <= span.last:
                        ip_of_mac[mac] = (span.last, ip)
                    if mac_of_ip.get(ip, (-1.0, ""))[0] <= span.last:
                        mac_of_ip[ip] = (span.last, mac)
            elif ip is not None and usable_ip(ip):
                known = by_ip.get(ip)
                if known is None:
                    by_ip[ip] = Span(span.first, span.last, span.vlan)
                else:
                    known.widen(span)
            else:
                result.unattributed += 1
        for lease in dhcp.leases:  # a lease names its holder even when the window saw nothing else
            if usable_mac(lease.mac) and lease.mac not in self.gateways and lease.mac not in by_mac:
                by_mac[lease.mac] = Span(lease.last, lease.last)

        components = self._components(by_mac, ip_of_mac, dhcp)
        self._resolve_components(session, components, result)
        mac_ids = {mac: component.endpoint_id for component in components for mac in component.macs}
        for ip, mac in sightings:
            if mac is not None and mac in mac_ids:
                endpoint_id = mac_ids[mac]
                assert endpoint_id is not None
                result.endpoints[ip, mac] = endpoint_id
        ip_ids = self._resolve_ips(session, by_ip, mac_of_ip, mac_ids, dhcp, result)
        for ip, mac in sightings:
            if (ip, mac) not in result.endpoints and ip is not None and ip in ip_ids:
                result.endpoints[ip, mac] = ip_ids[ip]
        self._bind_leases(session, dhcp, mac_ids, result)
        if result.merged:  # sightings resolved before a merge in this window follow it
            result.endpoints = {
                sighting: result.merged.get(endpoint_id, endpoint_id)
                for sighting, endpoint_id in result.endpoints.items()
            }
        return result

    def _components(
        self, by_mac: Mapping[str, Span], ip_of_mac: Mapping[str, tuple[float, str]], dhcp: DhcpFacts
    ) -> list[_Component]:
        """Group the window's MACs into devices by stable client id and, for random MACs, host name."""
        union = _UnionFind()
        for mac in by_mac:
            key = "mac:" + mac
            union.find(key)
            client_id = dhcp.client_ids.get(mac)
            if client_id and stable_client_id(client_id, mac):
                union.union(key, "cid:" + client_id)
            if is_locally_administered(mac):
                host = dhcp.hostnames.get(mac)
                if host and host not in GENERIC_HOSTNAMES:
                    union.union(key, "host:" + host)
        groups: dict[str, _Component] = {}
        for key in list(union.parent):
            component = groups.setdefault(union.find(key), _Component())
            kind, _, value = key.partition(":")
            if kind == "mac":
                component.macs.add(value)
                span = by_mac[value]
                if component.span is None:
                    component.span = Span(span.first, span.last, span.vlan)
                else:
                    component.span.widen(span)
                if component.mac is None or component.mac[0] <= span.last:
                    component.mac = (span.last, value)
                seen_ip = ip_of_mac.get(value)
                if seen_ip is not None and (component.ip is None or component.ip[0] <= seen_ip[0]):
                    component.ip = seen_ip
                name = dhcp.hostnames.get(value)
                if name and (component.hostname is None or name < component.hostname):
                    component.hostname = name
            elif kind == "cid":
                component.cids.add(value)
            else:
                component.hosts.add(value)
        return [groups[root] for root in sorted(groups)]

    def _best_identity(self, component: _Component) -> tuple[IdentityKind, str, bool]:
        """The identity a new endpoint of this device gets: (kind, clear value, randomised MAC)."""
        fixed = _fixed_macs(component.macs)
        if fixed:
            return IdentityKind.MAC, fixed[0], False
        if component.cids:
            return IdentityKind.DHCP_CLIENT_ID, min(component.cids), True
        if component.hosts:
            return IdentityKind.DHCP_HOSTNAME, min(component.hosts), True
        return IdentityKind.MAC, min(component.macs), True

    def _alias_keys(self, component: _Component) -> list[str]:
        """The stored aliases of a device: ``mac:``, ``cid:`` and ``host:`` keys, pseudonymised."""
        p = self.pseudonym
        if len(component.macs) == 1 and not component.cids and not component.hosts:
            return ["mac:" + p(mac) for mac in component.macs]  # most devices
        return [
            *("mac:" + p(mac) for mac in sorted(component.macs)),
            *("cid:" + p(cid) for cid in sorted(component.cids)),
            *("host:" + p(host) for host in sorted(component.hosts)),
        ]

    def _resolve_components(self, session: Session, components: list[_Component], result: Resolution) -> None:
        """Find, create, upgrade or merge the endpoint of each device."""
        if not components:
            return
        p = self.pseudonym
        keys = [self._alias_keys(component) for component in components]
        aliases = self._aliases(session, [key for group in keys for key in group])
        identities: list[tuple[IdentityKind, str]] = []
        for component in components:
            identities += [(IdentityKind.MAC, p(mac)) for mac in component.macs]
            identities += [(IdentityKind.DHCP_CLIENT_ID, p(cid)) for cid in component.cids]
            identities += [(IdentityKind.DHCP_HOSTNAME, p(host)) for host in component.hosts]
        by_identity = self._by_identity(session, identities)
        stored = self._stored(session, {*aliases.values(), *(row.id for row in by_identity.values())})

        survivors: list[_Stored | None] = []
        rekeyed: dict[int, _Stored] = {}
        for component, component_keys in zip(components, keys, strict=True):
            candidates = {aliases[key] for key in component_keys if key in aliases}
            candidates |= {
                by_identity[kind, value].id
                for kind, value in (
                    *((IdentityKind.MAC, p(mac)) for mac in component.macs),
                    *((IdentityKind.DHCP_CLIENT_ID, p(cid)) for cid in component.cids),
                    *((IdentityKind.DHCP_HOSTNAME, p(host)) for host in component.hosts),
                )
                if (kind, value) in by_identity
            }
            existing = sorted({self._survivor(stored, endpoint_id) for endpoint_id in candidates})
            if not existing:
                survivors.append(None)
                result.created += 1
                continue
            survivor = min(
                (stored[endpoint_id] for endpoint_id in existing),
                key=lambda row: (_rank(row.kind, row.randomized), row.id),
            )
            for endpoint_id in existing:
                if endpoint_id != survivor.id:
                    self._merge(session, stored[endpoint_id], survivor, result)
            kind, identity, randomized = self._best_identity(component)
            if _rank(kind, randomized) < _rank(survivor.kind, survivor.randomized):
                # The device is now better known (a client id for a random MAC): re-key it.
                survivor.kind, survivor.identity, survivor.randomized = kind, p(identity), randomized
                rekeyed[survivor.id] = survivor
            survivors.append(survivor)
        if rekeyed:
            # One statement for them all (a window may upgrade hundreds of random MACs at once),
            # each endpoint with its final identity, before the rows below name it.
            session.execute(
                update(Endpoint),
                [
                    {
                        "id": row.id,
                        "identity_kind": row.kind,
                        "identity": row.identity,
                        "randomized_mac": row.randomized,
                    }
                    for row in rekeyed.values()
                ],
            )
        # Rows after every decision: two devices of this window may have led to one stored endpoint,
        # whose identity the second may have upgraded; both rows must carry its final identity.
        rows: list[dict[str, Any]] = []
        for component, chosen in zip(components, survivors, strict=True):
            if chosen is None:
                kind, identity, randomized = self._best_identity(component)
                rows.append(self._endpoint_row(component, kind, p(identity), randomized))
            else:
                rows.append(self._endpoint_row(component, chosen.kind, chosen.identity, chosen.randomized))
        ids = upsert_endpoints(session, rows)
        alias_rows: list[dict[str, Any]] = []
        for component, component_keys, row in zip(components, keys, rows, strict=True):
            endpoint_id = ids[row["identity_kind"], row["identity"]]
            component.endpoint_id = endpoint_id
            alias_rows.extend(
                self._alias_row(key, endpoint_id, row["first_seen"], row["last_seen"])
                for key in component_keys
            )
        upsert_aliases(session, alias_rows)

    def _endpoint_row(
        self, component: _Component, kind: IdentityKind, identity: str, randomized: bool
    ) -> dict[str, Any]:
        p = self.pseudonym
        assert component.span is not None
        assert component.mac is not None
        mac = component.mac[1]
        fixed = _fixed_macs(component.macs)
        vendor = mac_vendor(fixed[0]).organisation if fixed else None
        hostname = component.hostname
        return {
            "site": self.site,
            "identity_kind": kind,
            "identity": identity,
            "mac": p(mac),
            "randomized_mac": randomized,
            "ip": p(component.ip[1]) if component.ip else None,
            "hostname": p(hostname) if hostname else None,
            "vendor": vendor[:128] if vendor else None,
            "service": None,
            "vlan": component.span.vlan,
            # Epoch seconds, as the observation rows: ``UtcDateTime`` writes SQLite's text for
            # them from its memo of recent instants (a device's first and last observations).
            "first_seen": component.span.first,
            "last_seen": component.span.last,
        }

    def _alias_row(
        self,
        alias: str,
        endpoint_id: int,
        first: float | datetime,
        last: float | datetime,
        until: float | datetime | None = None,
    ) -> dict[str, Any]:
        """An alias row (times in epoch seconds or aware datetimes: ``UtcDateTime`` takes both)."""
        return {
            "site": self.site,
            "alias": alias,
            "endpoint_id": endpoint_id,
            "first_seen": first,
            "last_seen": last,
            "valid_until": until,
        }

    def _resolve_ips(
        self,
        session: Session,
        by_ip: Mapping[str, Span],
        mac_of_ip: Mapping[str, tuple[float, str]],
        mac_ids: Mapping[str, int | None],
        dhcp: DhcpFacts,
        result: Resolution,
    ) -> dict[str, int]:
        """Addresses without a usable MAC: a binding (lease, segment, stored lease), else provisional."""
        if not by_ip:
            return {}
        p = self.pseudonym
        window_leases: dict[str, list[Lease]] = {}
        for lease in dhcp.leases:
            window_leases.setdefault(lease.ip, []).append(lease)
        ids: dict[str, int] = {}
        pending: dict[str, Span] = {}
        for ip, span in by_ip.items():
            holder = next(
                (
                    lease.mac
                    for lease in window_leases.get(ip, ())
                    if lease.valid_from <= span.last <= lease.valid_until and mac_ids.get(lease.mac)
                ),
                None,
            )
            if holder is None and ip in mac_of_ip:
                holder = mac_of_ip[ip][1]
            endpoint_id = mac_ids.get(holder) if holder is not None else None
            if endpoint_id is not None:
                ids[ip] = endpoint_id
            else:
                pending[ip] = span
        if not pending:
            return ids
        stored_leases = self._leases(session, [p(ip) for ip in pending])
        provisional: dict[str, Span] = {}
        for ip, span in pending.items():
            lease_row = stored_leases.get(p(ip))
            if lease_row is not None and _covers(lease_row, span.last):
                ids[ip] = lease_row[0]
            elif self.is_local(ip):
                provisional[ip] = span
            else:
                result.unattributed += 1
        if provisional:
            ids.update(self._provisional(session, provisional, result))
        return ids

    def _provisional(self, session: Session, spans: Mapping[str, Span], result: Resolution) -> dict[str, int]:
        """``ip_unbound`` endpoints for local addresses nothing binds yet (found again by their alias)."""
        p = self.pseudonym
        aliases = self._aliases(session, ["ip:" + p(ip) for ip in spans])
        stored = self._stored(session, set(aliases.values()))
        rows: list[dict[str, Any]] = []
        for ip, span in spans.items():
            known = aliases.get("ip:" + p(ip))
            if known is not None:
                survivor = stored[self._survivor(stored, known)]
                kind, identity, randomized = survivor.kind, survivor.identity, survivor.randomized
            else:
                kind, identity, randomized = IdentityKind.IP_UNBOUND, p(ip), False
                result.created += 1
            rows.append(
                {
                    "site": self.site,
                    "identity_kind": kind,
                    "identity": identity,
                    "mac": None,
                    "randomized_mac": randomized,
                    "ip": p(ip),
                    "hostname": None,
                    "vendor": None,
                    "service": None,
                    "vlan": span.vlan,
                    "first_seen": span.first,  # epoch seconds, as in ``_endpoint_row``
                    "last_seen": span.last,
                }
            )
        ids = upsert_endpoints(session, rows)
        out: dict[str, int] = {}
        alias_rows: list[dict[str, Any]] = []
        for ip, row in zip(spans, rows, strict=True):
            endpoint_id = ids[row["identity_kind"], row["identity"]]
            out[ip] = endpoint_id
            alias_rows.append(
                self._alias_row("ip:" + p(ip), endpoint_id, row["first_seen"], row["last_seen"])
            )
        upsert_aliases(session, alias_rows)
        return out

    def _bind_leases(
        self, session: Session, dhcp: DhcpFacts, mac_ids: Mapping[str, int | None], result: Resolution
    ) -> None:
        """Store the window's leases, and merge provisional endpoints of the leased addresses."""
        if not dhcp.leases:
            return
        p = self.pseudonym
        rows: list[dict[str, Any]] = []
        held: list[tuple[Lease, int]] = []
        for lease in dhcp.leases:
            holder = mac_ids.get(lease.mac)
            if holder is None:
                continue
            held.append((lease, holder))
            rows.append(
                self._alias_row(
                    "lease:" + p(lease.ip),
                    holder,
                    _stamp(lease.valid_from),
                    _stamp(lease.last),
                    _stamp(lease.valid_until),
                )
            )
        upsert_aliases(session, rows)
        aliases = self._aliases(session, ["ip:" + p(lease.ip) for lease, _ in held])
        stored = self._stored(session, set(aliases.values()) | {holder for _, holder in held})
        for lease, holder in held:
            provisional_id = aliases.get("ip:" + p(lease.ip))
            if provisional_id is None:
                continue
            provisional = stored[self._survivor(stored, provisional_id)]
            target = stored[self._survivor(stored, holder)]
            if provisional.kind is not IdentityKind.IP_UNBOUND or provisional.id == target.id:
                continue
            # Merge only what the binding explains: the provisional endpoint was seen while it held.
            if provisional.last_seen >= _stamp(lease.valid_from) and provisional.first_seen <= _stamp(
                lease.valid_until
            ):
                self._merge(session, provisional, target, result)

    # -- merging -------------------------------------------------------------------------------------

    def _merge(self, session: Session, source: _Stored, target: _Stored, result: Resolution) -> None:
        """Merge ``source`` into ``target``: aliases, observations and detection evidence move over."""
        if source.id == target.id or source.merged_into is not None:
            return
        run = partial(session.execute, execution_options=_BULK)
        if source.kind is IdentityKind.IP_UNBOUND:
            # Its ``ip:`` alias goes (a later unbound sighting is a new question), and its identity
            # is freed so that a new provisional endpoint of that address can exist.
            run(
                delete(EndpointAlias).where(
                    EndpointAlias.endpoint_id == source.id, EndpointAlias.alias.startswith("ip:")
                )
            )
            run(
                update(Endpoint)
                .where(Endpoint.id == source.id)
                .values(identity=f"{source.identity}#{source.id}"[-128:])
            )
        run(update(EndpointAlias).where(EndpointAlias.endpoint_id == source.id).values(endpoint_id=target.id))
        columns = ObservationAggregate.__table__.c
        moved = [
            {**row._asdict(), "endpoint_id": target.id}
            for row in session.execute(select(*columns).where(columns.endpoint_id == source.id))
        ]
        run(delete(ObservationAggregate).where(ObservationAggregate.endpoint_id == source.id))
        upsert_observations(session, moved)
        evidence = result.inherited_evidence.setdefault(target.id, [])
        query = select(Detection.evidence, Detection.first_seen, Detection.last_seen).where(
            Detection.endpoint_id == source.id
        )
        for stored, first_seen, last_seen in session.execute(query):
            # Entries written by other tools may lack their times: the detection's stand in.
            defaults = {
                "first_seen": first_seen.astimezone(UTC).isoformat(timespec="microseconds"),
                "last_seen": last_seen.astimezone(UTC).isoformat(timespec="microseconds"),
                "count": 1,
            }
            evidence.extend({**defaults, **entry} for entry in stored or () if isinstance(entry, Mapping))
        evidence.extend(result.inherited_evidence.pop(source.id, []))
        run(delete(Detection).where(Detection.endpoint_id == source.id))
        run(
            update(Endpoint)
            .where((Endpoint.id == source.id) | (Endpoint.merged_into == source.id))
            .values(merged_into=target.id)
        )
        target.first_seen = min(target.first_seen, source.first_seen)
        target.last_seen = max(target.last_seen, source.last_seen)
        run(
            update(Endpoint)
            .where(Endpoint.id == target.id)
            .values(first_seen=target.first_seen, last_seen=target.last_seen)
        )
        source.merged_into = target.id
        result.merged[source.id] = target.id
        for merged, into in result.merged.items():
            if into == source.id:
                result.merged[merged] = target.id

    # -- reading -------------------------------------------------------------------------------------

    def _aliases(self, session: Session, keys: Sequence[str]) -> dict[str, int]:
        """Stored alias -> endpoint id, for the aliases among ``keys`` that exist."""
        found: dict[str, int] = {}
        for condition in among(session, EndpointAlias.alias, sorted(set(keys))):
            query = select(EndpointAlias.alias, EndpointAlias.endpoint_id).where(
                EndpointAlias.site == self.site, condition
            )
            # Result has keys(): dict.update would take it for a mapping, so unpack the rows.
            found.update((alias, endpoint_id) for alias, endpoint_id in session.execute(query))
        return found

    def _leases(
        self, session: Session, ips: Sequence[str]
    ) -> dict[str, tuple[int, datetime, datetime | None]]:
        """Stored lease bindings of these (stored-form) addresses: id, valid from, valid until."""
        found: dict[str, tuple[int, datetime, datetime | None]] = {}
        aliases = ["lease:" + ip for ip in sorted(set(ips))]
        for condition in among(session, EndpointAlias.alias, aliases):
            query = select(
                EndpointAlias.alias,
                EndpointAlias.endpoint_id,
                EndpointAlias.first_seen,
                EndpointAlias.valid_until,
            ).where(EndpointAlias.site == self.site, condition)
            for alias, endpoint_id, first_seen, valid_until in session.execute(query):
                found[alias.removeprefix("lease:")] = (endpoint_id, first_seen, valid_until)
        return found

    def _by_identity(
        self, session: Session, identities: Sequence[tuple[IdentityKind, str]]
    ) -> dict[tuple[IdentityKind, str], _Stored]:
        """Stored endpoints holding any of these identities (an alias may have aged out before them)."""
        wanted = set(identities)
        values = sorted({value for _, value in wanted})
        found: dict[tuple[IdentityKind, str], _Stored] = {}
        for condition in among(session, Endpoint.identity, values):
            query = select(*_STORED_COLUMNS).where(Endpoint.site == self.site, condition)
            for row in session.execute(query):
                if (row.identity_kind, row.identity) in wanted:
                    found[row.identity_kind, row.identity] = _stored(row)
        return found

    def _stored(self, session: Session, ids: set[int]) -> dict[int, _Stored]:
        """Stored endpoints by id, with every endpoint they were merged into."""
        found: dict[int, _Stored] = {}
        wanted = set(ids)
        for _ in range(8):  # merge chains are re-pointed on every merge: one more hop at most
            missing = sorted(wanted - found.keys())
            if not missing:
                break
            for condition in among(session, Endpoint.id, missing):
                for row in session.execute(select(*_STORED_COLUMNS).where(condition)):
                    found[row.id] = _stored(row)
            wanted = {row.merged_into for row in found.values() if row.merged_into is not None} - found.keys()
        return found

    @staticmethod
    def _survivor(stored: Mapping[int, _Stored], endpoint_id: int) -> int:
        """Follow ``merged_into`` to the endpoint that holds the data now."""
        for _ in range(16):
            row = stored.get(endpoint_id)
            if row is None or row.merged_into is None:
                return endpoint_id
            endpoint_id = row.merged_into
        return endpoint_id


_STORED_COLUMNS: Final = (
    Endpoint.id,
    Endpoint.identity_kind,
    Endpoint.identity,
    Endpoint.randomized_mac,
    Endpoint.merged_into,
    Endpoint.first_seen,
    Endpoint.last_seen,
)


def _stored(row: Row[int, IdentityKind, str, bool, int | None, datetime, datetime]) -> _Stored:
    return _Stored(
        row.id,
        row.identity_kind,
        row.identity,
        row.randomized_mac,
        row.merged_into,
        row.first_seen,
        row.last_seen,
    )


def _covers(lease: tuple[int, datetime, datetime | None], ts: float) -> bool:
    """Whether a stored lease binding held at ``ts``."""
    _, valid_from, valid_until = lease
    when = _stamp(ts)
    return valid_from <= when and (valid_until is None or when <= valid_until)
