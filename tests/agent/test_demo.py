"""``lanterne demo``: the reconciled inventory of the simulated hospital is what its inventory implies.

The expected statuses are derived here from two facts: what the scenario puts on the network
(``SCENARIO``, written from ``agent/demo/generate.py``) and what the bundled inventory declares
(read from ``agent/demo/inventaire.csv`` with the importer): a product seen and claimed by no
entry is undeclared (or unknown when no fingerprint names it), a claimed one is declared_observed
unless it contradicts its declaration, and an entry that claims nothing seen is not observed.
"""

from __future__ import annotations

import socket
import struct
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import cli_demo
from agent.cli_demo import DemoError, DemoRun, replay_shift, run_demo, shift_capture
from agent.demo import CAPTURE, INVENTORY, SITE, bundled_file
from agent.demo import generate as gen
from fingerprints import load_index
from store._inventory import DeclaredEntry, read_inventory
from tests.corpus import RECOG_DIR

NOW = datetime(2026, 11, 28, 14, 5, tzinfo=UTC)
ALL_FORMATS = ("csv", "xlsx", "json", "cyclonedx", "html")


@dataclass(frozen=True)
class Seen:
    """A product the scenario shows: where, through which cloud hosts, and the declared entry claiming it."""

    endpoints: int
    claimed_by: str | None = None
    cloud_hosts: frozenset[str] = frozenset()


#: What ``agent/demo/generate.py`` puts on the network, by product key (catalogue id or unknown:<vendor>).
SCENARIO = {
    # Cardiology: PC-CARDIO-01 and -02 in a browser (TLS, QUIC). Nobody declared it.
    "openai-chatgpt": Seen(2, None, frozenset({"chatgpt.com", "cdn.oaistatic.com", "ab.chatgpt.com"})),
    # Administration: PC-ADM-04 calls Mistral's cloud API. Nobody declared it.
    "mistral-api": Seen(1, None, frozenset({"api.mistral.ai"})),
    # Emergency room: PC-URG-07 and the declared AI scribe (its entry names the product).
    "nabla": Seen(1, "CHD-IA-001", frozenset({"eu.api.nabla.com"})),
    # Administration: PC-ADM-03 and DeepL's API, declared as SaaS with its host.
    "deepl-api-pro": Seen(1, "CHD-IA-002", frozenset({"api.deepl.com"})),
    # Radiology: the gateway's DICOM stack (pynetdicom implementation UID) and its cloud uploads to
    # the AI vendor (a weak host rule: Gleamer is not named, only its vendor). The entry declares the
    # gateway by its IP and AE title, on-premise: the uploads contradict it.
    "pynetdicom": Seen(1, "CHD-IA-003"),
    "unknown:Gleamer": Seen(1, "CHD-IA-003", frozenset({"app.gleamer.ai"})),
    # The local LLM server downloads its runtime and a model (its declared hosts); clients use it
    # over HTTP on port 11434, which no fingerprint recognises passively.
    "ollama": Seen(1, "CHD-IA-004", frozenset({"ollama.com"})),
    # Biomedical VLAN: SNMP sysObjectID under the makers' IANA enterprise numbers.
    "philips-patient-monitoring": Seen(1, "CHD-DM-010"),
    "b-braun": Seen(1, "CHD-DM-011"),
    # A device that shows only its Dräger OUI (DHCP, no name): medical-looking, named by nothing.
    "unknown:Dräger": Seen(1),
}


def expected_statuses(entries: list[DeclaredEntry]) -> dict[str, str]:
    """The status of every product, from the scenario and the declared entries alone."""
    by_ref = {entry.ref: entry for entry in entries}
    statuses: dict[str, str] = {}
    for key, seen in SCENARIO.items():
        if seen.claimed_by is None:
            statuses[key] = "unknown_observed" if key.startswith("unknown:") else "undeclared_observed"
            continue
        entry = by_ref[seen.claimed_by]
        on_site = entry.deployment in {"on_prem", "embedded_device"}
        contradicted = on_site and not seen.cloud_hosts <= set(entry.hosts)
        statuses[key] = "declared_mismatch" if contradicted else "declared_observed"
    claimed = {seen.claimed_by for seen in SCENARIO.values()}
    for entry in entries:
        if entry.ref not in claimed:
            statuses[entry.catalog_id or f"entry:{entry.ref}"] = "declared_not_observed"
    return statuses


@pytest.fixture(scope="module")
def inventory() -> list[DeclaredEntry]:
    return read_inventory(bundled_file(INVENTORY)).entries


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_demo(tmp_path_factory.mktemp("demo"), ALL_FORMATS, now=NOW)


def test_reconciled_statuses_are_what_the_inventory_implies(
    demo_run: DemoRun, inventory: list[DeclaredEntry]
) -> None:
    actual = {row.product_key: row.reconciliation_status for row in demo_run.rows}
    assert actual == expected_statuses(inventory)


