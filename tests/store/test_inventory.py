"""Declared-inventory import: encodings, dialects, headers, every malformed case, re-import history."""

from __future__ import annotations

import codecs
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fingerprints import Catalog
from store._inventory import (
    InventoryFileError,
    canonical_host,
    decode_text,
    import_inventory,
    parse_date,
    read_inventory,
)
from store._models import ChangeLogEntry, InventoryEntry

DATA = Path(__file__).resolve().parents[1] / "data" / "inventory"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
HEADER = "nom;éditeur;dmn;ia;domaines;adresses ip;adresses mac"


def write(tmp_path: Path, text: str, encoding: str = "utf-8", name: str = "inv.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def errors(path: Path, catalog: Catalog | None = None) -> list[str]:
    with pytest.raises(InventoryFileError) as caught:
        read_inventory(path, catalog)
    return [str(issue) for issue in caught.value.issues]


def count(session: Session, model: type[InventoryEntry] | type[ChangeLogEntry]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


# -- reading ------------------------------------------------------------------------------------


def test_french_excel_csv_cp1252_semicolons(catalog: Catalog) -> None:
    inventory = read_inventory(DATA / "cartographie_fr.csv", catalog)
    by_ref = {entry.ref: entry for entry in inventory.entries}
    assert list(by_ref) == ["INV-001", "INV-002", "INV-003", "INV-004"]
    chatgpt = by_ref["INV-001"]
    assert chatgpt.vendor == "OpenAI"
    assert chatgpt.catalog_id == "openai-chatgpt"
    assert chatgpt.is_ai is True
    assert chatgpt.is_dmn is False
    assert chatgpt.hosts == ("chatgpt.com", "*.openai.com")
    assert chatgpt.deployment == "saas"
    assert chatgpt.declared_on == datetime(2025, 9, 1, tzinfo=UTC)
    assert chatgpt.details["human_oversight_owner"] == "Cadre de santé A"
    assert chatgpt.details["processes_health_data"] == "no"
    assert chatgpt.details["dpia_ref"] == "AIPD-2025-01"
    gleamer = by_ref["INV-002"]
    assert gleamer.catalog_id == "gleamer"  # "Gleamer BoneView" is one of the names in brackets
    assert gleamer.ips == ("10.20.0.15",)
    assert gleamer.ae_titles == ("GLEAMER_AE",)
    assert gleamer.deployment == "on_prem"
    pumps = by_ref["INV-003"]
    assert pumps.name == "Pompes à perfusion"
    assert pumps.macs == ("00:00:5e:00:53:01", "00:00:5e:00:53:02")
    assert pumps.deployment == "embedded_device"
    assert by_ref["INV-004"].catalog_id is None
    assert [issue.column for issue in inventory.ignored_columns] == ["Colonne libre"]


def test_english_utf8_bom_commas(catalog: Catalog) -> None:
    inventory = read_inventory(DATA / "cartographie_en_bom.csv", catalog)
    assert [entry.ref for entry in inventory.entries] == ["INV-001", "INV-002"]
    assert inventory.entries[0].hosts == ("chatgpt.com", "*.openai.com")
    assert inventory.entries[1].is_dmn is True


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "utf-16"])
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_every_encoding_and_delimiter(tmp_path: Path, encoding: str, delimiter: str) -> None:
    text = f"Nom{delimiter}Éditeur{delimiter}DMN\r\nÉchographe{delimiter}Fabricant Été{delimiter}oui\r\n"
    entries = read_inventory(write(tmp_path, text, encoding)).entries
    assert [(e.name, e.vendor, e.is_dmn) for e in entries] == [("Échographe", "Fabricant Été", True)]


