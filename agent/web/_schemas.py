"""The API's documents (pydantic): what the OpenAPI schema publishes and the pages render.

Every string that comes from the network (host names, mDNS names, SNIs, DHCP and SNMP strings) is
plain data here; the pages escape it when they render, the API returns it as JSON text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent._export import CartographieRow
from store._models import AlertReason, AlertState, DeliveryStatus, ReviewDecision, UserRole

#: No control characters (a NUL would make PostgreSQL refuse the statement with a 500).
SINGLE_LINE: Final = r"^[^\x00-\x1f\x7f]*$"
#: Multi-line free text: line breaks and tabs allowed, other control characters not.
MULTI_LINE: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
#: Dates people type are kept within this range (far dates overflow time-zone arithmetic).
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2999, 12, 31, tzinfo=UTC)

T = TypeVar("T")

Scope = Literal["ai", "dmn", "other"]
"""The HAS split of a product: an AI tool, a medical device (DMN), or neither."""


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(_Out, Generic[T]):
    """One page of a list."""

    items: list[T]
    total: int
    limit: int
    offset: int


class Me(_Out):
    """The authenticated user."""

    name: str
    role: UserRole


class AlertOut(_Out):
    """An alert: something that needs a person, deduplicated per site, product and reason."""

    id: int
    site: str
    product_key: str
    reason: AlertReason
    state: AlertState
    severity: str
    title: str
    scope: list[Scope] = Field(description="ai and/or dmn, or other (from the catalogue or the category)")
    category: str | None
    first_raised: datetime
    last_seen: datetime
    occurrences: int
    closed_at: datetime | None
    closed_by_review: int | None
    summary: dict[str, Any]
    delivered: dict[str, Any] = Field(description="Per alert channel: the state delivered, and when")


class EvidenceOut(_Out):
    """One matched rule and the observed signal that fired it."""

    model_config = ConfigDict(extra="ignore")

    rule: str | None = None
    kind: str | None = None
    value: str | None = None
    strength: str | None = None
    weight: float | None = None
    role: str | None = None
    origin: str | None = None
    side: str | None = None
    count: int | None = None
    first_seen: str | None = None
    last_seen: str | None = None


class EndpointOut(_Out):
    """A device on the network (identity, addresses, names, where it sits)."""

    id: int
    site: str
    identity_kind: str
    identity: str
    mac: str | None
    randomized_mac: bool
    ip: str | None
    hostname: str | None
    vendor: str | None
    service: str | None
    vlan: int | None
    first_seen: datetime
    last_seen: datetime
    merged_into: int | None


class DetectionOut(_Out):
    """A product seen at one endpoint, with its evidence and confidence."""

    id: int
    site: str
    product_key: str
    product_id: str
    vendor: str | None
    category: str | None
    confidence: float
    roles: list[str]
    catalog_version: str
    first_seen: datetime
    last_seen: datetime
    endpoint: EndpointOut
    evidence: list[EvidenceOut]


class ObservationOut(_Out):
    """What an endpoint was seen doing (aggregated: first/last seen and a count)."""

    agent: str
    kind: str
    value: str
    first_seen: datetime
    last_seen: datetime
    count: int
    attrs: dict[str, Any]
    peer: str | None


class EndpointDetail(_Out):
    """An endpoint with what it was seen doing and the products detected at it."""

    endpoint: EndpointOut
    observations: list[ObservationOut]
    observations_total: int
    detections: list[DetectionOut]


class ReviewOut(_Out):
    """One decision, with its author."""

    id: int
    site: str
    product_key: str
    decision: ReviewDecision
    reason: str
    conditions: str | None
    expires_at: datetime | None
    decided_by: str
    decided_at: datetime
    next_review_due: datetime | None


class ChangeOut(_Out):
    """One row of the change log (who changed what, when)."""

    id: int
    ts: datetime
    site: str
    subject: str
    action: str
    actor: str
    changes: dict[str, Any]


class ProductDetail(_Out):
    """A product at a site: its cartographie row, evidence, alerts and decision history."""

    site: str
    product_key: str
    row: CartographieRow | None = Field(description="None when the product is neither seen nor declared now")
    detections: list[DetectionOut]
    alerts: list[AlertOut]
    reviews: list[ReviewOut]
    changes: list[ChangeOut]


class AlertDetail(_Out):
    """An alert with its product's evidence and history."""

    alert: AlertOut
    product: ProductDetail


class InventoryEntryOut(_Out):
    """One declared entry of the cartographie, as imported."""

    id: int
    site: str
    ref: str
    name: str
    vendor: str | None
    category: str | None
    catalog_id: str | None
    service: str | None
    owner: str | None
    is_dmn: bool | None
    is_ai: bool | None
    hosts: list[str]
    ips: list[str]
    macs: list[str]
    ae_titles: list[str]
    deployment: str | None
    declared_on: datetime | None
    details: dict[str, Any]
    active: bool
    created_at: datetime
    updated_at: datetime


class ProbeOut(_Out):
    """One active probe sent."""

    id: int
    ts: datetime
    agent: str
    target: str
    protocol: str
    port: int | None
    outcome: str
    detail: str | None


class DecisionIn(BaseModel):
    """A decision about an alert's product (``alert_id``), or a site's product (``site``, ``product_key``)."""

    model_config = ConfigDict(extra="forbid")

    alert_id: Annotated[int | None, Field(ge=1, le=2**53)] = None
    site: Annotated[str | None, Field(min_length=1, max_length=64, pattern=SINGLE_LINE)] = None
    product_key: Annotated[str | None, Field(min_length=1, max_length=160, pattern=SINGLE_LINE)] = None
    decision: Literal[
        "approved", "approved_with_conditions", "rejected_to_block", "false_positive", "retired"
    ]
    reason: Annotated[str, Field(min_length=1, max_length=4000, pattern=MULTI_LINE)]
    conditions: Annotated[str | None, Field(max_length=4000, pattern=MULTI_LINE)] = None
    expires_at: datetime | None = Field(
        default=None, description="Required for approved_with_conditions (a date or a date and time, UTC)"
    )

    @field_validator("expires_at")
    @classmethod
    def _bounded(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        if not EARLIEST <= value <= LATEST:
            raise ValueError("expires_at must be between 2000 and 2999")
        return value.astimezone(UTC)


class UserIn(BaseModel):
    """A new user."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=SINGLE_LINE)]
    role: UserRole


class UserOut(_Out):
    """A user (never their tokens)."""

    name: str
    role: UserRole
    created_at: datetime
    disabled: bool
    active_tokens: int


class TokenOut(_Out):
    """A token just issued: shown once, never retrievable again."""

    name: str
    role: UserRole
    token: str


class DeliveryOut(_Out):
    """One message of an alert channel's outbox."""

    id: int
    channel: str
    key: str
    kind: str
    status: DeliveryStatus
    attempts: int
    items: list[Any]
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None


class ReplayIn(BaseModel):
    """Which dead letters to queue again (all of them when nothing is given)."""

    model_config = ConfigDict(extra="forbid")

    channel: Annotated[str | None, Field(min_length=1, max_length=64, pattern=SINGLE_LINE)] = None
    ids: Annotated[list[Annotated[int, Field(ge=1, le=2**53)]] | None, Field(max_length=1000)] = None


class ReplayOut(_Out):
    """How many dead letters were queued again."""

    replayed: int
