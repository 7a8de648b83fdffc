"""QUIC Initial packets: decrypt the client's Initials, reassemble its ClientHello, report the SNI.

Client Initial packets are protected with keys that anyone can derive from the client's first
Destination Connection ID (RFC 9001 §5.2; RFC 9369 §3.3 for QUIC v2; the same scheme with other
salts for drafts 23-34). ``QuicTracker`` removes header protection, decrypts the payload with
AES-128-GCM, collects CRYPTO frames by offset per connection (a ClientHello with post-quantum
key shares spans two or more Initial packets, and clients fragment and reorder CRYPTO frames on
purpose), then hands the ClientHello to the TLS parser and emits one ``quic.sni`` per connection.

Google QUIC (``Q0xx`` versions, a different handshake) is not read: tshark reports no server name
for it either. Server Initials are recognised and skipped: they carry no ClientHello.

State is bounded: connections (oldest evicted first, expired after ``ttl`` seconds of capture
time), CRYPTO bytes and fragments per connection, derived keys.
"""

from __future__ import annotations

import hmac
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from collectors import tls
from collectors._context import PacketContext
from collectors._errors import MalformedPacket
from collectors._observation import Attrs, Kind, Observation

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["QuicTracker", "derive_client_keys", "is_long_header_initial", "version_name"]

_U32: Final = struct.Struct(">I")

VERSION_1: Final = 0x00000001
VERSION_2: Final = 0x6B3343CF

_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2: Final = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_DRAFT_29: Final = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_DRAFT_23: Final = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")

_V1_LABELS: Final = (b"quic key", b"quic iv", b"quic hp")
_V2_LABELS: Final = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")

#: version -> (initial salt, key/iv/hp labels, long-header type bits of an Initial packet).
_VERSIONS: Final[dict[int, tuple[bytes, tuple[bytes, bytes, bytes], int]]] = {
    VERSION_1: (_SALT_V1, _V1_LABELS, 0),
    VERSION_2: (_SALT_V2, _V2_LABELS, 1),  # RFC 9369 §3.2: Initial is 0b01 in v2
    # Drafts 33 and 34 took the final salt; 29-32 and 23-28 had their own (the drafts' §5.2).
    0xFF000022: (_SALT_V1, _V1_LABELS, 0),
    0xFF000021: (_SALT_V1, _V1_LABELS, 0),
    **{0xFF000000 | d: (_SALT_DRAFT_29, _V1_LABELS, 0) for d in range(29, 33)},
    **{0xFF000000 | d: (_SALT_DRAFT_23, _V1_LABELS, 0) for d in range(23, 29)},
}
#: Long-header packet types per version family (v2 permutes them, RFC 9369 §3.2).
_RETRY_TYPE: Final = {VERSION_2: 0}
_DEFAULT_RETRY_TYPE: Final = 3

#: Most coalesced packets read in one datagram (a client sends Initial + 0-RTT, rarely more).
MAX_COALESCED: Final = 8
#: Frames read in one Initial payload before giving up on it.
MAX_FRAMES: Final = 512
#: ACK ranges read in one ACK frame.
MAX_ACK_RANGES: Final = 256

_NOT_ZERO: Final = re.compile(rb"[^\x00]")


def version_name(version: int) -> str:
    """Name a QUIC version: ``v1``, ``v2``, ``draft-29``..., else its hex."""
    if version == VERSION_1:
        return "v1"
    if version == VERSION_2:
        return "v2"
    if version >> 8 == 0xFF0000:
        return f"draft-{version & 0xFF}"
    return f"0x{version:08x}"


