"""How the tshark ground truth of the DNS family maps onto Lanterne's Observations.

``FIELDS[key](observations)`` is what Lanterne extracted for a truth key; ``NORMALISE[key](value)``
turns tshark's value into the same form (``None`` drops it). Names compare lower-cased, as the
Observation stores them; NBNS names keep their case (tshark's ``NAME<XX>`` display form).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from collectors._observation import Kind, Observation, normalise_name

__all__ = ["FIELDS", "NORMALISE"]

# tshark writes the root name as "<Root>"; Lanterne as ".".
_ROOT = "<Root>"
# tshark's placeholders for a name it could not decode (packet-dns.c). Lanterne reports no name
# there (the record is malformed); they are kept verbatim so that tshark_differences.yaml can
# name them exactly as tshark prints them.
_PLACEHOLDERS = frozenset(
    {
        "<Name contains a pointer that loops>",
        "<Name too long>",
        "<Unknown extended label>",
    }
)
# tshark lists each NBNS resource-record name a second time with the suffix's meaning appended:
# "WORKGROUP<1d> (Local Master Browser)". The bare "NAME<XX>[.scope]" form is what we compare.
_NBNS_DESCRIPTION = re.compile(r"^(.*<[0-9a-f]{2}>(?:\.[^ ]*)?) \([^()]*\)$")


def _name(value: str) -> str | None:
    if value == _ROOT:
        return "."
    if value in _PLACEHOLDERS:
        return value
    return normalise_name(value) or None


def _nbns(value: str) -> str | None:
    match = _NBNS_DESCRIPTION.match(value)
    return match.group(1) if match else value


def _values(observations: Iterable[Observation], *kinds: Kind) -> set[str]:
    return {obs.value for obs in observations if obs.kind in kinds}


def _dns_qnames(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.DNS_QUERY, Kind.DNS_ANSWER)


def _mdns_qnames(observations: list[Observation]) -> set[str]:
    return {
        obs.value
        for obs in observations
        if obs.kind in (Kind.MDNS_SERVICE, Kind.MDNS_HOST) and obs.attrs.get("question") is True
    }


def _mdns_ptr(observations: list[Observation]) -> set[str]:
    # PTR targets: service instances (or types, under _services._dns-sd._udp) and reverse names.
    return {
        obs.value
        for obs in observations
        if (obs.kind is Kind.MDNS_SERVICE and "service_type" in obs.attrs)
        or (obs.kind is Kind.MDNS_HOST and "reverse" in obs.attrs)
    }


def _mdns_srv_target(observations: list[Observation]) -> set[str]:
    return {
        normalise_name(target)
        for obs in observations
        if obs.kind is Kind.MDNS_SERVICE and isinstance(target := obs.attrs.get("target"), str)
    }


def _llmnr_qnames(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.LLMNR_QUERY)


def _nbns_names(observations: list[Observation]) -> set[str]:
    return _values(observations, Kind.NBNS_NAME)


FIELDS: dict[str, Callable[[list[Observation]], set[str]]] = {
    "dns_qnames": _dns_qnames,
    "mdns_qnames": _mdns_qnames,
    "mdns_ptr": _mdns_ptr,
    "mdns_srv_target": _mdns_srv_target,
    "llmnr_qnames": _llmnr_qnames,
    "nbns_names": _nbns_names,
}

NORMALISE: dict[str, Callable[[str], str | None]] = {
    "dns_qnames": _name,
    "mdns_qnames": _name,
    "mdns_ptr": _name,
    "mdns_srv_target": _name,
    "llmnr_qnames": _name,
    "nbns_names": _nbns,
}
