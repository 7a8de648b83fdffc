"""The in-memory window: Observations counted per key, with their evidence, before a write.

``Aggregator.add`` is on the hot path: one dict hit per Observation, keyed by (source IP, source
MAC, kind, value), plus the cached ``index.match``. Memory is bounded: beyond ``max_keys``
distinct keys (or ``max_evidence``, ``max_peers``) new keys are shed and counted, never stored;
existing keys keep counting. A flood of random subdomains costs at most the bound.

This module imports the Observation record only (the catalogue is handed in), never the
database: ``lanterne scan`` imports it before its decoding processes are forked
(``agent._decoding``), and aggregates their Observations with it while SQLAlchemy loads; the
windows go to ``agent._aggregate.StoreWriter``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from collectors import Kind, Observation

if TYPE_CHECKING:
    from agent._identity import DhcpFacts, Span
    from fingerprints import Evidence, Index

Sighting = tuple[str | None, str | None]
"""(IP, MAC) as a packet showed them; either may be missing."""

#: Distinct (sighting, kind, value) keys per window; a scan flushes well before (``FLUSH_AT``).
DEFAULT_MAX_KEYS: Final = 200_000
#: Distinct (sighting, rule) evidence keys per window.
DEFAULT_MAX_EVIDENCE: Final = 50_000
#: Distinct server-side (IP, MAC) pairs per window (they reveal gateways).
DEFAULT_MAX_PEERS: Final = 100_000
ObsKey = tuple[str | None, str | None, Kind, str]
"""(source IP, source MAC, kind, value)."""
EvKey = tuple[str | None, str | None, str]
"""(IP, MAC, rule id) of the endpoint the evidence is about."""

_DHCP_KINDS: Final = frozenset({Kind.DHCP_CLIENT_ID, Kind.DHCP_HOSTNAME, Kind.DHCP_LEASE})


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
    spans: dict[Sighting, list[Any]]
    """Source (IP, MAC) -> [first ts, last ts, attrs of the last] over the observations counted
    (``spans_of`` rebuilds them from the records)."""

    @staticmethod
    def spans_of(observations: dict[ObsKey, list[Any]]) -> dict[Sighting, list[Any]]:
        """The sources' spans from the records (a window rebuilt from elsewhere: the spool)."""
        spans: dict[Sighting, list[Any]] = {}
        for (ip, mac, _kind, _value), (_count, first, last, attrs, _peer) in observations.items():
            span = spans.get((ip, mac))
            if span is None:
                spans[ip, mac] = [first, last, attrs]
                continue
            if first < span[0]:  # noqa: PLR1730 - no call: tens of thousands of records
                span[0] = first
            if last >= span[1]:
                span[1], span[2] = last, attrs
        return spans

    def sightings(self, is_local: Callable[[str], bool] | None = None) -> dict[Sighting, Span]:
        """Every (IP, MAC) that needs an endpoint: observation sources and evidence subjects.

        A server that evidence is about (``dst`` side) is a device of the site only at a local
        address (``is_local``): a SaaS server behind the router is a product, not an endpoint.
        """
        from agent._identity import Span  # noqa: PLC0415 - the writer's side only: it has the store loaded

        # The sources' spans were kept as the Observations came (``Aggregator.add_all``): the
        # window's tens of thousands of records are not read again here.
        spans: dict[Sighting, Span] = {}
        for sighting, (first, last, attrs) in self.spans.items():
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
        from agent._identity import DhcpFacts  # noqa: PLC0415 - the writer's side only

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
        self._spans: dict[Sighting, list[Any]] = {}
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
        spans = self._spans
        span_of = spans.get
        added = 0
        for obs in observations:
            added += 1
            src = obs.src
            dst = obs.dst
            kind = obs.kind
            ts = obs.ts
            sighting = (src.ip, src.mac)
            key = (*sighting, kind, obs.value)
            record = get(key)
            if record is None:
                if len(table) < max_keys:
                    table[key] = [1, ts, ts, obs.attrs, dst.ip]
                    if kind in dhcp_kinds:
                        self._dhcp_keys.append(key)
                    span = span_of(sighting)
                    if span is None:
                        spans[sighting] = [ts, ts, obs.attrs]
                    else:
                        if ts < span[0]:  # noqa: PLR1730 - a comparison costs less than min() per packet
                            span[0] = ts
                        if ts >= span[1]:
                            span[1] = ts
                            span[2] = obs.attrs
                else:
                    stats.shed_observations += 1
            else:
                record[0] += 1
                if ts < record[1]:  # noqa: PLR1730
                    record[1] = ts
                if ts >= record[2]:
                    record[2] = ts
                    record[3] = obs.attrs
                    record[4] = dst.ip
                span = spans[sighting]  # made with the record
                if ts < span[0]:  # noqa: PLR1730
                    span[0] = ts
                if ts >= span[1]:
                    span[1] = ts
                    span[2] = obs.attrs
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
        window = Window(
            self._observations, self._evidence, self._peers, self._dhcp_keys, self._observed, self._spans
        )
        self._reset()
        self.stats.windows += 1
        return window
