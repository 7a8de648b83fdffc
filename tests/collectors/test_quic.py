"""QUIC Initial decryption: RFC test vectors, crafted multi-packet hellos, hostile datagrams, corpus."""

from __future__ import annotations

import contextlib
import itertools
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether, Loopback
from scapy.packet import Padding, Raw
from scapy.utils import PcapReader

from collectors import DecodeStats, decode_file, quic
from collectors._context import PacketContext
from collectors._errors import MalformedPacket
from collectors._observation import Endpoint, Kind, Observation
from tests.collectors.test_tls import SPEC_BODY, alpn_ext, ext, handshake, hello_body, sni_ext, versions_ext
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus, truth_of

REPO = Path(__file__).resolve().parents[2]
CLIENT = Endpoint("10.0.0.2", None, 50000)
SERVER = Endpoint("192.0.2.1", None, 443)
CTX = PacketContext(1_700_000_000.0, CLIENT, SERVER)
FROM_SERVER = PacketContext(1_700_000_000.1, SERVER, CLIENT)

V1 = 0x00000001
V2 = 0x6B3343CF

# --- RFC 9001 Appendix A (QUIC v1) and RFC 9369 Appendix A (QUIC v2) ------------------------------

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 A.2 / RFC 9369 A.2: the client Initial's unprotected CRYPTO frame (a ClientHello for
# example.com offering ALPN "alpn"), padded to 1162 bytes.
RFC_CLIENT_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)

RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)

RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)

# RFC 9001 A.3: the server's Initial (a ServerHello), protected with the server's keys.
RFC9001_SERVER_INITIAL = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee"
)


@pytest.mark.parametrize(
    ("version", "key", "iv", "hp"),
    [
        (
            V1,
            "1f369613dd76d5467730efcbe3b1a22d",
            "fa044b2f42a3fd3b46fb255c",
            "9f50449e04a0e810283a1e9933adedd2",
        ),
        (
            V2,
            "8b1a0bc121284290a29e0971b5cd045d",
            "91f73e2351d8fa91660e909f",
            "45b95e15235d6f45a6b19cbcb0294ba9",
        ),
    ],
)
def test_client_keys_match_the_rfcs(version: int, key: str, iv: str, hp: str) -> None:
    assert quic.derive_client_keys(version, RFC_DCID) == (
        bytes.fromhex(key),
        bytes.fromhex(iv),
        bytes.fromhex(hp),
    )


@pytest.mark.parametrize(("packet", "name"), [(RFC9001_CLIENT_INITIAL, "v1"), (RFC9369_CLIENT_INITIAL, "v2")])
def test_rfc_client_initial(packet: bytes, name: str) -> None:
    assert quic.is_long_header_initial(packet)
    [obs] = quic.QuicTracker().observe(packet, CTX)
    assert obs.kind is Kind.QUIC_SNI
    assert obs.value == "example.com"
    assert obs.src == CLIENT
    assert obs.dst == SERVER
    assert obs.attrs["alpn"] == ("alpn",)
    assert obs.attrs["version"] == "1.3"
    assert obs.attrs["quic_version"] == name
    assert obs.attrs["ech"] is False
    assert str(obs.attrs["ja4"]).startswith("q13d0211an_")  # 2 ciphers, 11 extensions, "alpn"
    assert len(str(obs.attrs["ja3"])) == 32


def test_server_initial_is_skipped_not_malformed() -> None:
    tracker = quic.QuicTracker()
    assert quic.is_long_header_initial(RFC9001_SERVER_INITIAL)
    assert tracker.observe(RFC9001_SERVER_INITIAL, FROM_SERVER) == []
    assert len(tracker) == 0  # nothing decrypted, nothing kept


# --- crafting protected packets -----------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return struct.pack(">H", 0x4000 | value)
    return struct.pack(">I", 0x80000000 | value)