def test_every_status_appears(demo_run: DemoRun) -> None:
    assert {row.reconciliation_status for row in demo_run.rows} == {
        "declared_observed",
        "declared_not_observed",
        "undeclared_observed",
        "unknown_observed",
        "declared_mismatch",
    }


def test_rows_carry_their_declarations_and_endpoints(
    demo_run: DemoRun, inventory: list[DeclaredEntry]
) -> None:
    rows = {row.product_key: row for row in demo_run.rows}
    for key, seen in SCENARIO.items():
        assert rows[key].endpoints == seen.endpoints, key
        assert rows[key].cartographie_ref == ((seen.claimed_by,) if seen.claimed_by else ()), key
        # Evidence keeps a value per matching rule, not every host: some of the hosts, never others.
        hosts = set(rows[key].network_hosts)
        assert hosts <= seen.cloud_hosts, key
        assert bool(hosts) == bool(seen.cloud_hosts), key
    assert rows["unknown:Gleamer"].mismatch == "declared on_prem, seen calling cloud hosts: app.gleamer.ai"
    assert {row.review_decision for row in demo_run.rows} == {"pending_review"}
    # The HAS split: devices with a medical purpose apart from AI tools for organising care.
    assert rows["philips-patient-monitoring"].has_scope == "dmn_usage_professionnel"
    assert rows["openai-chatgpt"].has_scope == "outil_organisation_soins"
    assert len(inventory) == 7


def test_alerts_are_the_findings(demo_run: DemoRun) -> None:
    assert sorted((alert.product_key, str(alert.reason)) for alert in demo_run.alerts) == [
        ("mistral-api", "undeclared_observed"),
        ("openai-chatgpt", "undeclared_observed"),
        ("unknown:Dräger", "unknown_observed"),
        ("unknown:Gleamer", "declared_mismatch"),
    ]


def test_scan_counts(demo_run: DemoRun) -> None:
    scan = demo_run.scan
    assert not scan.skipped
    assert scan.decode.packets == 2606
    assert scan.decode.malformed == 0
    assert len(demo_run.imported.created) == 7


def _export_text(path: Path) -> str:
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as archive:
            return "".join(archive.read(name).decode("utf-8", "replace") for name in archive.namelist())
    return path.read_bytes().decode("utf-8", "replace")


def test_exports_written(demo_run: DemoRun) -> None:
    names = sorted(path.name for path in demo_run.exports)
    assert names == sorted(cli_demo.EXPORT_NAMES.values())
    for path in demo_run.exports:
        text = _export_text(path)
        assert "Nabla" in text, path
        assert "declared_mismatch" in text, path


def test_patient_and_secrets_nowhere_in_the_database_or_the_exports(demo_run: DemoRun) -> None:
    """HL7 PID, DICOM data set, the LLM prompt and the SNMP community are in the capture, and nowhere else."""
    secrets = [*gen.FICTITIOUS_PATIENT, gen.SNMP_COMMUNITY.decode(), "56 ans"]
    capture = (demo_run.directory / CAPTURE).read_bytes()
    for secret in secrets:
        assert secret.encode() in capture
    stored = [path for path in demo_run.directory.iterdir() if path.name.startswith(cli_demo.DB_NAME)]
    assert stored
    for path in [*stored, *demo_run.exports]:
        text = _export_text(path) if path in demo_run.exports else path.read_bytes().decode("latin-1")
        for secret in secrets:
            assert secret not in text, (secret, path.name)


