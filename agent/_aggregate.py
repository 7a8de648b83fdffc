"""Writing windows: Observations counted in memory (``agent._window``), then batched upserts.

Identity is decided once per distinct sighting, when a window is written
(``StoreWriter.write``): by then the whole window is known (a gateway's MAC has shown its many
addresses, a lease its holder). The scan flushes before the aggregator's bound
(``Aggregator.full``); the daemon flushes on a timer and sheds when a window overflows.

Detections are per endpoint. Each stored detection keeps its distinct evidence (one entry per
rule, with first/last seen and a count) as JSON; when a window brings evidence for an endpoint,
the stored entries of all its detections and the new ones are merged by rule (earliest first
seen and its value, latest last seen, counts added) and assessed again with the current
catalogue: rules that left the catalogue stop counting, detections no longer supported are
deleted, and the rest are replaced. Evidence that supports no detection of interest is not kept
(a ``cdn`` host alone names nothing and has nowhere to live until a decisive rule joins it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from agent._identity import CLIENT_NAME_KINDS, IdentityResolver, Resolution
from agent._window import Window
from collectors import Kind
from fingerprints import Detection as Assessed
from fingerprints import Evidence, Index, RuleInfo, Side, rule_weight
from store import (
    Detection,
    among,
    merge_observation_rows,
    upsert_agent,
    upsert_detections,
    upsert_observation_rows,
)

#: Evidence entries kept per detection (the strongest, then the earliest).
MAX_EVIDENCE_PER_DETECTION: Final = 32

#: Plain strings for the database (``Kind.value`` is a descriptor call per row).
_KIND_TEXT: Final = {kind: kind.value for kind in Kind}
_FIRST: Final = itemgetter(0)  # of a source's span (``Window.spans``)
_LAST: Final = itemgetter(1)


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
        # Read now (the package's metadata), not in the first write: a scan makes its writer
        # while the file is still being decoded.
        self.version = lanterne_version()

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
                "version": self.version,
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
        # One source's keys are distinct: only an endpoint of several sources (a device's
        # addresses) can get two rows of one key, and only its rows are merged.
        single: set[int] = set()
        shared: set[int] = set()
        for source in window.spans:
            endpoint_id = endpoints.get(source)
            if endpoint_id is not None:
                (shared if endpoint_id in single else single).add(endpoint_id)
        rows: list[Sequence[Any]] = []  # OBSERVATION_COLUMNS
        doubled: list[Sequence[Any]] = []
        stored = 0
        for (ip, mac, kind, value), (count, first, last, attrs, peer) in window.observations.items():
            endpoint_id = endpoints.get((ip, mac))
            if endpoint_id is None:
                result.unattributed += count
                continue
            if pseudonym is not None and kind in CLIENT_NAME_KINDS:
                value, attrs = pseudonym(value), {}
            stored += count
            # Times in epoch seconds: UtcDateTime formats them cheaper than datetimes.
            row = (agent, endpoint_id, _KIND_TEXT[kind], value, first, last, count, attrs, peer)
            (doubled if endpoint_id in shared else rows).append(row)
        rows += merge_observation_rows(doubled)
        result.observations = stored
        if window.spans:  # the sources' spans cover every record
            result.first_ts = min(map(_FIRST, window.spans.values()))
            result.last_ts = max(map(_LAST, window.spans.values()))
        result.rows = upsert_observation_rows(session, rows, distinct=True)
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
        for of_endpoints in among(session, Detection.endpoint_id, ids):
            query = select(
                Detection.id,
                Detection.endpoint_id,
                Detection.product_key,
                Detection.evidence,
                Detection.first_seen,
                Detection.last_seen,
            ).where(Detection.site == self.site, of_endpoints)
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
            for of_stale in among(session, Detection.id, stale):
                session.execute(
                    delete(Detection).where(of_stale), execution_options={"synchronize_session": False}
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
