"""What the pages and the API read: one function per view, shared by both (reads only).

Alerts, decisions and the cartographie come from the functions the CLI uses (``agent._review``,
``agent._export``); the rest are plain queries on the store's tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from agent._export import CartographieRow, cartographie
from agent._reconcile import DEVICE_CATEGORIES, ReconcileConfig
from agent._review import MEDICAL_CATEGORIES, list_alerts, review_history
from agent._users import list_users, live_tokens
from agent.web._schemas import (
    AlertDetail,
    AlertOut,
    ChangeOut,
    DeliveryOut,
    DetectionOut,
    EndpointDetail,
    EndpointOut,
    EvidenceOut,
    InventoryEntryOut,
    ObservationOut,
    Page,
    ProbeOut,
    ProductDetail,
    ReviewOut,
    Scope,
    UserOut,
)
from agent.web._settings import WebSettings
from fingerprints import Catalog
from fingerprints._vocabulary import AI_CATEGORIES, Tristate
from store._models import (
    Agent,
    Alert,
    AlertDelivery,
    ChangeLogEntry,
    DeliveryStatus,
    Detection,
    Endpoint,
    InventoryEntry,
    ObservationAggregate,
    ProbeLogEntry,
    Reconciliation,
)

#: Observations listed on an endpoint's page (most recent first; the total is shown).
MAX_OBSERVATIONS: Final = 500
#: Change-log rows shown on a product's page (most recent last).
MAX_PRODUCT_CHANGES: Final = 200
#: Evidence items shown per detection (the aggregator bounds them too).
MAX_EVIDENCE: Final = 100
ALERT_STATES: Final = ("open", "closed", "all")
_MEDICAL: Final = MEDICAL_CATEGORIES | DEVICE_CATEGORIES


@dataclass(frozen=True, slots=True)
class AlertFilters:
    """The alert queue's filters (None: any)."""

    site: str | None = None
    state: str = "open"
    """``open`` (open or acknowledged), ``closed`` or ``all``."""
    severity: str | None = None
    reason: str | None = None
    category: str | None = None
    scope: str | None = None
    """``ai``, ``dmn`` or ``other``."""
    q: str | None = None
    """Text in the title or the product key (case-insensitive)."""


def sites(session: Session) -> list[str]:
    """Every site the store knows of, sorted."""
    found: set[str] = set()
    for column in (
        Agent.site,
        Alert.site,
        Reconciliation.site,
        InventoryEntry.site,
        Detection.site,
        Endpoint.site,
    ):
        found.update(session.scalars(select(column).distinct()))
    return sorted(found)


#: What the declared inventory says of a product: (is_ai, is_dmn), each None when not declared.
Declared = tuple[bool | None, bool | None]


def scope_of(
    product_id: str | None, category: str | None, catalog: Catalog, declared: Declared = (None, None)
) -> list[Scope]:
    """Whether a product is an AI tool, a medical device (DMN), both, or neither.

    What the hospital declared wins, as in the export; else the catalogue, else the category.
    """
    product = catalog.by_id.get(product_id or "")
    category = category or (None if product is None else str(product.category))
    ai = category in AI_CATEGORIES
    dmn = category in _MEDICAL
    if product is not None:
        ai = ai or product.ai is Tristate.YES
        dmn = dmn or product.medical_purpose is Tristate.YES
    declared_ai, declared_dmn = declared
    ai = ai if declared_ai is None else declared_ai
    dmn = dmn if declared_dmn is None else declared_dmn
    scopes: list[Scope] = []
    if ai:
        scopes.append("ai")
    if dmn:
        scopes.append("dmn")
    return scopes or ["other"]


