"""Reconciliation: join what the network shows with what the hospital declared (DESIGN §1).

``compute`` is a pure read: for one site it groups the detections seen in the look-back window
by product key, matches them to the active declared entries and gives each product its
``reconciliation_status``. ``reconcile`` persists that (``reconciliations`` upserted, a
``change_log`` row on every status change) and brings the alerts in line (``agent._review``). It
is deterministic (everything sorted; same database and ``now``, same answer) and idempotent; the
scan calls it after every ingestion, the daemon periodically, the import after every import.

Matching a product to declared entries, best level first (the first level that matches wins):

1. **catalogue id**: the entry declares (or was resolved to) the product's catalogue id;
2. **identifiers**: a declared host is among the host names the product was seen through
   (``*.x`` declares a suffix), or a declared AE title, IP or MAC is one of the product's
   endpoints' (IPs and MACs only for products not used as SaaS or desktop software: their
   endpoints are the workstations that use them, not the product). An entry that declares a
   catalogue id also declares, by address or AE title, the software seen on its device;
3. **names**: the entry's name is one of the product's catalogue names; or the vendors agree and
   either the product is a device family (embedded devices, named by vendor) or the names share a
   word. For an ``unknown:<vendor>`` product, the vendors agreeing is enough.

An entry that declares a catalogue id is never matched to another product by name (only, when its
product is not seen, to an unknown of the same vendor): declaring "Microsoft Teams" never hides
Copilot.

A declared product is ``declared_mismatch`` when the network contradicts the declaration
(``mismatch`` says how): declared on-premise or embedded but seen calling cloud hosts that are not
among its declared hosts; seen on IPs, MACs or AE titles outside the declared ones (when some
are declared); used by services outside the declared ones (when both are known).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent._review import evidence_signals, log_change, sync_alerts
from collectors import InvalidObservation, canonical_ip, canonical_mac
from fingerprints import AI_CATEGORIES, UNKNOWN, Catalog, Product, load_catalog
from store._among import among
from store._inventory import GENERIC_WORDS, as_utc, fold, product_keys
from store._models import (
    Alert,
    Detection,
    Endpoint,
    InventoryEntry,
    ObservationAggregate,
    Reconciliation,
    ReconciliationStatus,
)

#: How far back a detection counts as "observed" (configurable; a month covers monthly users).
DEFAULT_LOOKBACK: Final = timedelta(days=30)
#: Categories whose products are medical devices (unknowns of these are medical-looking).
DEVICE_CATEGORIES: Final = frozenset({"medical_device", "imaging_modality"})
#: Deployments whose endpoints are the people using the product, not the product itself.
USER_SIDE_DEPLOYMENTS: Final = frozenset({"saas", "desktop"})
HOST_KINDS: Final = frozenset({"dns.query", "dns.answer", "tls.sni", "quic.sni", "http.host"})
_WORD: Final = re.compile(r"[a-z0-9]{3,}")


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    """Knobs of reconciliation (from the configuration file; defaults here)."""

    lookback: timedelta = DEFAULT_LOOKBACK
    """A declared product not seen for this long is ``declared_not_observed``."""


@dataclass(slots=True)
class ObservedProduct:
    """What the detections of one product key at one site add up to, in the look-back window."""

    key: str
    product_id: str
    vendor: str | None = None
    category: str | None = None
    endpoint_ids: set[int] = field(default_factory=set)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    confidence: float = 0.0
    catalog_version: str = ""
    signals: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    ips: set[str] = field(default_factory=set)
    macs: set[str] = field(default_factory=set)
    hostnames: set[str] = field(default_factory=set)
    ae_titles: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    vlans: set[int] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    observations: int = 0


@dataclass(frozen=True, slots=True)
class Declared:
    """What matching needs of an active inventory entry (plain values: matching tries every pair)."""

    id: int
    ref: str
    name: str
    vendor: str | None
    category: str | None
    catalog_id: str | None
    service: str | None
    is_ai: bool | None
    is_dmn: bool | None
    deployment: str | None
    hosts: tuple[str, ...]
    ips: frozenset[str]
    macs: frozenset[str]
    ae_titles: frozenset[str]

    @classmethod
    def of(cls, entry: InventoryEntry) -> Declared:
        """Snapshot an entry."""
        return cls(
            id=entry.id,
            ref=entry.ref,
            name=entry.name,
            vendor=entry.vendor,
            category=entry.category,
            catalog_id=entry.catalog_id,
            service=entry.service,
            is_ai=entry.is_ai,
            is_dmn=entry.is_dmn,
            deployment=entry.deployment,
            hosts=tuple(entry.hosts or ()),
            ips=frozenset(entry.ips or ()),
            macs=frozenset(entry.macs or ()),
            ae_titles=frozenset(entry.ae_titles or ()),
        )


@dataclass(frozen=True, slots=True)
class ReconciledProduct:
    """One product at one site with its ``reconciliation_status`` and what it is based on."""

    key: str
    status: ReconciliationStatus
    mismatch: str | None
    product_id: str | None
    name: str
    vendor: str | None
    category: str | None
    is_ai: bool | None
    is_medical: bool | None
    deployment: str | None
    entry_ids: tuple[int, ...]
    entry_refs: tuple[str, ...]
    observed_product: ObservedProduct | None

    @property
    def observed(self) -> bool:
        """Whether the product was seen in the look-back window."""
        return self.observed_product is not None

    @property
    def endpoints(self) -> int:
        """How many endpoints it was seen at."""
        return 0 if self.observed_product is None else len(self.observed_product.endpoint_ids)

    @property
    def first_seen(self) -> datetime | None:
        """First sighting (of the detections still in the window)."""
        return None if self.observed_product is None else self.observed_product.first_seen

    @property
    def last_seen(self) -> datetime | None:
        """Last sighting."""
        return None if self.observed_product is None else self.observed_product.last_seen

    @property
    def confidence(self) -> float | None:
        """Best detection confidence."""
        return None if self.observed_product is None else self.observed_product.confidence

    @property
    def signals(self) -> frozenset[str]:
        """The ``kind=value`` evidence signals it was seen through."""
        return frozenset(() if self.observed_product is None else self.observed_product.signals)

    @property
    def display_name(self) -> str:
        """A name for people: ``ChatGPT (OpenAI)``."""
        if self.vendor and fold(self.vendor) not in fold(self.name):
            return f"{self.name} ({self.vendor})"
        return self.name


@dataclass(slots=True)
class ReconcileResult:
    """What one reconciliation run found and changed."""

    products: list[ReconciledProduct]
    status_changes: int = 0
    removed: int = 0
    raised: list[Alert] = field(default_factory=list)
    closed: list[Alert] = field(default_factory=list)

    def count(self, status: ReconciliationStatus) -> int:
        """How many products have this status."""
        return sum(1 for product in self.products if product.status is status)


# -- gathering what was seen ----------------------------------------------------------------------


def _valid_ip(value: str | None) -> str | None:
    # Pseudonymised stores keep keyed hashes instead of addresses: those are never compared.
    if not value:
        return None
    try:
        return canonical_ip(value)
    except InvalidObservation:
        return None


def _valid_mac(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return canonical_mac(value)
    except InvalidObservation:
        return None


def observed_products(
    session: Session, site: str, now: datetime, lookback: timedelta = DEFAULT_LOOKBACK
) -> dict[str, ObservedProduct]:
    """The products seen at the site in the look-back window, by product key."""
    since = now - lookback
    # Columns, not ORM objects: hundreds of detections per product, read once, never changed here.
    detections = session.execute(
        select(
            Detection.product_key,
            Detection.product_id,
            Detection.vendor,
            Detection.category,
            Detection.endpoint_id,
            Detection.first_seen,
            Detection.last_seen,
            Detection.confidence,
            Detection.catalog_version,
            Detection.evidence,
            Detection.roles,
        )
        .where(Detection.site == site, Detection.last_seen >= since)
        .order_by(Detection.product_key, Detection.id)
    )
    groups: dict[str, ObservedProduct] = {}
    for detection in detections:
        if detection.product_id == UNKNOWN and detection.vendor is None and detection.category is None:
            continue  # an unknown that says nothing is nothing a person can act on
        group = groups.get(detection.product_key)
        if group is None:
            group = groups[detection.product_key] = ObservedProduct(
                detection.product_key, detection.product_id
            )
        group.vendor = group.vendor or detection.vendor
        group.category = group.category or detection.category
        group.endpoint_ids.add(detection.endpoint_id)
        first, last = as_utc(detection.first_seen), as_utc(detection.last_seen)
        group.first_seen = first if group.first_seen is None else min(group.first_seen, first)
        group.last_seen = last if group.last_seen is None else max(group.last_seen, last)
        group.confidence = max(group.confidence, detection.confidence)
        group.catalog_version = max(group.catalog_version, detection.catalog_version or "")
        group.signals |= evidence_signals(detection.evidence)
        group.roles.update(detection.roles or ())
        for item in detection.evidence or ():
            kind, value = item.get("kind"), item.get("value")
            if item.get("rule"):
                group.rules.add(str(item["rule"]))
            if kind and value:
                group.pairs.add((str(kind), str(value)))
                if kind in HOST_KINDS:
                    group.hosts.add(str(value))
    _add_endpoints(session, groups)
    return dict(sorted(groups.items()))


def _add_endpoints(session: Session, groups: Mapping[str, ObservedProduct]) -> None:
    ids = sorted({endpoint_id for group in groups.values() for endpoint_id in group.endpoint_ids})
    endpoints: dict[int, Any] = {}
    for condition in among(session, Endpoint.id, ids):
        endpoints.update(
            (endpoint.id, endpoint)
            for endpoint in session.execute(
                select(
                    Endpoint.id, Endpoint.ip, Endpoint.mac, Endpoint.hostname, Endpoint.service, Endpoint.vlan
                ).where(condition)
            )
        )
    ae_by_endpoint: dict[int, set[str]] = {}
    ae_by_peer: dict[str, set[str]] = {}
    counts: dict[int, dict[tuple[str, str], int]] = {}
    """Endpoint -> (kind, value) -> observations: the rows behind the groups' evidence."""
    # Only the rows behind the evidence are read, and only the columns used: an endpoint may
    # hold millions of other rows (a flood of random subdomains) that say nothing here.
    kinds = sorted({kind for group in groups.values() for kind, _ in group.pairs})
    values = sorted({value for group in groups.values() for _, value in group.pairs})
    aggregate = ObservationAggregate
    for of_endpoints in among(session, aggregate.endpoint_id, ids):
        for of_values in among(session, aggregate.value, values):
            rows = session.execute(
                select(aggregate.endpoint_id, aggregate.kind, aggregate.value, aggregate.count).where(
                    of_endpoints, aggregate.kind.in_(kinds), of_values
                )
            )
            for endpoint_id, kind, value, count in rows:
                counted = counts.setdefault(endpoint_id, {})
                counted[kind, value] = counted.get((kind, value), 0) + count
        associations = session.execute(
            select(aggregate.endpoint_id, aggregate.attrs, aggregate.peer).where(
                of_endpoints, aggregate.kind == "dicom.association"
            )
        )
        for endpoint_id, attrs, peer in associations:
            attrs = attrs or {}
            # The row's endpoint is the association's caller; the peer is the called side.
            if attrs.get("calling_ae"):
                ae_by_endpoint.setdefault(endpoint_id, set()).add(str(attrs["calling_ae"]).strip())
            if attrs.get("called_ae") and peer:
                ae_by_peer.setdefault(peer, set()).add(str(attrs["called_ae"]).strip())
    for group in groups.values():
        for endpoint_id in sorted(group.endpoint_ids):
            endpoint = endpoints.get(endpoint_id)
            if endpoint is None:
                continue
            ip, mac = _valid_ip(endpoint.ip), _valid_mac(endpoint.mac)
            if ip:
                group.ips.add(ip)
                group.ae_titles |= ae_by_peer.get(ip, set())
            if mac:
                group.macs.add(mac)
            if endpoint.hostname:
                group.hostnames.add(endpoint.hostname)
            if endpoint.service:
                group.services.add(endpoint.service)
            if endpoint.vlan is not None:
                group.vlans.add(endpoint.vlan)
            group.ae_titles |= ae_by_endpoint.get(endpoint_id, set())
            # The endpoint's few counted rows, not every pair of the group (hundreds for a device
            # family seen on hundreds of endpoints).
            group.observations += sum(
                count for pair, count in counts.get(endpoint_id, {}).items() if pair in group.pairs
            )
        group.ae_titles.discard("")