def protect(
    payload: bytes,
    *,
    keys_dcid: bytes = RFC_DCID,
    dcid: bytes | None = None,
    scid: bytes = b"",
    version: int = V1,
    pn: int = 0,
    pn_len: int = 2,
    token: bytes = b"",
    packet_type: int | None = None,
) -> bytes:
    """A client Initial (RFC 9001 §5) carrying ``payload``, keys from ``keys_dcid``."""
    key, iv, hp = quic.derive_client_keys(version, keys_dcid)
    if packet_type is None:
        packet_type = 1 if version == V2 else 0
    dcid = keys_dcid if dcid is None else dcid
    first = 0xC0 | (packet_type << 4) | (pn_len - 1)
    header = (
        bytes([first]) + struct.pack(">I", version) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    )
    if packet_type == (1 if version == V2 else 0):
        header += varint(len(token)) + token
    header += struct.pack(">H", 0x4000 | (pn_len + len(payload) + 16))
    pn_offset = len(header)
    header += pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    sample = sealed[4 - pn_len : 20 - pn_len]
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_offset + i] ^= mask[1 + i]
    return bytes(out)


def test_protect_reproduces_the_rfc_packets() -> None:
    """The helper is right: it rebuilds both RFC client Initials byte for byte."""
    assert protect(RFC_CLIENT_PAYLOAD, pn=2, pn_len=4) == RFC9001_CLIENT_INITIAL
    assert protect(RFC_CLIENT_PAYLOAD, pn=2, pn_len=4, version=V2) == RFC9369_CLIENT_INITIAL


def crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def padded(frames: bytes, size: int = 1100) -> bytes:
    return frames + bytes(max(0, size - len(frames)))


# A post-quantum-sized ClientHello: a 1,200-byte key share makes it span two or three packets.
BIG_HELLO = handshake(
    hello_body(
        (0x1301, 0x1302, 0x1303),
        (
            sni_ext(b"big.example"),
            alpn_ext(b"h3"),
            versions_ext(0x0304),
            ext(0x0033, struct.pack(">HHH", 1206, 0x11EC, 1202) + bytes(1202)),
            ext(0x0039, bytes(60)),  # QUIC transport parameters
        ),
    )
)


def split_hello(hello: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    bounds = [0, *cuts, len(hello)]
    return [crypto(a, hello[a:b]) for a, b in itertools.pairwise(bounds)]


def test_hello_across_packets_in_any_order() -> None:
    frames = split_hello(BIG_HELLO, (500, 1000))
    for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0)):
        tracker = quic.QuicTracker()
        results: list[list[Observation]] = []
        for pn, index in enumerate(order):
            results.append(tracker.observe(protect(padded(frames[index]), pn=pn), CTX))
        assert [len(r) for r in results] == [0, 0, 1]
        assert results[-1][0].value == "big.example"
        assert results[-1][0].attrs["alpn"] == ("h3",)


def test_fragmented_and_reordered_crypto_frames_in_one_packet() -> None:
    frames = split_hello(BIG_HELLO, (5, 300, 301, 900))
    payload = (
        b"\x02\x00\x00\x00\x00" + b"\x01" + frames[3] + frames[0] + b"\x00\x00\x01" + frames[2] + frames[1]
    )
    packet_1 = protect(padded(payload[: len(payload)]), pn=0)
    packet_2 = protect(padded(frames[4] + frames[1]), pn=1)  # a retransmitted fragment too
    tracker = quic.QuicTracker()
    assert tracker.observe(packet_1, CTX) == []
    [obs] = tracker.observe(packet_2, CTX)
    assert obs.value == "big.example"


def test_overlapping_fragments() -> None:
    hello = BIG_HELLO
    payload = crypto(0, hello[:800]) + crypto(500, hello[500:1500]) + crypto(1400, hello[1400:])
    [obs] = quic.QuicTracker().observe(protect(padded(payload, 2000), pn=0), CTX)
    assert obs.value == "big.example"


