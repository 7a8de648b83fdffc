"""Aggregation: Observations counted in memory per flush window, then written as batched upserts.

``Aggregator.add`` is on the hot path: one dict hit per Observation, keyed by (source IP, source
MAC, kind, value), plus the cached ``index.match``. Identity is decided later, once per distinct
sighting, when the window is written (``StoreWriter.write``): by then the whole window is known
(a gateway's MAC has shown its many addresses, a lease its holder).

Memory is bounded: beyond ``max_keys`` distinct keys (or ``max_evidence``, ``max_peers``) new
keys are shed and counted, never stored; existing keys keep counting. A flood of random
subdomains costs at most the bound. The scan flushes before the bound (``Aggregator.full``);
the daemon flushes on a timer and sheds when a window overflows.

Detections are per endpoint. Each stored detection keeps its distinct evidence (one entry per
rule, with first/last seen and a count) as JSON; when a window brings evidence for an endpoint,
the stored entries of all its detections and the new ones are merged by rule (earliest first
seen and its value, latest last seen, counts added) and assessed again with the current
catalogue: rules that left the catalogue stop counting, detections no longer supported are
deleted, and the rest are replaced. Evidence that supports no detection of interest is not kept
(a ``cdn`` host alone names nothing and has nowhere to live until a decisive rule joins it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from agent._identity import CLIENT_NAME_KINDS, DhcpFacts, IdentityResolver, Resolution, Sighting, Span
from collectors import Kind, Observation
from fingerprints import Detection as Assessed
from fingerprints import Evidence, Index, RuleInfo, Side, rule_weight
from store import Detection, upsert_agent, upsert_detections, upsert_observations

#: Distinct (sighting, kind, value) keys per window; a scan flushes well before (``FLUSH_AT``).
DEFAULT_MAX_KEYS: Final = 200_000
#: Distinct (sighting, rule) evidence keys per window.
DEFAULT_MAX_EVIDENCE: Final = 50_000
#: Distinct server-side (IP, MAC) pairs per window (they reveal gateways).
DEFAULT_MAX_PEERS: Final = 100_000
#: Evidence entries kept per detection (the strongest, then the earliest).
MAX_EVIDENCE_PER_DETECTION: Final = 32

ObsKey = tuple[str | None, str | None, Kind, str]
"""(source IP, source MAC, kind, value)."""
EvKey = tuple[str | None, str | None, str]
"""(IP, MAC, rule id) of the endpoint the evidence is about."""

_DHCP_KINDS: Final = frozenset({Kind.DHCP_CLIENT_ID, Kind.DHCP_HOSTNAME, Kind.DHCP_LEASE})
#: Plain strings for the database (``Kind.value`` is a descriptor call per row).
_KIND_TEXT: Final = {kind: kind.value for kind in Kind}


@cache
def lanterne_version() -> str:
    """The installed version of Lanterne (``0+unknown`` from a bare checkout)."""
    try:
        return version("lanterne")
    except PackageNotFoundError:
        return "0+unknown"


def _iso_of(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _iso(ts: float) -> str:
    # Fixed width (microseconds always present): stored entries compare as strings, in time order.
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


@dataclass(slots=True)
class AggregateStats:
    """What an aggregator took in and what it had to shed (the daemon exports these)."""

    observations: int = 0
    shed_observations: int = 0
    shed_evidence: int = 0
    shed_peers: int = 0
    windows: int = 0


@dataclass(slots=True)
class Window:
    """Everything one flush writes."""

    observations: dict[ObsKey, list[Any]]
    """Key -> [count, first ts, last ts, last attrs, last peer IP]."""
    evidence: dict[EvKey, list[Any]]
    """Key -> [Evidence, first ts, last ts, count]."""
    peers: set[Sighting]
    dhcp_keys: list[ObsKey]
    observed: int
    """Observations added during the window (shed ones included)."""

    def sightings(self, is_local: Callable[[str], bool] | None = None) -> dict[Sighting, Span]:
        """Every (IP, MAC) that needs an endpoint: observation sources and evidence subjects.

        A server that evidence is about (``dst`` side) is a device of the site only at a local
        address (``is_local``): a SaaS server behind the router is a product, not an endpoint.
        """
        # Plain lists per sighting first (thousands of sightings, tens of thousands of keys).
        seen: dict[Sighting, list[Any]] = {}
        for key, record in self.observations.items():
            sighting = (key[0], key[1])
            entry = seen.get(sighting)
            if entry is None:
                seen[sighting] = [record[1], record[2], record[3]]
                continue
            entry[0] = min(entry[0], record[1])
            if record[2] >= entry[1]:
                entry[1], entry[2] = record[2], record[3]
        spans: dict[Sighting, Span] = {}
        for sighting, (first, last, attrs) in seen.items():
            vlan = attrs.get("vlan") if attrs else None
            spans[sighting] = Span(first, last, vlan if isinstance(vlan, int) else None)
        for (ip, mac, _rule), (evidence, first, last, _count) in self.evidence.items():
            if is_local is not None and evidence.side == "dst" and (ip is None or not is_local(ip)):
                continue
            known = spans.get((ip, mac))
            if known is None:
                spans[ip, mac] = Span(first, last)
            else:
                known.widen(Span(first, last))
        return spans

    def dhcp(self) -> DhcpFacts:
        """Client ids, host names and leases the window's DHCP observations carry."""
        facts = DhcpFacts()
        newest: dict[tuple[str, str], float] = {}
        for key in self.dhcp_keys:
            _ip, mac, kind, value = key
            if mac is None:
                continue
            _count, first, last, attrs, _peer = self.observations[key]
            if kind is Kind.DHCP_LEASE:
                facts.leases.append(DhcpFacts.lease(value, mac, first, last, attrs.get("lease_time")))
                for name, table in (("client_id", facts.client_ids), ("hostname", facts.hostnames)):
                    if isinstance(extra := attrs.get(name), str) and extra and mac not in table:
                        table[mac] = extra
                continue
            table = facts.client_ids if kind is Kind.DHCP_CLIENT_ID else facts.hostnames
            if last >= newest.get((kind, mac), -1.0):
                newest[kind, mac] = last
                table[mac] = value
        return facts