@pytest.mark.parametrize(
    "header",
    ["Éditeur", "editeur", "EDITEUR", " éditeur ", "Vendor", "vendor", "Fabricant"],
)
def test_header_aliases_ignore_case_accents_spaces(tmp_path: Path, header: str) -> None:
    entries = read_inventory(write(tmp_path, f"Nom;{header}\nOutil;Société\n")).entries
    assert entries[0].vendor == "Société"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("oui", True), ("Oui", True), ("YES", True), ("x", True), ("1", True), ("true", True), ("vrai", True),
     ("non", False), ("No", False), ("0", False), ("false", False), ("", None), ("inconnu", None)],
)  # fmt: skip
def test_booleans(tmp_path: Path, cell: str, expected: bool | None) -> None:
    entries = read_inventory(write(tmp_path, f"nom;ia\noutil;{cell}\n")).entries
    assert entries[0].is_ai is expected


def test_lists_split_on_commas_semicolons_pipes_newlines(tmp_path: Path) -> None:
    text = 'nom;domaines\noutil;"a.example.org, b.example.org; c.example.org|d.example.org\ne.example.org"\n'
    entry = read_inventory(write(tmp_path, text)).entries[0]
    assert entry.hosts == tuple(f"{x}.example.org" for x in "abcde")
    assert entry.line == 2


def test_hosts_idna_urls_and_wildcards() -> None:
    assert (
        canonical_host("Hôpital-Exemple.FR.")
        == "hôpital-exemple.fr".encode("idna").decode()
        == "xn--hpital-exemple-0ob.fr"
    )
    assert canonical_host("https://App.Example.org/path?q=1") == "app.example.org"
    assert canonical_host("*.Example.org") == "*.example.org"
    with pytest.raises(ValueError, match="not a valid host"):
        canonical_host("not a host")


def test_dates_french_and_iso() -> None:
    assert parse_date("05/02/2025") == datetime(2025, 2, 5, tzinfo=UTC)
    assert parse_date("05/02/2025 14:30") == datetime(2025, 2, 5, 14, 30, tzinfo=UTC)
    assert parse_date("2025-02-05") == datetime(2025, 2, 5, tzinfo=UTC)
    assert parse_date("2025-02-05T14:30:00+01:00") == datetime(2025, 2, 5, 13, 30, tzinfo=UTC)


def test_ref_derived_from_vendor_and_name_when_no_id_column(tmp_path: Path) -> None:
    entries = read_inventory(write(tmp_path, "nom;éditeur\nLe Chat;Mistral AI\n")).entries
    assert entries[0].ref == "mistral-ai-le-chat"


@pytest.mark.parametrize(
    ("name", "vendor", "expected"),
    [
        ("ChatGPT", "", "openai-chatgpt"),
        ("OpenAI ChatGPT", "", "openai-chatgpt"),
        ("chatgpt", "OpenAI", "openai-chatgpt"),
        ("Le Chat", "Mistral AI", "mistral-le-chat"),
        ("DAX Copilot", "Microsoft", "dragon-copilot"),
        ("Passerelle IA imagerie (BoneView)", "Gleamer", "gleamer"),
        ("API", "", None),
        ("Assistant", "", None),
        ("Outil maison", "Nous", None),
    ],
)
def test_catalogue_resolution(
    tmp_path: Path, catalog: Catalog, name: str, vendor: str, expected: str | None
) -> None:
    entry = read_inventory(write(tmp_path, f"nom;éditeur\n{name};{vendor}\n"), catalog).entries[0]
    assert entry.catalog_id == expected


def test_explicit_catalog_id_column(tmp_path: Path, catalog: Catalog) -> None:
    entry = read_inventory(write(tmp_path, "nom;catalog_id\nAssistant;anthropic-claude\n"), catalog).entries[
        0
    ]
    assert entry.catalog_id == "anthropic-claude"
    assert errors(write(tmp_path, "nom;catalog_id\nAssistant;no-such-product\n"), catalog) == [
        "line 2, column 'catalog_id': 'no-such-product' is not a product of the catalogue"
    ]


