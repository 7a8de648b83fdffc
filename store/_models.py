"""The tables of Lanterne's store (DESIGN §5), as SQLAlchemy 2 typed declarative models.

Two groups, joined by reconciliation:

- what the sensors saw: ``agents``, ``endpoints`` (+ ``endpoint_aliases``), aggregated
  ``observations``, ``detections`` (a product seen at an endpoint), ``ingested_files`` (scan
  idempotency), ``probe_log`` (every active probe sent);
- what people declared and decided: ``inventory_entries`` (+ ``inventory_history``), per-product
  ``reconciliations`` (both statuses of DESIGN §1), ``reviews`` (every decision, kept as history),
  ``alerts`` (deduplicated per site, product and reason) and ``change_log`` (the NIS2 change history).

A *product key* names what is reconciled and reviewed at a site: a catalogue product id
(``openai-chatgpt``), or ``unknown:<vendor>`` / ``unknown:<category>`` for something medical- or
AI-looking that no fingerprint names. Times are timezone-aware UTC. Schema changes go through
Alembic migrations (``store/migrations``), never ``create_all`` on an existing database.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

try:  # the optional C version of ``_epoch_text`` (store/_timetext.c), built with the package
    from store import _timetext
except ImportError:  # no C compiler where it was installed: the same text, from Python
    _timetext = None  # type: ignore[assignment]

# Deterministic constraint names: Alembic migrations can refer to them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class _Json(TypeDecorator[Any]):
    """JSON that PostgreSQL stores as JSONB; plain JSON (text) on SQLite.

    ``JSON().with_variant(JSONB(), "postgresql")`` said the same, but importing JSONB loads the
    whole PostgreSQL dialect (60 ms of a SQLite scan's start-up): the variant is picked here, per
    dialect, and JSONB imported only where it is used. No query uses JSON operators.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """JSONB on PostgreSQL, JSON elsewhere."""
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB  # noqa: PLC0415 - see the class

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


#: JSON that PostgreSQL stores as JSONB; plain JSON (text) on SQLite.
JsonType = _Json()


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect (naive values are taken as UTC)."""

    # SQLite has no zone: SQLAlchemy would hand back naive datetimes and store any offset as if it
    # were UTC. Normalising here keeps comparisons and min/max in SQL chronological on both dialects.
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | float | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC before storing (epoch seconds are accepted too: bulk writers count in them)."""
        if value is None:
            return None
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        return value if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """On SQLite, write SQLAlchemy's own text format in one C call (bulk upserts write millions)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        if _timetext is not None:
            # Floats (what the bulk writers bind) formatted in C, to the same text; the rest in Python.
            return cast(Callable[[datetime | None], Any], _timetext.Processor(sqlite_time_text))
        return sqlite_time_text

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        """On SQLite, parse the stored text with ``fromisoformat`` (C) rather than a regex."""
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

        return process


UTC_DATETIME = UtcDateTime()

#: ``YYYY-MM-DD HH:MM:SS`` of recent whole seconds: a capture writes many times within each second.
_SECOND_TEXT: dict[int, str] = {}
#: ``000`` to ``999``: the microseconds are written as two of them (no format spec parsed per call).
_THREE_DIGITS: Final = tuple(f"{number:03d}" for number in range(1000))
#: Epoch seconds -> stored text, for the latest instants written (cleared when ``_RECENT_MAX`` are
#: held). A capture's rows repeat instants: most aggregated keys are seen once, so their first
#: and last seen are the same, and one packet gives several rows. A multi-row statement binds
#: its first-seen column, then its last-seen column, a thousand values apart at most (500 rows).
#: On the 38,800 rows of the bench capture's window, 31,122 distinct instants among 77,600: with
#: the microseconds from ``_THREE_DIGITS``, the window's write went from 3,711 to 3,502 million
#: instructions (callgrind).
_RECENT_TEXT: dict[float, str] = {}
_RECENT_MAX: Final = 4096


def sqlite_time_text(value: datetime | float | None) -> str | None:
    """The text ``UtcDateTime`` stores on SQLite: SQLAlchemy's own format, UTC, without offset.

    Aware and naive datetimes (naive taken as UTC) and epoch seconds (what the bulk writers
    bind) alike. ``store/_timetext.c`` does the same for floats in C where it is built (the
    tests compare both).
    """
    if value is None:
        return None
    if value.__class__ is float:
        recent = _RECENT_TEXT
        text = recent.get(value)
        if text is None:
            if len(recent) >= _RECENT_MAX:
                recent.clear()
            text = recent[value] = _epoch_text(value)
        return text
    if isinstance(value, int | float):
        return _epoch_text(float(value))
    if value.tzinfo is None:
        return value.isoformat(" ", "microseconds")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"


def _epoch_text(ts: float) -> str:
    """Epoch seconds as SQLite's stored text (what ``UtcDateTime`` writes for a datetime)."""
    second = math.floor(ts)
    micro = round((ts - second) * 1e6)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    text = _SECOND_TEXT.get(second)
    if text is None:
        if len(_SECOND_TEXT) >= 65_536:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
    digits = _THREE_DIGITS
    return f"{text}.{digits[micro // 1000]}{digits[micro % 1000]}"


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ReconciliationStatus(enum.StrEnum):
    """What the network shows about a product at a site (computed; DESIGN §1)."""

    DECLARED_OBSERVED = "declared_observed"
    DECLARED_NOT_OBSERVED = "declared_not_observed"
    UNDECLARED_OBSERVED = "undeclared_observed"
    UNKNOWN_OBSERVED = "unknown_observed"
    DECLARED_MISMATCH = "declared_mismatch"


class ReviewDecision(enum.StrEnum):
    """What the hospital decided about a product (set by a person, audited; DESIGN §1)."""

    PENDING_REVIEW = "pending_review"
    APPROVED = "approved"
    APPROVED_WITH_CONDITIONS = "approved_with_conditions"
    REJECTED_TO_BLOCK = "rejected_to_block"
    FALSE_POSITIVE = "false_positive"
    RETIRED = "retired"


class AlertReason(enum.StrEnum):
    """Why a person is needed (DESIGN §1)."""

    UNDECLARED_OBSERVED = "undeclared_observed"
    UNKNOWN_OBSERVED = "unknown_observed"
    DECLARED_MISMATCH = "declared_mismatch"
    CONDITION_EXPIRED = "condition_expired"
    BLOCKED_SEEN_AGAIN = "blocked_seen_again"


class AlertState(enum.StrEnum):
    """Where an alert is in its life: open until a decision (or the situation) closes it."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class IdentityKind(enum.StrEnum):
    """How an endpoint is identified, best first (DESIGN §5)."""

    MAC = "mac"  # a globally administered MAC seen as a source on the monitored segment
    DHCP_CLIENT_ID = "dhcp_client_id"  # randomised MACs of one device, merged by DHCP option 61
    DHCP_HOSTNAME = "dhcp_hostname"  # randomised MACs merged by DHCP host name when no client id
    IP_UNBOUND = "ip_unbound"  # routed traffic with no DHCP binding: provisional, merged when bound


def _enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as text (no native enum types): adding a value needs no ALTER TYPE on PostgreSQL.
    return Enum(
        cls,
        native_enum=False,
        length=32,
        validate_strings=True,
        values_callable=lambda e: [m.value for m in e],
    )


# -- what the sensors saw --------------------------------------------------------------------------


class Agent(Base):
    """A sensor (one per VLAN or site), with its last heartbeat."""

    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    first_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_heartbeat: Mapped[datetime] = mapped_column(UTC_DATETIME)
    version: Mapped[str | None] = mapped_column(String(32))
    catalog_version: Mapped[str | None] = mapped_column(String(64))


class Endpoint(Base):
    """A device on the hospital network, identified per DESIGN §5 (never by an IP alone for good)."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("site", "identity_kind", "identity"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    identity_kind: Mapped[IdentityKind] = mapped_column(_enum(IdentityKind))
    identity: Mapped[str] = mapped_column(String(128))
    """The key: a MAC, a DHCP client id (hex), a host name, or an IP (pseudonymised if configured)."""
    mac: Mapped[str | None] = mapped_column(String(64))
    randomized_mac: Mapped[bool] = mapped_column(Boolean, default=False)
    ip: Mapped[str | None] = mapped_column(String(64))
    """Last known address."""
    hostname: Mapped[str | None] = mapped_column(String(255))
    vendor: Mapped[str | None] = mapped_column(String(128))
    """MAC vendor (IEEE registry) or the vendor a fingerprint named."""
    service: Mapped[str | None] = mapped_column(String(128))
    """Service or unit (from the VLAN/subnet mapping of the configuration)."""
    vlan: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_seen: Mapped[datetime] = mapped_column(UTC_DATETIME, index=True)
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("endpoints.id", ondelete="SET NULL"))
    """Set when a provisional endpoint was merged into a better-identified one."""


