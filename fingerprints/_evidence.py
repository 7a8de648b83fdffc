"""Evidence (what one Observation says) and Detection (what the evidence of a scope adds up to).

The confidence model, in one place (``catalog/README.md`` explains it to catalogue authors):

- each rule has a weight: strong 0.90, medium 0.60, weak 0.20, times 0.4 for a ``marketing`` or
  ``docs`` host and 0.3 for an ``auth``, ``cdn`` or ``shared`` one (Recog fingerprints: their
  strength times their ``certainty``);
- the same rule seen many times counts once (repetition is not corroboration); distinct rules
  combine as independent signals: ``confidence = 1 - prod(1 - weight)``;
- co-occurrence evidence (``auth``/``cdn``/``shared`` hosts) is dropped unless a rule of the
  same product that may name it alone (``decisive``) is in the same scope;
- a product is named only with at least one decisive rule and a confidence of at least
  ``DETECTION_THRESHOLD``; otherwise the answer is ``unknown`` with the vendor when the evidence
  agrees on one, never a best guess.

The aggregator decides the scope (an endpoint, or a site): it calls ``match`` per Observation on
the hot path and ``assess``/``assess_all`` on the evidence it gathered for one scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from collectors import Kind
from fingerprints._vocabulary import (
    AI_CATEGORIES,
    CO_OCCURRENCE_ROLES,
    SUPPORTING_ROLES,
    Category,
    HostRole,
    NetworkRole,
    Strength,
)

#: Below this confidence, or without a decisive rule, no product is named (the answer is unknown).
DETECTION_THRESHOLD: Final = 0.5
#: The product id of a detection that names no product.
UNKNOWN: Final = "unknown"

STRENGTH_WEIGHTS: Final[Mapping[Strength, float]] = {
    Strength.STRONG: 0.90,
    Strength.MEDIUM: 0.60,
    Strength.WEAK: 0.20,
}
#: Host roles that weigh less than the product in use (others weigh 1.0).
ROLE_FACTORS: Final[Mapping[HostRole, float]] = {
    HostRole.MARKETING: 0.4,
    HostRole.DOCS: 0.4,
    HostRole.AUTH: 0.3,
    HostRole.CDN: 0.3,
    HostRole.SHARED: 0.3,
}

#: Categories that make an unknown worth a person's look: AI, or medical devices and systems.
INTEREST_CATEGORIES: Final = AI_CATEGORIES | {
    Category.MEDICAL_DEVICE,
    Category.IMAGING_MODALITY,
    Category.PACS,
    Category.DICOM_SOFTWARE,
    Category.INTERFACE_ENGINE,
    Category.CLINICAL_INFORMATION_SYSTEM,
}

Side = Literal["src", "dst"]
Origin = Literal["catalog", "recog"]


def rule_weight(strength: Strength, role: HostRole | NetworkRole | None, certainty: float = 1.0) -> float:
    """The weight of one rule in the confidence."""
    factor = ROLE_FACTORS.get(role, 1.0) if isinstance(role, HostRole) else 1.0
    return round(STRENGTH_WEIGHTS[strength] * factor * certainty, 4)


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What a piece of evidence needs to know about the rule that produced it (built once)."""

    rule_id: str
    product_id: str | None
    """None for a Recog fingerprint: it describes a device, not a catalogue product."""
    vendor: str | None
    category: Category | None
    strength: Strength
    weight: float
    role: HostRole | NetworkRole | None
    origin: Origin
    description: str

    @property
    def decisive(self) -> bool:
        """Whether this rule may name its product on its own."""
        if self.product_id is None or self.strength is Strength.WEAK:
            return False
        return not (isinstance(self.role, HostRole) and self.role in SUPPORTING_ROLES)

    @property
    def needs_company(self) -> bool:
        """Whether this rule counts only beside a decisive rule of the same product."""
        return isinstance(self.role, HostRole) and self.role in CO_OCCURRENCE_ROLES


