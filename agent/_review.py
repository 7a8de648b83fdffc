"""Review decisions and the alert life cycle: what needs a person, and what a person decided.

The rules, in one place:

- **One open alert per (site, product key, reason).** A re-detection of the same product updates
  its ``last_seen`` and counts one more ``occurrence`` (only when the product was seen later than
  the alert knew: reconciling twice counts nothing); it never opens a second alert.
- **Reasons.** ``undeclared_observed``, ``unknown_observed`` and ``declared_mismatch`` come from the
  reconciliation status; ``condition_expired`` when the current decision is
  ``approved_with_conditions`` and its expiry has passed; ``blocked_seen_again`` when the current
  decision is ``rejected_to_block`` and the product was seen after the decision.
- **What a decision covers.** A decision records a snapshot of what the reviewer saw (status,
  mismatch text, evidence signals). ``approved`` and ``approved_with_conditions`` (until expiry)
  cover the status alerts while the status and the mismatch text stay those of the snapshot: a new
  mismatch is a new question. ``false_positive`` covers them while no evidence signal
  (``kind=value``) outside the snapshot appears: the same marketing-site visit stays a false
  positive, an API host seen later is not. ``rejected_to_block`` covers the status alerts (the
  product is known and refused) and raises ``blocked_seen_again`` instead. ``retired`` covers what
  was seen up to the decision; a sighting after it raises the status alert again.
- **Closing.** A decision closes every open alert of the product (``closed_by_review``). A status
  alert whose reason no longer holds (the product was declared, or left the look-back window) is
  closed by reconciliation; ``condition_expired`` and ``blocked_seen_again`` wait for a person.
- **Severity.** ``high``: AI or medical products undeclared or unknown, a blocked product seen
  again, a declared on-premise product seen calling cloud hosts; ``medium``: other mismatches,
  expired conditions, other undeclared products; ``low``: unknowns that are neither AI- nor
  medical-looking.
- ``next_review_due``: the decision date plus ``ReviewPolicy.review_interval_months`` (12), or the
  conditions' expiry when sooner; none for ``false_positive`` and ``retired``.

Every decision, alert raised and alert closed appends a ``change_log`` row.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from fingerprints import AI_CATEGORIES
from store._inventory import as_utc
from store._models import (
    Alert,
    AlertReason,
    AlertState,
    ChangeLogEntry,
    Detection,
    Reconciliation,
    ReconciliationStatus,
    Review,
    ReviewDecision,
)

if TYPE_CHECKING:
    from agent._reconcile import ReconciledProduct

#: Who writes the automatic change-log rows.
SYSTEM_ACTOR: Final = "lanterne"
#: Categories that make a product medical-looking (with ``medical_purpose``).
MEDICAL_CATEGORIES: Final = frozenset(
    {"medical_device", "imaging_modality", "pacs", "dicom_software", "clinical_information_system"}
)
_STATUS_REASONS: Final[Mapping[ReconciliationStatus, AlertReason]] = {
    ReconciliationStatus.UNDECLARED_OBSERVED: AlertReason.UNDECLARED_OBSERVED,
    ReconciliationStatus.UNKNOWN_OBSERVED: AlertReason.UNKNOWN_OBSERVED,
    ReconciliationStatus.DECLARED_MISMATCH: AlertReason.DECLARED_MISMATCH,
}
_STATUS_ALERTS: Final = frozenset(_STATUS_REASONS.values())
_OPEN_STATES: Final = (AlertState.OPEN, AlertState.ACKNOWLEDGED)
#: Decisions a person may record (``pending_review`` is the absence of one).
DECISIONS: Final = tuple(d for d in ReviewDecision if d is not ReviewDecision.PENDING_REVIEW)
_CLOUD_MARK: Final = "cloud hosts"


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown alert or product, missing reason or expiry)."""


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """Knobs of the review workflow (configurable; defaults from the regulatory note §7)."""

    review_interval_months: int = 12
    """Periodic review: the cartographie is updated every year (HAS, NIS2 CIR 12.4.3)."""


def add_months(when: datetime, months: int) -> datetime:
    """The same day ``months`` later (the last day of the month when it has fewer days)."""
    index = when.month - 1 + months
    year, month = when.year + index // 12, index % 12 + 1
    return when.replace(year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1]))