def test_other_commands_read_the_demo_database(demo_run: DemoRun) -> None:
    from agent.cli import app

    env = {"LANTERNE_DB": demo_run.db_url, "LANTERNE_SITE": SITE}
    runner = CliRunner()
    listed = runner.invoke(app, ["alerts", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "openai-chatgpt" in listed.stdout
    exported = runner.invoke(app, ["export", "--format", "json"], env=env)
    assert exported.exit_code == 0, exported.output
    assert "declared_mismatch" in exported.stdout


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup fails the test: the demo must work offline."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the demo tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _invoke(*args: str) -> tuple[int, str, str]:
    from agent.cli import app

    result = CliRunner().invoke(app, ["demo", *args], env={"COLUMNS": "100"})
    # Messages are wrapped to the terminal's width: compare them with spaces normalised.
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_command_offline_and_fast(tmp_path: Path, no_network: None) -> None:
    started = time.perf_counter()
    code, stdout, stderr = _invoke("--dir", str(tmp_path))
    elapsed = time.perf_counter() - started
    assert code == 0, stderr
    assert elapsed < 20  # a few seconds on a laptop; generous for loaded CI machines
    assert "Reconciled inventory of CH Démo" in stdout
    for status in ("undeclared_observed", "unknown_observed", "declared_mismatch", "declared_not_observed"):
        assert status in stdout
    assert "ChatGPT (OpenAI)" in stdout
    assert "Open alerts (4)" in stdout
    assert f"wrote {tmp_path / 'cartographie.xlsx'}" in stderr
    assert f"wrote {tmp_path / 'cartographie.html'}" in stderr
    assert f"LANTERNE_DB=sqlite:///{tmp_path / 'lanterne.db'}" in stderr
    assert "lanterne review decide openai-chatgpt" in stderr
    assert (tmp_path / "cartographie.xlsx").stat().st_size > 0


def test_command_default_folder_is_a_new_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, _, stderr = _invoke("--format", "json")
    assert code == 0, stderr
    [folder] = [path for path in tmp_path.iterdir() if path.name.startswith("lanterne-demo-")]
    assert f"folder: {folder}" in stderr
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [cli_demo.MARKER, CAPTURE, "cartographie.json", "lanterne.db"]
    )


def test_command_rejects_an_unknown_format(tmp_path: Path) -> None:
    code, _, stderr = _invoke("--dir", str(tmp_path), "--format", "pdf")
    assert code == 2
    assert "unknown export format 'pdf'" in stderr
    assert not (tmp_path / "lanterne.db").exists()


def test_keep_runs_on_top_and_shows_decisions(tmp_path: Path) -> None:
    from agent.cli import app

    assert _invoke("--dir", str(tmp_path))[0] == 0
    env = {"LANTERNE_DB": f"sqlite:///{tmp_path / 'lanterne.db'}", "LANTERNE_SITE": SITE}
    decided = CliRunner().invoke(
        app,
        [
            "review",
            "decide",
            "openai-chatgpt",
            "--decision",
            "rejected_to_block",
            "--reason",
            "x",
            "--by",
            "rssi",
        ],
        env=env,
    )
    assert decided.exit_code == 0, decided.output
    code, stdout, stderr = _invoke("--dir", str(tmp_path), "--keep")
    assert code == 0, stderr
    assert "rejected_to_block" in stdout
    assert "already scanned" in stderr  # the same morning is never counted twice
    # Without --keep the demo starts afresh: the decision is gone.
    code, stdout, _ = _invoke("--dir", str(tmp_path))
    assert code == 0
    assert "rejected_to_block" not in stdout


def test_never_replaces_a_database_it_did_not_create(tmp_path: Path) -> None:
    db = tmp_path / "lanterne.db"
    db.write_bytes(b"someone's real store")
    code, _, stderr = _invoke("--dir", str(tmp_path))
    assert code == 2
    assert "was not created by the demo" in stderr
    assert db.read_bytes() == b"someone's real store"


def test_same_answer_without_recog(tmp_path: Path, demo_run: DemoRun) -> None:
    """A fresh machine has no Recog databases: the demo's answer must not depend on them."""
    if not RECOG_DIR.is_dir():
        pytest.skip(f"Recog is absent ({RECOG_DIR}): the default run already is the fresh-machine case")
    bare = run_demo(tmp_path, ("json",), now=NOW, index=load_index(with_recog=False))
    assert [(r.product_key, r.reconciliation_status, r.endpoints) for r in bare.rows] == [
        (r.product_key, r.reconciliation_status, r.endpoints) for r in demo_run.rows
    ]


# -- replaying the capture -----------------------------------------------------------------------


def test_replay_moves_whole_days_to_the_latest_morning_before_now() -> None:
    data = bundled_file(CAPTURE).read_bytes()
    first, last = cli_demo.capture_span(data)
    assert gen.START <= first < last < gen.START + 3600
    shift = replay_shift(data, NOW)
    assert shift == timedelta(days=11)
    moved_last = datetime.fromtimestamp(last, UTC) + shift
    assert moved_last <= NOW < moved_last + timedelta(days=1)
    # Early in the morning, before the capture's hour: the day before.
    assert replay_shift(data, datetime(2026, 11, 28, 7, 0, tzinfo=UTC)) == timedelta(days=10)


def test_shift_changes_only_the_timestamps() -> None:
    data = bundled_file(CAPTURE).read_bytes()
    moved = shift_capture(data, 86400)
    assert len(moved) == len(data)
    assert moved[:24] == data[:24]
    first_sec = struct.unpack_from("<I", data, 24)[0]
    assert struct.unpack_from("<I", moved, 24)[0] == first_sec + 86400
    assert moved[28:] != data[28:]
    assert moved[28:40] == data[28:40]  # microseconds and lengths untouched


@pytest.mark.parametrize("data", [b"", b"\xd4\xc3\xb2\xa1" + bytes(20) + b"\x00" * 8, bytes(24)])
def test_shift_refuses_what_it_cannot_read(data: bytes) -> None:
    with pytest.raises(DemoError):
        shift_capture(data, 1)