@dataclass(frozen=True, slots=True)
class Evidence:
    """One rule matched one Observation: which rule, about which side, on what value."""

    rule: RuleInfo
    kind: Kind
    """The observed kind (``mac`` evidence reports the kind of the Observation that carried it)."""
    value: str
    """The observed value (the MAC for OUI evidence, the attribute for DICOM/HL7 rules)."""
    side: Side = "src"
    """The endpoint the evidence is about: ``src`` (client, announcer) or ``dst`` (server)."""
    fields: tuple[tuple[str, str], ...] = ()
    """What a Recog fingerprint extracted (``hw.vendor``, ``os.version``...), sorted."""

    @property
    def product_id(self) -> str | None:
        """The catalogue product this evidence points at, if any."""
        return self.rule.product_id

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "rule": self.rule.rule_id,
            "origin": self.rule.origin,
            "product": self.rule.product_id,
            "vendor": self.rule.vendor,
            "strength": str(self.rule.strength),
            "weight": self.rule.weight,
            "role": None if self.rule.role is None else str(self.rule.role),
            "kind": str(self.kind),
            "value": self.value,
            "side": self.side,
            "fields": dict(self.fields),
        }


def _slot_setter(name: str) -> Callable[[Evidence, object], None]:
    """The slot descriptor's setter of an Evidence field (it bypasses the frozen ``__setattr__``)."""
    descriptor: Any = vars(Evidence)[name]
    setter: Callable[[Evidence, object], None] = descriptor.__set__
    return setter


_new = object.__new__
_set_rule = _slot_setter("rule")
_set_kind = _slot_setter("kind")
_set_value = _slot_setter("value")
_set_side = _slot_setter("side")
_set_fields = _slot_setter("fields")


def make_evidence(
    rule: RuleInfo, kind: Kind, value: str, side: Side = "src", fields: tuple[tuple[str, str], ...] = ()
) -> Evidence:
    """Build an Evidence on the hot path, twice as fast as its dataclass ``__init__``.

    A frozen dataclass sets each field through ``object.__setattr__``; the slot descriptors
    set them directly. The result is the same frozen, equal, hashable record.
    """
    evidence: Evidence = _new(Evidence)
    _set_rule(evidence, rule)
    _set_kind(evidence, kind)
    _set_value(evidence, value)
    _set_side(evidence, side)
    _set_fields(evidence, fields)
    return evidence


@dataclass(frozen=True, slots=True)
class Detection:
    """A product (or an unknown of some vendor) seen in one scope, with evidence and confidence."""

    product_id: str
    """A catalogue product id, or ``unknown``."""
    vendor: str | None
    category: Category | None
    confidence: float
    evidence: tuple[Evidence, ...]
    catalog_version: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    """Identity fields gathered from Recog evidence (``hw.model``, ``os.family``...)."""
    roles: tuple[NetworkRole, ...] = ()
    """What the endpoint does on the clinical network (``pacs``, ``modality``...), from DICOM/HL7 rules."""

    @property
    def identified(self) -> bool:
        """Whether a catalogue product is named."""
        return self.product_id != UNKNOWN

    @property
    def of_interest(self) -> bool:
        """Named, or unknown but AI-looking or medical-looking (what ``unknown_observed`` is about)."""
        return self.identified or self.category in INTEREST_CATEGORIES

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "product": self.product_id,
            "vendor": self.vendor,
            "category": None if self.category is None else str(self.category),
            "confidence": self.confidence,
            "catalog_version": self.catalog_version,
            "fields": dict(self.fields),
            "roles": [str(role) for role in self.roles],
            "evidence": [item.to_dict() for item in self.evidence],
        }


def combine(weights: Iterable[float]) -> float:
    """Independent signals: ``1 - prod(1 - w)``, rounded to four places."""
    missing = 1.0
    for weight in weights:
        missing *= 1.0 - weight
    return round(1.0 - missing, 4)


def _distinct(evidence: Iterable[Evidence]) -> dict[str, Evidence]:
    """One piece of evidence per rule (the first seen), in order."""
    by_rule: dict[str, Evidence] = {}
    for item in evidence:
        by_rule.setdefault(item.rule.rule_id, item)
    return by_rule


