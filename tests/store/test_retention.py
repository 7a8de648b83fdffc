"""Retention: old evidence goes, what people declared and decided stays."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from store import (
    Alert,
    AlertReason,
    ChangeLogEntry,
    Detection,
    Endpoint,
    EndpointAlias,
    InventoryEntry,
    ObservationAggregate,
    ProbeLogEntry,
    Review,
    ReviewDecision,
    Store,
    purge,
    upsert_aliases,
    upsert_observations,
)
from tests.store.helpers import T0, make_endpoints

NOW = T0 + timedelta(days=400)
OLD = NOW - timedelta(days=200)
RECENT = NOW - timedelta(days=10)


def _fill(db: Store) -> tuple[int, int, int]:
    with db.write() as session:
        stale, live, still_listed = make_endpoints(
            session, "00:00:00:00:00:01", "00:00:00:00:00:02", "00:00:00:00:00:03"
        )
        session.execute(update(Endpoint).values(first_seen=OLD, last_seen=OLD))
        upsert_observations(
            session,
            [
                {
                    "agent": "a",
                    "endpoint_id": stale,
                    "kind": "dns.query",
                    "value": "old.example",
                    "first_seen": OLD,
                    "last_seen": OLD,
                    "count": 1,
                    "attrs": {},
                    "peer": None,
                },
                {
                    "agent": "a",
                    "endpoint_id": live,
                    "kind": "dns.query",
                    "value": "old.example",
                    "first_seen": OLD,
                    "last_seen": OLD,
                    "count": 1,
                    "attrs": {},
                    "peer": None,
                },
                {
                    "agent": "a",
                    "endpoint_id": live,
                    "kind": "dns.query",
                    "value": "new.example",
                    "first_seen": OLD,
                    "last_seen": RECENT,
                    "count": 2,
                    "attrs": {},
                    "peer": None,
                },
            ],
        )
        upsert_aliases(
            session,
            [
                {
                    "site": "s",
                    "alias": "mac:00:00:00:00:00:03",
                    "endpoint_id": still_listed,
                    "first_seen": OLD,
                    "last_seen": RECENT,
                    "valid_until": None,
                }
            ],
        )
        for ep, last in ((stale, OLD), (live, RECENT)):
            session.add(
                Detection(
                    site="s",
                    product_key=f"p{ep}",
                    product_id=f"p{ep}",
                    endpoint_id=ep,
                    confidence=0.9,
                    evidence=[],
                    roles=[],
                    catalog_version="v",
                    first_seen=OLD,
                    last_seen=last,
                )
            )
        session.add_all(
            [
                ProbeLogEntry(ts=OLD, agent="a", target="10.0.0.1", protocol="snmp", outcome="ok"),
                ProbeLogEntry(ts=RECENT, agent="a", target="10.0.0.1", protocol="snmp", outcome="ok"),
                Review(
                    site="s",
                    product_key="p",
                    decision=ReviewDecision.APPROVED,
                    reason="ok",
                    decided_by="rssi",
                    decided_at=OLD,
                ),
                ChangeLogEntry(ts=OLD, site="s", subject="product:p", action="decision", actor="rssi"),
                InventoryEntry(site="s", ref="r1", name="Old tool", created_at=OLD, updated_at=OLD),
                Alert(
                    site="s",
                    product_key="p",
                    reason=AlertReason.UNDECLARED_OBSERVED,
                    severity="high",
                    title="t",
                    first_raised=OLD,
                    last_seen=OLD,
                ),
            ]
        )
    return stale, live, still_listed


def _count(db: Store, model: type[object]) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_purge_keeps_the_audit_trail(db: Store) -> None:
    stale, live, still_listed = _fill(db)
    with db.write() as session:
        result = purge(session, days=183, now=NOW)
    assert (result.observations, result.detections, result.probe_log) == (2, 1, 1)
    assert (result.aliases, result.endpoints) == (0, 1)
    assert result.cutoff == NOW - timedelta(days=183)
    with db.session() as session:
        assert set(session.scalars(select(Endpoint.id))) == {live, still_listed}
        assert session.scalars(select(ObservationAggregate.value)).all() == ["new.example"]
        assert session.scalars(select(Detection.endpoint_id)).all() == [live]
        assert session.scalar(select(func.count()).select_from(EndpointAlias)) == 1
    for model in (Review, ChangeLogEntry, InventoryEntry, Alert):
        assert _count(db, model) == 1, model
    assert stale not in (live, still_listed)


def test_purge_within_the_period_deletes_nothing(db: Store) -> None:
    _fill(db)
    with db.write() as session:
        assert purge(session, days=400, now=NOW).total == 0


def test_purge_refuses_a_zero_period(db: Store) -> None:
    with db.session() as session, pytest.raises(ValueError, match="at least one day"):
        purge(session, days=0)