# -- matching -------------------------------------------------------------------------------------


def _host_declared(seen: str, declared: Iterable[str]) -> bool:
    for pattern in declared:
        if pattern.startswith("*."):
            suffix = pattern[2:]
            if seen == suffix or seen.endswith("." + suffix):
                return True
        elif seen == pattern:
            return True
    return False


@lru_cache(maxsize=65536)
def _words(text: str | None) -> frozenset[str]:
    return frozenset(_WORD.findall(fold(text or ""))) - GENERIC_WORDS


@lru_cache(maxsize=65536)  # every (product, entry) pair asks: the pairs of names repeat
def _vendors_agree(a: str | None, b: str | None) -> bool:
    fa, fb = fold(a or ""), fold(b or "")
    return bool(fa) and bool(fb) and (fa == fb or f" {fa} " in f" {fb} " or f" {fb} " in f" {fa} ")


def _match_level(
    group: ObservedProduct,
    entry: Declared,
    product: Product | None,
    catalog: Catalog,
    observed_ids: set[str],
) -> int | None:
    """1, 2 or 3 (see the module docstring), or None when the entry does not declare this product."""
    identified = group.product_id != UNKNOWN
    if entry.catalog_id is not None:
        if identified:
            if entry.catalog_id == group.product_id:
                return 1
            # Software a fingerprint names on a declared device (a gateway built on pynetdicom) is
            # that device: its declared address or AE title says so, never its name.
            return 2 if _identifiers_match(group, entry, product, hosts=False) else None
        # Declared as a catalogue product that is not seen by name: an unknown of its vendor may be it.
        if entry.catalog_id in observed_ids:
            return None
        declared = catalog.by_id.get(entry.catalog_id)
        vendor = declared.vendor if declared is not None else entry.vendor
        return (
            3 if _vendors_agree(vendor, group.vendor) or _identifiers_match(group, entry, product) else None
        )
    if _identifiers_match(group, entry, product):
        return 2
    if identified and product is not None:
        names = {fold(entry.name), fold(f"{entry.vendor or ''} {entry.name}")}
        if names & product_keys(product):
            return 3
        if _vendors_agree(entry.vendor, product.vendor) and (
            str(product.deployment) == "embedded_device" or _words(entry.name) & _words(product.name)
        ):
            return 3
        return None
    return 3 if not identified and _vendors_agree(entry.vendor, group.vendor) else None


