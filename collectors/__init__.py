"""Collectors: turn the network into Observations (parsers, capture readers, probes).

The decoder (and through it every parser, QUIC's cryptography included) is imported on first use,
so that code needing only the Observation record stays light.
"""

from typing import TYPE_CHECKING, Any

from collectors._capture import CaptureFormatError, CaptureTruncated, iter_packets
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
    "CaptureFormatError",
    "CaptureTruncated",
    "DecodeStats",
    "Decoder",
    "Endpoint",
    "InvalidObservation",
    "Kind",
    "MalformedPacket",
    "Observation",
    "PacketContext",
    "ParseError",
    "Partition",
    "Truncated",
    "canonical_ip",
    "canonical_mac",
    "decode_file",
    "decode_packets",
    "decode_share",
    "decode_stream",
    "is_locally_administered",
    "iter_packets",
    "merge_shares",
]

if TYPE_CHECKING:
    from collectors._decoder import (
        Decoder,
        DecodeStats,
        Partition,
        decode_file,
        decode_packets,
        decode_share,
        decode_stream,
        merge_shares,
    )

_LAZY = frozenset(
    {
        "DecodeStats",
        "Decoder",
        "Partition",
        "decode_file",
        "decode_packets",
        "decode_share",
        "decode_stream",
        "merge_shares",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from collectors import _decoder  # noqa: PLC0415 - deferred on purpose (see the module docstring)

        return getattr(_decoder, name)
    raise AttributeError(f"module 'collectors' has no attribute {name!r}")
