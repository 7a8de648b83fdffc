"""Declared-inventory import: the hospital's cartographie from CSV or XLSX, all or nothing.

What a French hospital actually has is a spreadsheet: written by Excel (semicolons, Windows-1252
or UTF-8 with a BOM), with French or English headers, ``oui``/``non`` cells and lists typed into
one cell. ``read_inventory`` turns such a file into ``DeclaredEntry`` records or raises
``InventoryFileError`` with *every* problem of the file (line, column, message), so that one run
shows the whole list to fix. ``apply_inventory`` writes the entries in the caller's transaction:
new entries are created, changed ones updated with a ``change_log`` row ``{field: [old, new]}``,
and entries no longer in the file are deactivated (kept, with their history), not deleted.

Re-importing the same file changes nothing. Entries are keyed by ``(site, ref)``: the file's
``ref``/``id``/``identifiant`` column, else a reference derived from vendor and name (so renaming a
product without an id column makes a new entry and deactivates the old one: add an id column to
rename).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from collectors import InvalidObservation, canonical_ip, canonical_mac
from collectors._observation import normalise_name
from fingerprints import Catalog, Product
from store._models import ChangeLogEntry, InventoryEntry

#: Files above this size are refused: an inventory is a few thousand rows, not a data dump.
MAX_FILE_BYTES: Final = 20 * 1024 * 1024
#: At most this many errors are kept (the count of the rest is reported).
MAX_ERRORS: Final = 200
#: Items of one list cell (hosts, IPs…): more is a pasted dump, not a declaration.
MAX_LIST_ITEMS: Final = 256
MAX_TEXT: Final = 255
MAX_DETAIL_TEXT: Final = 2000

#: Words that do not name a product on their own (a declared "API" or "Assistant" is not Claude).
_GENERIC: Final = (
    "ai api app apps assistant and the for with pro plus free cloud server servers system systems "
    "device devices suite platform enterprise consumer inference health healthcare care connect "
    "insight diagnostics technologies technologie infusion studio chat cxr ctb mmg medical hub "
    "spaces workplace translator ventilators analysers des les pour logiciel outil"
)
GENERIC_WORDS: Final = frozenset(_GENERIC.split())
DEPLOYMENTS: Final = ("saas", "on_prem", "hybrid", "embedded_device", "desktop", "unknown")


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Fold text for comparisons: case, accents, punctuation and spacing do not count."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", stripped).split())


# -- columns ----------------------------------------------------------------------------------------

#: Each field and the headers that mean it (folded: "Éditeur", "editeur" and "EDITEUR" are one).
_HEADER_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    "ref": ("ref", "id", "identifiant", "reference", "code", "entry id", "id inventaire"),
    "name": (
        "nom",
        "name",
        "produit",
        "product",
        "outil",
        "tool",
        "logiciel",
        "application",
        "nom du produit",
    ),
    "vendor": ("editeur", "vendor", "fabricant", "manufacturer", "fournisseur", "supplier", "constructeur"),
    "category": ("categorie", "category", "type"),
    "catalog_id": ("catalog id", "catalogue", "id catalogue", "catalog", "lanterne id", "fingerprint"),
    "service": ("service", "unite", "unit", "department", "pole", "services"),
    "owner": ("proprietaire", "owner", "responsable", "business owner", "referent"),
    "is_dmn": ("dmn", "dm", "dispositif medical", "medical device", "is dmn", "dmn oui non"),
    "is_ai": ("ia", "ai", "is ai", "intelligence artificielle", "ia oui non"),
    "hosts": ("domaines", "domaine", "hosts", "host", "hostnames", "noms d hote", "fqdn", "urls", "domains"),
    "ips": ("adresses ip", "adresse ip", "ip", "ips", "ip addresses", "ip address"),
    "macs": ("adresses mac", "adresse mac", "mac", "macs", "mac addresses", "mac address"),
    "ae_titles": ("titres ae", "titre ae", "ae titles", "ae title", "aet", "ae"),
    "deployment": ("deploiement", "deployment", "mode de deploiement", "deployment mode"),
    "declared_on": ("date de declaration", "date declaration", "declared on", "declaration date", "date"),
    # The declared columns of the export (regulatory note §8), kept in ``details``.
    "technical_owner": ("responsable technique", "technical owner"),
    "human_oversight_owner": (
        "responsable supervision humaine",
        "supervision humaine",
        "garant humain",
        "human oversight owner",
        "human oversight",
    ),
    "processes_health_data": (
        "donnees de sante",
        "traite des donnees de sante",
        "processes health data",
        "health data",
    ),
    "dpia_ref": ("aipd", "ref aipd", "reference aipd", "dpia", "dpia ref", "dpia reference"),
    "gdpr_record_ref": ("registre rgpd", "ref registre", "gdpr record", "gdpr record ref"),
    "dpa_signed": ("contrat sous traitance", "dpa", "dpa signed"),
    "training_status": ("formation", "formation utilisateurs", "training", "training status"),
    "hds_certified": ("hds", "certifie hds", "hds certified"),
    "hosting_location": ("localisation hebergement", "hebergement", "hosting location", "hosting"),
    "mdr_class": ("classe dm", "classe mdr", "mdr class", "classe"),
    "ai_act_risk": ("risque ai act", "ai act risk"),
    "incident_contact": ("contact incident", "vigilance", "incident contact"),
    "log_location": ("journaux", "log location"),
    "log_retention_days": ("duree conservation journaux", "log retention days"),
    "workers_informed": ("personnels informes", "workers informed"),
    "version": ("version",),
    "notes": ("commentaire", "commentaires", "notes", "remarques", "comment"),
}
_ALIAS_TO_FIELD: Final = {fold(alias): name for name, aliases in _HEADER_ALIASES.items() for alias in aliases}
#: Fields kept in ``InventoryEntry.details`` (everything that has no column of its own).
DETAIL_FIELDS: Final = (
    "technical_owner",
    "human_oversight_owner",
    "processes_health_data",
    "dpia_ref",
    "gdpr_record_ref",
    "dpa_signed",
    "training_status",
    "hds_certified",
    "hosting_location",
    "mdr_class",
    "ai_act_risk",
    "incident_contact",
    "log_location",
    "log_retention_days",
    "workers_informed",
    "version",
    "notes",
)
_TRISTATE_DETAILS: Final = frozenset({"processes_health_data", "dpa_signed", "hds_certified"})

_TRUE: Final = frozenset({"oui", "o", "yes", "y", "true", "vrai", "1", "x"})
_FALSE: Final = frozenset({"non", "n", "no", "false", "faux", "0"})
_UNKNOWN: Final = frozenset({"", "inconnu", "unknown", "nsp", "ne sait pas", "?", "na", "n a"})
_DEPLOYMENT_ALIASES: Final = {
    "saas": "saas",
    "cloud": "saas",
    "en ligne": "saas",
    "on prem": "on_prem",
    "on premise": "on_prem",
    "on premises": "on_prem",
    "sur site": "on_prem",
    "local": "on_prem",
    "interne": "on_prem",
    "hybrid": "hybrid",
    "hybride": "hybrid",
    "embedded device": "embedded_device",
    "embarque": "embedded_device",
    "dispositif": "embedded_device",
    "equipement": "embedded_device",
    "desktop": "desktop",
    "poste": "desktop",
    "poste de travail": "desktop",
    "unknown": "unknown",
    "inconnu": "unknown",
}
_LIST_SPLIT: Final = re.compile(r"[,;|\n\r]+")
_HOST_LABEL: Final = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_AE_TITLE: Final = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DATE_FR: Final = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportIssue:
    """One problem of an inventory file: where (line, column) and what."""

    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line is not None else []
        if self.column:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class InventoryFileError(ValueError):
    """An inventory file that cannot be imported; ``issues`` lists every problem found."""

    def __init__(self, path: str, issues: Sequence[ImportIssue], more: int = 0) -> None:
        self.path = path
        self.issues = tuple(issues)
        self.more = more
        tail = f" (and {more} more)" if more else ""
        super().__init__(f"{path}: {len(self.issues) + more} error(s){tail}; first: {self.issues[0]}")


@dataclass(frozen=True, slots=True)
class DeclaredEntry:
    """One row of a declared inventory, validated and normalised."""

    line: int
    ref: str
    name: str
    vendor: str | None = None
    category: str | None = None
    catalog_id: str | None = None
    service: str | None = None
    owner: str | None = None
    is_dmn: bool | None = None
    is_ai: bool | None = None
    hosts: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()
    ae_titles: tuple[str, ...] = ()
    deployment: str | None = None
    declared_on: datetime | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """The values of the ``inventory_entries`` columns this row sets (JSON-comparable)."""
        return {
            "name": self.name,
            "vendor": self.vendor,
            "category": self.category,
            "catalog_id": self.catalog_id,
            "service": self.service,
            "owner": self.owner,
            "is_dmn": self.is_dmn,
            "is_ai": self.is_ai,
            "hosts": list(self.hosts),
            "ips": list(self.ips),
            "macs": list(self.macs),
            "ae_titles": list(self.ae_titles),
            "deployment": self.deployment,
            "declared_on": self.declared_on,
            "details": dict(self.details),
        }


@dataclass(frozen=True, slots=True)
class InventoryFile:
    """A validated inventory file: its entries, and the columns it has that the import ignores."""

    name: str
    entries: list[DeclaredEntry]
    ignored_columns: list[ImportIssue]


@dataclass(slots=True)
class ImportResult:
    """What an import changed (or would change, in a dry run)."""

    created: list[str] = field(default_factory=list)
    updated: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    deactivated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[ImportIssue] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was (or would be) written."""
        return bool(self.created or self.updated or self.deactivated)


