"""The compiled match index: built once per catalogue version, then dict lookups and an LRU cache.

What a lookup costs, whatever the catalogue size:

- host names: a walk down a reversed-label tree, one dict hit per label of the name; the most
  specific rule wins (an exact host, else the deepest suffix whose optional regex agrees);
- sysObjectID and DICOM implementation UIDs: longest prefix, one dict hit per arc;
- MAC prefixes: three dict hits (36, 28 and 24 bits), skipped for randomised MACs;
- mDNS service types and DHCP option-55 lists: one dict hit;
- regexes (banners, vendor classes, AE titles...): the few selected by their literal prefilter
  (``_regex.RegexGroup``);
- Recog databases mapped to the kind: the same bucketed regex groups, first match wins.

An ``lru_cache`` keyed by (kind, value), or by the attributes a DICOM/HL7 rule reads, sits in
front of all of it: the same SNI or banner comes back many times a second on a real network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Final

from collectors import Kind, Observation
from fingerprints._evidence import (
    Detection,
    Evidence,
    RuleInfo,
    Side,
    assess,
    assess_all,
    make_evidence,
    rule_weight,
)
from fingerprints._loader import load_catalog
from fingerprints._model import Catalog, Product, Rule
from fingerprints._recog import (
    RECOG_KINDS,
    Recog,
    RecogDatabase,
    RecogFingerprint,
    default_recog_dir,
    load_recog,
)
from fingerprints._regex import RegexGroup
from fingerprints._vocabulary import HOST_KINDS, DicomField, Hl7Field, RuleKind

#: Entries of each LRU cache (values and MACs); a busy site sees far fewer distinct values.
DEFAULT_CACHE_SIZE: Final = 65536

#: Rule kinds read from the Observation value, by the Observation kind they apply to.
_VALUE_REGEX_KINDS: Final[Mapping[Kind, RuleKind]] = {
    Kind.SNMP_SYSDESCR: RuleKind.SNMP_SYSDESCR,
    Kind.HTTP_SERVER: RuleKind.HTTP_SERVER,
    Kind.HTTP_TITLE: RuleKind.HTTP_TITLE,
    Kind.HTTP_USER_AGENT: RuleKind.HTTP_USER_AGENT,
    Kind.SSDP_SERVER: RuleKind.SSDP_SERVER,
    Kind.DHCP_VENDOR_CLASS: RuleKind.DHCP_VENDOR_CLASS,
    Kind.DHCP_HOSTNAME: RuleKind.DHCP_HOSTNAME,
    Kind.LLM_SERVER: RuleKind.LLM_SERVER,
}
#: Observation kinds whose value describes the server side (``dst``).
_DST_VALUE_KINDS: Final = frozenset({Kind.HTTP_SERVER, Kind.HTTP_TITLE, Kind.LLM_SERVER})
#: Observation kinds whose ``dst`` is a device on the local segment, so its MAC is evidence too
#: (the ``dst`` MAC of a web request is the router's, which says nothing about the server).
_LOCAL_DST_KINDS: Final = frozenset(
    {Kind.HTTP_SERVER, Kind.HTTP_TITLE, Kind.DICOM_ASSOCIATION, Kind.HL7_HEADER}
)
_ATTR_KINDS: Final = frozenset({Kind.DICOM_ASSOCIATION, Kind.HL7_HEADER})
_MDNS_TXT: Final = Kind.MDNS_TXT
#: Second hex digit of a canonical MAC with the locally administered bit (0x02) set.
_LOCALLY_ADMINISTERED: Final = frozenset("2367abef")
_DICOM_FIELDS: Final = tuple(DicomField)
_HL7_FIELDS: Final = tuple(Hl7Field)


def _side_of(kind: Kind, field: str, pdu: str | None) -> Side:
    """Which endpoint a DICOM or HL7 attribute describes."""
    if field in {DicomField.CALLING_AE, Hl7Field.SENDING_APP, Hl7Field.SENDING_FACILITY}:
        return "src"
    if field in {DicomField.CALLED_AE, Hl7Field.RECEIVING_APP, Hl7Field.RECEIVING_FACILITY}:
        return "dst"
    # Implementation UID and version: the requestor's in an A-ASSOCIATE-RQ, the acceptor's in an
    # AC (the collector keeps the requestor as src for both).
    return "dst" if kind is Kind.DICOM_ASSOCIATION and pdu == "ac" else "src"


def service_type(name: str) -> str | None:
    """The DNS-SD type of a type or instance name: ``x._dicom._tcp.local`` gives ``_dicom._tcp.local``."""
    labels = name.rsplit(".", 3)[-3:]
    if len(labels) == 3 and labels[1] in {"_tcp", "_udp"} and labels[0].startswith("_"):
        return ".".join(labels)
    return None


class _RecogRules(Mapping[str, RecogFingerprint]):
    """Recog's fingerprints by rule id, found without loading every database (``Recog`` is lazy)."""

    __slots__ = ("_recog",)

    def __init__(self, recog: Recog | None) -> None:
        self._recog = recog

    def __getitem__(self, rule_id: str) -> RecogFingerprint:
        found = self._recog.fingerprint(rule_id) if self._recog is not None else None
        if found is None:
            raise KeyError(rule_id)
        return found

    def __iter__(self) -> Iterator[str]:
        if self._recog is not None:
            for fingerprint in self._recog.fingerprints():
                yield fingerprint.info.rule_id

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _HostNode:
    """One label of the reversed-label tree."""

    __slots__ = ("children", "exact", "suffix")

    def __init__(self) -> None:
        self.children: dict[str, _HostNode] = {}
        self.exact: tuple[RuleInfo, ...] = ()
        self.suffix: tuple[tuple[RuleInfo, re.Pattern[str] | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one piece of evidence was produced: the rule, where it is written, what it checks."""

    evidence: Evidence
    rule: str
    """What the rule looks for."""
    origin: str
    """Where it is written (``catalog/...yaml:12`` or ``recog http_servers.xml #57``)."""
    source: str
    """The reference the rule cites."""


def _info(rule: Rule, product: Product) -> RuleInfo:
    """The evidence side of a catalogue rule."""
    return RuleInfo(
        rule_id=rule.id,
        product_id=product.id,
        vendor=product.vendor,
        category=product.category,
        strength=rule.strength,
        weight=rule_weight(rule.strength, rule.role),
        role=rule.role,
        origin="catalog",
        description=rule.describe(),
    )


class Index:
    """The catalogue (and optionally Recog) compiled for matching Observations."""

    def __init__(
        self, catalog: Catalog, recog: Recog | None = None, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.catalog = catalog
        self.recog = recog
        self.version = catalog.version if recog is None else f"{catalog.version}+recog.{recog.version}"
        self.rules: dict[str, Rule] = {}
        # Looked up one rule at a time (stored evidence, ``explain``): the database it names is
        # loaded then, not at start-up.
        self.recog_rules: Mapping[str, RecogFingerprint] = _RecogRules(recog)
        self._hosts = _HostNode()
        self._oids: dict[str, tuple[RuleInfo, ...]] = {}
        self._uids: dict[str, tuple[RuleInfo, ...]] = {}
        self._ouis: dict[str, tuple[RuleInfo, ...]] = {}
        self._exact: dict[tuple[RuleKind, str], tuple[RuleInfo, ...]] = {}
        self._regex: dict[RuleKind, RegexGroup[RuleInfo]] = {}
        self._attr_regex: dict[tuple[RuleKind, str], RegexGroup[RuleInfo]] = {}
        for product in catalog.products:
            for rule in product.rules:
                self._add(rule, _info(rule, product))
        self._recog: dict[Kind, tuple[tuple[RecogDatabase, Side], ...]] = {}
        if recog is not None:
            for kind in Kind:
                if databases := recog.for_kind(kind):
                    self._recog[kind] = tuple(databases)
        self._oui_lengths = tuple(sorted({len(prefix) for prefix in self._ouis}, reverse=True))
        self._handlers: dict[Kind, Callable[[Kind, str], tuple[Evidence, ...]]] = {}
        for kind in Kind:
            if kind in HOST_KINDS:
                self._handlers[kind] = self._value_host
            elif kind in _VALUE_REGEX_KINDS:
                self._handlers[kind] = self._value_regex
            else:
                self._handlers[kind] = {
                    Kind.SNMP_SYSOBJECTID: self._value_oid,
                    Kind.MDNS_SERVICE: self._value_mdns,
                    Kind.DHCP_FINGERPRINT: self._value_dhcp_fingerprint,
                }.get(kind, self._value_none)
        self._value_cached = lru_cache(maxsize=cache_size)(self._match_value)
        self._attrs_cached = lru_cache(maxsize=cache_size)(self._match_attrs)
        self._txt_cached = lru_cache(maxsize=cache_size)(self._match_txt)
        self._mac_cached = lru_cache(maxsize=cache_size)(self._match_mac)

    # --- building -----------------------------------------------------------------------------

    def _add(self, rule: Rule, info: RuleInfo) -> None:
        """Index one catalogue rule."""
        self.rules[rule.id] = rule
        kind = rule.kind
        if kind is RuleKind.HOST:
            name = rule.exact or rule.suffix
            assert name is not None
            node = self._hosts
            for label in reversed(name.split(".")):
                node = node.children.setdefault(label, _HostNode())
            if rule.exact is not None:
                node.exact = (*node.exact, info)
            else:
                pattern = re.compile(rule.regex) if rule.regex else None
                node.suffix = (*node.suffix, (info, pattern))
        elif kind is RuleKind.SNMP_SYSOBJECTID:
            assert rule.oid_prefix is not None
            self._oids[rule.oid_prefix] = (*self._oids.get(rule.oid_prefix, ()), info)
        elif kind is RuleKind.MAC_OUI:
            assert rule.oui is not None
            self._ouis[rule.oui] = (*self._ouis.get(rule.oui, ()), info)
        elif rule.exact is not None:
            key = (kind, rule.exact)
            self._exact[key] = (*self._exact.get(key, ()), info)
        elif rule.uid_prefix is not None:
            self._uids[rule.uid_prefix] = (*self._uids.get(rule.uid_prefix, ()), info)
        elif rule.field is not None:
            assert rule.regex is not None
            group = self._attr_regex.setdefault((kind, rule.field), RegexGroup())
            group.add(re.compile(rule.regex), info)
        else:
            assert rule.regex is not None
            self._regex.setdefault(kind, RegexGroup()).add(re.compile(rule.regex), info)

    # --- matching -----------------------------------------------------------------------------

    def match(self, observation: Observation) -> tuple[Evidence, ...]:
        """Every piece of evidence one Observation gives (cached; the hot path)."""
        kind = observation.kind
        if kind in _ATTR_KINDS:
            found = self._attrs_cached(kind, *self._attr_key(kind, observation.attrs))
        elif kind is _MDNS_TXT:
            found = self._txt_cached(kind, _txt_strings(observation.attrs))
        else:
            found = self._value_cached(kind, observation.value)
        if self._ouis:
            mac = observation.src.mac
            if mac is not None:
                extra = self._mac_cached(mac, kind, "src")
                if extra:
                    found = found + extra
            if kind in _LOCAL_DST_KINDS:
                mac = observation.dst.mac
                if mac is not None:
                    extra = self._mac_cached(mac, kind, "dst")
                    if extra:
                        found = found + extra
        return found

    def match_uncached(self, observation: Observation) -> tuple[Evidence, ...]:
        """The same as ``match`` without the caches (benchmarks and tests)."""
        kind = observation.kind
        if kind in _ATTR_KINDS:
            found = self._match_attrs(kind, *self._attr_key(kind, observation.attrs))
        elif kind is _MDNS_TXT:
            found = self._match_txt(kind, _txt_strings(observation.attrs))
        else:
            found = self._match_value(kind, observation.value)
        if self._ouis:
            mac = observation.src.mac
            if mac is not None:
                found = found + self._match_mac(mac, kind, "src")
            if kind in _LOCAL_DST_KINDS and observation.dst.mac is not None:
                found = found + self._match_mac(observation.dst.mac, kind, "dst")
        return found

    def _match_value(self, kind: Kind, value: str) -> tuple[Evidence, ...]:
        """Evidence from the value of an Observation."""
        found = self._handlers[kind](kind, value)
        databases = self._recog.get(kind)
        if databases:
            for database, side in databases:
                result = database.match(value)
                if result is not None:
                    fingerprint, fields = result
                    item = make_evidence(fingerprint.info, kind, value, side, tuple(sorted(fields.items())))
                    found = (*found, item)
        return found

    def _match_txt(self, kind: Kind, strings: tuple[str, ...]) -> tuple[Evidence, ...]:
        """Evidence from the TXT strings of an mDNS instance (Recog reads them one by one)."""
        found: list[Evidence] = []
        for database, side in self._recog.get(kind, ()):
            for text in strings:
                result = database.match(text)
                if result is not None:
                    fingerprint, fields = result
                    found.append(
                        make_evidence(fingerprint.info, kind, text, side, tuple(sorted(fields.items())))
                    )
        return tuple(found)

    def _value_host(self, kind: Kind, value: str) -> tuple[Evidence, ...]:
        infos = self._host(value)
        if not infos:
            return ()
        return tuple([make_evidence(info, kind, value) for info in infos])

    def _value_oid(self, kind: Kind, value: str) -> tuple[Evidence, ...]:
        infos = _longest_prefix(self._oids, value.lstrip("."))
        return tuple([make_evidence(info, kind, value) for info in infos])

    def _value_mdns(self, kind: Kind, value: str) -> tuple[Evidence, ...]:
        service = service_type(value)
        infos = self._exact.get((RuleKind.MDNS_SERVICE, service), ()) if service else ()
        return tuple([make_evidence(info, kind, value) for info in infos])

    def _value_dhcp_fingerprint(self, kind: Kind, value: str) -> tuple[Evidence, ...]:
        infos = self._exact.get((RuleKind.DHCP_FINGERPRINT, value.replace(" ", "")), ())
        return tuple([make_evidence(info, kind, value) for info in infos])

    def _value_regex(self, kind: Kind, value: str) -> tuple[Evidence, ...]:
        group = self._regex.get(_VALUE_REGEX_KINDS[kind])
        if group is None:
            return ()
        side: Side = "dst" if kind in _DST_VALUE_KINDS else "src"
        return tuple([make_evidence(info, kind, value, side) for _, info in group.search(value)])

    @staticmethod
    def _value_none(kind: Kind, value: str) -> tuple[Evidence, ...]:
        del kind, value
        return ()

    def _host(self, name: str) -> tuple[RuleInfo, ...]:
        """The most specific host rules for ``name``."""
        node: _HostNode | None = self._hosts
        with_suffix: list[_HostNode] = []
        for label in reversed(name.split(".")):
            assert node is not None
            node = node.children.get(label)
            if node is None:
                break
            if node.suffix:
                with_suffix.append(node)
        if node is not None and node.exact:
            return node.exact
        for candidate in reversed(with_suffix):
            hits = tuple(
                info for info, pattern in candidate.suffix if pattern is None or pattern.search(name)
            )
            if hits:
                return hits
        return ()

    @staticmethod
    def _attr_key(kind: Kind, attrs: Mapping[str, object]) -> tuple[str | None, tuple[str | None, ...]]:
        """The hashable part of a DICOM/HL7 Observation that rules read."""
        fields = _DICOM_FIELDS if kind is Kind.DICOM_ASSOCIATION else _HL7_FIELDS
        pdu = attrs.get("pdu")
        return (pdu if isinstance(pdu, str) else None), tuple(
            value if isinstance(value := attrs.get(name), str) and value else None for name in fields
        )

    def _match_attrs(
        self, kind: Kind, pdu: str | None, values: tuple[str | None, ...]
    ) -> tuple[Evidence, ...]:
        """Evidence from the attributes of a DICOM association or an HL7 header."""
        rule_kind = RuleKind.DICOM_ASSOCIATION if kind is Kind.DICOM_ASSOCIATION else RuleKind.HL7_HEADER
        fields = _DICOM_FIELDS if kind is Kind.DICOM_ASSOCIATION else _HL7_FIELDS
        found: list[Evidence] = []
        for field, value in zip(fields, values, strict=True):
            if value is None:
                continue
            side = _side_of(kind, field, pdu)
            if field == DicomField.IMPL_CLASS_UID:
                infos: Iterable[RuleInfo] = _longest_prefix(self._uids, value)
            elif (group := self._attr_regex.get((rule_kind, field))) is not None:
                infos = [info for _, info in group.search(value)]
            else:
                continue
            found.extend(make_evidence(info, kind, f"{field}={value}", side) for info in infos)
        return tuple(found)

    def _match_mac(self, mac: str, kind: Kind, side: Side) -> tuple[Evidence, ...]:
        """OUI evidence for a MAC (none for a locally administered one)."""
        if mac[1] in _LOCALLY_ADMINISTERED:
            return ()
        digits = mac.replace(":", "")
        ouis = self._ouis
        for length in self._oui_lengths:
            infos = ouis.get(digits[:length])
            if infos:
                return tuple([make_evidence(info, kind, mac, side) for info in infos])
        return ()

    # --- combining and explaining -------------------------------------------------------------

    def assess(self, evidence: Iterable[Evidence]) -> Detection | None:
        """``fingerprints.assess`` stamped with this index's version."""
        return assess(evidence, self.version)

    def assess_all(self, evidence: Iterable[Evidence]) -> tuple[Detection, ...]:
        """``fingerprints.assess_all`` stamped with this index's version."""
        return assess_all(evidence, self.version)

    def explain(self, observation: Observation) -> list[Explanation]:
        """Each piece of evidence of ``observation`` with the rule behind it."""
        out: list[Explanation] = []
        for item in self.match_uncached(observation):
            rule = self.rules.get(item.rule.rule_id)
            if rule is not None:
                out.append(Explanation(item, rule.describe(), str(rule.location), rule.source))
                continue
            fingerprint = self.recog_rules[item.rule.rule_id]
            out.append(
                Explanation(
                    item,
                    f"recog pattern {fingerprint.pattern!r}",
                    f"recog {fingerprint.database}.xml #{fingerprint.ordinal}: {fingerprint.description}",
                    "Rapid7 Recog (BSD-2-Clause)",
                )
            )
        return out

    def cache_clear(self) -> None:
        """Empty the caches (benchmarks measure the uncached path this way)."""
        self._value_cached.cache_clear()
        self._attrs_cached.cache_clear()
        self._txt_cached.cache_clear()
        self._mac_cached.cache_clear()


def _txt_strings(attrs: Mapping[str, object]) -> tuple[str, ...]:
    """The ``key=value`` strings of an ``mdns.txt`` Observation (attribute ``txt``)."""
    strings = attrs.get("txt")
    if isinstance(strings, tuple):
        return tuple(text for text in strings if isinstance(text, str) and text)
    return (strings,) if isinstance(strings, str) and strings else ()


def _longest_prefix(table: Mapping[str, tuple[RuleInfo, ...]], dotted: str) -> tuple[RuleInfo, ...]:
    """The rules of the longest dotted prefix of ``dotted`` in ``table``, one dict hit per arc."""
    key = dotted
    while key:
        hit = table.get(key)
        if hit:
            return hit
        cut = key.rfind(".")
        if cut <= 0:
            return ()
        key = key[:cut]
    return ()


def load_index(
    catalog_dir: Path | str | None = None,
    recog_dir: Path | str | None = None,
    *,
    with_recog: bool = True,
) -> Index:
    """Load the catalogue and, when found, the Recog databases that map to Observation kinds."""
    catalog = load_catalog(catalog_dir)
    recog: Recog | None = None
    if with_recog:
        directory = Path(recog_dir) if recog_dir is not None else default_recog_dir()
        try:
            recog = load_recog(directory, only=frozenset(RECOG_KINDS))
        except FileNotFoundError:
            if recog_dir is not None:
                raise
    return Index(catalog, recog)


@cache
def default_index() -> Index:
    """The shipped catalogue plus Recog when it is found, loaded once per process."""
    return load_index()
