"""The cartographie and its five formats: columns, HAS split, CSV injection, XLSX, JSON, CycloneDX, HTML."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openpyxl
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from sqlalchemy.orm import Session

from agent._export import (
    COLUMNS,
    ROW_NAMESPACE,
    CartographieRow,
    ExportMeta,
    cartographie,
    export_meta,
    findings,
    neutralise,
    rows_from_json,
    to_csv,
    to_cyclonedx,
    to_html,
    to_json,
    to_xlsx,
)
from agent._reconcile import reconcile
from agent._review import decide
from fingerprints import Catalog
from tests.agent.store_backends import add_detection, add_endpoint, add_entry, database_url
from tests.store.dburl import BACKENDS

SITE = "ch-test"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RECENT = (NOW - timedelta(days=3), NOW - timedelta(days=1))
#: What an attacker can put in an SNI or a host name, and what a careless person types.
HOSTILE = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1,2)", "\tx=1", "\rx=1"]


@pytest.fixture
def rows(session: Session, catalog: Catalog) -> list[CartographieRow]:
    pc = add_endpoint(session, SITE, "10.1.0.10", mac="00:00:5e:00:53:10", service="Urgences", vlan=110)
    gateway = add_endpoint(session, SITE, "10.1.0.50", mac="00:00:5e:00:53:50", service="Imagerie")
    pump = add_endpoint(session, SITE, "10.1.0.20", mac="00:12:21:00:00:01", service="Réanimation")
    add_detection(session, SITE, "openai-chatgpt", pc, seen=RECENT, hosts=["chatgpt.com", *HOSTILE])
    add_detection(session, SITE, "nabla", pc, seen=RECENT, hosts=["eu.api.nabla.com"])
    add_detection(session, SITE, "gleamer", gateway, seen=RECENT, signals=[("dicom.association", "BONEVIEW")])
    add_detection(
        session, SITE, "unknown", pump, seen=RECENT, vendor="B. Braun", category="medical_device",
        signals=[("mac_oui", "00:12:21:00:00:01")],
    )  # fmt: skip
    add_entry(
        session, SITE, "INV-1", "Nabla", catalog_id="nabla", owner='=HYPERLINK("http://x")',
        service="Urgences", is_ai=True, is_dmn=False, deployment="saas",
        details={"human_oversight_owner": "Médecin <script>alert(1)</script>", "dpia_ref": "AIPD-1",
                 "processes_health_data": "yes", "training_status": "oui"},
        declared_on=datetime(2026, 3, 15, tzinfo=UTC),
    )  # fmt: skip
    add_entry(
        session, SITE, "INV-2", "Passerelle (BoneView)", catalog_id="gleamer", is_ai=True, is_dmn=True,
        deployment="on_prem", details={"mdr_class": "IIa"},
    )  # fmt: skip
    add_entry(session, SITE, "INV-3", "@SUM(1+1)", vendor="Éditeur", is_ai=True, is_dmn=False)
    reconcile(session, SITE, NOW, catalog=catalog)
    decide(
        session, "openai-chatgpt", "approved_with_conditions", "Pilote; pas de données patient", by="rssi",
        now=NOW, site=SITE, conditions="Compte entreprise", expires_at=NOW + timedelta(days=90),
    )  # fmt: skip
    return cartographie(session, SITE, NOW, catalog=catalog)


@pytest.fixture
def meta(rows: list[CartographieRow], catalog: Catalog) -> ExportMeta:
    return export_meta(rows, SITE, NOW, catalog=catalog)


def by_key(rows: list[CartographieRow]) -> dict[str, CartographieRow]:
    return {row.product_key: row for row in rows}


def test_rows(rows: list[CartographieRow]) -> None:
    found = by_key(rows)
    assert {
        key: (row.reconciliation_status, row.review_decision, row.has_scope) for key, row in found.items()
    } == {
        "entry:INV-3": ("declared_not_observed", "pending_review", "outil_organisation_soins"),
        "gleamer": ("declared_observed", "pending_review", "dmn_usage_professionnel"),
        "nabla": ("declared_observed", "pending_review", "outil_organisation_soins"),
        "openai-chatgpt": ("undeclared_observed", "approved_with_conditions", "outil_organisation_soins"),
        "unknown:B. Braun": ("unknown_observed", "pending_review", "dmn_usage_professionnel"),
    }
    assert findings(rows) == 2
    chatgpt = found["openai-chatgpt"]
    assert (chatgpt.vendor, chatgpt.product, chatgpt.category, chatgpt.is_ai, chatgpt.mdr_class) == (
        "OpenAI", "ChatGPT", "llm_chat", "yes", "not_md",
    )  # fmt: skip
    assert chatgpt.network_ips == ()  # a SaaS product's endpoints are its users: not listed
    assert chatgpt.services == ("Urgences",)
    assert chatgpt.vlans == (110,)
    assert chatgpt.decided_by == "rssi"
    assert chatgpt.conditions_expire == NOW + timedelta(days=90)
    assert chatgpt.next_review_due == NOW + timedelta(days=90)
    assert chatgpt.declared_in_cartographie is False
    assert [item["action"] for item in chatgpt.history] == ["status", "alert", "decision", "alert"]
    gleamer = found["gleamer"]
    assert gleamer.ai_act_risk == "high_risk_6_1"  # AI and MDR IIa: a suggestion a person confirms
    assert gleamer.network_ips == ("10.1.0.50",)
    assert gleamer.mac_ouis == ("00:00:5e",)
    nabla = found["nabla"]
    assert nabla.declared_in_cartographie is True
    assert nabla.cartographie_ref == ("INV-1",)
    assert nabla.human_oversight_owner == "Médecin <script>alert(1)</script>"
    assert nabla.declared_on == datetime(2026, 3, 15, tzinfo=UTC)
    assert found["unknown:B. Braun"].medical_purpose == "yes"
    assert found["entry:INV-3"].first_seen is None
    # Stable identifiers: the same product at the same site always has the same entry_id.
    assert nabla.entry_id == str(uuid.uuid5(ROW_NAMESPACE, f"{SITE}/nabla"))


def test_cartographie_is_deterministic(
    session: Session, rows: list[CartographieRow], catalog: Catalog
) -> None:
    assert cartographie(session, SITE, NOW, catalog=catalog) == rows


def test_neutralise() -> None:
    assert [neutralise(value) for value in HOSTILE] == ["'" + value for value in HOSTILE]
    assert neutralise("chatgpt.com") == "chatgpt.com"
    assert neutralise("") == ""


def read_csv(data: bytes) -> tuple[list[list[str]], list[dict[str, str]]]:
    assert data.startswith(b"\xef\xbb\xbf")
    text = data[3:].decode("utf-8")
    assert "\r\n" in text
    assert "\n" not in text.replace("\r\n", "").replace("\r", "")  # only CRLF line ends (CR inside cells)
    lines = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    header = [line for line in lines if line and line[0].startswith("#")]
    table = [line for line in lines if line and not line[0].startswith("#")]
    return header, [dict(zip(table[0], line, strict=True)) for line in table[1:]]


def test_csv_for_french_excel(rows: list[CartographieRow], meta: ExportMeta) -> None:
    header, table = read_csv(to_csv(rows, meta))
    assert header[0] == ["# Lanterne — cartographie des outils d'IA et des DMN"]
    assert ["# site", SITE] in header
    assert ["# timezone", "Europe/Paris"] in header
    assert len(table) == len(rows)
    assert list(table[0]) == list(COLUMNS)
    found = {row["product_key"]: row for row in table}
    chatgpt = found["openai-chatgpt"]
    assert chatgpt["first_seen"] == "25/11/2026 13:00"  # Paris time, the way a French Excel reads dates
    assert chatgpt["confidence"] == "0,9"
    assert chatgpt["declared_in_cartographie"] == "no"
    assert found["nabla"]["owner"] == '\'=HYPERLINK("http://x")'
    assert found["entry:INV-3"]["product"] == "'@SUM(1+1)"


def test_csv_injection_every_cell(rows: list[CartographieRow], meta: ExportMeta) -> None:
    _, table = read_csv(to_csv(rows, meta))
    hosts = next(row for row in table if row["product_key"] == "openai-chatgpt")["network_hosts"]
    assert all(value in hosts for value in HOSTILE)  # kept, as text, inside the list cell
    for row in table:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    # A cell that is only a hostile value (a declared name) is defused too.
    single = next(r for r in rows if r.product_key == "openai-chatgpt")
    hostile_row = CartographieRow(**{**{n: getattr(single, n) for n in COLUMNS}, "product": HOSTILE[0]})
    _, again = read_csv(to_csv([hostile_row], meta))
    assert again[0]["product"] == "'" + HOSTILE[0]


def test_xlsx_reread(rows: list[CartographieRow], meta: ExportMeta) -> None:
    workbook = openpyxl.load_workbook(io.BytesIO(to_xlsx(rows, meta)))
    sheet = workbook["cartographie"]
    values = list(sheet.iter_rows(values_only=True))
    assert list(values[0]) == list(COLUMNS)
    table = {row[COLUMNS.index("product_key")]: dict(zip(COLUMNS, row, strict=True)) for row in values[1:]}
    assert len(table) == len(rows)
    assert table["nabla"]["owner"] == '=HYPERLINK("http://x")'
    assert table["openai-chatgpt"]["first_seen"] == datetime(2026, 11, 25, 13, 0)
    assert table["openai-chatgpt"]["endpoints"] == 1
    assert table["openai-chatgpt"]["confidence"] == 0.9
    for line in sheet.iter_rows(min_row=2):
        for cell in line:
            if isinstance(cell.value, str):
                assert cell.data_type == "s", (cell.coordinate, cell.value)  # never a formula
    export = dict(workbook["export"].iter_rows(values_only=True))
    assert export["site"] == SITE
    assert export["catalog_version"] == meta.catalog_version


def test_json_round_trip(rows: list[CartographieRow], meta: ExportMeta) -> None:
    data = to_json(rows, meta)
    document = json.loads(data)
    assert document["meta"]["site"] == SITE
    assert document["meta"]["counts"]["undeclared_observed"] == 1
    assert document["columns"] == list(COLUMNS)
    back_meta, back = rows_from_json(data)
    assert back == rows
    assert back_meta == meta.to_dict()


def test_cyclonedx_validates_against_the_official_schema(
    rows: list[CartographieRow], meta: ExportMeta
) -> None:
    data = to_cyclonedx(rows, meta).decode()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(data)
    assert error is None, error
    document = json.loads(data)
    assert document["specVersion"] == "1.6"
    services = {service["name"]: service for service in document["services"]}
    components = {component["name"]: component for component in document["components"]}
    assert set(services) == {"ChatGPT", "Nabla"}
    assert services["ChatGPT"]["endpoints"] == ["https://chatgpt.com"]  # hostile values are not URLs
    assert services["ChatGPT"]["provider"]["name"] == "OpenAI"
    assert {name: c["type"] for name, c in components.items()} == {
        "Gleamer (BoneView, ChestView)": "device",
        "B. Braun (unidentified)": "device",
        "@SUM(1+1)": "device",
    }
    properties = {p["name"]: p["value"] for p in services["ChatGPT"]["properties"]}
    assert properties["lanterne:reconciliation_status"] == "undeclared_observed"
    assert properties["lanterne:review_decision"] == "approved_with_conditions"
    assert properties["lanterne:has_scope"] == "outil_organisation_soins"


def test_html_report(rows: list[CartographieRow], meta: ExportMeta) -> None:
    html = to_html(rows, meta).decode()
    assert "<script>" not in html
    assert "Médecin &lt;script&gt;alert(1)&lt;/script&gt;" in html
    for marker in ("src=", "href=", "@import", "url("):
        assert marker not in html  # no external resource: the report prints and archives alone
    assert html.index('id="dmn_usage_professionnel"') < html.index('id="outil_organisation_soins"')
    assert "@media print" in html
    assert "25/11/2026 13:00" in html


def test_empty_site(session: Session, catalog: Catalog) -> None:
    rows = cartographie(session, "nowhere", NOW, catalog=catalog)
    meta = export_meta(rows, "nowhere", NOW, catalog=catalog)
    assert rows == []
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(to_cyclonedx(rows, meta).decode()) is None
    assert read_csv(to_csv(rows, meta))[1] == []
    assert "Aucun produit." in to_html(rows, meta).decode()


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def cli_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from store import open_store

    with database_url(request.param, tmp_path_factory) as url:
        store = open_store(url)
        now = datetime.now(UTC)
        with store.write() as session:
            pc = add_endpoint(session, SITE, "10.1.0.10")
            recent = (now - timedelta(hours=2), now - timedelta(hours=1))
            add_detection(session, SITE, "openai-chatgpt", pc, seen=recent, hosts=["chatgpt.com", HOSTILE[0]])
            add_entry(session, SITE, "INV-1", "Nabla", catalog_id="nabla")
        store.dispose()
        yield url


def cli(db: str, *args: str) -> tuple[int, bytes, str]:
    from typer.testing import CliRunner

    from agent.cli import app

    result = CliRunner().invoke(app, list(args), env={"LANTERNE_DB": db, "LANTERNE_SITE": SITE})
    return result.exit_code, result.stdout_bytes, result.stderr


@pytest.mark.parametrize("fmt", ["csv", "json", "cyclonedx", "html"])
def test_cli_text_formats_to_stdout(cli_db: str, fmt: str) -> None:
    code, data, stderr = cli(cli_db, "export", "--format", fmt)
    assert code == 0, stderr
    assert "1 undeclared or unknown tool(s)" in stderr
    if fmt == "json":
        assert {row.product_key for row in rows_from_json(data)[1]} == {"openai-chatgpt", "nabla"}
    elif fmt == "cyclonedx":
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    elif fmt == "csv":
        assert data.startswith(b"\xef\xbb\xbf# Lanterne")
        assert b"'=cmd" in data
    else:
        assert data.startswith(b"<!DOCTYPE html>")


def test_cli_xlsx_and_exit_codes(cli_db: str, tmp_path: Path) -> None:
    assert cli(cli_db, "export", "--format", "xlsx")[0] == 2  # binary: needs -o
    assert cli(cli_db, "export", "--format", "pdf")[0] == 2
    assert cli(cli_db, "export", "--format", "csv", "--tz", "Mars/Olympus")[0] == 2
    target = tmp_path / "cartographie.xlsx"
    code, data, stderr = cli(cli_db, "export", "-f", "xlsx", "-o", str(target), "--fail-on-findings")
    assert code == 1  # the undeclared ChatGPT is a finding
    assert data == b""
    assert "wrote" in stderr
    sheet = openpyxl.load_workbook(target)["cartographie"]
    assert sheet.max_row == 3
    code, _, _ = cli(cli_db, "review", "decide", "openai-chatgpt", "-d", "approved", "-r", "ok", "--by", "x")
    assert code == 0
    # Approved, yet still undeclared: it stays a finding until the cartographie lists it.
    assert cli(cli_db, "export", "-f", "json", "--fail-on-findings")[0] == 1