def test_xlsx(tmp_path: Path, catalog: Catalog) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["Identifiant", "Nom", "Éditeur", "IA", "DMN", "Date de déclaration", "Adresses IP"])
    sheet.append(["INV-9", "ChatGPT", "OpenAI", True, 0, datetime(2025, 9, 1), "10.0.0.1"])
    sheet.append([None, None, None, None, None, None, None])
    sheet.append(["INV-10", "Le Chat", "Mistral AI", "oui", "non", "02/01/2025", None])
    path = tmp_path / "inv.xlsx"
    workbook.save(path)
    entries = read_inventory(path, catalog).entries
    assert [(e.ref, e.catalog_id, e.is_ai, e.is_dmn, e.line) for e in entries] == [
        ("INV-9", "openai-chatgpt", True, False, 2),
        ("INV-10", "mistral-le-chat", True, False, 4),
    ]
    assert entries[0].declared_on == datetime(2025, 9, 1, tzinfo=UTC)
    assert entries[1].declared_on == datetime(2025, 1, 2, tzinfo=UTC)


def test_xlsx_errors_use_excel_row_numbers(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["Nom", "Adresses MAC"])
    sheet.append(["A", "00:00:5e:00:53:01"])
    sheet.append(["B", "zz:zz"])
    path = tmp_path / "inv.xlsx"
    workbook.save(path)
    assert errors(path) == ["line 3, column 'Adresses MAC': 'zz:zz' is not a MAC address (aa:bb:cc:dd:ee:ff)"]


# -- malformed files: every error with its line, nothing written ------------------------------


def test_missing_column(tmp_path: Path) -> None:
    assert errors(write(tmp_path, "éditeur;ia\nOpenAI;oui\n")) == [
        "line 1, column 'nom/name': required column missing (the product's name)"
    ]


def test_bad_boolean(tmp_path: Path) -> None:
    found = errors(write(tmp_path, f"{HEADER}\nA;X;oui;non;;;\nB;Y;peut-être;non;;;\nC;Z;oui;2;;;\n"))
    assert found == [
        "line 3, column 'dmn': 'peut-être' is not a yes/no value (oui, non, yes, no, 1, 0, x or empty)",
        "line 4, column 'ia': '2' is not a yes/no value (oui, non, yes, no, 1, 0, x or empty)",
    ]


def test_bad_ip_and_mac(tmp_path: Path) -> None:
    found = errors(write(tmp_path, f"{HEADER}\nA;X;;;;10.0.0.300;\nB;Y;;;;;00:11:22:33:44\n"))
    assert found == [
        "line 2, column 'adresses ip': '10.0.0.300' is not an IP address",
        "line 3, column 'adresses mac': '00:11:22:33:44' is not a MAC address (aa:bb:cc:dd:ee:ff)",
    ]


def test_duplicate_row_names_both_lines(tmp_path: Path) -> None:
    text = "id;nom\nINV-1;A\nINV-2;B\nINV-1;C\n"
    assert errors(write(tmp_path, text)) == [
        "line 4, column 'id': duplicate entry 'INV-1': already on line 2"
    ]
    derived = "nom;éditeur\nOutil;Société\nautre;x\noutil;SOCIÉTÉ\n"
    assert errors(write(tmp_path, derived)) == [
        "line 4, column 'nom/name': duplicate entry 'societe-outil': already on line 2"
    ]


def test_utf16_without_bom_is_refused(tmp_path: Path) -> None:
    found = errors(write(tmp_path, "nom;ia\nA;oui\n", "utf-16-le"))
    assert found == [
        "line 1: NUL byte: not a text file (UTF-16 without a byte-order mark, or binary) (byte 2)"
    ]


def test_binary_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inv.csv"
    path.write_bytes(b"nom;ia\nA;oui\n\x81\x8d\x90garbage\n")
    assert errors(path) == ["line 3: neither UTF-8 nor Windows-1252 text (byte 14)"]
    path.write_bytes(b"nom;ia\nA;oui\nB\x1b[31m;oui\n")
    assert errors(path) == ["line 3: control character '\\x1b': not a text inventory (binary?)"]


