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

Loading is lazy, one database at a time: ``load_recog`` only reads the files (their bytes make
the version, so the version always names what will be matched); a database is parsed, its
patterns translated, compiled and bucketed the first time it is needed — the first value of its
kind to match, or anything that reads its fingerprints. Translating and compiling the ~2,500
patterns Lanterne maps took 0.5-0.9 s at every start, mostly for databases (SNMP, HTTP banners,
favicons) that a passive scan of ordinary traffic never consults.

A pattern that cannot be translated or compiled is therefore found when its database loads: the
fingerprint is left out (as it always was), recorded as a ``RecogIssue`` and logged once at
WARNING. ``Recog.issues`` loads every database first, so ``lanterne fingerprints test``,
``python -m fingerprints.lint --recog`` and the conformance suite still see every bad pattern
of the corpus, before anything is deployed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
_RULE_PREFIX: Final = "recog:"

_LOG = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What a database holds once its XML is parsed and its patterns compiled."""

    match_key: str | None
    protocol: str | None
    preference: float
    fingerprints: list[RecogFingerprint]
    group: RegexGroup[RecogFingerprint]
    by_ordinal: dict[int, RecogFingerprint]
    issues: list[RecogIssue]


class RecogDatabase:
    """One Recog XML file, parsed and indexed the first time it is needed (see the module doc)."""

    __slots__ = ("_data", "_loaded", "_lock", "name")

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        """The file name without ``.xml`` (``http_servers``)."""
        self._data: bytes | None = data
        """The file's bytes as read (and hashed into the version) by ``load_recog``, until parsed."""
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the patterns are compiled already."""
        return self._loaded is not None

    def load(self) -> _Loaded:
        """Parse, translate, compile and bucket the database (once; thread-safe)."""
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:  # the web UI may explain evidence from worker threads
            if self._loaded is None:
                assert self._data is not None
                self._loaded = _parse_database(self.name, self._data)
                self._data = None
                for issue in self._loaded.issues:
                    _LOG.warning(
                        "recog %s.xml #%d (%s) left out: %s",
                        issue.database,
                        issue.ordinal,
                        issue.description,
                        issue.message,
                    )
            return self._loaded

    @property
    def match_key(self) -> str | None:
        """``matches="..."`` of the root element, else the name."""
        return self.load().match_key

    @property
    def protocol(self) -> str | None:
        """``protocol="..."`` of the root element."""
        return self.load().protocol

    @property
    def preference(self) -> float:
        """``preference="..."`` of the root element (Recog's default 0.10)."""
        return self.load().preference

    @property
    def fingerprints(self) -> list[RecogFingerprint]:
        """The loadable fingerprints, in file order."""
        return self.load().fingerprints

    @property
    def group(self) -> RegexGroup[RecogFingerprint]:
        """The fingerprints' regexes, bucketed."""
        return self.load().group

    @property
    def issues(self) -> list[RecogIssue]:
        """The fingerprints that could not be loaded."""
        return self.load().issues

    def fingerprint(self, ordinal: int) -> RecogFingerprint | None:
        """The fingerprint at a 1-based position (None if absent or left out)."""
        return self.load().by_ordinal.get(ordinal)

    def match_all(self, text: str) -> list[tuple[RecogFingerprint, dict[str, str]]]:
        """Every fingerprint matching ``text``, in file order, with its fields."""
        return [(fingerprint, fingerprint.extract(match)) for match, fingerprint in self.group.search(text)]

    def match(self, text: str) -> tuple[RecogFingerprint, dict[str, str]] | None:
        """The first fingerprint matching ``text`` (Recog's answer), with its fields."""
        for _, pattern, fingerprint in self.load().group.candidates(text):
            found = pattern.search(text)
            if found is not None:
                return fingerprint, fingerprint.extract(found)
        return None

    def __repr__(self) -> str:
        return f"RecogDatabase({self.name!r}, loaded={self.loaded})"


@dataclass(slots=True)
class Recog:
    """Every Recog database found in a directory (each loaded on first use)."""

    directory: Path
    databases: dict[str, RecogDatabase]
    version: str
    """First 12 hex digits of a SHA-256 over the loaded files' names and bytes."""

    @property
    def issues(self) -> list[RecogIssue]:
        """What could not be loaded, in file order (loads every database: a full check)."""
        return [issue for database in self.databases.values() for issue in database.issues]

    def for_kind(self, kind: Kind) -> list[tuple[RecogDatabase, Side]]:
        """The databases that apply to an Observation kind."""
        return [
            (self.databases[name], side)
            for name, (mapped, side) in RECOG_KINDS.items()
            if mapped is kind and name in self.databases
        ]

    def fingerprint(self, rule_id: str) -> RecogFingerprint | None:
        """The fingerprint behind a ``recog:<database>:<ordinal>`` rule id (loads that database only)."""
        if not rule_id.startswith(_RULE_PREFIX):
            return None
        name, _, ordinal = rule_id[len(_RULE_PREFIX) :].rpartition(":")
        database = self.databases.get(name)
        if database is None or not ordinal.isdigit():
            return None
        return database.fingerprint(int(ordinal))

    def fingerprints(self) -> Iterator[RecogFingerprint]:
        """Every loadable fingerprint, database by database (loads them all)."""
        for database in self.databases.values():
            yield from database.fingerprints

    @property
    def example_count(self) -> int:
        """How many examples the databases carry (including those of unloadable fingerprints)."""
        loaded = sum(len(fp.examples) for fp in self.fingerprints())
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
        rule_id=f"{_RULE_PREFIX}{database}:{ordinal}",
        product_id=None,
        vendor=vendor,
        category=Category.MEDICAL_DEVICE if devices & RECOG_MEDICAL_DEVICES else None,
        strength=strength,
        weight=rule_weight(strength, None, certainty),
        role=None,
        origin="recog",
        description=description,
    )