def declarations(session: Session, alerts: Sequence[Alert]) -> dict[tuple[str, str], Declared]:
    """The declared AI/DMN flags of the entries the alerts' products were matched to, by (site, ref)."""
    wanted = {
        (alert.site, str(ref)) for alert in alerts for ref in (alert.summary or {}).get("entry_refs") or ()
    }
    found: dict[tuple[str, str], Declared] = {}
    for site in sorted({site for site, _ref in wanted}):
        refs = sorted(ref for entry_site, ref in wanted if entry_site == site)
        for start in range(0, len(refs), 500):
            for entry in session.scalars(
                select(InventoryEntry).where(
                    InventoryEntry.site == site, InventoryEntry.ref.in_(refs[start : start + 500])
                )
            ):
                found[(site, entry.ref)] = (entry.is_ai, entry.is_dmn)
    return found


def alert_out(
    alert: Alert, catalog: Catalog, declared: dict[tuple[str, str], Declared] | None = None
) -> AlertOut:
    """The document of an alert (``declared``: the flags of ``declarations``, when known)."""
    summary: dict[str, Any] = dict(alert.summary or {})
    product_id = summary.get("product_id") or alert.product_key
    category = summary.get("category")
    if category is None and alert.product_key in catalog.by_id:
        category = str(catalog.by_id[alert.product_key].category)
    flags = [(declared or {}).get((alert.site, str(ref))) for ref in summary.get("entry_refs") or ()]
    known = [flag for flag in flags if flag is not None]
    first_ai = next((ai for ai, _dmn in known if ai is not None), None)
    first_dmn = next((dmn for _ai, dmn in known if dmn is not None), None)
    return AlertOut(
        id=alert.id,
        site=alert.site,
        product_key=alert.product_key,
        reason=alert.reason,
        state=alert.state,
        severity=alert.severity,
        title=alert.title,
        scope=scope_of(
            str(product_id), None if category is None else str(category), catalog, (first_ai, first_dmn)
        ),
        category=None if category is None else str(category),
        first_raised=alert.first_raised,
        last_seen=alert.last_seen,
        occurrences=alert.occurrences,
        closed_at=alert.closed_at,
        closed_by_review=alert.closed_by_review,
        summary=summary,
        delivered=dict(alert.delivered or {}),
    )


def _matches(item: AlertOut, filters: AlertFilters) -> bool:
    if filters.state == "open" and item.state == "closed":
        return False
    if filters.state == "closed" and item.state != "closed":
        return False
    if filters.severity and item.severity != filters.severity:
        return False
    if filters.reason and item.reason != filters.reason:
        return False
    if filters.category and item.category != filters.category:
        return False
    if filters.scope and filters.scope not in item.scope:
        return False
    if filters.q:
        needle = filters.q.casefold()
        return needle in item.title.casefold() or needle in item.product_key.casefold()
    return True


def alerts_page(
    session: Session, catalog: Catalog, filters: AlertFilters, limit: int, offset: int
) -> Page[AlertOut]:
    """The alert queue: most severe and most recent first (the CLI's order), filtered, one page."""
    everything = list_alerts(session, filters.site, include_closed=filters.state != "open")
    declared = declarations(session, everything)
    items = [
        item
        for item in (alert_out(alert, catalog, declared) for alert in everything)
        if _matches(item, filters)
    ]
    return Page[AlertOut](items=items[offset : offset + limit], total=len(items), limit=limit, offset=offset)


def _endpoint_out(endpoint: Endpoint) -> EndpointOut:
    return EndpointOut.model_validate(endpoint)


def _evidence(items: Iterable[Any]) -> list[EvidenceOut]:
    return [EvidenceOut.model_validate(item) for item in list(items)[:MAX_EVIDENCE] if isinstance(item, dict)]


def detections(
    session: Session, conditions: Sequence[Any], limit: int | None = None, offset: int = 0
) -> list[DetectionOut]:
    """Detections matching ``conditions`` with their endpoint and evidence, most recent first."""
    query = (
        select(Detection, Endpoint)
        .join(Endpoint, Endpoint.id == Detection.endpoint_id)
        .where(*conditions)
        .order_by(Detection.last_seen.desc(), Detection.id)
    )
    if limit is not None:
        query = query.limit(limit).offset(offset)
    rows = session.execute(query).all()
    return [
        DetectionOut(
            id=detection.id,
            site=detection.site,
            product_key=detection.product_key,
            product_id=detection.product_id,
            vendor=detection.vendor,
            category=detection.category,
            confidence=detection.confidence,
            roles=list(detection.roles or ()),
            catalog_version=detection.catalog_version,
            first_seen=detection.first_seen,
            last_seen=detection.last_seen,
            endpoint=_endpoint_out(endpoint),
            evidence=_evidence(detection.evidence or ()),
        )
        for detection, endpoint in rows
    ]