def is_long_header_initial(datagram: bytes) -> bool:
    """Cheap test: does the datagram start with an Initial packet of a QUIC version we decrypt?"""
    if len(datagram) < 7 or datagram[0] & 0xC0 != 0xC0:
        return False
    entry = _VERSIONS.get(_U32.unpack_from(datagram, 1)[0])
    return entry is not None and (datagram[0] >> 4) & 3 == entry[2]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    # RFC 9000 §16: the two top bits of the first byte give the length (1, 2, 4 or 8 bytes).
    try:
        first = buf[pos]
    except IndexError:
        raise MalformedPacket("QUIC variable-length integer cut") from None
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(buf):
        raise MalformedPacket("QUIC variable-length integer cut")
    if size == 1:
        return first, end
    return int.from_bytes(buf[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    # HKDF-Expand-Label (RFC 8446 §7.1) with empty context; one HMAC block covers length <= 32.
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00\x01"
    return hmac.digest(secret, info, "sha256")[:length]


@dataclass(slots=True)
class _Keys:
    """Client Initial protection keys derived from one Destination Connection ID."""

    aead: AESGCM
    iv: int
    hp: CipherContext


def derive_client_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """Client Initial key, IV and header-protection key for a version and first DCID."""
    salt, labels, _ = _VERSIONS[version]
    initial_secret = hmac.digest(salt, dcid, "sha256")
    client_secret = _expand_label(initial_secret, b"client in", 32)
    return (
        _expand_label(client_secret, labels[0], 16),
        _expand_label(client_secret, labels[1], 12),
        _expand_label(client_secret, labels[2], 16),
    )


def _make_keys(version: int, dcid: bytes) -> _Keys:
    # The cryptography package loads on the first QUIC Initial only: a scan forks its decoding
    # process once the decoder is imported, and most captures hold no Initial (12 ms saved there).
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    key, iv, hp = derive_client_keys(version, dcid)
    # AES-ECB on one 16-byte sample is the header-protection mask (RFC 9001 §5.4.3); an ECB
    # encryptor keeps no state between blocks, so one context serves every packet.
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # noqa: S305
    return _Keys(AESGCM(key), int.from_bytes(iv, "big"), encryptor)


def _invalid_tag() -> type[Exception]:
    """cryptography's failed-authentication error (loaded by then: keys were made to decrypt)."""
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - see _make_keys

    return InvalidTag


def _decode_pn(largest: int, truncated: int, bits: int) -> int:
    # RFC 9000 Appendix A.3.
    expected = largest + 1
    window = 1 << bits
    half = window >> 1
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


_Address = tuple[str | None, int | None]


class _Connection:
    """What is kept of one client handshake until its ClientHello is read."""

    __slots__ = ("born", "chunks", "client", "done", "keys", "largest_pn", "server", "server_cids", "size")

    def __init__(self, keys: _Keys, client: _Address, server: _Address, born: float) -> None:
        self.keys = keys
        self.client = client
        self.server = server
        self.born = born
        self.chunks: dict[int, bytes] = {}
        self.size = 0
        self.largest_pn = -1
        self.done = False
        self.server_cids: set[bytes] = set()


class QuicTracker:
    """Follows QUIC client handshakes across datagrams and reports each ClientHello's SNI once."""

    def __init__(
        self,
        max_connections: int = 4096,
        max_crypto_bytes: int = 65536,
        max_fragments: int = 64,
        ttl: float = 60.0,
        max_buffered_bytes: int = 8 << 20,
    ) -> None:
        """Bounds: tracked connections, CRYPTO bytes and fragments per connection, seconds kept,
        and CRYPTO bytes buffered over all connections (anyone can craft valid Initials)."""
        self.max_connections = max_connections
        self.max_crypto_bytes = max_crypto_bytes
        self.max_fragments = max_fragments
        self.ttl = ttl
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered = 0
        self._conns: OrderedDict[tuple[bytes, _Address], _Connection] = OrderedDict()
        self._by_client: dict[_Address, _Connection] = {}
        self._keys: OrderedDict[tuple[int, bytes], _Keys] = OrderedDict()
        # (client, server, name) -> when reported: after a Retry the client sends its hello again
        # (some stacks with a new random) under a new DCID, the same connection for us.
        self._reported: OrderedDict[tuple[_Address, _Address, str], float] = OrderedDict()

    def __len__(self) -> int:
        """Number of connections tracked."""
        return len(self._conns)

    def observe(self, datagram: bytes, ctx: PacketContext) -> list[Observation]:
        """Read the long-header packets of one UDP datagram; MalformedPacket on broken framing."""
        out: list[Observation] = []
        n = len(datagram)
        pos = 0
        for _ in range(MAX_COALESCED):
            if n - pos < 7:
                break
            first = datagram[pos]
            # A short header runs to the end of the datagram, a version we do not decrypt
            # (version negotiation, gQUIC) is not ours; after the first packet, anything else
            # is the padding some clients append after their Initial.
            if first & 0xC0 != 0xC0:
                break
            version = _U32.unpack_from(datagram, pos + 1)[0]
            entry = _VERSIONS.get(version)
            if entry is None:
                break
            dcid_len = datagram[pos + 5]
            if dcid_len > 20:
                raise MalformedPacket("QUIC connection ID longer than 20 bytes")
            p = pos + 6 + dcid_len
            if p >= n:
                raise MalformedPacket("QUIC long header cut")
            dcid = datagram[pos + 6 : p]
            scid_len = datagram[p]
            if scid_len > 20:
                raise MalformedPacket("QUIC connection ID longer than 20 bytes")
            scid = datagram[p + 1 : p + 1 + scid_len]
            p += 1 + scid_len
            packet_type = (first >> 4) & 3
            if packet_type == _RETRY_TYPE.get(version, _DEFAULT_RETRY_TYPE):
                break  # a Retry has no Length: it is the last packet of its datagram
            is_initial = packet_type == entry[2]
            if is_initial:
                token_len, p = _varint(datagram, p)
                p += token_len
            length, p = _varint(datagram, p)
            end = p + length
            if end > n:
                raise MalformedPacket("QUIC packet longer than its datagram")
            if is_initial:
                found = self._initial(datagram, pos, p, end, version=version, dcid=dcid, scid=scid, ctx=ctx)
                if found is not None:
                    out.append(found)
            pos = end
        return out

    def _initial(
        self,
        data: bytes,
        start: int,
        pn_pos: int,
        end: int,
        *,
        version: int,
        dcid: bytes,
        scid: bytes,
        ctx: PacketContext,
    ) -> Observation | None:
        src: _Address = (ctx.src.ip, ctx.src.port)
        dst: _Address = (ctx.dst.ip, ctx.dst.port)
        if pn_pos + 20 > end:
            raise MalformedPacket("QUIC Initial too short for its header-protection sample")
        # The server's Initial of a connection we follow: remember the connection ID it chose,
        # which the client's later Initials carry as their DCID (still under the first keys).
        peer = self._by_client.get(dst) if src != dst else None
        if peer is not None and peer.server == src:
            if scid and len(peer.server_cids) < 4:
                peer.server_cids.add(scid)
            return None
        conn = self._conns.get((dcid, src))
        if conn is None:
            prev = self._by_client.get(src)
            if prev is not None and prev.server == dst and dcid in prev.server_cids:
                conn = prev
        if conn is not None and conn.done:
            return None
        if conn is not None:
            plain = self._decrypt(conn.keys, data, start, pn_pos, end, largest=conn.largest_pn)
        else:
            keys = self._keys_for(version, dcid)
            plain = self._decrypt(keys, data, start, pn_pos, end, largest=-1)
            if plain is None:
                # Not the client's first keys: a server Initial we did not pair (its client was
                # not seen), or a client Initial after the DCID switch whose server Initial we
                # missed. Neither is malformed, neither is readable without more state.
                prev = self._by_client.get(src)
                if prev is None or prev.server != dst or prev.done:
                    return None
                plain = self._decrypt(prev.keys, data, start, pn_pos, end, largest=prev.largest_pn)
                if plain is None:
                    return None
                conn = prev
            else:
                conn = self._track(keys, dcid, src, dst, ctx.ts)
        if plain is None:
            return None
        pn, payload = plain
        conn.largest_pn = max(conn.largest_pn, pn)
        if not self._read_frames(conn, payload):
            return None
        return self._hello(conn, version, ctx)

    def _keys_for(self, version: int, dcid: bytes) -> _Keys:
        cache_key = (version, dcid)
        keys = self._keys.get(cache_key)
        if keys is None:
            keys = self._keys[cache_key] = _make_keys(version, dcid)
            if len(self._keys) > self.max_connections:
                self._keys.popitem(last=False)
        return keys

    def _track(self, keys: _Keys, dcid: bytes, client: _Address, server: _Address, now: float) -> _Connection:
        conns = self._conns
        # Evict the oldest connections: over the bound, or expired (capture time may jump back:
        # an entry "born in the future" is kept until the bound pushes it out).
        while conns:
            oldest = next(iter(conns.values()))
            if len(conns) < self.max_connections and now - oldest.born <= self.ttl:
                break
            self._evict_oldest()
        conn = _Connection(keys, client, server, now)
        conns[(dcid, client)] = conn
        self._by_client[client] = conn
        return conn

    def _evict_oldest(self) -> None:
        _, oldest = self._conns.popitem(last=False)
        if self._by_client.get(oldest.client) is oldest:
            del self._by_client[oldest.client]
        self._finish(oldest)

    @staticmethod
    def _decrypt(
        keys: _Keys, data: bytes, start: int, pn_pos: int, end: int, *, largest: int
    ) -> tuple[int, bytes] | None:
        # RFC 9001 §5.4: the mask comes from 16 bytes sampled 4 bytes after the packet number.
        mask = keys.hp.update(data[pn_pos + 4 : pn_pos + 20])
        first = data[start] ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        truncated = int.from_bytes(data[pn_pos : pn_pos + pn_len], "big") ^ int.from_bytes(
            mask[1 : 1 + pn_len], "big"
        )
        header = bytes((first,)) + data[start + 1 : pn_pos] + truncated.to_bytes(pn_len, "big")
        pn = _decode_pn(largest, truncated, 8 * pn_len)
        nonce = (keys.iv ^ pn).to_bytes(12, "big")
        try:
            return pn, keys.aead.decrypt(nonce, data[pn_pos + pn_len : end], header)
        except _invalid_tag():
            return None

    def _read_frames(self, conn: _Connection, payload: bytes) -> bool:
        """Store the CRYPTO frames of a decrypted Initial; tell whether any was new."""
        n = len(payload)
        pos = 0
        added = False
        for _ in range(MAX_FRAMES):
            if pos >= n:
                break
            frame = payload[pos]
            if frame == 0x00:  # PADDING: skip the whole run at C speed
                found = _NOT_ZERO.search(payload, pos)
                if found is None:
                    break
                pos = found.start()
            elif frame == 0x01:  # PING
                pos += 1
            elif frame in (0x02, 0x03):  # ACK, ACK with ECN counts
                _, pos = _varint(payload, pos + 1)  # largest acknowledged
                _, pos = _varint(payload, pos)  # ack delay
                ranges, pos = _varint(payload, pos)
                _, pos = _varint(payload, pos)  # first range
                if ranges > MAX_ACK_RANGES:
                    raise MalformedPacket("QUIC ACK frame with too many ranges")
                for _ in range(2 * ranges + (3 if frame == 0x03 else 0)):
                    _, pos = _varint(payload, pos)
            elif frame == 0x06:  # CRYPTO
                offset, pos = _varint(payload, pos + 1)
                length, pos = _varint(payload, pos)
                if pos + length > n:
                    raise MalformedPacket("QUIC CRYPTO frame overruns its packet")
                if self._store(conn, offset, payload[pos : pos + length]):
                    added = True
                pos += length
            else:
                # CONNECTION_CLOSE ends the packet's meaning; any other frame is not allowed in
                # an Initial or not one we know: stop reading this packet either way.
                break
        return added

    def _store(self, conn: _Connection, offset: int, data: bytes) -> bool:
        if not data or offset + len(data) > self.max_crypto_bytes:
            return False
        old = conn.chunks.get(offset)
        if old is not None and len(old) >= len(data):
            return False  # a retransmission
        if old is None and len(conn.chunks) >= self.max_fragments:
            return False
        grown = len(data) - (len(old) if old is not None else 0)
        # Over the global budget, the oldest connections go first; when this one is itself the
        # oldest it may still grow, up to its own bound.
        while self.buffered + grown > self.max_buffered_bytes and len(self._conns) > 1:
            if next(iter(self._conns.values())) is conn:
                break
            self._evict_oldest()
        conn.chunks[offset] = data
        conn.size += grown
        self.buffered += grown
        return True

    def _hello(self, conn: _Connection, version: int, ctx: PacketContext) -> Observation | None:
        # The contiguous prefix of the CRYPTO stream, from offset 0.
        parts: list[bytes] = []
        have = 0
        for offset in sorted(conn.chunks):
            if offset > have:
                break
            chunk = conn.chunks[offset]
            if offset + len(chunk) > have:
                parts.append(chunk[have - offset :])
                have = offset + len(chunk)
        if have < 4:
            return None
        stream = b"".join(parts)
        if stream[0] != tls.HANDSHAKE_CLIENT_HELLO:
            self._finish(conn)
            raise MalformedPacket("QUIC CRYPTO stream does not start with a ClientHello")
        size = 4 + int.from_bytes(stream[1:4], "big")
        if size > self.max_crypto_bytes:
            self._finish(conn)
            raise MalformedPacket("ClientHello larger than the CRYPTO bound")
        if have < size:
            return None
        self._finish(conn)
        ch = tls.parse_client_hello(stream[4:size])
        seen = (conn.client, conn.server, ch.sni or "")
        when = self._reported.pop(seen, None)
        self._reported[seen] = ctx.ts
        if len(self._reported) > self.max_connections:
            self._reported.popitem(last=False)
        if when is not None and abs(ctx.ts - when) <= self.ttl:
            return None
        attrs: Attrs = {**tls.client_hello_attrs(ch, "q"), "quic_version": version_name(version)}
        if ch.sni is None:
            # A hello to a bare IP: its fingerprints are the only thing that identifies the client.
            return ctx.observation(Kind.TLS_FINGERPRINT, str(attrs["ja4"]), {**attrs, "transport": "quic"})
        return ctx.observation(Kind.QUIC_SNI, ch.sni, attrs)

    def _finish(self, conn: _Connection) -> None:
        self.buffered -= conn.size
        conn.done = True
        conn.chunks = {}
        conn.size = 0
