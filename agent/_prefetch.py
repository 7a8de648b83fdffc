"""The decoding processes of ``lanterne scan``, started as early as possible.

Everything a scan does before its first file's decoding processes are forked delays the whole
scan (they decode while the rest starts up). ``Prefetch`` starts the first file's processes
before the catalogue and the store load, and each next file's as soon as the previous file is
decoded. Earlier still, ``speculate`` forks them before the command line is even parsed: the
CLI's imports and the building and parsing of its commands take a tenth of a second. It reads
the few settings the decoding depends on (the files, ``--agent``, ``--flush-keys``,
``--decoders``, ``--parallel``) from the raw arguments; once the CLI has parsed them, the scan
adopts the processes only if its own settings are the same (``adopt``), otherwise they are
stopped and the scan starts its own. Any doubt (an option it does not know,
``--help``, an environment variable it would have to interpret) means no speculation: the scan
is then exactly as without it.

This module imports the decoder and nothing that the CLI, the catalogue or the store need.
"""

from __future__ import annotations

import atexit
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent._decoding import FLUSH_AT, DecodeWorker, use_worker
from agent._host import default_agent_name

#: ``lanterne scan``'s options that take a value, and its flags (``tests/agent/test_prefetch.py``
#: checks them against the command itself).
SCAN_VALUE_OPTIONS: Final = frozenset(
    {"--db", "--site", "--agent", "--lookback-days", "--flush-keys", "--decoders"}
)
SCAN_FLAGS: Final = frozenset(
    {
        "--fail-on-findings",
        "--pseudonymous",
        "--no-pseudonymous",
        "--progress",
        "--no-progress",
        "--parallel",
        "--no-parallel",
        "--json",
    }
)
#: Environment variables that change what the first decoding processes do: when one is set, the
#: CLI's reading of it decides, and nothing is speculated.
_SETTINGS_ENV: Final = ("LANTERNE_AGENT", "LANTERNE_FLUSH_KEYS", "LANTERNE_DECODERS", "LANTERNE_PARALLEL")


@dataclass(frozen=True, slots=True)
class Plan:
    """What the decoding processes of a scan's first file depend on."""

    path: Path
    agent: str
    flush_keys: int
    parallel: bool | None
    decoders: int | None


_speculated: tuple[Plan, DecodeWorker] | None = None


def plan_of(argv: list[str]) -> Plan | None:
    """The plan a ``lanterne scan`` with these arguments (after ``scan``) will make; None if unsure."""
    if any(os.environ.get(name) for name in _SETTINGS_ENV):
        return None
    values: dict[str, str] = {}
    parallel: bool | None = None
    positionals: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--":
            positionals += arguments
            break
        if not argument.startswith("-") or argument == "-":
            positionals.append(argument)
            continue
        name, equals, value = argument.partition("=")
        if name in SCAN_VALUE_OPTIONS:
            if not equals:
                value = next(arguments, "")
                if not value:
                    return None
            values[name] = value
        elif name in SCAN_FLAGS and not equals:
            if name in ("--parallel", "--no-parallel"):
                parallel = name == "--parallel"
        else:  # --help, a short option, a mistake: the CLI decides
            return None
    if not positionals:
        return None
    try:
        flush_keys = int(values.get("--flush-keys", FLUSH_AT))
        decoders = int(values["--decoders"]) if "--decoders" in values else None
    except ValueError:
        return None
    agent = values.get("--agent") or default_agent_name()
    return Plan(Path(positionals[0]), agent, flush_keys, parallel, decoders)


def speculate(argv: list[str]) -> None:
    """Fork the decoding processes of the first file of ``lanterne scan ARGV`` now, if it gets some."""
    global _speculated  # noqa: PLW0603 - one per process, handed over once (``adopt``)
    plan = plan_of(argv)
    # Only a regular file: a pipe read by processes that the scan would not adopt would lose data.
    if plan is None or _speculated is not None or not plan.path.is_file():
        return
    if not use_worker(plan.path, plan.parallel):
        return
    worker = DecodeWorker(plan.path, agent=plan.agent, flush_at=plan.flush_keys, decoders=plan.decoders)
    try:
        worker.start()
    except OSError:  # no process to be had: the scan will see for itself
        worker.close()
        return
    _speculated = (plan, worker)
    atexit.register(_discard)


def adopt(plan: Plan) -> DecodeWorker | None:
    """The speculated processes if they were started for ``plan``; stopped otherwise (taken once)."""
    global _speculated  # noqa: PLW0603
    if _speculated is None:
        return None
    speculated, worker = _speculated
    _speculated = None
    if speculated == plan:
        return worker
    worker.close()
    return None


def _discard() -> None:
    """At exit: stop speculated processes nobody adopted (a usage error, ``--help``...)."""
    global _speculated  # noqa: PLW0603
    if _speculated is not None:
        _speculated[1].close()
        _speculated = None


class Prefetch:
    """The decoding processes of the files to scan, each started before its file's turn.

    The first one before the catalogue is loaded and the store imported (unless ``speculate``
    started it already); each next one as soon as the previous file is decoded, so that it
    decodes while that file is written.
    """

    def __init__(
        self,
        files: list[Path],
        stack: ExitStack,
        *,
        agent: str,
        flush_keys: int,
        parallel: bool | None,
        decoders: int | None,
    ) -> None:
        self.files = files
        self.decoders = decoders
        self.stack = stack
        self.agent = agent
        self.flush_keys = flush_keys
        self.parallel = parallel
        self.started: dict[int, DecodeWorker] = {}

    def __call__(self, number: int) -> None:
        """Start the decoding processes of file ``number`` if there is such a file and it needs some."""
        if number >= len(self.files) or number in self.started:
            return
        path = self.files[number]
        if number == 0:
            speculated = adopt(Plan(path, self.agent, self.flush_keys, self.parallel, self.decoders))
            if speculated is not None:
                self.started[number] = self.stack.enter_context(speculated)
                return
        if not use_worker(path, self.parallel):
            return
        worker = DecodeWorker(path, agent=self.agent, flush_at=self.flush_keys, decoders=self.decoders)
        try:
            self.started[number] = self.stack.enter_context(worker.start())
        except OSError:  # no process to be had (a limit, memory): the file is decoded in this one
            worker.close()

    def take(self, number: int) -> DecodeWorker | None:
        """The decoding processes started for file ``number``, if any (the scan closes them)."""
        return self.started.pop(number, None)