def product_rows(
    session: Session, catalog: Catalog, settings: WebSettings, site: str
) -> list[CartographieRow]:
    """The cartographie of a site: every product with both statuses (the export's rows)."""
    config = ReconcileConfig(lookback=settings.lookback)
    return cartographie(session, site, settings.clock(), config=config, catalog=catalog)


def product_detail(
    session: Session,
    catalog: Catalog,
    settings: WebSettings,
    site: str,
    product_key: str,
    rows: Sequence[CartographieRow] | None = None,
) -> ProductDetail | None:
    """A product of a site with its evidence, alerts and decisions; None if the store knows nothing of it."""
    if rows is None:
        rows = product_rows(session, catalog, settings, site)
    row = next((row for row in rows if row.product_key == product_key), None)
    seen = detections(session, [Detection.site == site, Detection.product_key == product_key])
    found = [
        alert for alert in list_alerts(session, site, include_closed=True) if alert.product_key == product_key
    ]
    declared = declarations(session, found)
    alerts = [alert_out(alert, catalog, declared) for alert in found]
    reviews = [ReviewOut.model_validate(review) for review in review_history(session, site, product_key)]
    if row is None and not seen and not alerts and not reviews:
        return None
    subjects = [f"product:{product_key}", *(f"entry:{ref}" for ref in (row.cartographie_ref if row else ()))]
    changes = session.scalars(
        select(ChangeLogEntry)
        .where(ChangeLogEntry.site == site, ChangeLogEntry.subject.in_(subjects))
        .order_by(ChangeLogEntry.ts.desc(), ChangeLogEntry.id.desc())
        .limit(MAX_PRODUCT_CHANGES)
    )
    return ProductDetail(
        site=site,
        product_key=product_key,
        row=row,
        detections=seen,
        alerts=alerts,
        reviews=reviews,
        changes=[ChangeOut.model_validate(change) for change in reversed(list(changes))],
    )


