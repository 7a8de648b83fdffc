"""Rapid7 Recog's XML fingerprints, loaded unchanged as an additional source of evidence.

Recog (BSD-2-Clause) is not shipped with Lanterne: it is read from a directory, by default
``../shared/corpus/recog`` beside the checkout, or ``LANTERNE_RECOG_DIR``. Each database
(``http_servers.xml``...) is parsed with ``xml.etree``; its Ruby regexes are translated to
Python (``_regex.translate_ruby``) and bucketed like the catalogue's, so matching a value costs
a few dict lookups and the few regexes they select.

Semantics follow Recog's own Ruby matcher: a database answers with its first matching
fingerprint in file order; ``param pos="0"`` is a constant, ``pos="N"`` capture group N; values
interpolate ``{name}`` from the other params; the result also carries ``service.protocol``
(from the database when no param sets it) and ``fingerprint_db``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from collectors import Kind
from fingerprints._evidence import RuleInfo, Side, rule_weight
from fingerprints._regex import RegexGroup, RubyRegexError, ruby_flags, translate_ruby
from fingerprints._vocabulary import RECOG_MEDICAL_DEVICES, Category, Strength

#: The environment variable naming the Recog directory (the folder holding ``xml/`` or the XML).
RECOG_DIR_ENV: Final = "LANTERNE_RECOG_DIR"

#: Which Observation kinds each Recog database applies to, and which side the value describes.
RECOG_KINDS: Final[Mapping[str, tuple[Kind, Side]]] = {
    "dhcp_vendor_class": (Kind.DHCP_VENDOR_CLASS, "src"),
    # Matched against each ``key=value`` string of the TXT record (attribute ``txt``).
    "mdns_device-info_txt": (Kind.MDNS_TXT, "src"),
    "mdns_workstation_txt": (Kind.MDNS_TXT, "src"),
    "snmp_sysdescr": (Kind.SNMP_SYSDESCR, "src"),
    "snmp_sysobjid": (Kind.SNMP_SYSOBJECTID, "src"),
    "http_servers": (Kind.HTTP_SERVER, "dst"),
    "html_title": (Kind.HTTP_TITLE, "dst"),
    # Reported by the active HTTP probe: the favicon's MD5 (hex) and the certificate's subject.
    "favicons": (Kind.HTTP_FAVICON, "dst"),
    "x509_subjects": (Kind.TLS_CERTIFICATE, "dst"),
}

#: A sysObjectID is assigned by the vendor: strong, like the catalogue's OID prefixes.
_STRONG_DATABASES: Final = frozenset({"snmp_sysobjid"})
_INTERPOLATION: Final = re.compile(r"\{([^\s{}]+)\}")
_VENDOR_PARAMS: Final = ("hw.vendor", "os.vendor", "service.vendor")


def default_recog_dir() -> Path:
    """``LANTERNE_RECOG_DIR``, else ``../shared/corpus/recog`` beside the checkout."""
    configured = os.environ.get(RECOG_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "recog"


def _xml_dir(directory: Path) -> Path:
    """Accept either Recog's repository root (with ``xml/``) or the XML folder itself."""
    return directory / "xml" if (directory / "xml").is_dir() else directory


@dataclass(frozen=True, slots=True)
class RecogParam:
    """``<param pos=... name=... value=...>``."""

    name: str
    position: int
    value: str | None


@dataclass(frozen=True, slots=True)
class RecogExample:
    """``<example ...>``: the input text and the fields it must produce."""

    text: str
    expected: tuple[tuple[str, str], ...]
    ordinal: int
    """1-based position among the fingerprint's examples."""


@dataclass(frozen=True, slots=True)
class RecogFingerprint:
    """One ``<fingerprint>`` with its translated regex."""

    database: str
    ordinal: int
    """1-based position in its database (file order is Recog's match order)."""
    description: str
    pattern: str
    """The pattern as written in the XML (Ruby dialect)."""
    regex: re.Pattern[str]
    params: tuple[RecogParam, ...]
    examples: tuple[RecogExample, ...]
    info: RuleInfo
    protocol: str | None = None
    match_key: str | None = None

    def extract(self, match: re.Match[str]) -> dict[str, str]:
        """The fields a match yields, as Recog's ``Fingerprint#match`` builds them."""
        result: dict[str, str | None] = {"matched": self.description}
        for param in self.params:
            if param.position == 0:
                result[param.name] = param.value
            else:
                try:
                    result[param.name] = match.group(param.position)
                except IndexError:
                    result[param.name] = None
        if self.protocol and result.get("service.protocol") is None:
            result["service.protocol"] = self.protocol
        if self.match_key:
            result["fingerprint_db"] = self.match_key
        fields = {name: value for name, value in result.items() if value is not None}
        for name, value in list(fields.items()):
            if "{" in value:
                fields[name] = _INTERPOLATION.sub(lambda ref: fields.get(ref.group(1), ref.group(0)), value)
        return fields


@dataclass(frozen=True, slots=True)
class RecogIssue:
    """A fingerprint that could not be loaded (its examples then count as failures)."""

    database: str
    ordinal: int
    description: str
    message: str
    examples: int
    """How many examples the fingerprint carries (each counts as a conformance failure)."""