# -- reading the file -----------------------------------------------------------------------------


def decode_text(data: bytes, path: str = "<file>") -> str:
    """Decode a CSV file's bytes: BOM first, then strict UTF-8, then Windows-1252; else refuse."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as exc:
                message = f"invalid {encoding} after its byte-order mark"
                raise _encoding_error(path, data, exc.start, message) from exc
            return _check_text(path, text)
    nul = data.find(b"\x00")
    if nul >= 0:
        # Excel's "Unicode text" is UTF-16 *with* a BOM; without one it is guesswork: refuse.
        raise _encoding_error(
            path, data, nul, "NUL byte: not a text file (UTF-16 without a byte-order mark, or binary)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            # What a French Excel writes for "CSV (séparateur : point-virgule)".
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc:
            raise _encoding_error(path, data, exc.start, "neither UTF-8 nor Windows-1252 text") from exc
    return _check_text(path, text)


def _encoding_error(path: str, data: bytes, offset: int, message: str) -> InventoryFileError:
    line = data.count(b"\n", 0, offset) + 1
    return InventoryFileError(path, [ImportIssue(line, None, f"{message} (byte {offset + 1})")])


def _check_text(path: str, text: str) -> str:
    match = _CONTROL.search(text)
    if match is not None:
        line = text.count("\n", 0, match.start()) + 1
        raise InventoryFileError(
            path,
            [ImportIssue(line, None, f"control character {match.group()!r}: not a text inventory (binary?)")],
        )
    return text


def _sniff_delimiter(text: str) -> str:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        # The sniffer gives up on one-column or irregular files: the header line decides.
        header = text.splitlines()[0] if text else ""
        return max(";,\t", key=header.count) if any(ch in header for ch in ";,\t") else ";"


def _csv_rows(text: str) -> Iterator[tuple[int, list[Any]]]:
    """Rows of a CSV text with the (1-based) line each starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(text), strict=True)
    start = 1
    for row in reader:
        yield start, list(row)
        start = reader.line_num + 1


