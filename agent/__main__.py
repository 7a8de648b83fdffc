"""``python -m agent``: the same as the ``lanterne`` command."""

from agent._entry import main

main()