def alert_detail(
    session: Session, catalog: Catalog, settings: WebSettings, alert_id: int
) -> AlertDetail | None:
    """An alert with its product's evidence and history, or None."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        return None
    product = product_detail(session, catalog, settings, alert.site, alert.product_key)
    if product is None:  # the alert itself makes the product known: never None here
        product = ProductDetail(
            site=alert.site,
            product_key=alert.product_key,
            row=None,
            detections=[],
            alerts=[],
            reviews=[],
            changes=[],
        )
    return AlertDetail(alert=alert_out(alert, catalog, declarations(session, [alert])), product=product)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def endpoints_page(
    session: Session, site: str | None, q: str | None, limit: int, offset: int
) -> Page[EndpointOut]:
    """Endpoints, most recently seen first, optionally by site and text (name, address, vendor)."""
    query = select(Endpoint).where(Endpoint.merged_into.is_(None))
    if site:
        query = query.where(Endpoint.site == site)
    if q:
        pattern = _like(q.lower())
        query = query.where(
            or_(
                *(
                    func.lower(column).like(pattern, escape="\\")
                    for column in (
                        Endpoint.hostname,
                        Endpoint.ip,
                        Endpoint.mac,
                        Endpoint.vendor,
                        Endpoint.identity,
                    )
                )
            )
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Endpoint.last_seen.desc(), Endpoint.id).limit(limit).offset(offset))
    return Page[EndpointOut](
        items=[_endpoint_out(row) for row in rows], total=total, limit=limit, offset=offset
    )


def endpoint_detail(session: Session, endpoint_id: int) -> EndpointDetail | None:
    """An endpoint with its observations and detections, or None."""
    endpoint = session.get(Endpoint, endpoint_id)
    if endpoint is None:
        return None
    where = ObservationAggregate.endpoint_id == endpoint_id
    total = session.scalar(select(func.count()).select_from(ObservationAggregate).where(where)) or 0
    observations = session.scalars(
        select(ObservationAggregate)
        .where(where)
        .order_by(
            ObservationAggregate.last_seen.desc(), ObservationAggregate.kind, ObservationAggregate.value
        )
        .limit(MAX_OBSERVATIONS)
    )
    return EndpointDetail(
        endpoint=_endpoint_out(endpoint),
        observations=[ObservationOut.model_validate(row) for row in observations],
        observations_total=total,
        detections=detections(session, [Detection.endpoint_id == endpoint_id]),
    )


def inventory_page(
    session: Session, site: str | None, active: bool | None, limit: int, offset: int
) -> Page[InventoryEntryOut]:
    """The declared entries, by site and reference."""
    query = select(InventoryEntry)
    if site:
        query = query.where(InventoryEntry.site == site)
    if active is not None:
        query = query.where(InventoryEntry.active.is_(active))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(InventoryEntry.site, InventoryEntry.ref).limit(limit).offset(offset)
    )
    return Page[InventoryEntryOut](
        items=[InventoryEntryOut.model_validate(row) for row in rows], total=total, limit=limit, offset=offset
    )


def _log_rows(
    session: Session,
    model: type[ProbeLogEntry] | type[ChangeLogEntry],
    filters: dict[str, str | None],
    limit: int,
    offset: int,
) -> tuple[list[Any], int]:
    """A page of a log table, most recent first, filtered on equal columns (None or empty: all); the total."""
    query = select(model)
    for column, value in filters.items():
        if value:
            query = query.where(getattr(model, column) == value)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(model.ts.desc(), model.id.desc()).limit(limit).offset(offset))
    return list(rows), total


def probes_page(
    session: Session,
    target: str | None,
    protocol: str | None,
    outcome: str | None,
    limit: int,
    offset: int,
) -> Page[ProbeOut]:
    """The probe log, most recent first."""
    filters = {"target": target, "protocol": protocol, "outcome": outcome}
    rows, total = _log_rows(session, ProbeLogEntry, filters, limit, offset)
    items = [ProbeOut.model_validate(row) for row in rows]
    return Page[ProbeOut](items=items, total=total, limit=limit, offset=offset)


def changes_page(
    session: Session, site: str | None, action: str | None, actor: str | None, limit: int, offset: int
) -> Page[ChangeOut]:
    """The change log, most recent first."""
    filters = {"site": site, "action": action, "actor": actor}
    rows, total = _log_rows(session, ChangeLogEntry, filters, limit, offset)
    items = [ChangeOut.model_validate(row) for row in rows]
    return Page[ChangeOut](items=items, total=total, limit=limit, offset=offset)


def users(session: Session) -> list[UserOut]:
    """Every user with their number of live tokens (never the tokens)."""
    counts = live_tokens(session)
    return [
        UserOut(
            name=user.name,
            role=user.role,
            created_at=user.created_at,
            disabled=user.disabled_at is not None,
            active_tokens=counts.get(user.id, 0),
        )
        for user in list_users(session)
    ]


def deliveries_page(
    session: Session, channel: str | None, status: DeliveryStatus | None, limit: int, offset: int
) -> Page[DeliveryOut]:
    """The alert channels' outbox, most recent first."""
    query = select(AlertDelivery)
    if channel:
        query = query.where(AlertDelivery.channel == channel)
    if status is not None:
        query = query.where(AlertDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AlertDelivery.id.desc()).limit(limit).offset(offset))
    return Page[DeliveryOut](
        items=[DeliveryOut.model_validate(row) for row in rows], total=total, limit=limit, offset=offset
    )