def latest_reviews(session: Session, site: str) -> dict[str, Review]:
    """The current decision of every product of the site that has one (latest wins)."""
    reviews = session.scalars(
        select(Review).where(Review.site == site).order_by(Review.decided_at, Review.id)
    )
    return {review.product_key: review for review in reviews}


def review_history(session: Session, site: str, product_key: str) -> list[Review]:
    """Every decision about a product, oldest first."""
    return list(
        session.scalars(
            select(Review)
            .where(Review.site == site, Review.product_key == product_key)
            .order_by(Review.decided_at, Review.id)
        )
    )


def current_decision(review: Review | None) -> ReviewDecision:
    """The ``review_decision`` axis: the latest review, else ``pending_review``."""
    return ReviewDecision.PENDING_REVIEW if review is None else review.decision


def open_alerts(session: Session, site: str | None = None) -> list[Alert]:
    """Open (or acknowledged) alerts, most severe and most recent first."""
    query = select(Alert).where(Alert.state.in_(_OPEN_STATES))
    if site is not None:
        query = query.where(Alert.site == site)
    return sorted(session.scalars(query), key=_alert_order)


def list_alerts(session: Session, site: str | None = None, *, include_closed: bool = False) -> list[Alert]:
    """Alerts of a site (all sites when None), open ones only unless ``include_closed``."""
    if not include_closed:
        return open_alerts(session, site)
    query = select(Alert)
    if site is not None:
        query = query.where(Alert.site == site)
    return sorted(session.scalars(query), key=_alert_order)


