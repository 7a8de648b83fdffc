"""``lanterne scan`` forks its first decoding processes before the CLI parses: only if it guesses right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent._prefetch
from agent._decoding import FLUSH_AT, parallel_available
from agent._host import default_agent_name
from agent._prefetch import SCAN_FLAGS, SCAN_VALUE_OPTIONS, Plan, adopt, plan_of
from agent.cli import load_command
from tests.agent.test_parallel_scan import _alive
from tests.agent.test_scan import capture, snapshot

pytestmark = pytest.mark.skipif(
    not parallel_available(), reason="decoding in a second process needs fork() and two CPUs"
)


def test_the_option_tables_are_the_scan_commands() -> None:
    command = load_command("scan")
    values: set[str] = set()
    flags: set[str] = set()
    for param in command.params:
        if param.param_type_name != "option":
            continue
        names = {*param.opts, *param.secondary_opts} - {"-h", "--help"}
        (flags if param.is_flag else values).update(names)
    assert values == SCAN_VALUE_OPTIONS
    assert flags == SCAN_FLAGS


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANTERNE_AGENT", "LANTERNE_FLUSH_KEYS", "LANTERNE_DECODERS", "LANTERNE_PARALLEL"):
        monkeypatch.delenv(name, raising=False)


def test_the_plan_reads_files_and_the_settings_of_the_decoding() -> None:
    host = default_agent_name()
    assert plan_of(["a.pcap", "b.pcap"]) == Plan(Path("a.pcap"), host, FLUSH_AT, None, None)
    assert plan_of(
        ["--db", "x.db", "--site=s", "--agent", "ward", "--no-parallel", "--parallel", "a.pcap"]
    ) == Plan(Path("a.pcap"), "ward", FLUSH_AT, True, None)
    assert plan_of(["--flush-keys=500", "--decoders", "3", "--json", "--", "-odd.pcap"]) == Plan(
        Path("-odd.pcap"), host, 500, None, 3
    )
    assert plan_of(["--db", "a.pcap", "b.pcap"]) == Plan(Path("b.pcap"), host, FLUSH_AT, None, None)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help", "a.pcap"],
        ["-h"],
        ["--no-such-option", "a.pcap"],
        ["a.pcap", "--flush-keys"],
        ["--flush-keys", "many", "a.pcap"],
        ["--json=yes", "a.pcap"],
        ["--db", "x.db"],
    ],
)
def test_any_doubt_means_no_plan(argv: list[str]) -> None:
    assert plan_of(argv) is None


def test_a_setting_in_the_environment_means_no_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANTERNE_FLUSH_KEYS", "500")
    assert plan_of(["a.pcap"]) is None


def test_processes_started_for_another_plan_are_stopped(tmp_path: Path) -> None:
    path = capture(tmp_path / "a.pcap", packets=200, clients=5, names=["chatgpt.com"], seed=3)
    agent._prefetch.speculate(["--parallel", str(path)])
    speculated = agent._prefetch._speculated
    assert speculated is not None
    pids = [process.pid for process in speculated[1].processes]
    assert adopt(Plan(path, "someone-else", FLUSH_AT, True, None)) is None
    assert not any(_alive(pid) for pid in pids)
    assert adopt(speculated[0]) is None, "taken once"


def _run(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    settings = {"LANTERNE_AGENT", "LANTERNE_FLUSH_KEYS", "LANTERNE_DECODERS", "LANTERNE_PARALLEL"}
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={name: value for name, value in os.environ.items() if name not in settings},
    )


ADOPTION = """
import sys
import agent._prefetch as prefetch
real = prefetch.adopt
def adopt(plan):
    worker = real(plan)
    print("adopted" if worker is not None else "refused", file=sys.stderr, flush=True)
    return worker
prefetch.adopt = adopt
sys.argv = ["lanterne", *sys.argv[1:]]
from agent._entry import main
main()
"""


def test_the_console_script_adopts_what_it_speculated(tmp_path: Path) -> None:
    path = capture(tmp_path / "a.pcap", packets=1500, clients=20, names=["chatgpt.com", "x.org"], seed=4)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    done = _run(ADOPTION, "scan", "--db", url, "--parallel", "--flush-keys", "300", "--agent", "a", str(path))
    assert done.returncode == 0, done.stderr
    assert "adopted" in done.stderr
    assert snapshot(url)["observations"] == 1500
    serial = f"sqlite:///{tmp_path / 'serial.db'}"
    again = _run(
        ADOPTION, "scan", "--db", serial, "--no-parallel", "--flush-keys", "300", "--agent", "a", str(path)
    )
    assert again.returncode == 0, again.stderr
    assert "adopted" not in again.stderr
    assert snapshot(url) == snapshot(serial)


LEFT_BEHIND = """
import sys
import agent._prefetch as prefetch
sys.argv = ["lanterne", *sys.argv[1:]]
real = prefetch.speculate
def speculate(argv):
    real(argv)
    print(*(process.pid for process in prefetch._speculated[1].processes), flush=True)
prefetch.speculate = speculate
from agent._entry import main
main()
"""


def test_a_usage_error_after_the_fork_leaves_no_process(tmp_path: Path) -> None:
    """``--lookback-days 0``: the CLI refuses what the guess accepted; the processes end with it."""
    path = capture(tmp_path / "a.pcap", packets=200, clients=5, names=["chatgpt.com"], seed=5)
    done = _run(LEFT_BEHIND, "scan", "--parallel", "--lookback-days", "0", str(path))
    assert done.returncode == 2, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert pids
    assert not any(_alive(pid) for pid in pids)


def test_nothing_is_speculated_on_a_pipe(tmp_path: Path) -> None:
    """What a process reads from a pipe is gone: only the scan's own processes may read one."""
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)
    agent._prefetch.speculate(["--parallel", str(fifo)])
    assert agent._prefetch._speculated is None
