"""Ending ``lanterne scan`` at once (``agent._exit``): the status, output and clean-up of a normal exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import _exit
from agent._cli_common import EXIT_FINDINGS
from tests.agent.test_scan import capture, snapshot

REPO = Path(__file__).resolve().parents[2]

LEAVING = """
import atexit, sys, threading, time
from agent import _exit
from agent._cli_common import EXIT_FINDINGS
_exit.arm()
kept = object()
_exit.keep(kept)
assert _exit.armed()
done = []
def late():
    time.sleep(0.2)
    done.append(1)
threading.Thread(target=late).start()  # not a daemon: waited for, as at a normal exit
atexit.register(lambda: print("atexit ran", len(done), file=sys.stderr))
sys.stdout.write("buffered, never flushed by hand")
_exit.leave(int(sys.argv[1]))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


@pytest.mark.parametrize("status", [0, 3])
def test_leave_flushes_runs_the_exit_handlers_and_keeps_the_status(status: int) -> None:
    done = _python(LEAVING, str(status))
    assert done.returncode == status
    assert done.stdout == "buffered, never flushed by hand"
    assert done.stderr.strip() == "atexit ran 1"


def test_exit_codes_are_those_of_the_interpreter(capsys: pytest.CaptureFixture[str]) -> None:
    assert [_exit.status_of(code) for code in (None, 0, 2, 256 + 4)] == [0, 0, 2, 4]
    assert _exit.status_of("fatal: no database") == 1
    assert capsys.readouterr().err == "fatal: no database\n"


def test_keep_holds_nothing_unless_armed() -> None:
    assert not _exit.armed()  # the test process is not the console script
    before = len(_exit._kept)
    _exit.keep(object())
    assert len(_exit._kept) == before == 0


def test_keep_holds_the_last_object_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan of many files keeps the last file's window, not every file's: memory stays bounded."""
    monkeypatch.setattr(_exit, "_armed", True)
    monkeypatch.setattr(_exit, "_kept", [])
    windows = [object() for _ in range(5)]
    for window in windows:
        _exit.keep(window)
    assert _exit._kept == [windows[-1]]


def test_the_console_scan_ends_with_its_whole_output_and_status(tmp_path: Path) -> None:
    path = capture(tmp_path / "a.pcap", packets=600, clients=8, names=["chatgpt.com", "x.org"], seed=9)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    script = "import sys; sys.argv = ['lanterne', *sys.argv[1:]]; from agent._entry import main; main()"
    done = _python(script, "scan", "--db", url, "--agent", "a", "--json", "--no-progress", str(path))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["packets"] == 600
    assert summary["stored_observations"] == snapshot(url)["observations"]
    assert "scan summary" in done.stderr
    # The database was closed properly: nothing left for the next opening to recover.
    assert not (tmp_path / "x.db-wal").exists()
    # Findings (ChatGPT, declared nowhere) with --fail-on-findings: typer.Exit(1) becomes the status.
    again = _python(
        script, "scan", "--db", url, "--agent", "a", "--fail-on-findings", "--no-progress", str(path)
    )
    assert "already ingested" in again.stderr
    assert again.returncode == EXIT_FINDINGS == 1, again.stderr
