"""Load the catalogue: YAML files read as nodes, so every error says ``file:line: message``.

The loader is the schema. It reads raw scalar text from PyYAML's node tree instead of letting
YAML 1.1 guess types (``00:10:50`` would otherwise become a sexagesimal integer and ``no`` a
boolean), checks every field against the closed vocabularies, compiles every regex, and builds
every example Observation. It collects all the problems of all the files before failing, so one
run shows everything to fix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

import yaml

from collectors import Endpoint, InvalidObservation, Kind, Observation
from fingerprints._model import Catalog, Example, Location, Product, Rule, Source
from fingerprints._vocabulary import (
    CO_OCCURRENCE_ROLES,
    DEFAULT_STRENGTH,
    EXACT_RULE_KINDS,
    REGEX_RULE_KINDS,
    SHARED_ZONES,
    Category,
    Deployment,
    DicomField,
    HdsStatus,
    Hl7Field,
    HostingLocation,
    HostRole,
    MdrClass,
    NetworkRole,
    Quality,
    RuleKind,
    Strength,
    Tristate,
    strength_rank,
)

#: The catalogue shipped with the package: ``fingerprints/catalog/<category>/<product-id>.yaml``.
DEFAULT_CATALOG_DIR: Final = Path(__file__).resolve().parent / "catalog"

_E = TypeVar("_E", bound=StrEnum)

_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}[a-z0-9]")
_DNS_NAME: Final = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{2,63}")
_OID: Final = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_SERVICE_TYPE: Final = re.compile(r"_[a-z0-9-]{1,15}\._(?:tcp|udp)\.local")
_OPTION_LIST: Final = re.compile(r"[0-9]{1,3}(?:,[0-9]{1,3})*")
_OUI: Final = re.compile(r"[0-9a-f]{6}(?:[0-9a-f]{3})?|[0-9a-f]{7}")

_PRODUCT_KEYS: Final = frozenset(
    {
        "id",
        "name",
        "vendor",
        "category",
        "ai",
        "medical_purpose",
        "mdr_class",
        "deployment",
        "hosting",
        "description",
        "sources",
        "rules",
        "examples",
    }
)
_REQUIRED_PRODUCT_KEYS: Final = _PRODUCT_KEYS - {"description"}
_RULE_KEYS: Final = frozenset(
    {
        "id",
        "kind",
        "exact",
        "suffix",
        "regex",
        "oid_prefix",
        "uid_prefix",
        "oui",
        "field",
        "role",
        "strength",
        "quality",
        "source",
        "note",
    }
)
#: The matcher fields; each rule kind takes exactly the ones listed in ``_MATCHER_FIELDS``.
_MATCHERS: Final = ("exact", "suffix", "regex", "oid_prefix", "uid_prefix", "oui")
_EXAMPLE_KEYS: Final = frozenset({"kind", "value", "attrs", "mac", "rule", "detects", "note"})


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a catalogue file."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class CatalogError(ValueError):
    """The catalogue has errors; ``issues`` lists each with its file and line."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class _Invalid(Exception):
    """Internal: abandons the current element after its issue was recorded."""


class _FileReader:
    """Validates one file's node tree, recording issues with their lines."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.issues: list[Issue] = []

    def fail(self, node: yaml.Node, message: str) -> _Invalid:
        """Record an issue at ``node`` and return the exception that abandons the element."""
        self.issues.append(Issue(self.display, node.start_mark.line + 1, message))
        return _Invalid()

    def where(self, node: yaml.Node) -> Location:
        """The location of ``node``."""
        return Location(self.display, node.start_mark.line + 1)

    def mapping(self, node: yaml.Node, what: str, allowed: frozenset[str]) -> dict[str, yaml.Node]:
        """Return the keys of a mapping node, rejecting duplicates and unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what}: keys must be plain words")
            if key in result:
                raise self.fail(key_node, f"{what}: duplicate key {key!r}")
            if key not in allowed:
                raise self.fail(
                    key_node, f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})"
                )
            result[key] = value_node
        return result

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        """Return the items of a sequence node."""
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def text(self, node: yaml.Node, what: str, *, allow_empty: bool = False) -> str:
        """Return the raw text of a scalar node (YAML type guessing deliberately ignored)."""
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        value = str(node.value)
        if node.tag == "tag:yaml.org,2002:null" and node.style is None and value in {"", "~", "null"}:
            raise self.fail(node, f"{what} must not be empty")
        if not value.strip() and not allow_empty:
            raise self.fail(node, f"{what} must not be empty")
        if not value.isprintable():
            raise self.fail(node, f"{what} must be printable text on one line")
        return value

    def choice(self, node: yaml.Node, what: str, vocabulary: type[_E]) -> _E:
        """Return a value of a closed vocabulary."""
        value = self.text(node, what)
        try:
            return vocabulary(value)
        except ValueError:
            allowed = ", ".join(member.value for member in vocabulary)
            raise self.fail(node, f"{what}: {value!r} is not one of: {allowed}") from None

    def boolean(self, node: yaml.Node, what: str) -> bool:
        """Return true or false (written exactly so)."""
        value = self.text(node, what)
        if value not in {"true", "false"}:
            raise self.fail(node, f"{what} must be true or false, not {value!r}")
        return value == "true"

    def regex(self, node: yaml.Node, what: str) -> str:
        """Return a regex that compiles and cannot match the empty string."""
        pattern = self.text(node, what)
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise self.fail(node, f"{what}: invalid regex: {exc}") from None
        if compiled.search("") is not None:
            raise self.fail(node, f"{what}: the regex matches the empty string, so it would match anything")
        return pattern


