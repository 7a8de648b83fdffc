"""Stores on both real backends for the declared-side tests, and rows as the aggregator writes them.

The databases are ``tests.store.dburl``'s: a SQLite file, or a fresh schema in the test
PostgreSQL (skipped when unreachable, unless ``LANTERNE_REQUIRE_PG`` is set).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from store import open_store
from store._models import (
    Detection,
    Endpoint,
    IdentityKind,
    InventoryEntry,
    ObservationAggregate,
)
from tests.store.dburl import temporary_database


@contextmanager
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of an empty database of the backend, removed afterwards (``tests.store.dburl``)."""
    with temporary_database(backend, tmp_path_factory.mktemp("db")) as url:
        yield url


@contextmanager
def session_on(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A session on an empty database of the backend, migrated by the real engine (Alembic)."""
    with database_url(backend, tmp_path_factory) as url:
        store = open_store(url)
        try:
            with store.session() as session:
                yield session
        finally:
            store.dispose()


# -- rows of the observed side, as the aggregator would write them --------------------------------

HOST_KIND = "tls.sni"


def add_endpoint(
    session: Session,
    site: str,
    ip: str,
    *,
    mac: str | None = None,
    service: str | None = None,
    vlan: int | None = None,
    seen: datetime | None = None,
) -> Endpoint:
    """An endpoint identified by its MAC (or its IP when none)."""
    seen = seen or datetime(2026, 11, 1, tzinfo=UTC)
    endpoint = Endpoint(
        site=site,
        identity_kind=IdentityKind.MAC if mac else IdentityKind.IP_UNBOUND,
        identity=mac or ip,
        mac=mac,
        ip=ip,
        service=service,
        vlan=vlan,
        first_seen=seen,
        last_seen=seen,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def add_detection(
    session: Session,
    site: str,
    product_id: str,
    endpoint: Endpoint,
    *,
    seen: tuple[datetime, datetime],
    hosts: Sequence[str] = (),
    signals: Sequence[tuple[str, str]] = (),
    vendor: str | None = None,
    category: str | None = None,
    confidence: float = 0.9,
    count: int = 3,
) -> Detection:
    """A detection with host (and other) evidence, and the observations behind it."""
    pairs = [(HOST_KIND, host) for host in hosts] + list(signals)
    evidence = [
        {"rule": f"{product_id}:r{i}", "product": product_id, "vendor": vendor, "kind": kind, "value": value}
        for i, (kind, value) in enumerate(pairs)
    ]
    key = product_id if product_id != "unknown" else f"unknown:{vendor or category}"
    detection = session.scalars(
        select(Detection).where(
            Detection.site == site, Detection.product_key == key, Detection.endpoint_id == endpoint.id
        )
    ).one_or_none()
    if detection is None:
        detection = Detection(
            site=site,
            product_key=key,
            product_id=product_id,
            vendor=vendor,
            category=category,
            endpoint_id=endpoint.id,
            confidence=confidence,
            evidence=evidence,
            roles=[],
            catalog_version="test",
            first_seen=seen[0],
            last_seen=seen[1],
        )
        session.add(detection)
    else:
        detection.evidence = [*detection.evidence, *evidence]
        detection.last_seen = max(detection.last_seen, seen[1])
    for kind, value in pairs:
        session.merge(
            ObservationAggregate(
                agent="sensor-1",
                endpoint_id=endpoint.id,
                kind=kind,
                value=value,
                first_seen=seen[0],
                last_seen=seen[1],
                count=count,
                attrs={},
                peer=None,
            )
        )
    session.flush()
    return detection


def add_entry(session: Session, site: str, ref: str, name: str, **values: Any) -> InventoryEntry:
    """A declared entry, as an import would write it."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    entry = InventoryEntry(site=site, ref=ref, name=name, active=True, created_at=now, updated_at=now)
    for field in ("hosts", "ips", "macs", "ae_titles"):
        setattr(entry, field, list(values.pop(field, ())))
    entry.details = dict(values.pop("details", {}))
    for field, value in values.items():
        setattr(entry, field, value)
    session.add(entry)
    session.flush()
    return entry
