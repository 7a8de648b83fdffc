"""The top-level CLI imports a command's module only when that command runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from agent.cli import LAZY_COMMANDS, app, load_command


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_each_lazy_command_loads_and_its_listed_help_is_its_own(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert command.help is not None
    assert command.help.strip().splitlines()[0] == LAZY_COMMANDS[name][2]


def test_help_lists_every_command_without_importing_them() -> None:
    probe = (
        "import sys; from typer.testing import CliRunner; from agent.cli import app;"
        "result = CliRunner().invoke(app, ['--help']);"
        "heavy = ('fastapi', 'sqlalchemy', 'pysnmp', 'apscheduler', 'openpyxl');"
        "heavy = sorted(m for m in heavy if m in sys.modules);"
        "print(result.exit_code, heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split(maxsplit=1) == ["0", "[]\n"]
    listed = CliRunner().invoke(app, ["--help"]).output
    for name in LAZY_COMMANDS:
        assert f" {name} " in listed


def test_a_lazy_command_runs_through_the_top_level_app() -> None:
    result = CliRunner().invoke(app, ["fingerprints", "match", "tls.sni", "chatgpt.com"])
    assert result.exit_code == 0, result.output
    assert "openai-chatgpt" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    assert isinstance(app, typer.Typer)
