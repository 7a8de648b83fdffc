"""Collectors: turn the network into Observations (parsers, capture readers, probes)."""

from collectors._context import PacketContext
from collectors._errors import MalformedPacket, ParseError, Truncated
from collectors._observation import (
    NAME_KINDS,
    Endpoint,
    InvalidObservation,
    Kind,
    Observation,
    canonical_ip,
    canonical_mac,
    is_locally_administered,
)

__all__ = [
    "NAME_KINDS",
    "Endpoint",
    "InvalidObservation",
    "Kind",
    "MalformedPacket",
    "Observation",
    "PacketContext",
    "ParseError",
    "Truncated",
    "canonical_ip",
    "canonical_mac",
    "is_locally_administered",
]
