"""``lanterne fingerprints``: the sub-app, run in-process with typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli_fingerprints import app
from tests.corpus import RECOG_DIR
from tests.fingerprints.conftest import KINDS_CATALOG, write_catalog

runner = CliRunner()
KINDS = ["--catalog", str(KINDS_CATALOG)]


def test_list() -> None:
    result = runner.invoke(app, ["list", *KINDS])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "category", "vendor", "name", "ai", "medical", "rules"]
    assert [line.split()[0] for line in lines[1:]] == ["demo-engine", "demo-ai", "demo-pacs"]
    assert "3 product(s)" in result.stderr


def test_list_json_and_category_filter() -> None:
    result = runner.invoke(app, ["list", *KINDS, "--category", "pacs", "--json"])
    assert result.exit_code == 0, result.output
    (product,) = json.loads(result.stdout)
    assert (product["id"], product["mdr_class"], product["rules"]) == ("demo-pacs", "IIa", 5)


def test_show() -> None:
    result = runner.invoke(app, ["show", "demo-ai", *KINDS])
    assert result.exit_code == 0, result.output
    assert "kinds_catalog/llm_api/demo-ai.yaml:2" in result.stdout
    assert "host exact='api.demo-ai.example' role=api" in result.stdout
    assert "demo-ai.example.org" in result.stdout


def test_show_json() -> None:
    result = runner.invoke(app, ["show", "demo-pacs", *KINDS, "--json"])
    data = json.loads(result.stdout)
    assert data["rules"][0]["id"] == "demo-pacs:uid"
    assert data["examples"][0]["attrs"]["impl_version"] == "DEMOPACS_3"


def test_show_an_unknown_product_is_a_usage_error() -> None:
    result = runner.invoke(app, ["show", "nope", *KINDS])
    assert result.exit_code == 2
    assert "no product 'nope'" in result.stderr


def test_match_explains_the_rule() -> None:
    result = runner.invoke(app, ["match", "tls.sni", "API.demo-ai.example.", *KINDS, "--no-recog"])
    assert result.exit_code == 0, result.output
    assert "demo-ai:api -> demo-ai [strong, weight 0.9, src]" in result.stdout
    assert "why: host exact='api.demo-ai.example' role=api" in result.stdout
    assert "where: kinds_catalog/llm_api/demo-ai.yaml:13" in result.stdout
    assert "=> demo-ai, confidence 0.90" in result.stdout


def test_match_attributes_and_json() -> None:
    args = ["match", "dicom.association", "CT1 -> PACS", "-a", "pdu=ac", "-a", "impl_version=DEMOPACS_9"]
    result = runner.invoke(app, [*args, *KINDS, "--no-recog", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (evidence,) = data["evidence"]
    assert (evidence["rule"], evidence["side"], evidence["value"]) == (
        "demo-pacs:version",
        "dst",
        "impl_version=DEMOPACS_9",
    )
    assert data["detections"][0]["product"] == "demo-pacs"


def test_match_shared_infrastructure_alone() -> None:
    result = runner.invoke(app, ["match", "tls.sni", "fonts.googleapis.com", *KINDS, "--no-recog"])
    assert result.exit_code == 0, result.output
    assert "demo-ai:cdn" in result.stdout
    assert "=> nothing: shared infrastructure alone names no product" in result.stdout


def test_match_a_mac() -> None:
    result = runner.invoke(
        app, ["match", "dhcp.hostname", "pc-1", "--mac", "02:00:00:00:00:01", *KINDS, "--no-recog"]
    )
    assert "MAC 02:00:00:00:00:01: randomised (locally administered)" in result.stdout
    assert "no rule matches" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["match", "tls.snii", "x"], "unknown kind 'tls.snii'"),
        (["match", "tls.sni", "x", "--attr", "novalue"], "is not KEY=VALUE"),
        (["match", "tls.sni", "x", "--mac", "zz"], "not a valid observation"),
    ],
)
def test_match_usage_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, *KINDS, "--no-recog"])
    assert result.exit_code == 2
    assert message in result.stderr


def test_test_passes_on_a_clean_catalogue() -> None:
    result = runner.invoke(app, ["test", *KINDS, "--no-recog"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "0 failure(s)" in result.stderr


def test_test_prints_failures_with_file_and_line(tmp_path: Path) -> None:
    files = {p.relative_to(KINDS_CATALOG).as_posix(): p.read_text() for p in KINDS_CATALOG.glob("*/*.yaml")}
    files["llm_api/demo-ai.yaml"] = files["llm_api/demo-ai.yaml"].replace(
        "{kind: tls.sni, value: demo-ai.example.org}", "{kind: tls.sni, value: www.demo-ai.example}"
    )
    root = write_catalog(tmp_path / "catalog", files)
    result = runner.invoke(app, ["test", "--catalog", str(root), "--no-recog"])
    assert result.exit_code == 1
    assert "catalog/llm_api/demo-ai.yaml:" in result.stdout
    assert "negative example matched rule(s) site" in result.stdout


def test_a_broken_catalogue_is_a_usage_error_with_file_and_line(tmp_path: Path) -> None:
    root = write_catalog(tmp_path / "catalog", {"llm_api/demo-ai.yaml": "id: demo-ai\n  name: [\n"})
    for command in (
        ["test", "--no-recog"],
        ["list"],
        ["show", "demo-ai"],
        ["match", "tls.sni", "x", "--no-recog"],
    ):
        result = runner.invoke(app, [*command, "--catalog", str(root)])
        assert result.exit_code == 2, command
        assert "catalog/llm_api/demo-ai.yaml:2: YAML syntax" in result.stderr


@pytest.mark.corpus
def test_test_runs_recog_too() -> None:
    if not (RECOG_DIR / "xml").is_dir():
        pytest.skip(f"Recog is not in the shared corpus ({RECOG_DIR} not found)")
    result = runner.invoke(app, ["test", *KINDS, "--recog-dir", str(RECOG_DIR)])
    assert result.exit_code == 0, result.output
    assert "100.00% pass" in result.stderr


def test_an_absent_recog_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["test", *KINDS, "--recog-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no Recog XML" in result.stderr