def _identifiers_match(
    group: ObservedProduct, entry: Declared, product: Product | None, *, hosts: bool = True
) -> bool:
    if hosts and entry.hosts and any(_host_declared(host, entry.hosts) for host in group.hosts):
        return True
    if group.ae_titles & entry.ae_titles:
        return True
    if product is not None and str(product.deployment) in USER_SIDE_DEPLOYMENTS:
        return False
    return bool(group.ips & entry.ips or group.macs & entry.macs)


def _split_services(text: str | None) -> set[str]:
    return {fold(part) for part in re.split(r"[,;|\n]+", text or "") if fold(part)}


def _mismatch(group: ObservedProduct, entries: Sequence[Declared], product: Product | None) -> str | None:
    reasons: list[str] = []
    declared_hosts = [host for entry in entries for host in entry.hosts or ()]
    deployments = {entry.deployment for entry in entries if entry.deployment}
    if deployments and deployments <= {"on_prem", "embedded_device"}:
        cloud = sorted(host for host in group.hosts if not _host_declared(host, declared_hosts))
        if cloud:
            how = "/".join(sorted(deployments))
            reasons.append(f"declared {how}, seen calling cloud hosts: {_few(cloud)}")
    saas = product is not None and str(product.deployment) in USER_SIDE_DEPLOYMENTS
    for label, seen, declared in (
        ("IPs", group.ips, {ip for entry in entries for ip in entry.ips or ()}),
        ("MACs", group.macs, {mac for entry in entries for mac in entry.macs or ()}),
    ):
        extra = sorted(seen - declared)
        if declared and extra and not saas:
            reasons.append(f"seen on undeclared {label}: {_few(extra)}")
    declared_ae = {ae for entry in entries for ae in entry.ae_titles or ()}
    extra_ae = sorted(group.ae_titles - declared_ae)
    if declared_ae and extra_ae:
        reasons.append(f"seen with undeclared AE titles: {_few(extra_ae)}")
    declared_services: set[str] = set().union(*(_split_services(entry.service) for entry in entries))
    extra_services = sorted(s for s in group.services if fold(s) not in declared_services)
    if declared_services and extra_services:
        reasons.append(f"used by undeclared services: {_few(extra_services)}")
    return "; ".join(reasons) or None


