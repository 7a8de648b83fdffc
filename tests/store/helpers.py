"""Rows for store tests: endpoints and times built in one line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from store import IdentityKind, upsert_endpoints

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """``T0`` plus some minutes."""
    return T0 + timedelta(minutes=minutes)


def endpoint_row(identity: str, *, site: str = "s", seen: datetime = T0, **columns: Any) -> dict[str, Any]:
    """An endpoints row identified by a MAC (other columns None unless given)."""
    row: dict[str, Any] = {
        "site": site,
        "identity_kind": IdentityKind.MAC,
        "identity": identity,
        "mac": identity,
        "randomized_mac": False,
        "ip": None,
        "hostname": None,
        "vendor": None,
        "service": None,
        "vlan": None,
        "first_seen": seen,
        "last_seen": seen,
    }
    row.update(columns)
    return row


def make_endpoints(session: Session, *identities: str) -> list[int]:
    """Create MAC endpoints and return their ids, in order."""
    ids = upsert_endpoints(session, [endpoint_row(identity) for identity in identities])
    return [ids[IdentityKind.MAC, identity] for identity in identities]
