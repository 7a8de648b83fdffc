"""Bounded reassembly of the first bytes of TCP streams whose first message spans several segments.

Only streams that began with a recognised message (a TLS ClientHello, an HTTP head, a DICOM
A-ASSOCIATE, an HL7 MSH, DNS over TCP) and whose parser said ``Truncated`` are tracked, and only
until the parser is satisfied or gives up: a handful of kilobytes per stream, a bounded number of
streams, in capture time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from collectors._context import PacketContext
from collectors._observation import Observation

#: Bytes kept per stream start; a message longer than this is parsed from what we have, or dropped.
MAX_STREAM_BYTES: Final = 16384
#: Streams tracked at once; the oldest is dropped past this (counted as evicted).
MAX_STREAMS: Final = 8192
#: Seconds (capture time) a stream may wait for its next segment.
STREAM_TIMEOUT: Final = 30.0
#: Out-of-order segments held per stream.
MAX_OUT_OF_ORDER: Final = 8

StreamParser = Callable[[bytes, PacketContext], list[Observation]]


@dataclass(slots=True)
class Stream:
    """A stream start waiting for more bytes."""

    parser: StreamParser
    ctx: PacketContext
    protocol: str
    next_seq: int
    data: bytearray
    last_ts: float
    ahead: dict[int, bytes] = field(default_factory=dict)


class StreamStarts:
    """The streams currently being reassembled, keyed by the directional 4-tuple."""

    __slots__ = ("evicted", "expired", "port_pairs", "streams")

    def __init__(self) -> None:
        self.streams: OrderedDict[bytes, Stream] = OrderedDict()
        # (sport << 16 | dport) -> number of streams: lets the packet loop skip the full key lookup.
        self.port_pairs: dict[int, int] = {}
        self.evicted = 0
        self.expired = 0

    def open(self, key: bytes, ports: int, stream: Stream) -> None:
        """Start tracking ``stream``."""
        if key in self.streams:
            self.close(key, ports)
        if len(self.streams) >= MAX_STREAMS:
            self._expire(stream.last_ts)
        if len(self.streams) >= MAX_STREAMS:
            old_key, old = self.streams.popitem(last=False)
            self._forget_ports(old_key)
            self.evicted += 1
            del old
        self.streams[key] = stream
        self.port_pairs[ports] = self.port_pairs.get(ports, 0) + 1

    def close(self, key: bytes, ports: int) -> None:
        """Stop tracking a stream (parsed, given up, or reset)."""
        if self.streams.pop(key, None) is not None:
            count = self.port_pairs.get(ports, 0) - 1
            if count > 0:
                self.port_pairs[ports] = count
            else:
                self.port_pairs.pop(ports, None)

    def extend(self, stream: Stream, seq: int, payload: bytes) -> bool:
        """Add a segment; return True when new in-order bytes were appended."""
        delta = (seq - stream.next_seq) & 0xFFFFFFFF
        if delta >= 0x80000000:  # retransmission (partly) before what we have: keep the new tail
            behind = 0x100000000 - delta
            if behind >= len(payload):
                return False
            payload = payload[behind:]
            delta = 0
        if delta:
            if len(stream.ahead) < MAX_OUT_OF_ORDER:
                stream.ahead[seq] = payload
            return False
        room = MAX_STREAM_BYTES - len(stream.data)
        stream.data += payload[:room]
        stream.next_seq = (stream.next_seq + len(payload)) & 0xFFFFFFFF
        while stream.ahead:
            following = stream.ahead.pop(stream.next_seq, None)
            if following is None:
                break
            stream.data += following[: MAX_STREAM_BYTES - len(stream.data)]
            stream.next_seq = (stream.next_seq + len(following)) & 0xFFFFFFFF
        return True

    def _expire(self, now: float) -> None:
        while self.streams:
            key, oldest = next(iter(self.streams.items()))
            if now - oldest.last_ts <= STREAM_TIMEOUT:
                return
            del self.streams[key]
            self._forget_ports(key)
            self.expired += 1

    def _forget_ports(self, key: bytes) -> None:
        ports = int.from_bytes(key[-4:], "big")
        count = self.port_pairs.get(ports, 0) - 1
        if count > 0:
            self.port_pairs[ports] = count
        else:
            self.port_pairs.pop(ports, None)