def _xlsx_rows(data: bytes, path: str) -> Iterator[tuple[int, list[Any]]]:
    """Rows of the first sheet of an XLSX workbook with their Excel row numbers."""
    import openpyxl  # noqa: PLC0415 - only XLSX imports pay for openpyxl's import
    from openpyxl.utils.exceptions import InvalidFileException  # noqa: PLC0415

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError) as exc:
        issue = ImportIssue(None, None, f"not a readable XLSX workbook: {exc}")
        raise InventoryFileError(path, [issue]) from exc
    try:
        sheet = workbook.worksheets[0]
        for number, row in enumerate(sheet.iter_rows(values_only=True), start=1):
            yield number, list(row)
    finally:
        workbook.close()


def _rows(data: bytes, path: str) -> Iterator[tuple[int, list[Any]]]:
    if data.startswith(b"PK\x03\x04"):
        return _xlsx_rows(data, path)
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise InventoryFileError(
            path, [ImportIssue(None, None, "an old Excel .xls workbook: save it as .xlsx or CSV")]
        )
    text = decode_text(data, path)
    try:
        return iter(list(_csv_rows(text)))
    except csv.Error as exc:
        raise InventoryFileError(path, [ImportIssue(None, None, f"unreadable CSV: {exc}")]) from exc


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()