def _few(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" (+{len(values) - limit})" if len(values) > limit else "")


def _tristate(value: object) -> bool | None:
    text = str(value)
    return True if text == "true" else False if text == "false" else None


def compute(
    session: Session,
    site: str,
    now: datetime,
    *,
    config: ReconcileConfig | None = None,
    catalog: Catalog | None = None,
) -> list[ReconciledProduct]:
    """Every product of the site with its reconciliation status, sorted by key (reads only)."""
    config = config or ReconcileConfig()
    catalog = catalog or load_catalog()
    groups = observed_products(session, site, now, config.lookback)
    entries = [
        Declared.of(entry)
        for entry in session.scalars(
            select(InventoryEntry)
            .where(InventoryEntry.site == site, InventoryEntry.active.is_(True))
            .order_by(InventoryEntry.ref, InventoryEntry.id)
        )
    ]
    observed_ids = {group.product_id for group in groups.values() if group.product_id != UNKNOWN}
    matched: set[int] = set()
    products: list[ReconciledProduct] = []
    for key, group in groups.items():
        product = catalog.by_id.get(group.product_id)
        best: list[Declared] = []
        best_level = 4
        for entry in entries:
            level = _match_level(group, entry, product, catalog, observed_ids)
            if level is None or level > best_level:
                continue
            if level < best_level:
                best, best_level = [], level
            best.append(entry)
        matched.update(entry.id for entry in best)
        if best:
            mismatch = _mismatch(group, best, product)
            status = ReconciliationStatus.DECLARED_OBSERVED
            if mismatch:
                status = ReconciliationStatus.DECLARED_MISMATCH
        else:
            mismatch = None
            status = (
                ReconciliationStatus.UNDECLARED_OBSERVED
                if group.product_id != UNKNOWN
                else ReconciliationStatus.UNKNOWN_OBSERVED
            )
        products.append(_observed_row(key, group, product, best, status, mismatch))

    unobserved: dict[str, list[Declared]] = {}
    for entry in entries:
        if entry.id not in matched:
            unobserved.setdefault(entry.catalog_id or f"entry:{entry.ref}", []).append(entry)
    for key, declared in unobserved.items():
        if key in groups:  # a catalogue id whose product is seen under that key: keep the keys apart
            key = f"entry:{declared[0].ref}"
        products.append(_declared_row(key, declared, catalog.by_id.get(declared[0].catalog_id or "")))
    products.sort(key=lambda row: row.key)
    return products