def _parse_database(name: str, data: bytes) -> _Loaded:
    """Parse and index one XML file (a file that is not XML is left out whole, as its one issue)."""
    try:
        root = ET.fromstring(data)  # noqa: S314 - a local, trusted corpus file, not network input
    except ET.ParseError as exc:
        # Databases are parsed when first matched, in the middle of a scan or a daemon's life:
        # a broken file must cost its own fingerprints, not the run.
        return _Loaded(
            match_key=name,
            protocol=None,
            preference=0.10,
            fingerprints=[],
            group=RegexGroup(),
            by_ordinal={},
            issues=[RecogIssue(name, 0, "the whole file", f"not well-formed XML ({exc})", 0)],
        )
    preference = root.get("preference")
    database = _Loaded(
        match_key=root.get("matches") or name,
        protocol=root.get("protocol"),
        preference=float(preference) if preference else 0.10,
        fingerprints=[],
        group=RegexGroup(),
        by_ordinal={},
        issues=[],
    )
    issues = database.issues
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
        database.by_ordinal[ordinal] = fingerprint
        database.group.add(regex, fingerprint)
    return database


def load_recog(directory: Path | str | None = None, *, only: frozenset[str] | None = None) -> Recog:
    """Read every Recog database of ``directory`` (or only the named ones); raise if it is absent.

    Each database is parsed and compiled on first use (see the module doc).
    """
    base = Path(directory) if directory is not None else default_recog_dir()
    xml_dir = _xml_dir(base)
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no Recog XML in {xml_dir} (set {RECOG_DIR_ENV})")
    digest = hashlib.sha256()
    databases: dict[str, RecogDatabase] = {}
    for path in files:
        if only is None or path.stem in only:
            data = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + data + b"\0")
            databases[path.stem] = RecogDatabase(path.stem, data)
    return Recog(directory=xml_dir, databases=databases, version=digest.hexdigest()[:12])