class _Row:
    """One data row being validated: collects its errors instead of stopping at the first."""

    def __init__(self, line: int, cells: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        self.line = line
        self.cells = cells
        self.headers = headers
        self.issues: list[ImportIssue] = []

    def fail(self, name: str, message: str) -> None:
        self.issues.append(ImportIssue(self.line, self.headers.get(name, name), message))

    def raw(self, name: str) -> Any:
        return self.cells.get(name)

    def text(self, name: str, limit: int = MAX_TEXT) -> str | None:
        value = _cell_text(self.raw(name))
        if not value:
            return None
        if _CONTROL.search(value):
            self.fail(name, "contains a control character")
            return None
        if len(value) > limit:
            self.fail(name, f"longer than {limit} characters")
            return None
        return value

    def boolean(self, name: str) -> bool | None:
        raw = self.raw(name)
        if isinstance(raw, bool):
            return raw
        value = fold(_cell_text(raw))
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        if value in _UNKNOWN:
            return None
        self.fail(name, f"{_cell_text(raw)!r} is not a yes/no value (oui, non, yes, no, 1, 0, x or empty)")
        return None

    def tristate(self, name: str) -> str | None:
        if fold(_cell_text(self.raw(name))) in ("inconnu", "unknown", "?"):
            return "unknown"
        value = self.boolean(name)
        return None if value is None else ("yes" if value else "no")

    def items(self, name: str) -> list[str]:
        text = _cell_text(self.raw(name))
        items = [part.strip() for part in _LIST_SPLIT.split(text) if part.strip()]
        if len(items) > MAX_LIST_ITEMS:
            self.fail(name, f"more than {MAX_LIST_ITEMS} items")
            return []
        return items

    def listed(self, name: str, check: Callable[[str], str]) -> tuple[str, ...]:
        values: list[str] = []
        for item in self.items(name):
            try:
                canonical = check(item)
            except ValueError as exc:
                self.fail(name, str(exc))
                continue
            if canonical not in values:
                values.append(canonical)
        return tuple(values)

    def when(self, name: str) -> datetime | None:
        raw = self.raw(name)
        if isinstance(raw, datetime):
            return raw.replace(tzinfo=UTC) if raw.tzinfo is None else raw.astimezone(UTC)
        if isinstance(raw, date):
            return datetime(raw.year, raw.month, raw.day, tzinfo=UTC)
        text = _cell_text(raw)
        if not text:
            return None
        try:
            return parse_date(text)
        except ValueError:
            self.fail(name, f"{text!r} is not a date (JJ/MM/AAAA or AAAA-MM-JJ)")
            return None


def parse_date(text: str) -> datetime:
    """Parse ``JJ/MM/AAAA [HH:MM[:SS]]`` or ISO 8601 into an aware UTC datetime."""
    text = text.strip()
    match = _DATE_FR.match(text)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
        return datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=UTC
        )
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def canonical_host(item: str) -> str:
    """Return a declared host name as observations carry it (IDNA A-labels), ``*.`` kept."""
    wildcard = item.startswith("*.")
    name = item[2:] if wildcard else item
    if "://" in name:  # a pasted URL: keep its host only
        name = name.split("://", 1)[1]
    name = name.split("/", 1)[0].split(":", 1)[0]
    name = normalise_name(name)
    try:
        ascii_name = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"{item!r} is not a valid host name") from exc
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{item!r} is not a valid host name")
    return ("*." if wildcard else "") + ascii_name


def _ip(item: str) -> str:
    try:
        return canonical_ip(item)
    except InvalidObservation as exc:
        raise ValueError(f"{item!r} is not an IP address") from exc