def test_each_connection_is_reported_once() -> None:
    packet = protect(padded(crypto(0, handshake(SPEC_BODY))))
    tracker = quic.QuicTracker()
    assert len(tracker.observe(packet, CTX)) == 1
    assert tracker.observe(packet, CTX) == []  # a retransmission
    # After a Retry the client sends its hello again under the DCID the server chose.
    retried = protect(padded(crypto(0, handshake(SPEC_BODY))), keys_dcid=b"retry-cid-0001", token=b"tok")
    assert tracker.observe(retried, CTX) == []
    # Another client with the same hello bytes is another connection.
    other = PacketContext(CTX.ts, Endpoint("10.0.0.3", None, 50000), SERVER)
    assert len(tracker.observe(packet, other)) == 1
    # The same client, port and name long after (past the ttl) is reported again.
    later = PacketContext(CTX.ts + 3600, CLIENT, SERVER)
    assert (
        len(tracker.observe(protect(padded(crypto(0, handshake(SPEC_BODY))), keys_dcid=b"new-conn"), later))
        == 1
    )


def test_client_initials_after_the_dcid_switch() -> None:
    """The client's next Initials carry the server's connection ID but keep the first keys."""
    frames = split_hello(BIG_HELLO, (1000,))
    tracker = quic.QuicTracker()
    assert tracker.observe(protect(padded(frames[0]), pn=0), CTX) == []
    server_cid = b"\x5e\x4e\x4e\x42\x5e\x4e\x4e\x42"
    server_initial = protect(padded(b"\x02\x00\x00\x00\x00"), keys_dcid=b"client-scid", scid=server_cid)
    assert tracker.observe(server_initial, FROM_SERVER) == []
    later = protect(padded(b"\x02\x00\x00\x00\x00" + frames[1]), dcid=server_cid, pn=1)
    [obs] = tracker.observe(later, CTX)
    assert obs.value == "big.example"


def test_client_initial_after_switch_without_the_server_initial() -> None:
    """Same, but the server's Initial was not captured: the client address leads to the keys."""
    frames = split_hello(BIG_HELLO, (1000,))
    tracker = quic.QuicTracker()
    assert tracker.observe(protect(padded(frames[0]), pn=0), CTX) == []
    later = protect(padded(frames[1]), dcid=b"unseen-server-cid", pn=1)
    [obs] = tracker.observe(later, CTX)
    assert obs.value == "big.example"


def test_coalesced_packets_and_trailing_junk() -> None:
    initial = protect(padded(crypto(0, handshake(SPEC_BODY)), 300))
    zero_rtt = bytes([0xD0]) + struct.pack(">I", V1) + b"\x08" + RFC_DCID + b"\x00" + varint(24) + bytes(24)
    handshake_packet = (
        bytes([0xE0]) + struct.pack(">I", V1) + b"\x08" + RFC_DCID + b"\x00" + varint(30) + bytes(30)
    )
    datagram = initial + zero_rtt + handshake_packet + b"\x17\x99random padding"
    [obs] = quic.QuicTracker().observe(datagram, CTX)
    assert obs.value == "www.example.com"
    # The Initial need not come first for us to read it.
    [obs] = quic.QuicTracker().observe(zero_rtt + initial, CTX)
    assert obs.value == "www.example.com"


def test_unknown_frame_stops_the_packet() -> None:
    frames = split_hello(BIG_HELLO, (1000,))
    payload = padded(frames[0] + b"\x1e" + frames[1])  # HANDSHAKE_DONE is not allowed in an Initial
    tracker = quic.QuicTracker()
    assert tracker.observe(protect(payload), CTX) == []
    [obs] = tracker.observe(protect(padded(frames[1]), pn=1), CTX)
    assert obs.value == "big.example"


def test_connection_close_and_ack_with_ecn() -> None:
    ack_ecn = (
        b"\x03" + varint(5) + varint(10) + varint(1) + varint(2) + varint(0) + varint(1) + b"\x01\x02\x03"
    )
    payload = padded(ack_ecn + crypto(0, handshake(SPEC_BODY)) + b"\x1c\x01\x00\x03bye")
    [obs] = quic.QuicTracker().observe(protect(payload), CTX)
    assert obs.value == "www.example.com"


