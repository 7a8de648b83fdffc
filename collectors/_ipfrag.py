"""Bounded IPv4/IPv6 fragment reassembly (fragmented DNS answers and large QUIC datagrams exist)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

#: Datagrams waiting for their fragments at once; the oldest is dropped past this.
MAX_PENDING: Final = 1024
#: Largest datagram reassembled (the IPv4 maximum).
MAX_DATAGRAM: Final = 65535
#: Seconds (capture time) after which an incomplete datagram is dropped.
TIMEOUT: Final = 30.0


@dataclass(slots=True)
class _Pending:
    first_ts: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    size: int = 0


class Defragmenter:
    """Collect fragments per (source, destination, id, protocol) until the datagram is whole."""

    __slots__ = ("dropped", "pending", "reassembled")

    def __init__(self) -> None:
        self.pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self.dropped = 0
        self.reassembled = 0

    def add(self, key: bytes, ts: float, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add one fragment; return the whole upper-layer payload once every piece is there."""
        entry = self.pending.get(key)
        if entry is None:
            self._expire(ts)
            if len(self.pending) >= MAX_PENDING:
                self.pending.popitem(last=False)
                self.dropped += 1
            entry = self.pending[key] = _Pending(first_ts=ts)
        end = offset + len(data)
        if end > MAX_DATAGRAM or entry.size + len(data) > MAX_DATAGRAM:
            del self.pending[key]
            self.dropped += 1
            return None
        if offset not in entry.pieces:
            entry.pieces[offset] = data
            entry.size += len(data)
        if not more:
            entry.total = end
        if entry.total is None or entry.size < entry.total:
            return None
        # Walk the pieces in order; overlapping or missing pieces mean we are not done (or never will be).
        out = bytearray()
        for piece_offset in sorted(entry.pieces):
            if piece_offset > len(out):
                return None
            piece = entry.pieces[piece_offset]
            out += piece[len(out) - piece_offset :]
        if len(out) < entry.total:
            return None
        del self.pending[key]
        self.reassembled += 1
        return bytes(out[: entry.total])

    def _expire(self, now: float) -> None:
        while self.pending:
            key, oldest = next(iter(self.pending.items()))
            if now - oldest.first_ts <= TIMEOUT:
                return
            del self.pending[key]
            self.dropped += 1