class Aggregator:
    """Counts Observations per (sighting, kind, value) and gathers their evidence, bounded."""

    def __init__(
        self,
        index: Index,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_evidence: int = DEFAULT_MAX_EVIDENCE,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        self.index = index
        self.max_keys = max_keys
        self.max_evidence = max_evidence
        self.max_peers = max_peers
        self.stats = AggregateStats()
        self._reset()

    def _reset(self) -> None:
        self._observations: dict[ObsKey, list[Any]] = {}
        self._evidence: dict[EvKey, list[Any]] = {}
        self._peers: set[Sighting] = set()
        self._dhcp_keys: list[ObsKey] = []
        self._observed = 0

    def __len__(self) -> int:
        return len(self._observations)

    @property
    def full(self) -> bool:
        """Whether the next new key would be shed."""
        return (
            len(self._observations) >= self.max_keys
            or len(self._evidence) >= self.max_evidence
            or len(self._peers) >= self.max_peers
        )

    def add(self, obs: Observation) -> None:
        """Count one Observation (the hot path)."""
        self.add_all((obs,))

    def add_all(self, observations: Iterable[Observation]) -> int:
        """Count Observations; return how many were added (the hot path: locals, no calls per key)."""
        table = self._observations
        get = table.get
        match = self.index.match
        peers = self._peers
        max_keys, max_peers = self.max_keys, self.max_peers
        dhcp_kinds = _DHCP_KINDS
        stats = self.stats
        added = 0
        for obs in observations:
            added += 1
            src = obs.src
            dst = obs.dst
            kind = obs.kind
            ts = obs.ts
            key = (src.ip, src.mac, kind, obs.value)
            record = get(key)
            if record is None:
                if len(table) < max_keys:
                    table[key] = [1, ts, ts, obs.attrs, dst.ip]
                    if kind in dhcp_kinds:
                        self._dhcp_keys.append(key)
                else:
                    stats.shed_observations += 1
            else:
                record[0] += 1
                if ts < record[1]:  # noqa: PLR1730 - a comparison costs less than min() per packet
                    record[1] = ts
                if ts >= record[2]:
                    record[2] = ts
                    record[3] = obs.attrs
                    record[4] = dst.ip
            if dst.mac is not None and dst.ip is not None:
                pair = (dst.ip, dst.mac)
                if pair not in peers:
                    if len(peers) < max_peers:
                        peers.add(pair)
                    else:
                        stats.shed_peers += 1
            evidence = match(obs)
            if evidence:
                self._add_evidence(obs, evidence)
        self._observed += added
        stats.observations += added
        return added

    def _add_evidence(self, obs: Observation, evidence: tuple[Evidence, ...]) -> None:
        table = self._evidence
        ts = obs.ts
        for item in evidence:
            end = obs.src if item.side == "src" else obs.dst
            key = (end.ip, end.mac, item.rule.rule_id)
            record = table.get(key)
            if record is None:
                if len(table) < self.max_evidence:
                    table[key] = [item, ts, ts, 1]
                else:
                    self.stats.shed_evidence += 1
                continue
            record[3] += 1
            if ts < record[1]:
                record[0] = item  # the earliest sighting's value is the one shown
                record[1] = ts
            record[2] = max(record[2], ts)

    def drain(self) -> Window:
        """Hand the window over and start a new one."""
        window = Window(self._observations, self._evidence, self._peers, self._dhcp_keys, self._observed)
        self._reset()
        self.stats.windows += 1
        return window


# -- writing a window -------------------------------------------------------------------------------


@dataclass(slots=True)
class FlushResult:
    """What writing one window did."""

    observations: int = 0
    """Observations (not rows) attributed to an endpoint and stored."""
    rows: int = 0
    """Aggregated observation rows upserted."""
    unattributed: int = 0
    """Observations whose source has no identity (a remote address without a binding)."""
    endpoints: set[int] = field(default_factory=set)
    created: int = 0
    merged: int = 0
    detections: dict[str, set[int]] = field(default_factory=dict)
    """Product key -> endpoints it was (re)assessed at in this window."""
    removed_detections: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    """The window's earliest and latest observation (epoch seconds)."""

    def add(self, other: FlushResult) -> None:
        """Accumulate another window's result."""
        if other.first_ts is not None:
            self.first_ts = other.first_ts if self.first_ts is None else min(self.first_ts, other.first_ts)
        if other.last_ts is not None:
            self.last_ts = other.last_ts if self.last_ts is None else max(self.last_ts, other.last_ts)
        self.observations += other.observations
        self.rows += other.rows
        self.unattributed += other.unattributed
        self.endpoints |= other.endpoints
        self.created += other.created
        self.merged += other.merged
        for key, endpoints in other.detections.items():
            self.detections.setdefault(key, set()).update(endpoints)
        self.removed_detections += other.removed_detections


def product_key(detection: Assessed) -> str:
    """What reconciliation and review are about: the product id, else ``unknown:<vendor|category>``."""
    if detection.identified:
        return detection.product_id
    return f"unknown:{detection.vendor or detection.category}"


class StoreWriter:
    """Writes windows of one agent at one site: endpoints, observations, detections, heartbeat."""

    def __init__(
        self,
        index: Index,
        *,
        site: str,
        agent: str,
        resolver: IdentityResolver | None = None,
    ) -> None:
        self.index = index
        self.site = site
        self.agent = agent
        self.resolver = resolver or IdentityResolver(site)
        self._rules: dict[str, RuleInfo | None] = {}

    def write(self, session: Session, window: Window, *, now: datetime | None = None) -> FlushResult:
        """Write one window into the session's transaction (the caller commits)."""
        result = FlushResult()
        sightings = window.sightings(self.resolver.is_local)
        resolution = self.resolver.resolve(session, sightings, window.peers, window.dhcp())
        result.created, result.merged = resolution.created, len(resolution.merged)
        self._write_observations(session, window, resolution, result)
        self._write_detections(session, window, resolution, result)
        moment = now or datetime.now(UTC)
        upsert_agent(
            session,
            {
                "name": self.agent,
                "site": self.site,
                "first_seen": moment,
                "last_heartbeat": moment,
                "version": lanterne_version(),
                "catalog_version": self.index.version,
            },
        )
        return result

    def _write_observations(
        self, session: Session, window: Window, resolution: Resolution, result: FlushResult
    ) -> None:
        endpoints = resolution.endpoints
        pseudonym = self.resolver.pseudonym if self.resolver.pseudonymous else None
        agent = self.agent
        rows: list[dict[str, Any]] = []
        stored = 0
        for (ip, mac, kind, value), (count, first, last, attrs, peer) in window.observations.items():
            endpoint_id = endpoints.get((ip, mac))
            if endpoint_id is None:
                result.unattributed += count
                continue
            if pseudonym is not None and kind in CLIENT_NAME_KINDS:
                value, attrs = pseudonym(value), {}
            stored += count
            rows.append(
                {
                    "agent": agent,
                    "endpoint_id": endpoint_id,
                    "kind": _KIND_TEXT[kind],
                    "value": value,
                    "first_seen": first,  # epoch seconds: UtcDateTime formats them cheaper than datetimes
                    "last_seen": last,
                    "count": count,
                    "attrs": attrs,
                    "peer": peer,
                }
            )
        result.observations = stored
        if window.observations:
            result.first_ts = min(record[1] for record in window.observations.values())
            result.last_ts = max(record[2] for record in window.observations.values())
        result.rows = upsert_observations(session, rows)
        result.endpoints.update(endpoints.values())

    # -- detections ---------------------------------------------------------------------------------

    def _rule_info(self, rule_id: str) -> RuleInfo | None:
        """The current catalogue's (or Recog's) rule behind stored evidence; None once it is gone."""
        if rule_id in self._rules:
            return self._rules[rule_id]
        info: RuleInfo | None = None
        rule = self.index.rules.get(rule_id)
        if rule is not None:
            product = self.index.catalog.by_id.get(rule.product_id)
            if product is not None:
                info = RuleInfo(
                    rule_id=rule.id,
                    product_id=product.id,
                    vendor=product.vendor,
                    category=product.category,
                    strength=rule.strength,
                    weight=rule_weight(rule.strength, rule.role),
                    role=rule.role,
                    origin="catalog",
                    description=rule.describe(),
                )
        elif (fingerprint := self.index.recog_rules.get(rule_id)) is not None:
            info = fingerprint.info
        self._rules[rule_id] = info
        return info

    def _evidence_of(self, entry: Mapping[str, Any]) -> Evidence | None:
        """Rebuild stored evidence with the current rule (None if the rule or its kind is gone)."""
        info = self._rule_info(str(entry.get("rule")))
        try:
            kind = Kind(str(entry.get("kind")))
        except ValueError:
            return None
        if info is None:
            return None
        fields = entry.get("fields") or {}
        side: Side = "dst" if entry.get("side") == "dst" else "src"
        return Evidence(info, kind, str(entry.get("value", "")), side, tuple(sorted(fields.items())))

    def _entry(self, item: Evidence, first: float, last: float, count: int) -> dict[str, Any]:
        entry = item.to_dict()
        if self.resolver.pseudonymous and (item.kind in CLIENT_NAME_KINDS or _looks_like_mac(item.value)):
            entry["value"] = self.resolver.pseudonym(item.value)
        entry.update(first_seen=_iso(first), last_seen=_iso(last), count=count)
        return entry

    def _write_detections(
        self, session: Session, window: Window, resolution: Resolution, result: FlushResult
    ) -> None:
        """Merge new evidence with the stored evidence of each endpoint concerned and assess again."""
        fresh: dict[int, dict[str, tuple[Evidence, dict[str, Any]]]] = {}
        for (ip, mac, rule_id), (item, first, last, count) in window.evidence.items():
            endpoint_id = resolution.endpoints.get((ip, mac))
            if endpoint_id is None:
                continue
            entries = fresh.setdefault(endpoint_id, {})
            entry = self._entry(item, first, last, count)
            known = entries.get(rule_id)
            entries[rule_id] = (item, entry) if known is None else _merge_entry(known, (item, entry))
        for survivor, inherited in resolution.inherited_evidence.items():
            fresh.setdefault(survivor, {})
            for stored_entry in inherited:
                if isinstance(stored_entry, Mapping) and "first_seen" in stored_entry:
                    self._merge_stored(fresh[survivor], stored_entry)
        if not fresh:
            return
        stored_ids: dict[int, dict[str, int]] = {}
        ids = sorted(fresh)
        for start in range(0, len(ids), 500):
            query = select(
                Detection.id,
                Detection.endpoint_id,
                Detection.product_key,
                Detection.evidence,
                Detection.first_seen,
                Detection.last_seen,
            ).where(Detection.site == self.site, Detection.endpoint_id.in_(ids[start : start + 500]))
            for row_id, endpoint_id, key, evidence, first_seen, last_seen in session.execute(query):
                stored_ids.setdefault(endpoint_id, {})[key] = row_id
                # Entries written by other tools may lack their times: the detection's stand in.
                defaults = {"first_seen": _iso_of(first_seen), "last_seen": _iso_of(last_seen), "count": 1}
                for stored_entry in evidence or ():
                    if isinstance(stored_entry, Mapping):
                        self._merge_stored(fresh[endpoint_id], {**defaults, **stored_entry})
        rows: list[dict[str, Any]] = []
        stale: list[int] = []
        for endpoint_id in ids:
            entries = fresh[endpoint_id]
            ordered = sorted(entries.values(), key=lambda pair: (pair[1]["first_seen"], pair[0].rule.rule_id))
            produced: set[str] = set()
            for detection in self.index.assess_all(item for item, _ in ordered):
                if not detection.of_interest:
                    continue
                key = product_key(detection)[:160]
                if key in produced:
                    continue
                produced.add(key)
                rows.append(self._detection_row(endpoint_id, key, detection, entries))
                result.detections.setdefault(key, set()).add(endpoint_id)
            stale += [
                row_id for key, row_id in stored_ids.get(endpoint_id, {}).items() if key not in produced
            ]
        if stale:
            for start in range(0, len(stale), 500):
                session.execute(
                    delete(Detection).where(Detection.id.in_(stale[start : start + 500])),
                    execution_options={"synchronize_session": False},
                )
            result.removed_detections += len(stale)
        upsert_detections(session, rows)

    def _merge_stored(
        self, entries: dict[str, tuple[Evidence, dict[str, Any]]], stored: Mapping[str, Any]
    ) -> None:
        item = self._evidence_of(stored)
        if item is None:
            return
        pair = (item, {**stored, "weight": item.rule.weight, "strength": str(item.rule.strength)})
        known = entries.get(item.rule.rule_id)
        entries[item.rule.rule_id] = pair if known is None else _merge_entry(known, pair)

    def _detection_row(
        self,
        endpoint_id: int,
        key: str,
        detection: Assessed,
        entries: Mapping[str, tuple[Evidence, dict[str, Any]]],
    ) -> dict[str, Any]:
        chosen = [
            entries[item.rule.rule_id][1] for item in detection.evidence if item.rule.rule_id in entries
        ]
        assert chosen, "a detection is assessed from these entries only"
        chosen.sort(key=lambda entry: (-float(entry.get("weight") or 0.0), entry["first_seen"]))
        kept = chosen[:MAX_EVIDENCE_PER_DETECTION]
        return {
            "site": self.site,
            "product_key": key,
            "product_id": detection.product_id[:128],
            "vendor": detection.vendor[:128] if detection.vendor else None,
            "category": str(detection.category) if detection.category is not None else None,
            "endpoint_id": endpoint_id,
            "confidence": detection.confidence,
            "evidence": kept,
            "roles": [str(role) for role in detection.roles],
            "catalog_version": detection.catalog_version[:64],
            "first_seen": datetime.fromisoformat(min(entry["first_seen"] for entry in chosen)),
            "last_seen": datetime.fromisoformat(max(entry["last_seen"] for entry in chosen)),
        }


def _looks_like_mac(value: str) -> bool:
    """Whether evidence is about a MAC (OUI rules report the MAC as their value)."""
    return len(value) == 17 and value.count(":") == 5


def _merge_entry(
    a: tuple[Evidence, dict[str, Any]], b: tuple[Evidence, dict[str, Any]]
) -> tuple[Evidence, dict[str, Any]]:
    """One rule's evidence seen twice: the earliest value, the widest time span, the counts added."""
    first = a if a[1]["first_seen"] <= b[1]["first_seen"] else b
    entry = dict(first[1])
    entry["last_seen"] = max(a[1]["last_seen"], b[1]["last_seen"])
    entry["count"] = int(a[1].get("count") or 1) + int(b[1].get("count") or 1)
    return first[0], entry