def test_old_xls_and_broken_xlsx_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "inv.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64)
    assert errors(path) == ["an old Excel .xls workbook: save it as .xlsx or CSV"]
    path = tmp_path / "inv.xlsx"
    path.write_bytes(b"PK\x03\x04 truncated")
    assert errors(path)[0].startswith("not a readable XLSX workbook")


def test_every_error_of_the_file_is_reported(tmp_path: Path) -> None:
    text = "nom;ia;adresses ip;date de déclaration;déploiement\n;oui;;;\nB;maybe;1.2.3;31/02/2025;nuage\n"
    assert errors(write(tmp_path, text)) == [
        "line 2, column 'nom': empty: every entry needs a name",
        "line 3, column 'déploiement': 'nuage' is not one of saas, on_prem, hybrid, embedded_device, "
        "desktop, unknown (or cloud, sur site…)",
        "line 3, column 'ia': 'maybe' is not a yes/no value (oui, non, yes, no, 1, 0, x or empty)",
        "line 3, column 'adresses ip': '1.2.3' is not an IP address",
        "line 3, column 'date de déclaration': '31/02/2025' is not a date (JJ/MM/AAAA or AAAA-MM-JJ)",
    ]


def test_header_problems(tmp_path: Path) -> None:
    assert errors(write(tmp_path, "nom;name\nA;B\n")) == [
        "line 1, column 'name': same meaning as column 'nom'"
    ]
    assert errors(write(tmp_path, "")) == ["no header row: the file is empty"]
    assert errors(write(tmp_path, "nom;ia\nA;oui;extra\n")) == ["line 2: 3 cells for 2 columns"]


def test_multiline_cell_reports_the_line_the_row_starts_on(tmp_path: Path) -> None:
    text = 'nom;domaines;ia\nA;"a.example.org\nb.example.org";oui\nB;;bof\n'
    assert errors(write(tmp_path, text)) == [
        "line 4, column 'ia': 'bof' is not a yes/no value (oui, non, yes, no, 1, 0, x or empty)"
    ]


def test_decode_text_bom_and_fallback() -> None:
    assert decode_text(codecs.BOM_UTF8 + "é".encode()) == "é"
    assert decode_text("é".encode("cp1252")) == "é"
    assert decode_text(codecs.BOM_UTF16_LE + "é".encode("utf-16-le")) == "é"


@pytest.mark.parametrize(
    "text",
    [
        "éditeur;ia\nOpenAI;oui\n",  # missing column
        f"{HEADER}\nA;X;bof;;;;\n",  # bad boolean
        f"{HEADER}\nA;X;;;;300.1.1.1;\n",  # bad IP
        f"{HEADER}\nA;X;;;;;00-11\n",  # bad MAC
        "id;nom\n1;A\n1;B\n",  # duplicate
    ],
)
def test_nothing_is_written_on_error(tmp_path: Path, session: Session, text: str) -> None:
    path = write(tmp_path, "nom;ia\nExisting;oui\n")
    import_inventory(session, path, "site-a", now=NOW)
    session.commit()
    before = count(session, InventoryEntry), count(session, ChangeLogEntry)
    with pytest.raises(InventoryFileError):
        import_inventory(session, write(tmp_path, text), "site-a", now=NOW)
    session.rollback()
    assert (count(session, InventoryEntry), count(session, ChangeLogEntry)) == before
    wrong = tmp_path / "utf16.csv"
    wrong.write_bytes("nom;ia\nA;oui\n".encode("utf-16-le"))
    with pytest.raises(InventoryFileError):
        import_inventory(session, wrong, "site-a", now=NOW)
    assert (count(session, InventoryEntry), count(session, ChangeLogEntry)) == before


# -- writing: create, update with history, deactivate ------------------------------------------


