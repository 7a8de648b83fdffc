"""``python -m agent``: the same as the ``lanterne`` command."""

from agent.cli import main

main()