def _mac(item: str) -> str:
    try:
        return canonical_mac(item)
    except InvalidObservation as exc:
        raise ValueError(f"{item!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from exc


def _ae_title(item: str) -> str:
    if not _AE_TITLE.match(item):
        raise ValueError(f"{item!r} is not a DICOM AE title (1 to 16 characters, no backslash)")
    return item


def derived_ref(vendor: str | None, name: str) -> str:
    """The stable reference of an entry without an id column: its folded vendor and name."""
    slug = "-".join(fold(f"{vendor or ''} {name}").split())
    return slug[:128] or "entry"


# -- the catalogue ---------------------------------------------------------------------------------


class CatalogResolver:
    """Finds the catalogue product a declared vendor/name means (aliases, accents, case ignored)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._by_key: dict[str, set[str]] = {}
        for product in catalog.products:
            for key in product_keys(product):
                self._by_key.setdefault(key, set()).add(product.id)

    def resolve(self, vendor: str | None, name: str) -> str | None:
        """The product id, or None when nothing or more than one product fits."""
        names = [name]
        bracket = re.match(r"^(.*?)\s*\((.*)\)\s*$", name)
        if bracket is not None:  # "Passerelle IA imagerie (BoneView)": the product is in brackets
            names += [bracket.group(2), bracket.group(1)]
        keys: list[str] = []
        for each in names:
            if vendor:
                keys.append(fold(f"{vendor} {each}"))
            keys.append(fold(each))
        for key in keys:
            candidates = sorted(self._by_key.get(key, ()))
            if vendor and len(candidates) > 1:
                wanted = fold(vendor)
                candidates = [
                    pid
                    for pid in candidates
                    if _vendor_agrees(wanted, fold(self.catalog.product(pid).vendor))
                ]
            if len(candidates) == 1:
                return candidates[0]
        return None


def _vendor_agrees(declared: str, known: str) -> bool:
    return bool(declared) and (declared in known or known in declared)


def product_keys(product: Product) -> frozenset[str]:
    """The folded names a product may be declared under: its name, its id, with or without vendor."""
    return _name_keys(product.id, product.name, product.vendor)


@lru_cache(maxsize=4096)
def _name_keys(product_id: str, product_name: str, product_vendor: str) -> frozenset[str]:
    # Reconciliation asks for every (product, entry) pair: computed once per product.
    names = {product_name, product_id.replace("-", " ")}
    # "Microsoft Dragon Copilot (DAX Copilot, Dragon Medical One)": each name in brackets too.
    bracket = re.match(r"^(.*?)\s*\((.*)\)\s*$", product_name)
    if bracket is not None:
        names.add(bracket.group(1))
        parts = (
            re.sub(r"^\s*formerly\s+", "", part) for part in re.split(r"[,/]| or | and ", bracket.group(2))
        )
        names.update(part for part in parts if part.strip() and "plan" not in part)
    keys: set[str] = set()
    vendor = fold(product_vendor)
    vendor_words = vendor.split()
    for name in names:
        folded = fold(name)
        if not folded:
            continue
        forms = {folded}
        # "Mistral Le Chat" by "Mistral AI" is declared "Le Chat": drop a leading part of the vendor.
        words = folded.split()
        size = 0
        while size < min(len(vendor_words), len(words) - 1) and words[size] == vendor_words[size]:
            size += 1
        rest = words[size:]
        # Only the whole vendor, or a part of it that the rest does not repeat: "Hill-Rom" is not "Rom".
        if size and (size == len(vendor_words) or not set(rest) & set(vendor_words)):
            forms.add(" ".join(rest))
        for form in forms:
            keys.add(f"{vendor} {form}")
            if not set(form.split()) <= GENERIC_WORDS:  # "devices", "API": not a name on their own
                keys.add(form)
    return frozenset(keys)


# -- validation -----------------------------------------------------------------------------------


def read_inventory(path: Path | str, catalog: Catalog | None = None) -> InventoryFile:
    """Read and validate a CSV/XLSX inventory; raise InventoryFileError with every problem found."""
    path = Path(path)
    display = path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            issue = ImportIssue(None, None, f"larger than {MAX_FILE_BYTES} bytes")
            raise InventoryFileError(display, [issue])
        data = path.read_bytes()
    except OSError as exc:
        raise InventoryFileError(display, [ImportIssue(None, None, f"cannot read: {exc.strerror}")]) from exc
    return parse_inventory(data, display, catalog)


def parse_inventory(data: bytes, display: str, catalog: Catalog | None = None) -> InventoryFile:
    """Validate an inventory file's bytes (CSV or XLSX) into entries, or raise InventoryFileError."""
    rows = _rows(data, display)
    issues: list[ImportIssue] = []
    header_line, header = _first_non_empty(rows)
    if header is None:
        raise InventoryFileError(display, [ImportIssue(None, None, "no header row: the file is empty")])
    columns, header_issues, warnings = _map_header(header_line, header)
    issues.extend(header_issues)
    if "name" not in columns.values():
        issues.append(ImportIssue(header_line, "nom/name", "required column missing (the product's name)"))
    if issues:
        raise InventoryFileError(display, issues)

    resolver = CatalogResolver(catalog) if catalog is not None else None
    headers = {name: _cell_text(header[index]) for index, name in columns.items()}
    entries: list[DeclaredEntry] = []
    first_line: dict[str, int] = {}
    for line, cells in rows:
        if all(_cell_text(cell) == "" for cell in cells):
            continue
        if len(cells) > len(header) and any(_cell_text(cell) for cell in cells[len(header) :]):
            issues.append(ImportIssue(line, None, f"{len(cells)} cells for {len(header)} columns"))
            continue
        values = {name: cells[index] for index, name in columns.items() if index < len(cells)}
        entry, row_issues = _validate(_Row(line, values, headers), resolver)
        issues.extend(row_issues)
        if entry is None:
            continue
        if entry.ref in first_line:
            column = headers.get("ref", "nom/name")
            message = f"duplicate entry {entry.ref!r}: already on line {first_line[entry.ref]}"
            issues.append(ImportIssue(line, column, message))
            continue
        first_line[entry.ref] = line
        entries.append(entry)
    if issues:
        raise InventoryFileError(display, issues[:MAX_ERRORS], max(0, len(issues) - MAX_ERRORS))
    return InventoryFile(display, entries, warnings)


def _first_non_empty(rows: Iterable[tuple[int, list[Any]]]) -> tuple[int, list[Any] | None]:
    for line, cells in rows:
        if any(_cell_text(cell) for cell in cells):
            return line, cells
    return 0, None


def _map_header(
    line: int, header: Sequence[Any]
) -> tuple[dict[int, str], list[ImportIssue], list[ImportIssue]]:
    columns: dict[int, str] = {}
    seen: dict[str, str] = {}
    issues: list[ImportIssue] = []
    warnings: list[ImportIssue] = []
    for index, cell in enumerate(header):
        label = _cell_text(cell)
        if not label:
            continue
        name = _ALIAS_TO_FIELD.get(fold(label))
        if name is None:
            warnings.append(ImportIssue(line, label, "unknown column, ignored"))
            continue
        if name in seen:
            issues.append(ImportIssue(line, label, f"same meaning as column {seen[name]!r}"))
            continue
        seen[name] = label
        columns[index] = name
    return columns, issues, warnings


def _validate(row: _Row, resolver: CatalogResolver | None) -> tuple[DeclaredEntry | None, list[ImportIssue]]:
    name = row.text("name")
    if name is None and not any(i.column == row.headers.get("name") for i in row.issues):
        row.fail("name", "empty: every entry needs a name")
    vendor = row.text("vendor")
    ref = row.text("ref", 128)
    catalog_id = row.text("catalog_id", 128)
    if catalog_id is not None and resolver is not None and catalog_id not in resolver.catalog.by_id:
        row.fail("catalog_id", f"{catalog_id!r} is not a product of the catalogue")
        catalog_id = None
    deployment = row.text("deployment", 64)
    if deployment is not None:
        canonical = _DEPLOYMENT_ALIASES.get(fold(deployment))
        if canonical is None:
            choices = ", ".join(DEPLOYMENTS)
            row.fail("deployment", f"{deployment!r} is not one of {choices} (or cloud, sur site…)")
        deployment = canonical
    category = row.text("category", 64)
    details: dict[str, Any] = {}
    for key in DETAIL_FIELDS:
        value: Any = row.tristate(key) if key in _TRISTATE_DETAILS else row.text(key, MAX_DETAIL_TEXT)
        if value is not None:
            details[key] = value
    workers = row.raw("workers_informed")
    if isinstance(workers, datetime | date):
        details["workers_informed"] = workers.isoformat()[:10]
    entry_fields: dict[str, Any] = {
        "service": row.text("service"),
        "owner": row.text("owner"),
        "is_dmn": row.boolean("is_dmn"),
        "is_ai": row.boolean("is_ai"),
        "hosts": row.listed("hosts", canonical_host),
        "ips": row.listed("ips", _ip),
        "macs": row.listed("macs", _mac),
        "ae_titles": row.listed("ae_titles", _ae_title),
        "declared_on": row.when("declared_on"),
    }
    if row.issues or name is None:
        return None, row.issues
    if catalog_id is None and resolver is not None:
        catalog_id = resolver.resolve(vendor, name)
    return (
        DeclaredEntry(
            line=row.line,
            ref=ref or derived_ref(vendor, name),
            name=name,
            vendor=vendor,
            category=category,
            catalog_id=catalog_id,
            deployment=deployment,
            details=details,
            **entry_fields,
        ),
        [],
    )


# -- writing --------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    return value


def as_utc(value: datetime) -> datetime:
    """Return an aware UTC datetime (SQLite hands back naive ones, which are UTC by convention)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def entry_fields(entry: InventoryEntry) -> dict[str, Any]:
    """The declared fields of a stored entry (times aware, in UTC): what a re-import compares."""
    return {
        "name": entry.name,
        "vendor": entry.vendor,
        "category": entry.category,
        "catalog_id": entry.catalog_id,
        "service": entry.service,
        "owner": entry.owner,
        "is_dmn": entry.is_dmn,
        "is_ai": entry.is_ai,
        "hosts": list(entry.hosts or ()),
        "ips": list(entry.ips or ()),
        "macs": list(entry.macs or ()),
        "ae_titles": list(entry.ae_titles or ()),
        "deployment": entry.deployment,
        "declared_on": None if entry.declared_on is None else as_utc(entry.declared_on),
        "details": dict(entry.details or {}),
    }


def apply_inventory(
    session: Session,
    site: str,
    entries: Sequence[DeclaredEntry],
    *,
    source: str,
    now: datetime,
    deactivate_missing: bool = True,
    dry_run: bool = False,
) -> ImportResult:
    """Create, update and deactivate the site's entries to match ``entries``; log every change.

    Runs in the caller's transaction (commit or roll back there); with ``dry_run`` nothing is
    added to the session, the result says what would change.
    """
    actor = f"import:{source}"[:128]
    result = ImportResult()
    existing = {
        entry.ref: entry
        for entry in session.scalars(select(InventoryEntry).where(InventoryEntry.site == site))
    }
    for declared in entries:
        new = declared.columns()
        entry = existing.get(declared.ref)
        if entry is None:
            result.created.append(declared.ref)
            if not dry_run:
                row = InventoryEntry(site=site, ref=declared.ref, active=True, created_at=now, updated_at=now)
                for key, value in new.items():
                    setattr(row, key, value)
                session.add(row)
                initial = {key: [None, value] for key, value in new.items() if value not in (None, [], {})}
                _log(session, site, declared.ref, "imported", actor, now, initial)
            continue
        old = entry_fields(entry)
        changes = {key: [old[key], value] for key, value in new.items() if old[key] != value}
        if not entry.active:
            changes["active"] = [False, True]
        if not changes:
            result.unchanged.append(declared.ref)
            continue
        result.updated[declared.ref] = {key: [_jsonable(a), _jsonable(b)] for key, (a, b) in changes.items()}
        if not dry_run:
            for key, value in new.items():
                setattr(entry, key, value)
            entry.active = True
            entry.updated_at = now
            _log(session, site, declared.ref, "updated", actor, now, changes)
    if deactivate_missing:
        listed = {declared.ref for declared in entries}
        for ref, entry in sorted(existing.items()):
            if ref in listed or not entry.active:
                continue
            result.deactivated.append(ref)
            if not dry_run:
                entry.active = False
                entry.updated_at = now
                _log(session, site, ref, "deactivated", actor, now, {"active": [True, False]})
    if not dry_run:
        session.flush()
    return result


def _log(
    session: Session, site: str, ref: str, action: str, actor: str, now: datetime, changes: Mapping[str, Any]
) -> None:
    session.add(
        ChangeLogEntry(
            ts=now,
            site=site,
            subject=f"entry:{ref}"[:200],
            action=action,
            actor=actor,
            changes={key: [_jsonable(v) for v in pair] for key, pair in changes.items()},
        )
    )


def import_inventory(
    session: Session,
    path: Path | str,
    site: str,
    *,
    now: datetime,
    catalog: Catalog | None = None,
    deactivate_missing: bool = True,
    dry_run: bool = False,
) -> ImportResult:
    """Read, validate and apply an inventory file (nothing is written when it has any error)."""
    inventory = read_inventory(path, catalog)
    result = apply_inventory(
        session,
        site,
        inventory.entries,
        source=inventory.name,
        now=now,
        deactivate_missing=deactivate_missing,
        dry_run=dry_run,
    )
    result.warnings.extend(inventory.ignored_columns)
    return result