def _observed_row(
    key: str,
    group: ObservedProduct,
    product: Product | None,
    entries: Sequence[Declared],
    status: ReconciliationStatus,
    mismatch: str | None,
) -> ReconciledProduct:
    first = entries[0] if entries else None
    name: str
    vendor: str | None
    category: str | None
    deployment: str | None
    if product is not None:
        name, vendor, category = product.name, product.vendor, str(product.category)
        is_ai, is_medical = _tristate(product.ai), _tristate(product.medical_purpose)
        deployment = str(product.deployment)
    else:
        name = f"{group.vendor or group.category or 'product'} (unidentified)"
        vendor, category = group.vendor, group.category
        is_ai = first.is_ai if first is not None else None
        is_medical = first.is_dmn if first is not None else None
        # An unnamed product is as AI- or medical-looking as the category its evidence agrees on.
        if is_ai is None and category in AI_CATEGORIES:
            is_ai = True
        if is_medical is None and category in DEVICE_CATEGORIES:
            is_medical = True
        deployment = first.deployment if first is not None else None
    return ReconciledProduct(
        key=key,
        status=status,
        mismatch=mismatch,
        product_id=None if group.product_id == UNKNOWN else group.product_id,
        name=name,
        vendor=vendor,
        category=category,
        is_ai=is_ai,
        is_medical=is_medical,
        deployment=deployment,
        entry_ids=tuple(entry.id for entry in entries),
        entry_refs=tuple(entry.ref for entry in entries),
        observed_product=group,
    )