_SEVERITY_RANK: Final = {"high": 0, "medium": 1, "low": 2}


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (None stays None): the JSON form of a stored time."""
    return None if value is None else as_utc(value).isoformat()


def alert_document(alert: Alert) -> dict[str, Any]:
    """An alert as plain data: what ``lanterne alerts --json`` prints and alert messages carry."""
    return {
        "id": alert.id,
        "site": alert.site,
        "product_key": alert.product_key,
        "reason": str(alert.reason),
        "state": str(alert.state),
        "severity": alert.severity,
        "title": alert.title,
        "first_raised": iso_utc(alert.first_raised),
        "last_seen": iso_utc(alert.last_seen),
        "occurrences": alert.occurrences,
        "closed_at": iso_utc(alert.closed_at),
        "summary": dict(alert.summary or {}),
    }


def _alert_order(alert: Alert) -> tuple[int, int, float, int]:
    closed = 0 if alert.state in _OPEN_STATES else 1
    return (closed, _SEVERITY_RANK.get(alert.severity, 3), -as_utc(alert.last_seen).timestamp(), alert.id)


# -- decisions ------------------------------------------------------------------------------------


def decide(
    session: Session,
    target: int | str,
    decision: ReviewDecision | str,
    reason: str,
    *,
    by: str,
    now: datetime,
    site: str | None = None,
    conditions: str | None = None,
    expires_at: datetime | None = None,
    details: Mapping[str, Any] | None = None,
    policy: ReviewPolicy | None = None,
) -> Review:
    """Record a decision about an alert's product (``target`` an alert id) or a product key.

    Appends a ``reviews`` row (never updates one), closes the product's open alerts and writes
    the change log; runs in the caller's transaction.
    """
    policy = policy or ReviewPolicy()
    try:
        decision = ReviewDecision(decision)
    except ValueError as exc:
        raise ReviewError(f"unknown decision {decision!r}: one of {', '.join(DECISIONS)}") from exc
    if decision is ReviewDecision.PENDING_REVIEW:
        raise ReviewError(f"pending_review is not a decision: one of {', '.join(DECISIONS)}")
    reason = reason.strip()
    by = by.strip()
    if not reason:
        raise ReviewError("a decision needs a reason (--reason)")
    if not by:
        raise ReviewError("a decision needs the name of who decides (--by)")
    if decision is ReviewDecision.APPROVED_WITH_CONDITIONS:
        if expires_at is None or not (conditions or "").strip():
            raise ReviewError(
                "approved_with_conditions needs the conditions and their expiry (--conditions, --expires)"
            )
        if as_utc(expires_at) <= now:
            raise ReviewError("the conditions' expiry must be in the future")
    elif expires_at is not None or conditions:
        raise ReviewError("conditions and an expiry only go with approved_with_conditions")

    site, product_key, alert = _resolve_target(session, target, site)
    previous = latest_reviews(session, site).get(product_key)
    reconciliation = session.get(Reconciliation, (site, product_key))
    snapshot: dict[str, Any] = {
        "status": None if reconciliation is None else str(reconciliation.status),
        "mismatch": None if reconciliation is None else reconciliation.mismatch,
        "signals": sorted(_all_signals(session, site, product_key)),
        "last_seen": None
        if reconciliation is None or reconciliation.last_seen is None
        else as_utc(reconciliation.last_seen).isoformat(),
    }
    if alert is not None:
        snapshot["alert_id"] = alert.id
    next_due: datetime | None = None
    if decision not in (ReviewDecision.FALSE_POSITIVE, ReviewDecision.RETIRED):
        next_due = add_months(now, policy.review_interval_months)
        if expires_at is not None:
            next_due = min(next_due, as_utc(expires_at))
    review = Review(
        site=site,
        product_key=product_key,
        decision=decision,
        reason=reason,
        conditions=(conditions or "").strip() or None,
        expires_at=None if expires_at is None else as_utc(expires_at),
        decided_by=by[:128],
        decided_at=now,
        next_review_due=next_due,
        details={**dict(details or {}), "snapshot": snapshot},
    )
    session.add(review)
    session.flush()
    changes: dict[str, list[Any]] = {
        "review_decision": [str(current_decision(previous)), str(decision)],
        "reason": [None if previous is None else previous.reason, reason],
    }
    if review.conditions or (previous is not None and previous.conditions):
        changes["conditions"] = [None if previous is None else previous.conditions, review.conditions]
    if review.expires_at is not None:
        changes["expires_at"] = [None, review.expires_at.isoformat()]
    log_change(session, site, f"product:{product_key}", "decision", by, now, changes)
    for open_alert in session.scalars(
        select(Alert).where(
            Alert.site == site, Alert.product_key == product_key, Alert.state.in_(_OPEN_STATES)
        )
    ):
        _close(session, open_alert, now, actor=by, review=review)
    session.flush()
    return review


def _resolve_target(session: Session, target: int | str, site: str | None) -> tuple[str, str, Alert | None]:
    if isinstance(target, int) or target.strip().isdigit():
        alert = session.get(Alert, int(target))
        if alert is None or (site is not None and alert.site != site):
            raise ReviewError(f"no alert {target}")
        return alert.site, alert.product_key, alert
    key = target.strip()
    if site is None:
        raise ReviewError("a product key needs its site")
    alert_id = session.scalar(select(Alert.id).where(Alert.site == site, Alert.product_key == key).limit(1))
    review_id = session.scalar(
        select(Review.id).where(Review.site == site, Review.product_key == key).limit(1)
    )
    known = (
        session.get(Reconciliation, (site, key)) is not None or alert_id is not None or review_id is not None
    )
    if not known and not _is_catalog_id(key):
        raise ReviewError(f"no product {key!r} at site {site!r} (see 'lanterne export' or 'lanterne alerts')")
    return site, key, None


def _is_catalog_id(key: str) -> bool:
    # Deciding ahead of a sighting (e.g. blocking a tool before anyone uses it) is allowed.
    from fingerprints import load_catalog  # noqa: PLC0415 - the catalogue loads only for this rare case

    return key in load_catalog().by_id


def _all_signals(session: Session, site: str, product_key: str) -> set[str]:
    evidence = session.scalars(
        select(Detection.evidence).where(Detection.site == site, Detection.product_key == product_key)
    )
    return {signal for items in evidence for signal in evidence_signals(items)}


def evidence_signals(evidence: Iterable[Mapping[str, Any]] | None) -> set[str]:
    """The ``kind=value`` signals of a detection's evidence (what a false positive is judged on)."""
    signals: set[str] = set()
    for item in evidence or ():
        kind, value = item.get("kind"), item.get("value")
        if kind and value:
            signals.add(f"{kind}={value}")
    return signals


# -- alerts ---------------------------------------------------------------------------------------


