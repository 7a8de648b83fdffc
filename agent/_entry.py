"""The ``lanterne`` console script: the CLI, with ``scan``'s decoding started before it loads.

``lanterne scan`` forks its first file's decoding processes here, before typer, rich and the
catalogue are imported and the command line is parsed (``agent._prefetch.speculate``): they
decode while the rest starts up; once it is done, the process ends at once (``agent._exit``).
Every other command goes straight to ``agent.cli``.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the console script."""
    if sys.argv[1:2] == ["scan"]:
        from agent._prefetch import speculate  # noqa: PLC0415 - only scan needs the decoder this early

        speculate(sys.argv[2:])
        from agent._decoding import long_lived  # noqa: PLC0415 - imported with the decoder

        with long_lived():  # after the fork: the decoding processes keep their collector
            from agent.cli import main as cli_main  # noqa: PLC0415 - after the fork, on purpose
        from agent import _exit  # noqa: PLC0415

        _exit.arm()
        try:
            cli_main()
        except SystemExit as exc:
            _exit.leave(_exit.status_of(exc.code))
        _exit.leave(0)
    else:
        from agent.cli import main as cli_main  # noqa: PLC0415

        cli_main()
