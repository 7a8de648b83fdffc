"""What the tshark conformance harness compares for HTTP and HL7, and how tshark's values are normalised.

``FIELDS`` maps a truth key to what Lanterne extracted from a capture; ``NORMALISE`` turns one of
tshark's values into Lanterne's form (None drops it); ``DERIVED`` computes an expected set from
the whole truth dictionary when tshark has no flat list for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from collectors import Kind, Observation, http
from collectors._observation import normalise_name, printable


def _values(kind: Kind) -> Callable[[list[Observation]], set[str]]:
    """Return the extractor of the distinct values of one kind."""

    def extract(observations: list[Observation]) -> set[str]:
        return {obs.value for obs in observations if obs.kind is kind}

    return extract


def normalise_host(value: str) -> str | None:
    """Lanterne's form of tshark's ``http.host``: no ``:port`` suffix (it goes to attrs), lower-case."""
    host, _port = http.split_host_port(value)
    if not host.isascii():
        with contextlib.suppress(UnicodeError):  # as the parser does for raw UTF-8 names
            host = host.encode("idna").decode("ascii")
    return normalise_name(host) or None


def normalise_text(value: str) -> str | None:
    """Lanterne's form of a free-text header: trimmed, printable, bounded; empty ones are dropped."""
    return printable(value.strip()) or None


def hl7_message_types(truth: dict[str, Any]) -> set[str]:
    """``type^event`` (or ``type`` alone) of each HL7 message tshark dissected."""
    found: set[str] = set()
    for packet in truth.get("hl7_packets") or []:
        types = packet.get("message_type") or []
        events = packet.get("event_type") or []
        if types and types[0]:
            found.add(f"{types[0]}^{events[0]}" if events and events[0] else types[0])
    return found


FIELDS: dict[str, Callable[[list[Observation]], set[str]]] = {
    "http_hosts": _values(Kind.HTTP_HOST),
    "http_user_agents": _values(Kind.HTTP_USER_AGENT),
    "http_servers": _values(Kind.HTTP_SERVER),
    "hl7_message_types": _values(Kind.HL7_HEADER),
}

NORMALISE: dict[str, Callable[[str], str | None]] = {
    "http_hosts": normalise_host,
    "http_user_agents": normalise_text,
    "http_servers": normalise_text,
}

DERIVED: dict[str, Callable[[dict[str, Any]], set[str]]] = {
    "hl7_message_types": hl7_message_types,
}