def test_hello_without_sni_reports_its_fingerprint_once() -> None:
    hello = handshake(hello_body(extensions=(alpn_ext(b"h3"), versions_ext(0x0304))))
    tracker = quic.QuicTracker()
    [obs] = tracker.observe(protect(padded(crypto(0, hello))), CTX)
    assert obs.kind is Kind.TLS_FINGERPRINT
    assert obs.value.startswith("q13i")
    assert (obs.attrs["transport"], obs.attrs["alpn"]) == ("quic", ("h3",))
    assert tracker.observe(protect(padded(crypto(0, hello))), CTX) == []


def test_versions() -> None:
    hello = crypto(0, handshake(SPEC_BODY))
    for version, name in ((0xFF00001D, "draft-29"), (0xFF00001C, "draft-28"), (0xFF000022, "draft-34")):
        packet = protect(padded(hello), version=version)
        assert quic.is_long_header_initial(packet)
        [obs] = quic.QuicTracker().observe(packet, CTX)
        assert obs.attrs["quic_version"] == name
    assert quic.version_name(0x0A1A2A3A) == "0x0a1a2a3a"


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\xc0\x00\x00\x00",
        bytes([0x40]) + bytes(30),  # short header
        bytes([0xC0]) + b"Q050" + bytes(30),  # gQUIC
        bytes([0xC0]) + bytes(4) + bytes(30),  # version negotiation
        bytes([0xE0]) + struct.pack(">I", V1) + bytes(30),  # a Handshake packet
        bytes([0xD0]) + struct.pack(">I", V2) + bytes(30),  # v2 type 1 is Initial...
    ],
)
def test_is_long_header_initial(datagram: bytes) -> None:
    expected = datagram[:1] == b"\xd0"
    assert quic.is_long_header_initial(datagram) is expected


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x40abc",
        bytes([0xC0]) + b"Q046" + bytes(40),
        bytes([0xC0]) + bytes(40),
        bytes([0xF0]) + b"\x00" * 40,
    ],
)
def test_not_ours_is_not_malformed(datagram: bytes) -> None:
    assert quic.QuicTracker().observe(datagram, CTX) == []


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (RFC9001_CLIENT_INITIAL[:600], "longer than its datagram"),
        (bytes([0xC0]) + struct.pack(">I", V1) + b"\x15" + bytes(40), "longer than 20"),
        (bytes([0xC0]) + struct.pack(">I", V1) + b"\x08" + bytes(8) + b"\x15" + bytes(40), "longer than 20"),
        (bytes([0xC0]) + struct.pack(">I", V1) + b"\x08" + bytes(8), "cut"),
        (bytes([0xC0]) + struct.pack(">I", V1) + b"\x00\x00\x00\x05" + bytes(5), "sample"),
        (bytes([0xC0]) + struct.pack(">I", V1) + b"\x00\x00\x80", "cut"),
    ],
)
def test_broken_framing_is_malformed(datagram: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        quic.QuicTracker().observe(datagram, CTX)


def test_crypto_stream_not_a_client_hello_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="ClientHello"):
        quic.QuicTracker().observe(protect(padded(crypto(0, b"\x02\x00\x00\x10" + bytes(16)))), CTX)


def test_bounds() -> None:
    tracker = quic.QuicTracker(max_connections=8, max_crypto_bytes=4096, ttl=30.0)
    half = padded(crypto(0, BIG_HELLO[:500]))
    for i in range(20):
        ctx = PacketContext(CTX.ts + i, Endpoint("10.0.1.1", None, 40000 + i), SERVER)
        tracker.observe(protect(half, keys_dcid=i.to_bytes(8, "big")), ctx)
        assert len(tracker) <= 8
    # Expiry: a connection older than the ttl goes when a new one arrives.
    late = PacketContext(CTX.ts + 1000, Endpoint("10.0.1.2", None, 1), SERVER)
    tracker.observe(protect(half, keys_dcid=b"late-connection"), late)
    assert len(tracker) == 1
    # A hello larger than the CRYPTO bound is given up, loudly.
    huge = handshake(hello_body(extensions=(sni_ext(b"huge.example"), ext(0x0015, bytes(6000)))))
    with pytest.raises(MalformedPacket, match="bound"):
        tracker.observe(protect(padded(crypto(0, huge[:1000]))), CTX)
    assert tracker.observe(protect(padded(crypto(1000, huge[1000:2000])), pn=1), CTX) == []