class EndpointAlias(Base):
    """Other keys that lead to an endpoint: its MACs, DHCP client ids, host names, leased IPs."""

    __tablename__ = "endpoint_aliases"

    site: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(160), primary_key=True)
    """``mac:…``, ``cid:…``, ``host:…``, ``lease:<ip>``."""
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    first_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    valid_until: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    """For DHCP leases: when the binding of the IP to the endpoint expires."""


class ObservationAggregate(Base):
    """What an endpoint was seen doing: one row per (agent, endpoint, kind, value), with counts."""

    __tablename__ = "observations"
    __table_args__ = (PrimaryKeyConstraint("endpoint_id", "agent", "kind", "value"),)

    agent: Mapped[str] = mapped_column(String(64))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(1024))
    first_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    count: Mapped[int] = mapped_column(BigInteger)
    attrs: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    """The attrs of the last Observation (ALPN, JA4, AE titles…): metadata, never payload."""
    peer: Mapped[str | None] = mapped_column(String(64))
    """Last server-side address (IP) of the observation, for IP-to-name attribution."""


class Detection(Base):
    """A product (or an unknown of some vendor) seen at one endpoint, with evidence and confidence."""

    __tablename__ = "detections"
    __table_args__ = (UniqueConstraint("site", "product_key", "endpoint_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    product_key: Mapped[str] = mapped_column(String(160), index=True)
    product_id: Mapped[str] = mapped_column(String(128))
    """The catalogue id, or ``unknown``."""
    vendor: Mapped[str | None] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(String(64))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    """The distinct matched rules with the observed kind/value that fired them (bounded)."""
    roles: Mapped[list[str]] = mapped_column(JsonType, default=list)
    catalog_version: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_seen: Mapped[datetime] = mapped_column(UTC_DATETIME, index=True)


class IngestedFile(Base):
    """A capture or log already scanned: re-running the same content changes nothing."""

    __tablename__ = "ingested_files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    agent: Mapped[str] = mapped_column(String(64))
    packets: Mapped[int] = mapped_column(BigInteger)
    observations: Mapped[int] = mapped_column(BigInteger)
    ingested_at: Mapped[datetime] = mapped_column(UTC_DATETIME)


class ProbeLogEntry(Base):
    """One active probe sent: what biomedical engineering reads to see exactly what was sent."""

    __tablename__ = "probe_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTC_DATETIME, index=True)
    agent: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), index=True)
    protocol: Mapped[str] = mapped_column(String(32))
    port: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    """``ok``, ``timeout``, ``refused``, ``unreachable``, ``malformed``, ``auth_failed``, ``error``,
    ``denied`` (stopped by the safety gate), ``dry_run``."""
    detail: Mapped[str | None] = mapped_column(Text)


