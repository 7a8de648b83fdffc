"""``lanterne inventory import|list`` through the real CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from agent.cli import app
from store import open_store
from store._models import ChangeLogEntry, InventoryEntry, Reconciliation
from tests.agent.store_backends import database_url
from tests.store.dburl import BACKENDS

DATA = Path(__file__).resolve().parents[1] / "data" / "inventory"
runner = CliRunner()


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with database_url(request.param, tmp_path_factory) as url:
        yield url


def run(db: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, list(args), env={"LANTERNE_DB": db, "LANTERNE_SITE": "ch-cli", "COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


def counts(db: str) -> tuple[int, int]:
    store = open_store(db)
    try:
        with store.session() as session:
            entries = session.scalar(select(func.count()).select_from(InventoryEntry)) or 0
            log = session.scalar(select(func.count()).select_from(ChangeLogEntry)) or 0
    finally:
        store.dispose()
    return entries, log


def test_import_list_reimport(db: str, tmp_path: Path) -> None:
    code, stdout, stderr = run(
        db, "inventory", "import", str(DATA / "cartographie_fr.csv"), "--dry-run", "--json"
    )
    assert code == 0, stderr
    assert [json.loads(line)["action"] for line in stdout.splitlines()] == ["create"] * 4
    assert "would be imported" in stderr
    assert counts(db) == (0, 0)

    code, stdout, stderr = run(db, "inventory", "import", str(DATA / "cartographie_fr.csv"))
    assert code == 0, stderr
    assert "4 created" in stderr
    assert "unknown column, ignored" in stderr  # "Colonne libre"
    assert "4 declared_not_observed" in stderr  # reconciled at once
    store = open_store(db)
    with store.session() as session:
        assert len(session.scalars(select(Reconciliation)).all()) == 4
    store.dispose()

    code, stdout, _ = run(db, "inventory", "list", "--json")
    assert code == 0
    assert [row["ref"] for row in json.loads(stdout)] == ["INV-001", "INV-002", "INV-003", "INV-004"]

    smaller = tmp_path / "smaller.csv"
    lines = (DATA / "cartographie_fr.csv").read_bytes().split(b"\r\n")
    smaller.write_bytes(b"\r\n".join(lines[:3]) + b"\r\n")
    code, stdout, stderr = run(db, "inventory", "import", str(smaller), "--keep-missing")
    assert (code, "0 deactivated" in stderr) == (0, True)
    code, stdout, stderr = run(db, "inventory", "import", str(smaller), "--json")
    assert [json.loads(line) for line in stdout.splitlines()] == [
        {"ref": "INV-003", "action": "deactivate"},
        {"ref": "INV-004", "action": "deactivate"},
    ]
    code, stdout, _ = run(db, "inventory", "list", "--all", "--json")
    assert [(row["ref"], row["active"]) for row in json.loads(stdout)] == [
        ("INV-001", True), ("INV-002", True), ("INV-003", False), ("INV-004", False),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"editeur;ia\r\nOpenAI;oui\r\n", "line 1, column 'nom/name': required column missing"),
        (b"nom;ia\r\nA;bof\r\n", "line 2, column 'ia': 'bof' is not a yes/no value"),
        (b"nom;adresses ip\r\nA;10.0.0.999\r\n", "line 2, column 'adresses ip': '10.0.0.999' is not an IP"),
        (b"nom;adresses mac\r\nA;00:11\r\n", "line 2, column 'adresses mac': '00:11' is not a MAC"),
        (b"id;nom\r\n1;A\r\n1;B\r\n", "line 3, column 'id': duplicate entry '1': already on line 2"),
        ("nom;ia\r\nA;oui\r\n".encode("utf-16-le"), "line 1: NUL byte: not a text file"),
    ],
)
def test_import_errors_exit_2_and_write_nothing(
    db: str, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "inventaire.csv"
    path.write_bytes(content)
    code, stdout, stderr = run(db, "inventory", "import", str(path))
    assert code == 2
    assert stdout == ""
    assert message in " ".join(stderr.split())
    assert "nothing was imported" in stderr
    assert counts(db) == (0, 0)


def test_unreadable_database_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = run("nosuchdb://x", "inventory", "list")
    assert code == 2
    assert "error:" in stderr


def test_names_are_printed_as_they_are_written(db: str, tmp_path: Path) -> None:
    """Rich would turn ``:tv:`` or ``:smile:`` in a declared (or network-given) name into emoji."""
    inventory = tmp_path / "inventory.csv"
    inventory.write_text("nom;éditeur\r\nScribe :smile: IA;Nabla\r\nÉcran :tv: accueil;Acme\r\n", "utf-8")
    code, _, stderr = run(db, "inventory", "import", str(inventory))
    assert code == 0, stderr
    code, stdout, stderr = run(db, "inventory", "list")
    assert code == 0, stderr
    assert "Scribe :smile: IA" in stdout
    assert "Écran :tv: accueil" in stdout
