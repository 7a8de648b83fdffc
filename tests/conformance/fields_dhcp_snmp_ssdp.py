"""How the tshark ground truth of DHCP, SNMP and SSDP maps onto Lanterne's Observations.

``FIELDS[key](observations)`` is what Lanterne extracted for a truth key; ``NORMALISE[key](value)``
turns tshark's value into the same form (``None`` drops it); ``DERIVED[key](truth)`` computes the
expected set for keys that tshark's truth holds only per packet (already normalised, so applying
``NORMALISE`` to it again changes nothing).

- ``dhcp_hostnames``: option 12 only (tshark's field); Lanterne's host names taken from option 81
  (``attrs["option"] == 81``) are left out. Names compare lower-cased, as the Observation stores them.
- ``snmp_sysdescr``: the OCTET STRING paired with OID 1.3.6.1.2.1.1.1.0 in agent PDUs (response,
  trap, inform, report). tshark lists a packet's OIDs and its octet strings apart; they pair up
  only when every varbind is an octet string (same count), otherwise the packet is skipped.
- ``ssdp_servers``: the value of every ``SERVER:`` header line (any case) of ``ssdp_packets``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from collectors._observation import Kind, Observation, normalise_name, printable
from collectors.dhcp import decode_hostname

__all__ = ["DERIVED", "FIELDS", "NORMALISE"]

SYS_DESCR = "1.3.6.1.2.1.1.1.0"
#: tshark's SNMP PDU numbers sent by an agent about itself: response, trap, inform, v2 trap, report.
_AGENT_PDUS = frozenset({"2", "4", "6", "7", "8"})
_HEX = "hex:"


def _values(observations: Iterable[Observation], kind: Kind) -> set[str]:
    return {obs.value for obs in observations if obs.kind is kind}


def _text(value: str) -> str | None:
    """Normalise a banner-like value the way Observation does (strip, bound, escape controls)."""
    if value.startswith(_HEX):
        # tshark prints a non-printable octet string as hex; Lanterne decodes it as UTF-8.
        raw = b""
        with contextlib.suppress(ValueError):
            raw = bytes.fromhex(value[len(_HEX) :])
        if not raw:
            return None
        value = raw.decode("utf-8", "replace")
    return printable(value.strip().strip("\x00").strip()) or None


def _hostname(value: str) -> str | None:
    return normalise_name(decode_hostname(value.encode("utf-8", "surrogateescape"))) or None


def _opt55(value: str) -> str | None:
    return value.strip() or None


def _dhcp_hostnames(observations: list[Observation]) -> set[str]:
    return {
        obs.value for obs in observations if obs.kind is Kind.DHCP_HOSTNAME and obs.attrs.get("option") != 81
    }


def _dhcp_vendor_classes(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.DHCP_VENDOR_CLASS)


def _dhcp_opt55_lists(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.DHCP_FINGERPRINT)


def _snmp_sysdescr(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.SNMP_SYSDESCR)


def _ssdp_servers(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.SSDP_SERVER)


def _derived_snmp_sysdescr(truth: dict[str, Any]) -> set[str]:
    expected: set[str] = set()
    for packet in truth.get("snmp_packets") or ():
        if not set(packet.get("pdu") or ()) & _AGENT_PDUS:
            continue
        oids = packet.get("oids") or []
        octets = packet.get("octet_values") or []
        if SYS_DESCR not in oids or len(oids) != len(octets):
            continue
        value = _text(octets[oids.index(SYS_DESCR)])
        if value:
            expected.add(value)
    return expected


def _derived_ssdp_servers(truth: dict[str, Any]) -> set[str]:
    expected: set[str] = set()
    for packet in truth.get("ssdp_packets") or ():
        for line in packet.get("header_lines") or ():
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() == "server":
                text = _text(value)
                if text:
                    expected.add(text)
    return expected


FIELDS: dict[str, Callable[[list[Observation]], set[str]]] = {
    "dhcp_hostnames": _dhcp_hostnames,
    "dhcp_vendor_classes": _dhcp_vendor_classes,
    "dhcp_opt55_lists": _dhcp_opt55_lists,
    "snmp_sysdescr": _snmp_sysdescr,
    "ssdp_servers": _ssdp_servers,
}

NORMALISE: dict[str, Callable[[str], str | None]] = {
    "dhcp_hostnames": _hostname,
    "dhcp_vendor_classes": _text,
    "dhcp_opt55_lists": _opt55,
    "snmp_sysdescr": _text,
    "ssdp_servers": _text,
}

DERIVED: dict[str, Callable[[dict[str, Any]], set[str]]] = {
    "snmp_sysdescr": _derived_snmp_sysdescr,
    "ssdp_servers": _derived_ssdp_servers,
}