# -- what people declared and decided ------------------------------------------------------------


class InventoryEntry(Base):
    """One row of the declared inventory (the hospital's cartographie), as imported and updated."""

    __tablename__ = "inventory_entries"
    __table_args__ = (UniqueConstraint("site", "ref"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    ref: Mapped[str] = mapped_column(String(128))
    """The entry's stable reference: the file's id column, else derived from vendor + name."""
    name: Mapped[str] = mapped_column(String(255))
    vendor: Mapped[str | None] = mapped_column(String(255))
    category: Mapped[str | None] = mapped_column(String(64))
    catalog_id: Mapped[str | None] = mapped_column(String(128), index=True)
    """The catalogue product this entry declares, when given or resolved from vendor/name."""
    service: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(255))
    is_dmn: Mapped[bool | None] = mapped_column(Boolean)
    is_ai: Mapped[bool | None] = mapped_column(Boolean)
    hosts: Mapped[list[str]] = mapped_column(JsonType, default=list)
    ips: Mapped[list[str]] = mapped_column(JsonType, default=list)
    macs: Mapped[list[str]] = mapped_column(JsonType, default=list)
    ae_titles: Mapped[list[str]] = mapped_column(JsonType, default=list)
    deployment: Mapped[str | None] = mapped_column(String(32))
    """As declared (``saas``, ``on_prem``…): a mismatch with what is seen is ``declared_mismatch``."""
    declared_on: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    """The other declared columns (human oversight owner, health data, DPIA, training, HDS…)."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    """False once a re-import no longer lists it (kept, with its history)."""
    created_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    updated_at: Mapped[datetime] = mapped_column(UTC_DATETIME)


class Reconciliation(Base):
    """The current answers for one product at one site (both axes live side by side, independent)."""

    __tablename__ = "reconciliations"

    site: Mapped[str] = mapped_column(String(64), primary_key=True)
    product_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("inventory_entries.id", ondelete="SET NULL"))
    status: Mapped[ReconciliationStatus] = mapped_column(_enum(ReconciliationStatus), index=True)
    mismatch: Mapped[str | None] = mapped_column(Text)
    """Why a declaration and the network disagree (``declared_mismatch``)."""
    product_id: Mapped[str | None] = mapped_column(String(128))
    vendor: Mapped[str | None] = mapped_column(String(255))
    category: Mapped[str | None] = mapped_column(String(64))
    endpoints: Mapped[int] = mapped_column(Integer, default=0)
    confidence: Mapped[float | None] = mapped_column(Float)
    first_seen: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    last_seen: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    computed_at: Mapped[datetime] = mapped_column(UTC_DATETIME)


class Review(Base):
    """One decision by a person. Never updated: the latest row per (site, product) is current."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_site_product", "site", "product_key", "decided_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    product_key: Mapped[str] = mapped_column(String(160))
    decision: Mapped[ReviewDecision] = mapped_column(_enum(ReviewDecision))
    reason: Mapped[str] = mapped_column(Text)
    conditions: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    """Required for ``approved_with_conditions``: the alert comes back after it."""
    decided_by: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    next_review_due: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    """Reviewed facts (human oversight owner, health data, HDS, training, ticket reference…)."""


class Alert(Base):
    """Something that needs a person, deduplicated per site, product and reason (not per packet)."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_open", "site", "product_key", "reason", "state"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    product_key: Mapped[str] = mapped_column(String(160))
    reason: Mapped[AlertReason] = mapped_column(_enum(AlertReason))
    state: Mapped[AlertState] = mapped_column(_enum(AlertState), default=AlertState.OPEN)
    severity: Mapped[str] = mapped_column(String(16))
    """``high`` (e.g. undeclared AI receiving data), ``medium``, ``low``."""
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    first_raised: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_seen: Mapped[datetime] = mapped_column(UTC_DATETIME)
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    closed_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    closed_by_review: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"))
    delivered: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    """Per alert channel: when it was delivered (for the channels of the web/alerts issue)."""


class ChangeLogEntry(Base):
    """The change history of the cartographie (NIS2 CIR 12.4): who changed what, when, and how."""

    __tablename__ = "change_log"
    __table_args__ = (Index("ix_change_log_subject", "site", "subject"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTC_DATETIME, index=True)
    site: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    """``entry:<ref>`` or ``product:<product_key>``."""
    action: Mapped[str] = mapped_column(String(32))
    """``imported``, ``updated``, ``deactivated``, ``status``, ``decision``, ``alert``…"""
    actor: Mapped[str] = mapped_column(String(128))
    """A person, ``import:<file>``, or ``lanterne`` for automatic changes."""
    changes: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    """``{field: [old, new]}``."""


# -- who may look and decide, and where alerts go (the web UI, the API, the alert channels) --------


class UserRole(enum.StrEnum):
    """What a person may do in the web UI and the API (each role includes the ones before it)."""

    VIEWER = "viewer"  # reads everything, downloads exports
    REVIEWER = "reviewer"  # records decisions
    ADMIN = "admin"  # manages people and tokens, replays dead letters


class DeliveryStatus(enum.StrEnum):
    """Where one message to an alert channel is."""

    PENDING = "pending"  # queued or failing, retried with backoff
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up after the channel's attempts; kept until replayed


class User(Base):
    """A person with a role; authenticates with one of its API tokens."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    """Recorded as the author of every decision the person makes."""
    role: Mapped[UserRole] = mapped_column(_enum(UserRole))
    created_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    disabled_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)


class ApiToken(Base):
    """A bearer token of a user, stored as its SHA-256 only (the token is shown once, at creation)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_used_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    revoked_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)


class WebSession(Base):
    """A signed-in browser: the cookie's SHA-256, its user and token, and the form (CSRF) token."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    """Revoking the token signs out every browser that signed in with it."""
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    expires_at: Mapped[datetime] = mapped_column(UTC_DATETIME, index=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTC_DATETIME)


class AlertDelivery(Base):
    """One message to an alert channel (one alert state, or a digest of many): the channel's outbox."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        UniqueConstraint("channel", "key"),
        Index("ix_alert_deliveries_queue", "channel", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    """Idempotency key: ``alert:<id>:<state>``, or ``digest:<hash of its items>``."""
    kind: Mapped[str] = mapped_column(String(16))
    """``alert`` or ``digest``."""
    items: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    """The ``[alert id, state]`` pairs the message carries."""
    body: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    """The document sent, frozen when queued: every retry and replay sends the same bytes."""
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    next_attempt_at: Mapped[datetime] = mapped_column(UTC_DATETIME)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    delivered_at: Mapped[datetime | None] = mapped_column(UTC_DATETIME)
    last_error: Mapped[str | None] = mapped_column(Text)
