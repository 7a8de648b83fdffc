"""``lanterne run``, ``capture`` and ``doctor`` in-process: exit codes, messages naming the key, advice."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent._config import parse_config
from agent._doctor import Status, check_buffer, check_interfaces, check_spool, run_checks
from agent.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "lanterne.toml"
    path.write_text(
        f'site = "lab"\nagent = "l5-cli"\n[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n'
        f'[capture]\ninterfaces = ["l5nosuch0"]\n[spool]\npath = "spool.jsonl"\n'
        f'[metrics]\naddress = "127.0.0.1:19851"\n{extra}',
        encoding="utf-8",
    )
    return path


def test_run_refuses_a_bad_configuration_naming_the_key(tmp_path: Path) -> None:
    config = _write_config(tmp_path, "[schedule]\nflush_second = 5\n")
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "schedule.flush_second: unknown key" in result.stderr
    assert "schedule.flush_seconds" in result.stderr  # the suggestion
    assert "lanterne doctor" in result.stderr


def test_run_without_a_file_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "cannot read the configuration" in result.stderr


def test_capture_runs_for_its_duration_even_without_its_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    result = runner.invoke(
        app,
        [
            "capture",
            "--iface",
            "l5nosuch0",
            "--duration",
            "1",
            "--db",
            f"sqlite:///{tmp_path / 'db.sqlite'}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 0
    assert summary["stored_observations"] == 0
    assert "capture summary" in result.stderr


def test_doctor_reports_and_fails_on_a_missing_interface(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    result = runner.invoke(app, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 2, result.output
    checks = {check["check"]: check for check in json.loads(result.stdout)}
    assert checks["configuration"]["status"] == "ok"
    assert checks["interface l5nosuch0"]["status"] == "fail"
    assert "use one of:" in checks["interface l5nosuch0"]["fix"]
    assert "lo" in checks["interface l5nosuch0"]["fix"]
    assert checks["database"]["status"] == "ok"
    assert checks["catalogue"]["status"] == "ok"
    assert checks["capture filter"]["status"] == "ok"
    assert checks["capabilities"]["status"] in {"ok", "warn", "fail"}
    assert "lanterne doctor" in result.stderr


def test_doctor_checks_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (check,) = check_interfaces(["lo"])
    assert check.status is Status.OK
    (empty,) = check_interfaces([])
    assert empty.status is Status.WARN
    assert "capture.interfaces" in (empty.fix or "")
    config = parse_config(
        {"database": {"url": "sqlite://"}, "spool": {"path": str(tmp_path / "s" / "spool.jsonl")}},
        env={},
    )
    assert check_spool(config).status is Status.OK
    monkeypatch.setattr("agent._doctor.effective_capabilities", lambda: 0)
    monkeypatch.setattr("agent._doctor._RMEM_MAX", tmp_path / "rmem_max")
    (tmp_path / "rmem_max").write_text("212992\n", encoding="ascii")
    buffer = check_buffer(config)
    assert buffer.status is Status.WARN
    assert "net.core.rmem_max=33554432" in (buffer.fix or "")


def test_doctor_reports_a_bad_configuration_and_a_dead_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[database]\nurl = "sqlite://"\n[capture]\ninterfaces = 3\n', encoding="utf-8")
    checks = run_checks(bad, database="postgresql://nobody@127.0.0.1:1/none")
    by_name = {check.name: check for check in checks}
    assert by_name["configuration"].status is Status.FAIL
    assert "capture.interfaces" in by_name["configuration"].detail
    assert by_name["database"].status is Status.FAIL
    assert by_name["database"].fix