def _fields(evidence: Iterable[Evidence]) -> tuple[tuple[str, str], ...]:
    """Recog fields of the evidence, first value of each name wins."""
    merged: dict[str, str] = {}
    for item in evidence:
        for name, value in item.fields:
            merged.setdefault(name, value)
    return tuple(sorted(merged.items()))


def _roles(evidence: Iterable[Evidence]) -> tuple[NetworkRole, ...]:
    """The network roles the evidence's rules recognise, sorted."""
    return tuple(sorted({item.rule.role for item in evidence if isinstance(item.rule.role, NetworkRole)}))


def _common(values: Iterable[Any]) -> Any:
    """The single value all items agree on, else None."""
    distinct = {value for value in values if value is not None}
    return distinct.pop() if len(distinct) == 1 else None


def _unknown(evidence: list[Evidence], catalog_version: str) -> Detection | None:
    """The vendor-only answer for evidence that names no product, if it says anything."""
    usable = [item for item in _distinct(evidence).values() if not item.rule.needs_company]
    if not usable:
        return None
    return Detection(
        product_id=UNKNOWN,
        vendor=_common(item.rule.vendor for item in usable),
        category=_common(item.rule.category for item in usable),
        confidence=combine(item.rule.weight for item in usable),
        evidence=tuple(usable),
        catalog_version=catalog_version,
        fields=_fields(usable),
        roles=_roles(usable),
    )


def assess(evidence: Iterable[Evidence], catalog_version: str = "") -> Detection | None:
    """Combine the evidence of one scope and one product into a detection, an unknown, or None.

    All catalogue evidence must point at the same product (Recog evidence, which points at
    none, may be mixed in); use ``assess_all`` for the evidence of a whole scope.
    """
    items = list(evidence)
    products = {item.rule.product_id for item in items if item.rule.product_id is not None}
    if len(products) > 1:
        raise ValueError(f"evidence of several products ({', '.join(sorted(products))}): use assess_all")
    distinct = _distinct(items)
    decisive = [item for item in distinct.values() if item.rule.decisive]
    if not decisive:
        return _unknown(items, catalog_version)
    counted = list(distinct.values())
    confidence = combine(item.rule.weight for item in counted)
    if confidence < DETECTION_THRESHOLD:
        return _unknown(items, catalog_version)
    (product_id,) = products
    first = decisive[0].rule
    return Detection(
        product_id=product_id,
        vendor=first.vendor,
        category=first.category,
        confidence=confidence,
        evidence=tuple(counted),
        catalog_version=catalog_version,
        fields=_fields(counted),
        roles=_roles(counted),
    )


def assess_all(evidence: Iterable[Evidence], catalog_version: str = "") -> tuple[Detection, ...]:
    """Every detection the evidence of one scope supports, most confident first.

    Products are assessed separately; the evidence of products that are not named becomes at
    most one ``unknown`` per vendor, and none for a vendor already named in the scope.
    """
    by_product: dict[str | None, list[Evidence]] = {}
    for item in evidence:
        by_product.setdefault(item.rule.product_id, []).append(item)
    named: list[Detection] = []
    leftovers: list[Evidence] = list(by_product.pop(None, []))
    for product_id in sorted(by_product, key=str):
        detection = assess(by_product[product_id], catalog_version)
        if detection is not None and detection.identified:
            named.append(detection)
        else:
            leftovers.extend(by_product[product_id])
    named_vendors = {detection.vendor for detection in named}
    by_vendor: dict[str | None, list[Evidence]] = {}
    for item in leftovers:
        if item.rule.vendor not in named_vendors or item.rule.vendor is None:
            by_vendor.setdefault(item.rule.vendor, []).append(item)
    unknowns = [
        detection
        for vendor in sorted(by_vendor, key=str)
        if (detection := _unknown(by_vendor[vendor], catalog_version)) is not None
    ]
    return tuple(sorted(named + unknowns, key=lambda d: (not d.identified, -d.confidence, d.product_id)))