def _normalise_oui(text: str) -> str | None:
    """Return a MAC prefix as 6, 7 or 9 hex digits, from ``00:09:FB``, ``50-A0-30-8`` or ``.../28``."""
    bits: int | None = None
    if "/" in text:
        text, _, size = text.partition("/")
        if size not in {"24", "28", "36"}:
            return None
        bits = int(size)
    digits = text.lower().translate(str.maketrans("", "", ":-. "))
    if bits is not None:
        digits = digits[: bits // 4]
        if len(digits) < bits // 4:
            return None
    return digits if _OUI.fullmatch(digits) else None


def _under_shared_zone(name: str) -> str | None:
    """Return the shared zone ``name`` is, or lies under, if any."""
    labels = name.split(".")
    for start in range(len(labels) - 1):
        candidate = ".".join(labels[start:])
        if candidate in SHARED_ZONES:
            return candidate
    return None


def _read_rule(reader: _FileReader, node: yaml.Node, product_id: str, seen: set[str]) -> Rule:
    """Validate one rule."""
    keys = reader.mapping(node, "rule", _RULE_KEYS)
    for required in ("id", "kind", "quality", "source"):
        if required not in keys:
            raise reader.fail(node, f"rule: missing {required!r}")
    local_id = reader.text(keys["id"], "rule id")
    if not _ID.fullmatch(local_id):
        raise reader.fail(keys["id"], f"rule id {local_id!r}: use lower-case letters, digits and dashes")
    if local_id in seen:
        raise reader.fail(keys["id"], f"rule id {local_id!r} is used twice in this product")
    seen.add(local_id)
    kind = reader.choice(keys["kind"], "rule kind", RuleKind)
    quality = reader.choice(keys["quality"], "quality", Quality)
    source = reader.text(keys["source"], "source")
    present = {name for name in _MATCHERS if name in keys}
    values: dict[str, str] = {}

    def need(*names: str, one_of: bool = False, optional: tuple[str, ...] = ()) -> None:
        allowed = set(names) | set(optional)
        extra = present - allowed
        if extra:
            raise reader.fail(node, f"a {kind} rule does not take {', '.join(sorted(extra))}")
        chosen = present & set(names)
        if one_of and len(chosen) != 1:
            raise reader.fail(node, f"a {kind} rule takes exactly one of: {', '.join(names)}")
        if not one_of and chosen != set(names):
            raise reader.fail(node, f"a {kind} rule needs: {', '.join(names)}")

    role: HostRole | NetworkRole | None = None
    field_name: str | None = None
    if kind is RuleKind.HOST:
        need("exact", "suffix", one_of=True, optional=("regex",))
        if "regex" in present and "suffix" not in present:
            raise reader.fail(node, "a host regex narrows a suffix: give the suffix too")
        if "role" not in keys:
            raise reader.fail(node, f"a host rule needs a role ({', '.join(r.value for r in HostRole)})")
        role = reader.choice(keys["role"], "host role", HostRole)
        for name in ("exact", "suffix"):
            if name in keys:
                host = reader.text(keys[name], name)
                if host != host.lower() or not _DNS_NAME.fullmatch(host):
                    raise reader.fail(keys[name], f"{name}: {host!r} is not a lower-case DNS name")
                values[name] = host
        if "regex" in keys:
            values["regex"] = reader.regex(keys["regex"], "regex")
        suffix = values.get("suffix")
        zone = _under_shared_zone(suffix) if suffix else None
        if zone and "regex" not in values and role not in CO_OCCURRENCE_ROLES:
            raise reader.fail(
                keys["suffix"],
                f"{suffix!r} is shared infrastructure (under {zone!r}): a suffix there needs role "
                "shared, cdn or auth, or narrow it with an exact host or a regex",
            )
    elif kind is RuleKind.SNMP_SYSOBJECTID:
        need("oid_prefix")
        oid = reader.text(keys["oid_prefix"], "oid_prefix").lstrip(".")
        if not _OID.fullmatch(oid):
            raise reader.fail(keys["oid_prefix"], f"oid_prefix: {oid!r} is not a dotted OID")
        values["oid_prefix"] = oid
    elif kind in REGEX_RULE_KINDS:
        need("regex")
        values["regex"] = reader.regex(keys["regex"], "regex")
    elif kind in EXACT_RULE_KINDS:
        need("exact")
        exact = reader.text(keys["exact"], "exact")
        if kind is RuleKind.MDNS_SERVICE:
            exact = exact.lower().rstrip(".")
            if not _SERVICE_TYPE.fullmatch(exact):
                raise reader.fail(
                    keys["exact"], f"exact: {exact!r} is not a DNS-SD type like _dicom._tcp.local"
                )
        else:
            exact = exact.replace(" ", "")
            if not _OPTION_LIST.fullmatch(exact):
                raise reader.fail(keys["exact"], f"exact: {exact!r} is not a comma-separated option list")
        values["exact"] = exact
    elif kind in {RuleKind.DICOM_ASSOCIATION, RuleKind.HL7_HEADER}:
        if "field" not in keys:
            raise reader.fail(node, f"a {kind} rule needs a field")
        vocabulary: type[StrEnum] = DicomField if kind is RuleKind.DICOM_ASSOCIATION else Hl7Field
        field_name = str(reader.choice(keys["field"], "field", vocabulary))
        if field_name == DicomField.IMPL_CLASS_UID:
            need("uid_prefix")
            uid = reader.text(keys["uid_prefix"], "uid_prefix")
            if not _OID.fullmatch(uid):
                raise reader.fail(keys["uid_prefix"], f"uid_prefix: {uid!r} is not a dotted UID")
            values["uid_prefix"] = uid
        else:
            need("regex")
            values["regex"] = reader.regex(keys["regex"], "regex")
    elif kind is RuleKind.MAC_OUI:
        need("oui")
        raw = reader.text(keys["oui"], "oui")
        oui = _normalise_oui(raw)
        if oui is None:
            raise reader.fail(keys["oui"], f"oui: {raw!r} is not a 24, 28 or 36-bit MAC prefix")
        values["oui"] = oui
    if kind is not RuleKind.HOST and "field" in keys and field_name is None:
        raise reader.fail(keys["field"], f"a {kind} rule does not take a field")
    if kind is not RuleKind.HOST and "role" in keys:
        role = reader.choice(keys["role"], "network role", NetworkRole)
    default = DEFAULT_STRENGTH[kind]
    strength = default
    if "strength" in keys:
        strength = reader.choice(keys["strength"], "strength", Strength)
        if strength_rank(strength) > strength_rank(default):
            raise reader.fail(
                keys["strength"], f"a {kind} rule is at most {default}: a rule may only lower it"
            )
    if quality is Quality.UNVERIFIED and strength is not Strength.WEAK:
        raise reader.fail(
            keys["quality"], "an unverified (U) identifier may only be a weak rule: add 'strength: weak'"
        )
    note = reader.text(keys["note"], "note") if "note" in keys else ""
    return Rule(
        id=f"{product_id}:{local_id}",
        product_id=product_id,
        kind=kind,
        strength=strength,
        quality=quality,
        source=source,
        location=reader.where(node),
        field=field_name,
        role=role,
        note=note,
        **values,
    )


def _read_example(reader: _FileReader, node: yaml.Node, positive: bool, rule_ids: set[str]) -> Example:
    """Validate one example and prove it is a valid Observation."""
    keys = reader.mapping(node, "example", _EXAMPLE_KEYS)
    kind: Kind | None = None
    value: str | None = None
    mac: str | None = None
    attrs: dict[str, str | int] = {}
    if "kind" in keys:
        kind = reader.choice(keys["kind"], "example kind", Kind)
        if "value" not in keys:
            raise reader.fail(node, "example: a kind needs a value")
        value = reader.text(keys["value"], "value")
    elif "value" in keys:
        raise reader.fail(node, "example: a value needs a kind")
    if "mac" in keys:
        mac = reader.text(keys["mac"], "mac")
    if kind is None and mac is None:
        raise reader.fail(node, "example: give a kind and value, a mac, or both")
    if "attrs" in keys:
        attr_nodes = reader.mapping(keys["attrs"], "attrs", frozenset(_attr_keys(keys["attrs"])))
        for key, attr_node in attr_nodes.items():
            text = reader.text(attr_node, f"attrs.{key}")
            plain = isinstance(attr_node, yaml.ScalarNode) and attr_node.style is None
            attrs[key] = int(text) if plain and text.isdigit() else text
    rule: str | None = None
    if "rule" in keys:
        if not positive:
            raise reader.fail(keys["rule"], "a negative example matches no rule: remove 'rule'")
        rule = reader.text(keys["rule"], "rule")
        if rule not in rule_ids:
            raise reader.fail(keys["rule"], f"rule {rule!r} is not a rule of this product")
    detects = reader.boolean(keys["detects"], "detects") if "detects" in keys else None
    example = Example(
        positive=positive,
        location=reader.where(node),
        kind=kind,
        value=value,
        attrs=attrs,
        mac=mac,
        rule=rule,
        detects=detects,
    )
    try:
        example_observation(example)
    except InvalidObservation as exc:
        raise reader.fail(node, f"example is not a valid Observation: {exc}") from None
    return example


def _attr_keys(node: yaml.Node) -> Iterable[str]:
    """The keys of a mapping node (attribute names are checked by the Observation itself)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                yield str(key_node.value)


def example_observation(example: Example) -> Observation:
    """Build the Observation an example stands for (a MAC-only example becomes a DHCP lease)."""
    endpoint = Endpoint(ip="192.0.2.10", mac=example.mac)
    if example.kind is None:
        # Any kind carries the endpoint MAC; a lease is the observation that most often does.
        return Observation(
            ts=0.0, kind=Kind.DHCP_LEASE, value="192.0.2.10", src=endpoint, attrs=example.attrs
        )
    assert example.value is not None
    return Observation(ts=0.0, kind=example.kind, value=example.value, src=endpoint, attrs=example.attrs)


def _read_product(reader: _FileReader, root: yaml.Node, path: Path) -> Product:
    """Validate one product file."""
    keys = reader.mapping(root, "product", _PRODUCT_KEYS)
    missing = sorted(_REQUIRED_PRODUCT_KEYS - keys.keys())
    if missing:
        raise reader.fail(root, f"product: missing {', '.join(missing)}")
    product_id = reader.text(keys["id"], "id")
    if not _ID.fullmatch(product_id):
        raise reader.fail(keys["id"], f"id {product_id!r}: use lower-case letters, digits and dashes")
    if product_id == "unknown":
        raise reader.fail(keys["id"], "'unknown' is what a detection that names no product is called")
    if path.stem != product_id:
        reader.fail(keys["id"], f"id {product_id!r} must be the file name ({path.stem!r})")
    category = reader.choice(keys["category"], "category", Category)
    if path.parent.name != category:
        reader.fail(
            keys["category"], f"category {str(category)!r} must be the folder name ({path.parent.name!r})"
        )
    hosting = reader.mapping(keys["hosting"], "hosting", frozenset({"location", "hds"}))
    if set(hosting) != {"location", "hds"}:
        raise reader.fail(keys["hosting"], "hosting needs location and hds (write unknown when not known)")
    sources: list[Source] = []
    source_items = reader.sequence(keys["sources"], "sources")
    if not source_items:
        reader.fail(keys["sources"], "a product cites at least one source")
    for item in source_items:
        try:
            sources.append(_read_source(reader, item))
        except _Invalid:
            continue
    rules: list[Rule] = []
    seen: set[str] = set()
    rule_items = reader.sequence(keys["rules"], "rules")
    if not rule_items:
        reader.fail(keys["rules"], "a product has at least one rule")
    for item in rule_items:
        try:
            rules.append(_read_rule(reader, item, product_id, seen))
        except _Invalid:
            continue
    examples_keys = reader.mapping(keys["examples"], "examples", frozenset({"positive", "negative"}))
    examples: list[Example] = []
    for polarity in ("positive", "negative"):
        items = reader.sequence(examples_keys[polarity], polarity) if polarity in examples_keys else []
        if not items:
            reader.fail(keys["examples"], f"a product has at least one {polarity} example")
        for item in items:
            try:
                examples.append(_read_example(reader, item, polarity == "positive", seen))
            except _Invalid:
                continue
    description = reader.text(keys["description"], "description") if "description" in keys else ""
    return Product(
        id=product_id,
        name=reader.text(keys["name"], "name"),
        vendor=reader.text(keys["vendor"], "vendor"),
        category=category,
        ai=reader.choice(keys["ai"], "ai", Tristate),
        medical_purpose=reader.choice(keys["medical_purpose"], "medical_purpose", Tristate),
        mdr_class=reader.choice(keys["mdr_class"], "mdr_class", MdrClass),
        deployment=reader.choice(keys["deployment"], "deployment", Deployment),
        hosting_location=reader.choice(hosting["location"], "hosting location", HostingLocation),
        hds=reader.choice(hosting["hds"], "hosting hds", HdsStatus),
        sources=tuple(sources),
        rules=tuple(rules),
        examples=tuple(examples),
        location=reader.where(root),
        description=description,
    )


def _read_source(reader: _FileReader, node: yaml.Node) -> Source:
    """Validate one source reference."""
    keys = reader.mapping(node, "source", frozenset({"url", "quality", "note"}))
    if "url" not in keys or "quality" not in keys:
        raise reader.fail(node, "a source needs url and quality")
    return Source(
        url=reader.text(keys["url"], "url"),
        quality=reader.choice(keys["quality"], "quality", Quality),
        note=reader.text(keys["note"], "note") if "note" in keys else "",
    )


#: libyaml's parser when PyYAML was built with it (about five times faster; same nodes and marks).
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(reader: _FileReader, text: str) -> yaml.Node | None:
    """Parse YAML into a node tree, reporting syntax errors with their line."""
    try:
        node = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        reader.issues.append(Issue(reader.display, line, f"YAML syntax: {exc.problem or exc}"))
        return None
    if node is None:
        reader.issues.append(Issue(reader.display, 1, "empty file"))
    return node


def catalog_files(directory: Path) -> list[Path]:
    """The product files of a catalogue folder, sorted (``<category>/<id>.yaml``)."""
    return sorted(directory.glob("*/*.yaml"))


def load_catalog(directory: Path | str | None = None) -> Catalog:
    """Load and validate every product file; raise CatalogError listing every problem."""
    root = Path(directory) if directory is not None else DEFAULT_CATALOG_DIR
    issues: list[Issue] = []
    products: list[Product] = []
    digest = hashlib.sha256()
    files = catalog_files(root)
    known = set(files)
    issues.extend(
        Issue(_display(path, root), 1, "catalogue files live at <category>/<product-id>.yaml")
        for path in sorted(root.rglob("*.y*ml"))
        if path not in known
    )
    for path in files:
        display = _display(path, root)
        raw = path.read_bytes()
        digest.update(display.encode() + b"\0" + raw + b"\0")
        reader = _FileReader(display)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.append(Issue(display, 1, f"not UTF-8: {exc}"))
            continue
        node = _compose(reader, text)
        if node is not None:
            try:
                product = _read_product(reader, node, path)
            except _Invalid:
                product = None
            if product is not None and not reader.issues:
                products.append(product)
        issues.extend(sorted(reader.issues, key=lambda issue: issue.line))
    seen: dict[str, Product] = {}
    for product in products:
        if product.id in seen:
            issues.append(
                Issue(
                    product.location.path,
                    product.location.line,
                    f"product id {product.id!r} is already used by {seen[product.id].location}",
                )
            )
        seen[product.id] = product
    if issues:
        raise CatalogError(issues)
    return Catalog(products=tuple(products), version=digest.hexdigest()[:16])


def _display(path: Path, root: Path) -> str:
    """The path shown in messages: relative to the catalogue's parent when possible."""
    try:
        return os.path.relpath(path, root.parent)
    except ValueError:
        return str(path)