def test_import_then_reimport_keeps_history(tmp_path: Path, session: Session, catalog: Catalog) -> None:
    first = import_inventory(session, DATA / "cartographie_fr.csv", "site-a", now=NOW, catalog=catalog)
    session.commit()
    assert first.created == ["INV-001", "INV-002", "INV-003", "INV-004"]
    assert [w.column for w in first.warnings] == ["Colonne libre"]
    entries = {e.ref: e for e in session.scalars(select(InventoryEntry))}
    assert entries["INV-001"].catalog_id == "openai-chatgpt"
    assert entries["INV-001"].hosts == ["chatgpt.com", "*.openai.com"]
    assert entries["INV-003"].macs == ["00:00:5e:00:53:01", "00:00:5e:00:53:02"]
    assert all(e.active for e in entries.values())

    again = import_inventory(session, DATA / "cartographie_fr.csv", "site-a", now=NOW, catalog=catalog)
    session.commit()
    assert not again.changed
    assert len(again.unchanged) == 4

    text = (DATA / "cartographie_fr.csv").read_bytes().decode("cp1252").splitlines()
    text[1] = text[1].replace("Référent IA", "Nouveau référent")
    del text[4]  # INV-004 leaves the cartographie
    later = datetime(2026, 12, 1, tzinfo=UTC)
    path = write(tmp_path, "\r\n".join(text) + "\r\n", "cp1252", name="cartographie_v2.csv")
    dry = import_inventory(session, path, "site-a", now=later, catalog=catalog, dry_run=True)
    assert dry.updated == {"INV-001": {"owner": ["Référent IA", "Nouveau référent"]}}
    assert dry.deactivated == ["INV-004"]
    session.rollback()
    assert (
        session.scalars(select(InventoryEntry).where(InventoryEntry.ref == "INV-001")).one().owner
        == "Référent IA"
    )

    result = import_inventory(session, path, "site-a", now=later, catalog=catalog)
    session.commit()
    assert result.updated == dry.updated
    assert result.deactivated == ["INV-004"]
    entries = {e.ref: e for e in session.scalars(select(InventoryEntry))}
    assert entries["INV-001"].owner == "Nouveau référent"
    assert entries["INV-004"].active is False  # kept, not deleted
    log = list(session.scalars(select(ChangeLogEntry).order_by(ChangeLogEntry.id)))
    assert [(row.subject, row.action) for row in log[-2:]] == [
        ("entry:INV-001", "updated"),
        ("entry:INV-004", "deactivated"),
    ]
    assert log[-2].changes == {"owner": ["Référent IA", "Nouveau référent"]}
    assert log[-2].actor == "import:cartographie_v2.csv"
    assert log[0].action == "imported"
    assert log[0].changes["name"] == [None, "ChatGPT"]
    assert log[0].changes["declared_on"] == [None, "2025-09-01T00:00:00+00:00"]

    back = import_inventory(session, DATA / "cartographie_fr.csv", "site-a", now=later, catalog=catalog)
    session.commit()
    assert back.updated["INV-004"] == {"active": [False, True]}
    assert back.updated["INV-001"] == {"owner": ["Nouveau référent", "Référent IA"]}


def test_keep_missing_and_sites_are_separate(tmp_path: Path, session: Session) -> None:
    import_inventory(session, write(tmp_path, "nom\nA\nB\n"), "site-a", now=NOW)
    import_inventory(session, write(tmp_path, "nom\nA\n"), "site-b", now=NOW)
    result = import_inventory(
        session, write(tmp_path, "nom\nA\n"), "site-a", now=NOW, deactivate_missing=False
    )
    session.commit()
    assert result.deactivated == []
    assert result.unchanged == ["a"]
    rows = session.execute(select(InventoryEntry.site, InventoryEntry.ref, InventoryEntry.active)).all()
    assert sorted(tuple(row) for row in rows) == [
        ("site-a", "a", True),
        ("site-a", "b", True),
        ("site-b", "a", True),
    ]