def log_change(
    session: Session,
    site: str,
    subject: str,
    action: str,
    actor: str,
    now: datetime,
    changes: Mapping[str, Any],
) -> None:
    """Append one row to the change log."""
    entry = ChangeLogEntry(ts=now, site=site, subject=subject[:200], action=action, actor=actor[:128])
    entry.changes = dict(changes)
    session.add(entry)


def _close(
    session: Session, alert: Alert, now: datetime, *, actor: str, review: Review | None = None
) -> None:
    old = str(alert.state)
    alert.state = AlertState.CLOSED
    alert.closed_at = now
    alert.closed_by_review = None if review is None else review.id
    why = "decision" if review is not None else "resolved"
    log_change(
        session,
        alert.site,
        f"product:{alert.product_key}",
        "alert",
        actor,
        now,
        {"alert": [alert.id, alert.id], "state": [old, "closed"], "reason": [str(alert.reason), why]},
    )


def wanted_reasons(product: ReconciledProduct, review: Review | None, now: datetime) -> set[AlertReason]:
    """The reasons a person is needed for this product now, given its current decision."""
    reasons: set[AlertReason] = set()
    status_reason = _STATUS_REASONS.get(product.status)
    decision = current_decision(review)
    if review is None or decision is ReviewDecision.PENDING_REVIEW:
        return {status_reason} if status_reason else set()
    snapshot: Mapping[str, Any] = (review.details or {}).get("snapshot", {})
    # "Seen after the decision" compares sighting times with the last sighting the reviewer knew,
    # not with the wall clock: a replayed capture or a late sensor must not fake or hide it.
    known = snapshot.get("last_seen")
    seen_after = product.last_seen is not None and (
        known is None or as_utc(product.last_seen) > as_utc(datetime.fromisoformat(known))
    )
    covered = True
    if decision in (ReviewDecision.APPROVED, ReviewDecision.APPROVED_WITH_CONDITIONS):
        same = snapshot.get("status") == str(product.status) and snapshot.get("mismatch") == product.mismatch
        covered = same
        expires = review.expires_at
        if (
            decision is ReviewDecision.APPROVED_WITH_CONDITIONS
            and expires is not None
            and as_utc(expires) <= now
        ):
            reasons.add(AlertReason.CONDITION_EXPIRED)
    elif decision is ReviewDecision.FALSE_POSITIVE:
        covered = product.signals <= set(snapshot.get("signals", ()))
    elif decision is ReviewDecision.REJECTED_TO_BLOCK:
        if seen_after and product.observed:
            reasons.add(AlertReason.BLOCKED_SEEN_AGAIN)
    elif decision is ReviewDecision.RETIRED:
        covered = not seen_after
    if status_reason is not None and not covered:
        reasons.add(status_reason)
    return reasons


def severity(reason: AlertReason, product: ReconciledProduct) -> str:
    """How urgently a person is needed (see the module docstring)."""
    ai_or_medical = product.is_ai is True or product.is_medical is True or product.category in AI_CATEGORIES
    ai_or_medical = ai_or_medical or product.category in MEDICAL_CATEGORIES
    if reason is AlertReason.BLOCKED_SEEN_AGAIN:
        return "high"
    if reason in (AlertReason.UNDECLARED_OBSERVED, AlertReason.UNKNOWN_OBSERVED):
        if ai_or_medical:
            return "high"
        return "medium" if reason is AlertReason.UNDECLARED_OBSERVED else "low"
    if reason is AlertReason.DECLARED_MISMATCH and _CLOUD_MARK in (product.mismatch or ""):
        return "high"
    return "medium"


def _title(reason: AlertReason, product: ReconciledProduct) -> str:
    name = product.display_name
    where = f" on {product.endpoints} endpoint{'s' if product.endpoints != 1 else ''}"
    return {
        AlertReason.UNDECLARED_OBSERVED: f"Undeclared {name} seen{where}",
        AlertReason.UNKNOWN_OBSERVED: f"Unidentified {product.vendor or product.category} device seen{where}",
        AlertReason.DECLARED_MISMATCH: f"{name} seen otherwise than declared: {product.mismatch or ''}",
        AlertReason.CONDITION_EXPIRED: f"The conditions of {name}'s approval have expired",
        AlertReason.BLOCKED_SEEN_AGAIN: f"{name}, decided rejected_to_block, seen again{where}",
    }[reason][:1000]


