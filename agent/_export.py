"""The cartographie (DESIGN §9): one row per product or device per site, in five formats.

``cartographie(session, site, now)`` is the one function that builds the reconciled rows; the
export, the demo's table and the web UI all read it. A row puts what the sensor knows (catalogue
facts, network identifiers, first/last seen, endpoints, services, evidence) beside what people
declared (inventory entries) and decided (the latest review), with both statuses of DESIGN §1 and
the HAS split (``has_scope``). Column names follow the regulatory note §8.

Formats and their choices:

- **CSV** for a French Excel: UTF-8 with a BOM, ``;`` separator, CRLF, dates ``JJ/MM/AAAA HH:MM`` in
  the export's time zone (default Europe/Paris, said in the header block), decimal commas, lists
  joined by ``, ``. A header block of ``#`` lines (export time, site, versions, settings) comes
  before the column row. Formula injection is neutralised: a cell starting with ``=``, ``+``,
  ``-``, ``@``, tab or CR gets a leading ``'`` (OWASP), so a hostile SNI cannot run in Excel.
- **XLSX** (openpyxl): the same columns, real date cells, every text cell stored as text (a
  value starting with ``=`` is never a formula), a second sheet with the header block.
- **JSON**: ``{"meta": {...}, "rows": [...]}``, ISO 8601 UTC dates, each row with its change
  history; ``rows_from_json`` reads it back into the same rows.
- **CycloneDX 1.6** (cyclonedx-python-lib): SaaS products as ``services`` (endpoints: the hosts
  seen), devices, on-premise software and models as ``components``; statuses and facts as
  ``lanterne:*`` properties.
- **HTML**: a printable report (Jinja2, autoescaped, inline CSS, no external resource), grouped by
  HAS scope.

Privacy (DESIGN §10): the IPs and MAC prefixes of a SaaS or desktop product's endpoints are its
*users'* workstations, so they are not listed (only counts, services and VLANs); endpoints stored
pseudonymised (keyed hashes) contribute no address at all.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, tzinfo
from importlib import metadata
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent._reconcile import USER_SIDE_DEPLOYMENTS, ReconcileConfig, ReconciledProduct, compute
from agent._review import ReviewPolicy, current_decision, latest_reviews, open_alerts
from fingerprints import AI_CATEGORIES, Catalog, Product, load_catalog
from store._inventory import as_utc
from store._models import ChangeLogEntry, InventoryEntry, ReconciliationStatus

#: Namespace of the stable row ids: uuid5(namespace, "<site>/<product key>").
ROW_NAMESPACE: Final = uuid.UUID("8d5e07b3-3a0e-4d2c-9a57-6a1b8f2c4e11")
DEFAULT_TIMEZONE: Final = "Europe/Paris"
FORMULA_TRIGGERS: Final = ("=", "+", "-", "@", "\t", "\r")
MEDICAL_CLASSES: Final = frozenset({"I", "IIa", "IIb", "III"})
HIGH_RISK_CLASSES: Final = frozenset({"IIa", "IIb", "III"})
HAS_SCOPES: Final = ("dmn_usage_professionnel", "outil_organisation_soins", "hors_perimetre")
HAS_SCOPE_LABELS: Final = {
    "dmn_usage_professionnel": "Dispositifs médicaux numériques à usage professionnel",
    "outil_organisation_soins": "Outils numériques (IA) d'organisation des soins, sans visée médicale",
    "hors_perimetre": "Hors périmètre des critères IA/DMN",
}
MAX_HISTORY: Final = 200


@dataclass(frozen=True, slots=True)
class CartographieRow:
    """One product (or device) at one site: sensor facts, declarations, decisions, both statuses."""

    entry_id: str
    site: str
    product_key: str
    vendor: str | None
    product: str
    version: str | None
    category: str | None
    is_ai: str
    medical_purpose: str
    mdr_class: str
    ai_act_risk: str
    deployment_mode: str | None
    hosting_location: str | None
    hds: str | None
    network_hosts: tuple[str, ...]
    network_ips: tuple[str, ...]
    mac_ouis: tuple[str, ...]
    ae_titles: tuple[str, ...]
    first_seen: datetime | None
    last_seen: datetime | None
    observation_count: int
    endpoints: int
    services: tuple[str, ...]
    vlans: tuple[int, ...]
    matched_signals: tuple[str, ...]
    confidence: float | None
    catalog_version: str | None
    declared_in_cartographie: bool
    cartographie_ref: tuple[str, ...]
    declared_name: str | None
    owner: str | None
    technical_owner: str | None
    service: str | None
    human_oversight_owner: str | None
    processes_health_data: str | None
    dpia_ref: str | None
    gdpr_record_ref: str | None
    training_status: str | None
    incident_contact: str | None
    declared_on: datetime | None
    review_decision: str
    decided_by: str | None
    decision_date: datetime | None
    rationale: str | None
    conditions: str | None
    conditions_expire: datetime | None
    next_review_due: datetime | None
    reconciliation_status: str
    mismatch: str | None
    has_scope: str
    open_alerts: int
    history: tuple[Mapping[str, Any], ...] = field(default=(), compare=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ISO 8601 UTC dates, lists for tuples."""
        return {name: _json_value(value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CartographieRow:
        """Rebuild a row from its JSON form."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            value = data.get(item.name)
            if item.name in _DATE_FIELDS and value is not None:
                value = datetime.fromisoformat(value)
            elif item.name == "history":
                value = tuple(value or ())
            elif isinstance(value, list):
                value = tuple(value)
            values[item.name] = value
        return cls(**values)


COLUMNS: Final = tuple(item.name for item in fields(CartographieRow) if item.name != "history")
_DATE_FIELDS: Final = frozenset(
    {"first_seen", "last_seen", "declared_on", "decision_date", "conditions_expire", "next_review_due"}
)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class ExportMeta:
    """The header block: when, where, with which versions and settings."""

    exported_at: datetime
    site: str
    lanterne_version: str
    catalog_version: str
    lookback_days: int
    review_interval_months: int
    timezone: str
    counts: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "title": "Lanterne — cartographie des outils d'IA et des DMN",
            "exported_at": as_utc(self.exported_at).isoformat(),
            "site": self.site,
            "lanterne_version": self.lanterne_version,
            "catalog_version": self.catalog_version,
            "lookback_days": self.lookback_days,
            "review_interval_months": self.review_interval_months,
            "timezone": self.timezone,
            "counts": dict(self.counts),
        }


def lanterne_version() -> str:
    """The installed version of Lanterne."""
    try:
        return metadata.version("lanterne")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- building the rows ----------------------------------------------------------------------------


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _first(values: Iterable[Any]) -> Any:
    return next((value for value in values if value not in (None, "")), None)


def _mdr(product: Product | None) -> str:
    if product is None:
        return "unknown"
    value = str(product.mdr_class)
    return "not_md" if value == "none" else value


def _row(
    product: ReconciledProduct,
    site: str,
    entries: Sequence[InventoryEntry],
    catalog: Catalog,
    review: Any,
    alerts: int,
    history: Sequence[Mapping[str, Any]],
) -> CartographieRow:
    item = catalog.by_id.get(product.product_id or "")
    details: list[Mapping[str, Any]] = [entry.details or {} for entry in entries]

    def declared(key: str) -> Any:
        return _first(detail.get(key) for detail in details)

    declared_ai = _first(entry.is_ai for entry in entries)
    declared_dmn = _first(entry.is_dmn for entry in entries)
    is_ai = declared_ai if declared_ai is not None else product.is_ai
    medical = declared_dmn if declared_dmn is not None else product.is_medical
    mdr_class = declared("mdr_class") or _mdr(item)
    if medical is None and mdr_class in MEDICAL_CLASSES:
        medical = True
    if is_ai is None and product.category in AI_CATEGORIES:
        is_ai = True  # an unnamed product of an AI category: treat as AI until a person says otherwise
    suggested = "high_risk_6_1" if is_ai and mdr_class in HIGH_RISK_CLASSES else "unknown"
    if medical:
        scope = "dmn_usage_professionnel"
    elif is_ai:
        scope = "outil_organisation_soins"
    else:
        scope = "hors_perimetre"
    observed = product.observed_product
    saas = product.deployment in USER_SIDE_DEPLOYMENTS
    decision = current_decision(review)
    return CartographieRow(
        entry_id=str(uuid.uuid5(ROW_NAMESPACE, f"{site}/{product.key}")),
        site=site,
        product_key=product.key,
        vendor=product.vendor,
        product=product.name,
        version=declared("version"),
        category=product.category,
        is_ai=_yes_no(is_ai),
        medical_purpose=_yes_no(medical),
        mdr_class=mdr_class,
        ai_act_risk=declared("ai_act_risk") or suggested,
        deployment_mode=product.deployment,
        hosting_location=declared("hosting_location")
        or (None if item is None else str(item.hosting_location)),
        hds=declared("hds_certified") or (None if item is None else str(item.hds)),
        network_hosts=tuple(sorted(observed.hosts)) if observed else (),
        network_ips=tuple(sorted(observed.ips)) if observed and not saas else (),
        mac_ouis=tuple(sorted({mac[:8] for mac in observed.macs})) if observed and not saas else (),
        ae_titles=tuple(sorted(observed.ae_titles)) if observed else (),
        first_seen=product.first_seen,
        last_seen=product.last_seen,
        observation_count=observed.observations if observed else 0,
        endpoints=product.endpoints,
        services=tuple(sorted(observed.services)) if observed else (),
        vlans=tuple(sorted(observed.vlans)) if observed else (),
        matched_signals=tuple(sorted(observed.signals)[:50]) if observed else (),
        confidence=product.confidence,
        catalog_version=(observed.catalog_version or None) if observed else None,
        declared_in_cartographie=bool(entries),
        cartographie_ref=tuple(product.entry_refs),
        declared_name=_first(entry.name for entry in entries),
        owner=_first(entry.owner for entry in entries),
        technical_owner=declared("technical_owner"),
        service=", ".join(sorted({entry.service for entry in entries if entry.service})) or None,
        human_oversight_owner=declared("human_oversight_owner"),
        processes_health_data=declared("processes_health_data"),
        dpia_ref=declared("dpia_ref"),
        gdpr_record_ref=declared("gdpr_record_ref"),
        training_status=declared("training_status"),
        incident_contact=declared("incident_contact"),
        declared_on=_first(None if e.declared_on is None else as_utc(e.declared_on) for e in entries),
        review_decision=str(decision),
        decided_by=None if review is None else review.decided_by,
        decision_date=None if review is None else as_utc(review.decided_at),
        rationale=None if review is None else review.reason,
        conditions=None if review is None else review.conditions,
        conditions_expire=None if review is None or review.expires_at is None else as_utc(review.expires_at),
        next_review_due=None
        if review is None or review.next_review_due is None
        else as_utc(review.next_review_due),
        reconciliation_status=str(product.status),
        mismatch=product.mismatch,
        has_scope=scope,
        open_alerts=alerts,
        history=tuple(history),
    )


def cartographie(
    session: Session,
    site: str,
    now: datetime,
    *,
    config: ReconcileConfig | None = None,
    catalog: Catalog | None = None,
) -> list[CartographieRow]:
    """The reconciled rows of a site, sorted by product key (reads only; deterministic)."""
    catalog = catalog or load_catalog()
    products = compute(session, site, now, config=config, catalog=catalog)
    entry_ids = sorted({entry_id for product in products for entry_id in product.entry_ids})
    entries: dict[int, InventoryEntry] = {}
    if entry_ids:
        entries = {
            e.id: e for e in session.scalars(select(InventoryEntry).where(InventoryEntry.id.in_(entry_ids)))
        }
    reviews = latest_reviews(session, site)
    alert_counts: dict[str, int] = {}
    for alert in open_alerts(session, site):
        alert_counts[alert.product_key] = alert_counts.get(alert.product_key, 0) + 1
    history = _history(session, site)
    rows = []
    for product in products:
        subjects = [f"product:{product.key}", *(f"entry:{ref}" for ref in product.entry_refs)]
        items = sorted(
            (item for subject in subjects for item in history.get(subject, ())),
            key=lambda item: (item["ts"], item["id"]),
        )[-MAX_HISTORY:]
        rows.append(
            _row(
                product,
                site,
                [entries[i] for i in product.entry_ids if i in entries],
                catalog,
                reviews.get(product.key),
                alert_counts.get(product.key, 0),
                [{key: value for key, value in item.items() if key != "id"} for item in items],
            )
        )
    return rows


def _history(session: Session, site: str) -> dict[str, list[dict[str, Any]]]:
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for row in session.scalars(
        select(ChangeLogEntry)
        .where(ChangeLogEntry.site == site)
        .order_by(ChangeLogEntry.ts, ChangeLogEntry.id)
    ):
        by_subject.setdefault(row.subject, []).append(
            {
                "id": row.id,
                "ts": as_utc(row.ts).isoformat(),
                "subject": row.subject,
                "action": row.action,
                "actor": row.actor,
                "changes": row.changes,
            }
        )
    return by_subject


def export_meta(
    rows: Sequence[CartographieRow],
    site: str,
    now: datetime,
    *,
    catalog: Catalog | None = None,
    config: ReconcileConfig | None = None,
    policy: ReviewPolicy | None = None,
    timezone: str = DEFAULT_TIMEZONE,
) -> ExportMeta:
    """The header block of an export."""
    config = config or ReconcileConfig()
    counts = {str(status): 0 for status in ReconciliationStatus}
    for row in rows:
        counts[row.reconciliation_status] = counts.get(row.reconciliation_status, 0) + 1
    for scope in HAS_SCOPES:
        counts[scope] = sum(1 for row in rows if row.has_scope == scope)
    return ExportMeta(
        exported_at=now,
        site=site,
        lanterne_version=lanterne_version(),
        catalog_version=(catalog or load_catalog()).version,
        lookback_days=config.lookback.days,
        review_interval_months=(policy or ReviewPolicy()).review_interval_months,
        timezone=timezone,
        counts=counts,
    )


def findings(rows: Iterable[CartographieRow]) -> int:
    """How many rows are shadow-IT findings (undeclared or unknown tools seen)."""
    wanted = {str(ReconciliationStatus.UNDECLARED_OBSERVED), str(ReconciliationStatus.UNKNOWN_OBSERVED)}
    return sum(1 for row in rows if row.reconciliation_status in wanted)


# -- CSV ------------------------------------------------------------------------------------------


def neutralise(cell: str) -> str:
    """Defuse a spreadsheet formula: prefix ``'`` to a cell starting with = + - @ tab or CR."""
    return "'" + cell if cell.startswith(FORMULA_TRIGGERS) else cell


def _zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def _local(value: datetime, zone: tzinfo) -> datetime:
    return as_utc(value).astimezone(zone)


def _csv_cell(value: Any, zone: tzinfo) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return _local(value, zone).strftime("%d/%m/%Y %H:%M")
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".").replace(".", ",")
    if isinstance(value, tuple):
        return neutralise(", ".join(str(item) for item in value))
    return neutralise(str(value))


def _header_lines(meta: ExportMeta) -> list[tuple[str, str]]:
    data = meta.to_dict()
    lines = [(key, str(data[key])) for key in data if key not in ("counts", "title")]
    lines += [(f"count_{key}", str(value)) for key, value in meta.counts.items()]
    return lines


def to_csv(rows: Sequence[CartographieRow], meta: ExportMeta) -> bytes:
    """The cartographie as a CSV for a French Excel (see the module docstring)."""
    zone = _zone(meta.timezone)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([f"# {meta.to_dict()['title']}"])
    for key, value in _header_lines(meta):
        writer.writerow([f"# {key}", neutralise(value)])
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(getattr(row, name), zone) for name in COLUMNS])
    return b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8")