def test_global_crypto_budget_evicts_the_oldest() -> None:
    """Valid Initials are easy to forge: the bytes buffered over all connections are bounded."""
    tracker = quic.QuicTracker(max_buffered_bytes=3000)
    half = padded(crypto(0, BIG_HELLO[:1000]))
    for i in range(10):
        ctx = PacketContext(CTX.ts, Endpoint("10.0.2.1", None, 1000 + i), SERVER)
        tracker.observe(protect(half, keys_dcid=b"flood" + bytes([i])), ctx)
        assert tracker.buffered <= 3000
    assert len(tracker) == 3
    # the newest connection completes its hello
    rest = protect(padded(crypto(1000, BIG_HELLO[1000:])), keys_dcid=b"flood" + bytes([9]), pn=1)
    [obs] = tracker.observe(rest, PacketContext(CTX.ts, Endpoint("10.0.2.1", None, 1009), SERVER))
    assert obs.value == "big.example"
    assert tracker.buffered == 1000  # one more went for the last 395 bytes; the finished one holds none
    assert len(tracker) == 2


def test_crypto_beyond_the_bound_is_ignored() -> None:
    tracker = quic.QuicTracker(max_crypto_bytes=2048, max_fragments=4)
    assert tracker.observe(protect(padded(crypto(3000, b"x" * 100))), CTX) == []
    for i in range(10):  # only 4 fragments kept
        tracker.observe(protect(padded(crypto(10 + i * 20, b"y" * 10)), pn=i + 1), CTX)
    # the hello can no longer complete, but nothing grows or raises
    assert len(tracker) == 1


# --- hostile bytes --------------------------------------------------------------------------------

SEEDS = [
    RFC9001_CLIENT_INITIAL,
    RFC9369_CLIENT_INITIAL,
    RFC9001_SERVER_INITIAL,
    protect(padded(crypto(0, handshake(SPEC_BODY)), 400)),
    protect(padded(split_hello(BIG_HELLO, (10,))[1], 100)),
]

MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 1500), st.integers(0, 255)
    ),
    max_size=4,
)


def _mutate(seed: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(seed)
    for op, where, byte in mutations:
        at = where % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] = byte
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete" and at < len(data):
            del data[at]
    return bytes(data)


def _feed(tracker: quic.QuicTracker, data: bytes) -> None:
    quic.is_long_header_initial(data)
    with contextlib.suppress(MalformedPacket):  # the tracker raises nothing else
        tracker.observe(data, CTX)
    with contextlib.suppress(MalformedPacket):
        tracker.observe(data, FROM_SERVER)


TRACKER = quic.QuicTracker(max_connections=64)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_datagrams_raise_only_malformed(data: bytes) -> None:
    _feed(TRACKER, data)
    _feed(TRACKER, bytes([0xC3]) + struct.pack(">I", V1) + b"\x08" + RFC_DCID + b"\x00\x00" + data)
    _feed(TRACKER, bytes([0xD3]) + struct.pack(">I", V2) + data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), MUTATIONS)
def test_mutated_initials_raise_only_malformed(seed: bytes, mutations: list[tuple[str, int, int]]) -> None:
    _feed(quic.QuicTracker(), _mutate(seed, mutations))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=1100))
def test_garbage_inside_a_valid_initial(plaintext: bytes) -> None:
    """Decryptable Initials whose frames are garbage: only MalformedPacket, never anything else."""
    _feed(quic.QuicTracker(), protect(plaintext + bytes(max(0, 20 - len(plaintext)))))
    _feed(quic.QuicTracker(), protect(b"\x06\x00" + varint(len(plaintext)) + plaintext + bytes(20)))


# --- the corpus ---------------------------------------------------------------------------------------