@dataclass(slots=True)
class RecogDatabase:
    """One Recog XML file, indexed."""

    name: str
    """The file name without ``.xml`` (``http_servers``)."""
    match_key: str | None
    protocol: str | None
    preference: float
    fingerprints: list[RecogFingerprint] = field(default_factory=list)
    group: RegexGroup[RecogFingerprint] = field(default_factory=RegexGroup)

    def match_all(self, text: str) -> list[tuple[RecogFingerprint, dict[str, str]]]:
        """Every fingerprint matching ``text``, in file order, with its fields."""
        return [(fingerprint, fingerprint.extract(match)) for match, fingerprint in self.group.search(text)]

    def match(self, text: str) -> tuple[RecogFingerprint, dict[str, str]] | None:
        """The first fingerprint matching ``text`` (Recog's answer), with its fields."""
        for _, pattern, fingerprint in self.group.candidates(text):
            found = pattern.search(text)
            if found is not None:
                return fingerprint, fingerprint.extract(found)
        return None


@dataclass(slots=True)
class Recog:
    """Every Recog database found in a directory, plus what could not be loaded."""

    directory: Path
    databases: dict[str, RecogDatabase]
    issues: list[RecogIssue]
    version: str
    """First 12 hex digits of a SHA-256 over the loaded files' names and bytes."""

    def for_kind(self, kind: Kind) -> list[tuple[RecogDatabase, Side]]:
        """The databases that apply to an Observation kind."""
        return [
            (self.databases[name], side)
            for name, (mapped, side) in RECOG_KINDS.items()
            if mapped is kind and name in self.databases
        ]

    @property
    def example_count(self) -> int:
        """How many examples the databases carry (including those of unloadable fingerprints)."""
        loaded = sum(len(fp.examples) for db in self.databases.values() for fp in db.fingerprints)
        return loaded + sum(issue.examples for issue in self.issues)


def _example_text(element: ET.Element) -> str:
    """The example input, base64-decoded when ``_encoding="base64"`` says so."""
    text = element.text or ""
    if element.get("_encoding") == "base64":
        try:
            raw = base64.b64decode("".join(text.split()), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise RubyRegexError(f"bad base64 example: {exc}") from exc
        # Ruby keeps these as binary strings; UTF-8 reads them the same for ASCII banners and
        # latin-1 keeps every byte when they are not text.
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    return text


def _rule_info(
    database: str, ordinal: int, description: str, params: tuple[RecogParam, ...], certainty: float
) -> RuleInfo:
    """The evidence side of a fingerprint: constant vendor and device type, strength, weight."""
    constants = {param.name: param.value for param in params if param.position == 0 and param.value}
    vendor = next((constants[name] for name in _VENDOR_PARAMS if name in constants), None)
    devices = {constants.get("hw.device"), constants.get("os.device")}
    strength = Strength.STRONG if database in _STRONG_DATABASES else Strength.MEDIUM
    return RuleInfo(
        rule_id=f"recog:{database}:{ordinal}",
        product_id=None,
        vendor=vendor,
        category=Category.MEDICAL_DEVICE if devices & RECOG_MEDICAL_DEVICES else None,
        strength=strength,
        weight=rule_weight(strength, None, certainty),
        role=None,
        origin="recog",
        description=description,
    )


def _load_database(path: Path, issues: list[RecogIssue]) -> RecogDatabase:
    """Parse and index one XML file."""
    root = ET.parse(path).getroot()  # noqa: S314 - a local, trusted corpus file, not network input
    name = path.stem
    preference = root.get("preference")
    database = RecogDatabase(
        name=name,
        match_key=root.get("matches") or name,
        protocol=root.get("protocol"),
        preference=float(preference) if preference else 0.10,
    )
    for ordinal, element in enumerate(root.iter("fingerprint"), start=1):
        description = (element.findtext("description") or "").strip()
        pattern = element.get("pattern", "")
        params = tuple(
            RecogParam(
                name=param.get("name", ""),
                position=int(param.get("pos", "0")),
                value=param.get("value"),
            )
            for param in element.iter("param")
        )
        examples: list[RecogExample] = []
        try:
            for number, example in enumerate(element.iter("example"), start=1):
                expected = tuple(sorted((k, v) for k, v in example.attrib.items() if not k.startswith("_")))
                examples.append(RecogExample(text=_example_text(example), expected=expected, ordinal=number))
            regex = re.compile(translate_ruby(pattern), ruby_flags(element.get("flags")))
        except (RubyRegexError, re.error) as exc:
            count = len(list(element.iter("example")))
            issues.append(RecogIssue(name, ordinal, description, str(exc), count))
            continue
        certainty = float(element.get("certainty") or 1.0)
        fingerprint = RecogFingerprint(
            database=name,
            ordinal=ordinal,
            description=description,
            pattern=pattern,
            regex=regex,
            params=params,
            examples=tuple(examples),
            info=_rule_info(name, ordinal, description, params, certainty),
            protocol=database.protocol,
            match_key=database.match_key,
        )
        database.fingerprints.append(fingerprint)
        database.group.add(regex, fingerprint)
    return database


def load_recog(directory: Path | str | None = None, *, only: frozenset[str] | None = None) -> Recog:
    """Load every Recog database of ``directory`` (or only the named ones); raise if it is absent."""
    base = Path(directory) if directory is not None else default_recog_dir()
    xml_dir = _xml_dir(base)
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no Recog XML in {xml_dir} (set {RECOG_DIR_ENV})")
    issues: list[RecogIssue] = []
    digest = hashlib.sha256()
    databases: dict[str, RecogDatabase] = {}
    for path in files:
        if only is None or path.stem in only:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
            databases[path.stem] = _load_database(path, issues)
    return Recog(directory=xml_dir, databases=databases, issues=issues, version=digest.hexdigest()[:12])
