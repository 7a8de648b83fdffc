"""Retention: evidence older than the configured period is deleted (DESIGN §5: six months by default).

What the sensors saw ages out: aggregated observations, detections, the probe log, and the
endpoints and aliases nothing refers to any more (their MACs, addresses and host names are
personal data as much as the observations are). What people declared and decided never does:
the inventory, reviews, alerts and the change log are the audit trail the certification asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete, exists, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from store._models import Detection, Endpoint, EndpointAlias, ObservationAggregate, ProbeLogEntry

#: Six months, rounded up (the AI Act asks deployers to keep logs at least six months).
DEFAULT_RETENTION_DAYS: Final = 183


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """How many rows of each table a purge deleted."""

    cutoff: datetime
    observations: int
    detections: int
    probe_log: int
    aliases: int
    endpoints: int

    @property
    def total(self) -> int:
        """Rows deleted in all."""
        return self.observations + self.detections + self.probe_log + self.aliases + self.endpoints


def _count(result: object) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


def purge(
    session: Session, *, days: int = DEFAULT_RETENTION_DAYS, now: datetime | None = None
) -> PurgeResult:
    """Delete what was last seen more than ``days`` ago; the caller commits."""
    if days < 1:
        raise ValueError("retention must be at least one day")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    observations = _count(
        session.execute(delete(ObservationAggregate).where(ObservationAggregate.last_seen < cutoff))
    )
    detections = _count(session.execute(delete(Detection).where(Detection.last_seen < cutoff)))
    probe_log = _count(session.execute(delete(ProbeLogEntry).where(ProbeLogEntry.ts < cutoff)))
    aliases = _count(session.execute(delete(EndpointAlias).where(EndpointAlias.last_seen < cutoff)))
    # An endpoint goes once nothing of it is left to show; merged ones point at a survivor that
    # may still be live, so they go with the same rule (merged_into is SET NULL, never dangling).
    orphan = (
        delete(Endpoint)
        .where(Endpoint.last_seen < cutoff)
        .where(~exists(select(1).where(ObservationAggregate.endpoint_id == Endpoint.id)))
        .where(~exists(select(1).where(Detection.endpoint_id == Endpoint.id)))
        .where(~exists(select(1).where(EndpointAlias.endpoint_id == Endpoint.id)))
    )
    endpoints = _count(session.execute(orphan))
    return PurgeResult(cutoff, observations, detections, probe_log, aliases, endpoints)
