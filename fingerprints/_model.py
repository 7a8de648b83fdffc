"""The catalogue as typed, frozen records: products, their rules and their examples."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collectors import Kind
from fingerprints._vocabulary import (
    CO_OCCURRENCE_ROLES,
    SUPPORTING_ROLES,
    Category,
    Deployment,
    HdsStatus,
    HostingLocation,
    HostRole,
    MdrClass,
    NetworkRole,
    Quality,
    RuleKind,
    Strength,
    Tristate,
)


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: file and 1-based line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Source:
    """A reference a product's facts come from."""

    url: str
    quality: Quality
    note: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One way to recognise a product in one kind of Observation.

    Exactly the fields its ``kind`` needs are set (see ``catalog/README.md``); the loader
    guarantees it, so the index never re-checks.
    """

    id: str
    """Globally unique: ``<product-id>:<rule-id>``."""
    product_id: str
    kind: RuleKind
    strength: Strength
    quality: Quality
    source: str
    location: Location
    exact: str | None = None
    """Host name, mDNS service type or DHCP option-55 list, matched whole."""
    suffix: str | None = None
    """Host rules: a DNS suffix, matched on label boundaries (``a.b`` matches ``x.a.b`` and ``a.b``)."""
    regex: str | None = None
    """Python ``re`` syntax; searched in the value (anchor it with ``^``/``$`` when needed)."""
    oid_prefix: str | None = None
    """SNMP sysObjectID prefix, matched on arc boundaries."""
    uid_prefix: str | None = None
    """DICOM implementation class UID prefix, matched on arc boundaries."""
    oui: str | None = None
    """MAC prefix as 6, 7 or 9 lower-case hex digits (24, 28 or 36 bits)."""
    field: str | None = None
    """The attribute of a ``dicom.association`` or ``hl7.header`` Observation the rule reads."""
    role: HostRole | NetworkRole | None = None
    note: str = ""

    @property
    def decisive(self) -> bool:
        """Whether this rule may name its product on its own (not weak, not a supporting host)."""
        if self.strength is Strength.WEAK:
            return False
        return not (isinstance(self.role, HostRole) and self.role in SUPPORTING_ROLES)

    @property
    def needs_company(self) -> bool:
        """Whether this rule counts only beside a specific rule of the same product."""
        return isinstance(self.role, HostRole) and self.role in CO_OCCURRENCE_ROLES

    def describe(self) -> str:
        """One line saying what the rule looks for."""
        what = {
            "exact": self.exact,
            "suffix": self.suffix,
            "regex": self.regex,
            "oid_prefix": self.oid_prefix,
            "uid_prefix": self.uid_prefix,
            "oui": self.oui,
        }
        parts = [f"{key}={value!r}" for key, value in what.items() if value is not None]
        if self.field:
            parts.insert(0, f"field={self.field}")
        if self.role is not None:
            parts.append(f"role={self.role}")
        return f"{self.kind} " + " ".join(parts)


@dataclass(frozen=True, slots=True)
class Example:
    """An Observation a product's rules must (positive) or must not (negative) recognise."""

    positive: bool
    location: Location
    kind: Kind | None = None
    """None for a MAC-only example, which exercises the OUI rules."""
    value: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    mac: str | None = None
    rule: str | None = None
    """Positive examples: the rule id (local to the product) that must fire."""
    detects: bool | None = None
    """When set: whether this example alone must produce a detection naming the product."""


@dataclass(frozen=True, slots=True)
class Product:
    """One product (or device family) of the catalogue, with its facts, rules and examples."""

    id: str
    name: str
    vendor: str
    category: Category
    ai: Tristate
    medical_purpose: Tristate
    mdr_class: MdrClass
    deployment: Deployment
    hosting_location: HostingLocation
    hds: HdsStatus
    sources: tuple[Source, ...]
    rules: tuple[Rule, ...]
    examples: tuple[Example, ...]
    location: Location
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of the product's facts (rules and examples excluded)."""
        return {
            "id": self.id,
            "name": self.name,
            "vendor": self.vendor,
            "category": str(self.category),
            "ai": str(self.ai),
            "medical_purpose": str(self.medical_purpose),
            "mdr_class": str(self.mdr_class),
            "deployment": str(self.deployment),
            "hosting": {"location": str(self.hosting_location), "hds": str(self.hds)},
            "sources": [{"url": s.url, "quality": str(s.quality), "note": s.note} for s in self.sources],
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every product, loaded and validated, with a content hash as its version."""

    products: tuple[Product, ...]
    version: str
    """First 16 hex digits of a SHA-256 over the files' relative paths and bytes."""
    by_id: Mapping[str, Product] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.by_id:
            object.__setattr__(self, "by_id", {product.id: product for product in self.products})

    def product(self, product_id: str) -> Product:
        """Return the product with this id; raise KeyError otherwise."""
        return self.by_id[product_id]

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule of every product, in catalogue order."""
        return tuple(rule for product in self.products for rule in product.rules)