# -- XLSX -----------------------------------------------------------------------------------------


def to_xlsx(rows: Sequence[CartographieRow], meta: ExportMeta) -> bytes:
    """The cartographie as an Excel workbook (sheet ``cartographie`` and sheet ``export``)."""
    from openpyxl import Workbook  # noqa: PLC0415 - openpyxl is only imported for this format
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # noqa: PLC0415
    from openpyxl.styles import Font  # noqa: PLC0415
    from openpyxl.utils import get_column_letter  # noqa: PLC0415

    zone = _zone(meta.timezone)
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "cartographie"
    sheet.append(list(COLUMNS))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        values: list[Any] = []
        for name in COLUMNS:
            value = getattr(row, name)
            if isinstance(value, datetime):
                value = _local(value, zone).replace(tzinfo=None)  # Excel has no time zones
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            elif isinstance(value, tuple):
                value = ", ".join(str(item) for item in value)
            if isinstance(value, str):
                value = ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
            values.append(value)
        sheet.append(values)
    for line in sheet.iter_rows(min_row=2):
        for cell in line:
            if isinstance(cell.value, str):
                cell.data_type = "s"  # openpyxl would store "=..." as a formula: text, always
            elif isinstance(cell.value, datetime):
                cell.number_format = "DD/MM/YYYY HH:MM"
    sheet.freeze_panes = "D2"
    sheet.auto_filter.ref = sheet.dimensions
    for index, name in enumerate(COLUMNS, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = max(12, min(40, len(name) + 4))
    info = workbook.create_sheet("export")
    info.append(["title", meta.to_dict()["title"]])
    for key, value in _header_lines(meta):
        info.append([key, value])
    for line in info.iter_rows():
        for cell in line:
            cell.data_type = "s"
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


# -- JSON -----------------------------------------------------------------------------------------


def to_json(rows: Sequence[CartographieRow], meta: ExportMeta) -> bytes:
    """The cartographie as JSON, rows with their change history."""
    document = {"meta": meta.to_dict(), "columns": list(COLUMNS), "rows": [row.to_dict() for row in rows]}
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def rows_from_json(data: bytes | str) -> tuple[dict[str, Any], list[CartographieRow]]:
    """Read a JSON export back: its meta block and its rows."""
    document = json.loads(data)
    return document["meta"], [CartographieRow.from_dict(row) for row in document["rows"]]


# -- CycloneDX ------------------------------------------------------------------------------------

_CDX_PROPERTIES: Final = (
    "reconciliation_status",
    "review_decision",
    "has_scope",
    "product_key",
    "category",
    "is_ai",
    "medical_purpose",
    "mdr_class",
    "ai_act_risk",
    "deployment_mode",
    "hosting_location",
    "hds",
    "first_seen",
    "last_seen",
    "endpoints",
    "observation_count",
    "confidence",
    "catalog_version",
    "declared_in_cartographie",
    "cartographie_ref",
    "owner",
    "service",
    "human_oversight_owner",
    "processes_health_data",
    "dpia_ref",
    "training_status",
    "decided_by",
    "decision_date",
    "rationale",
    "conditions",
    "conditions_expire",
    "next_review_due",
    "mismatch",
    "services",
    "vlans",
    "network_ips",
    "mac_ouis",
    "ae_titles",
    "open_alerts",
)
_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


def _cdx_value(value: Any) -> str | None:
    if value is None or value in ((), ""):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def to_cyclonedx(rows: Sequence[CartographieRow], meta: ExportMeta) -> bytes:
    """The cartographie as a CycloneDX 1.6 JSON BOM (services for SaaS, components otherwise)."""
    # cyclonedx-python-lib is imported here: only this format pays for it.
    from cyclonedx.model import Property, XsUri  # noqa: PLC0415
    from cyclonedx.model.bom import Bom, BomMetaData  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415
    from cyclonedx.model.contact import OrganizationalEntity  # noqa: PLC0415
    from cyclonedx.model.service import Service  # noqa: PLC0415
    from cyclonedx.model.tool import ToolRepository  # noqa: PLC0415
    from cyclonedx.output.json import JsonV1Dot6  # noqa: PLC0415

    def properties(row: CartographieRow) -> list[Any]:
        found = []
        for name in _CDX_PROPERTIES:
            value = _cdx_value(getattr(row, name))
            if value is not None:
                found.append(Property(name=f"lanterne:{name}", value=value))
        return found

    bom = Bom(
        metadata=BomMetaData(
            timestamp=meta.exported_at,
            tools=ToolRepository(
                components=[
                    Component(type=ComponentType.APPLICATION, name="lanterne", version=meta.lanterne_version)
                ]
            ),
            properties=[
                Property(name="lanterne:site", value=meta.site),
                Property(name="lanterne:catalog_version", value=meta.catalog_version),
                Property(name="lanterne:lookback_days", value=str(meta.lookback_days)),
                Property(name="lanterne:review_interval_months", value=str(meta.review_interval_months)),
            ],
        )
    )
    for row in rows:
        provider = OrganizationalEntity(name=row.vendor) if row.vendor else None
        description = row.mismatch or None
        if row.deployment_mode == "saas":
            endpoints = [XsUri(f"https://{host}") for host in row.network_hosts if set(host) <= _HOST_CHARS]
            bom.services.add(
                Service(
                    name=row.product,
                    bom_ref=row.entry_id,
                    provider=provider,
                    group=row.vendor,
                    version=row.version,
                    description=description,
                    endpoints=endpoints,
                    properties=properties(row),
                )
            )
            continue
        if row.category == "model_hub" and row.deployment_mode != "saas":
            kind = ComponentType.MACHINE_LEARNING_MODEL
        elif row.deployment_mode in ("embedded_device", None) or row.medical_purpose == "yes":
            kind = ComponentType.DEVICE
        else:
            kind = ComponentType.APPLICATION
        bom.components.add(
            Component(
                name=row.product,
                type=kind,
                bom_ref=row.entry_id,
                manufacturer=provider,
                group=row.vendor,
                version=row.version,
                description=description,
                properties=properties(row),
            )
        )
    return JsonV1Dot6(bom).output_as_string(indent=2).encode("utf-8")


# -- HTML -----------------------------------------------------------------------------------------


def to_html(rows: Sequence[CartographieRow], meta: ExportMeta) -> bytes:
    """The cartographie as a printable HTML report (Jinja2 with autoescape)."""
    from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: PLC0415

    environment = Environment(
        loader=PackageLoader("agent", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    zone = _zone(meta.timezone)

    def when(value: datetime | None) -> str:
        return "" if value is None else _local(value, zone).strftime("%d/%m/%Y %H:%M")

    def listed(value: Iterable[Any]) -> str:
        return ", ".join(str(item) for item in value)

    environment.filters["when"] = when
    environment.filters["listed"] = listed
    groups = [
        (scope, HAS_SCOPE_LABELS[scope], [row for row in rows if row.has_scope == scope])
        for scope in HAS_SCOPES
    ]
    template = environment.get_template("report.html.j2")
    return template.render(meta=meta, groups=groups, rows=rows, statuses=list(ReconciliationStatus)).encode(
        "utf-8"
    )


#: Each format and how it is written.
FORMATS: Final[Mapping[str, Callable[[Sequence[CartographieRow], ExportMeta], bytes]]] = {
    "csv": to_csv,
    "xlsx": to_xlsx,
    "json": to_json,
    "cyclonedx": to_cyclonedx,
    "html": to_html,
}
#: Formats that are text (may go to stdout).
TEXT_FORMATS: Final = frozenset({"csv", "json", "cyclonedx", "html"})