def _summary(product: ReconciledProduct) -> dict[str, Any]:
    return {
        "status": str(product.status),
        "product_id": product.product_id,
        "name": product.name,
        "vendor": product.vendor,
        "category": product.category,
        "endpoints": product.endpoints,
        "confidence": product.confidence,
        "first_seen": None if product.first_seen is None else as_utc(product.first_seen).isoformat(),
        "last_seen": None if product.last_seen is None else as_utc(product.last_seen).isoformat(),
        "mismatch": product.mismatch,
        "signals": sorted(product.signals)[:20],
        "entry_refs": list(product.entry_refs),
    }


def _raise(session: Session, alert: Alert) -> None:
    session.add(alert)
    session.flush()
    changes = {"alert": [None, alert.id], "state": [None, "open"], "reason": [None, str(alert.reason)]}
    log_change(
        session,
        alert.site,
        f"product:{alert.product_key}",
        "alert",
        SYSTEM_ACTOR,
        alert.first_raised,
        changes,
    )


def sync_alerts(
    session: Session, site: str, products: Sequence[ReconciledProduct], now: datetime
) -> tuple[list[Alert], list[Alert]]:
    """Raise, refresh and close the site's alerts to match the reconciled products.

    Returns the alerts raised and the alerts closed by this run (refreshes are not listed).
    """
    reviews = latest_reviews(session, site)
    existing: dict[tuple[str, AlertReason], Alert] = {
        (alert.product_key, alert.reason): alert
        for alert in session.scalars(select(Alert).where(Alert.site == site, Alert.state.in_(_OPEN_STATES)))
    }
    raised: list[Alert] = []
    closed: list[Alert] = []
    keep: set[tuple[str, AlertReason]] = set()
    for product in products:
        for reason in sorted(wanted_reasons(product, reviews.get(product.key), now)):
            keep.add((product.key, reason))
            alert = existing.get((product.key, reason))
            seen = as_utc(product.last_seen) if product.last_seen is not None else now
            if alert is None:
                alert = Alert(
                    site=site,
                    product_key=product.key,
                    reason=reason,
                    state=AlertState.OPEN,
                    severity=severity(reason, product),
                    title=_title(reason, product),
                    summary=_summary(product),
                    first_raised=now,
                    last_seen=seen,
                    occurrences=1,
                    delivered={},
                )
                _raise(session, alert)
                raised.append(alert)
                continue
            if seen > as_utc(alert.last_seen):
                alert.last_seen = seen
                alert.occurrences += 1
            alert.severity = severity(reason, product)
            alert.title = _title(reason, product)
            alert.summary = _summary(product)
    # An approval's conditions expire whether or not the product is still seen: a person re-decides.
    current = {product.key for product in products}
    for product_key, review in sorted(reviews.items()):
        expires = review.expires_at
        if product_key in current or review.decision is not ReviewDecision.APPROVED_WITH_CONDITIONS:
            continue
        if expires is None or as_utc(expires) > now:
            continue
        keep.add((product_key, AlertReason.CONDITION_EXPIRED))
        if (product_key, AlertReason.CONDITION_EXPIRED) not in existing:
            alert = Alert(
                site=site,
                product_key=product_key,
                reason=AlertReason.CONDITION_EXPIRED,
                state=AlertState.OPEN,
                severity="medium",
                title=f"The conditions of {product_key}'s approval have expired (not seen lately)",
                summary={"product_key": product_key, "expires_at": as_utc(expires).isoformat()},
                first_raised=now,
                last_seen=as_utc(expires),
                occurrences=1,
                delivered={},
            )
            _raise(session, alert)
            raised.append(alert)
    for key, alert in sorted(existing.items(), key=lambda item: item[1].id):
        # Only status alerts resolve themselves; an expiry or a blocked sighting waits for a person.
        if key not in keep and alert.reason in _STATUS_ALERTS:
            _close(session, alert, now, actor=SYSTEM_ACTOR)
            closed.append(alert)
    session.flush()
    return raised, closed