def _declared_row(key: str, entries: Sequence[Declared], product: Product | None) -> ReconciledProduct:
    first = entries[0]
    # What people declared wins over the catalogue's general facts.
    is_ai, is_medical = first.is_ai, first.is_dmn
    if product is not None:
        is_ai = _tristate(product.ai) if is_ai is None else is_ai
        is_medical = _tristate(product.medical_purpose) if is_medical is None else is_medical
    return ReconciledProduct(
        key=key,
        status=ReconciliationStatus.DECLARED_NOT_OBSERVED,
        mismatch=None,
        product_id=None if product is None else product.id,
        name=first.name if product is None else product.name,
        vendor=first.vendor if product is None else product.vendor,
        category=first.category if product is None else str(product.category),
        is_ai=is_ai,
        is_medical=is_medical,
        deployment=first.deployment or (None if product is None else str(product.deployment)),
        entry_ids=tuple(entry.id for entry in entries),
        entry_refs=tuple(entry.ref for entry in entries),
        observed_product=None,
    )


# -- persisting -----------------------------------------------------------------------------------


def reconcile(
    session: Session,
    site: str,
    now: datetime,
    *,
    config: ReconcileConfig | None = None,
    catalog: Catalog | None = None,
) -> ReconcileResult:
    """Compute, store and alert: the one entry point the scan, the daemon and the import call.

    Runs in the caller's transaction; commit after it.
    """
    products = compute(session, site, now, config=config, catalog=catalog)
    result = ReconcileResult(products)
    stored = {
        row.product_key: row
        for row in session.scalars(select(Reconciliation).where(Reconciliation.site == site))
    }
    for product in products:
        row = stored.pop(product.key, None)
        values: dict[str, Any] = {
            "entry_id": product.entry_ids[0] if product.entry_ids else None,
            "status": product.status,
            "mismatch": product.mismatch,
            "product_id": product.product_id,
            "vendor": product.vendor,
            "category": product.category,
            "endpoints": product.endpoints,
            "confidence": product.confidence,
            "first_seen": product.first_seen,
            "last_seen": product.last_seen,
            "computed_at": now,
        }
        if row is None:
            session.add(Reconciliation(site=site, product_key=product.key, **values))
            _log_status(session, site, product.key, None, product.status, None, product.mismatch, now)
            result.status_changes += 1
            continue
        if row.status != product.status or row.mismatch != product.mismatch:
            old, old_mismatch = row.status, row.mismatch
            _log_status(session, site, product.key, old, product.status, old_mismatch, product.mismatch, now)
            result.status_changes += 1
        for name, value in values.items():
            setattr(row, name, value)
    for key, row in sorted(stored.items()):
        # Seen before, neither seen in the window nor declared now: it leaves the current picture
        # (its reviews and the change log keep its history).
        _log_status(session, site, key, row.status, None, row.mismatch, None, now)
        session.delete(row)
        result.removed += 1
    session.flush()
    result.raised, result.closed = sync_alerts(session, site, products, now)
    return result


def _log_status(
    session: Session,
    site: str,
    key: str,
    old: ReconciliationStatus | None,
    new: ReconciliationStatus | None,
    old_mismatch: str | None,
    new_mismatch: str | None,
    now: datetime,
) -> None:
    changes: dict[str, list[Any]] = {
        "reconciliation_status": [None if old is None else str(old), None if new is None else str(new)]
    }
    if old_mismatch != new_mismatch:
        changes["mismatch"] = [old_mismatch, new_mismatch]
    log_change(session, site, f"product:{key}", "status", "lanterne", now, changes)