def udp_datagrams(path: Path) -> Iterator[tuple[bytes, PacketContext]]:
    conf.layers.filter([Ether, Dot1Q, CookedLinux, Loopback, IP, IPv6, UDP, Raw, Padding])
    try:
        with PcapReader(str(path)) as reader:
            for packet in reader:
                ip = packet.getlayer(IP) or packet.getlayer(IPv6)
                udp = packet.getlayer(UDP)
                if ip is None or udp is None or not isinstance(udp.payload, Raw):
                    continue
                ctx = PacketContext(
                    float(packet.time), Endpoint(ip.src, None, udp.sport), Endpoint(ip.dst, None, udp.dport)
                )
                yield bytes(udp.payload.load), ctx
    finally:
        conf.layers.unfilter()


CORPUS_CAPTURES = corpus_pcaps()


@pytest.mark.corpus
@pytest.mark.parametrize(
    "capture", CORPUS_CAPTURES or [None], ids=lambda p: p.relative_to(PCAP_DIR).as_posix() if p else "absent"
)
def test_corpus_datagrams_raise_only_malformed(capture: Path | None) -> None:
    """Every UDP datagram of every corpus capture (any port) reads or raises MalformedPacket."""
    require_corpus()
    assert capture is not None
    tracker = quic.QuicTracker()
    for data, ctx in udp_datagrams(capture):
        quic.is_long_header_initial(data)
        with contextlib.suppress(MalformedPacket):
            tracker.observe(data, ctx)


QUIC_CAPTURES = [
    "arkime/quicietf.pcap",
    "ndpi/quic-29.pcap",
    "ndpi/quic-v2.pcapng",
    "ndpi/quic_0RTT.pcap",
    "ndpi/sites.pcapng",
    "suricata-verify/quic-frag__input.pcap",
    "suricata-verify/quic-ietf__input.pcap",
    "suricata-verify/ja4-tls-quic__input.pcap",
    "tcpdump/quic_handshake.pcap",
    "tcpdump/quic_retry.pcap",
    "zeek/quic__chromium-115.0.5790.110-api-cirrus-com.pcap",
    "zeek/quic__curl-8.1.2-dev-http3-www-google-de.pcap",
    "zeek/quic__quic-multiple-initial-fragmented-crypto.pcap",
    "zeek/quic__quicv2-echo-443.pcap",
]


def _decode(capture: str) -> list[Observation]:
    stats = DecodeStats()
    observations = [
        o for o in decode_file(PCAP_DIR / capture, stats=stats, strict=True) if o.kind is Kind.QUIC_SNI
    ]
    assert stats.parser_errors == 0
    return observations


@pytest.mark.corpus
@pytest.mark.parametrize("capture", QUIC_CAPTURES)
def test_corpus_quic_sni_and_alpn_match_tshark(capture: str) -> None:
    """The decoder's quic.sni values (and their ALPN) are tshark's, for v1, v2, drafts 28/29."""
    require_corpus()
    truth = truth_of(PCAP_DIR / capture)
    observations = _decode(capture)
    assert {o.value for o in observations} == {name.lower() for name in truth["quic_sni"]}
    assert {a for o in observations for a in o.attrs["alpn"]} == set(truth["quic_alpn"])  # type: ignore[union-attr]


@pytest.mark.corpus
def test_corpus_quic_ja4_matches_arkime() -> None:
    require_corpus()
    [obs] = _decode("arkime/quicietf.pcap")
    assert (obs.value, obs.attrs["ja4"]) == ("ssl.gstatic.com", "q13d0311h3_55b375c5d22e_3512bcbbc9ec")


@pytest.mark.corpus
def test_corpus_one_report_per_connection() -> None:
    """The retry capture sends the hello twice (before and after the Retry): one report."""
    require_corpus()
    assert len(_decode("tcpdump/quic_retry.pcap")) == 1
    assert len(_decode("zeek/quic__quic-multiple-initial-fragmented-crypto.pcap")) == 1


def test_the_decoder_loads_cryptography_only_for_a_quic_initial() -> None:
    """``lanterne scan`` forks its decoding process once the decoder is imported: no cryptography then."""
    script = (
        "import sys, agent._prefetch, collectors._decoder; "
        "print(any(name.startswith('cryptography') for name in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "False"
