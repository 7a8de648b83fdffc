"""This machine's defaults, for the CLI and for what starts before it (``agent._prefetch``)."""

from __future__ import annotations

import socket


def default_agent_name() -> str:
    """The agent name used when none is configured: this machine's short host name."""
    return socket.gethostname().split(".")[0] or "lanterne"
