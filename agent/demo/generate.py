"""Generate ``hospital.pcap``: a synthetic morning of traffic at "CH Démo", the hospital of ``lanterne demo``.

Run ``python -m agent.demo.generate OUT.pcap``. The output is byte-for-byte deterministic (fixed seed,
fixed clock, every protocol field set explicitly), so the committed capture can be checked against
this script (``tests/agent/test_demo_capture.py``).

Everything is invented: RFC 1918 addresses inside, documentation ranges (RFC 5737) for the
Internet, locally administered MACs (``02:…``) for workstations and servers, the makers' real IEEE
OUIs with made-up lower bytes for the medical devices, host names such as ``PC-CARDIO-01``. The
HL7 messages, the DICOM data sets and an LLM prompt carry a fictitious patient that Lanterne must
never keep.

The capture is a SPAN of the core switch's trunk: frames carry their 802.1Q tag, and traffic
between VLANs is seen on the client's side (to and from the router's MAC).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from scapy.asn1.asn1 import ASN1_OID, ASN1_STRING, ASN1_TIME_TICKS
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.snmp import SNMP, SNMPget, SNMPresponse, SNMPvarbind

__all__ = ["SEED", "START", "build", "main", "write_pcap"]

#: Seed of every "random" byte (TLS randoms, ports, sequence numbers, jitter).
SEED: Final = 20261117
#: Tuesday 17 November 2026, 08:00 UTC (09:00 in Paris): the morning the capture pretends to be.
START: Final = datetime(2026, 11, 17, 8, 0, tzinfo=UTC).timestamp()

SITE_DOMAIN: Final = "ch-demo.internal"  # .internal: reserved for private use (ICANN, 2024)


@dataclass(frozen=True, slots=True)
class Host:
    """A machine of the simulated hospital (or of the Internet, then with no MAC or VLAN)."""

    name: str
    ip: str
    mac: str = ""
    vlan: int = 0


# -- the hospital -----------------------------------------------------------------------------------
# One /24 per VLAN, the VLAN id in the third octet: 110 cardiology, 120 emergency, 130 administration,
# 140 imaging, 150 biomedical devices, 160 servers.

SERVICES: Final = {
    110: "Cardiologie",
    120: "Urgences",
    130: "Administration",
    140: "Imagerie",
    150: "Biomédical",
    160: "Serveurs (DSI)",
}


def _router(vlan: int) -> Host:
    return Host(f"RTR-CORE-V{vlan}", f"10.42.{vlan}.1", f"02:4c:4e:00:{vlan:02x}:01", vlan)


ROUTERS: Final = {vlan: _router(vlan) for vlan in SERVICES}

PC_CARDIO_01: Final = Host("PC-CARDIO-01", "10.42.110.21", "02:4c:4e:6e:00:15", 110)
PC_CARDIO_02: Final = Host("PC-CARDIO-02", "10.42.110.22", "02:4c:4e:6e:00:16", 110)
PC_URG_07: Final = Host("PC-URG-07", "10.42.120.27", "02:4c:4e:78:00:1b", 120)
PC_ADM_03: Final = Host("PC-ADM-03", "10.42.130.23", "02:4c:4e:82:00:17", 130)
PC_ADM_04: Final = Host("PC-ADM-04", "10.42.130.24", "02:4c:4e:82:00:18", 130)
PRINTER_ADM: Final = Host("IMP-ADM-01", "10.42.130.90", "02:4c:4e:82:00:5a", 130)
PACS: Final = Host("PACS-CHD", "10.42.140.10", "02:4c:4e:8c:00:0a", 140)
AI_GATEWAY: Final = Host("GW-IA-RADIO", "10.42.140.50", "02:4c:4e:8c:00:32", 140)
# Medical devices: the makers' registered OUIs (IEEE MA-L), invented lower bytes.
MONITOR: Final = Host("MON-USIC-03", "10.42.150.21", "00:09:fb:3c:a1:07", 150)  # Philips Patient Monitoring
PUMP: Final = Host("PSE-REA-12", "10.42.150.34", "00:12:21:5e:0a:12", 150)  # B.Braun Melsungen AG
UNKNOWN_DEVICE: Final = Host("", "10.42.150.47", "00:30:e6:4a:11:02", 150)  # Draeger Medical Systems
DNS_SERVER: Final = Host("SRV-DNS-01", "10.42.160.53", "02:4c:4e:a0:00:35", 160)
DHCP_SERVER: Final = Host("SRV-DHCP-01", "10.42.160.67", "02:4c:4e:a0:00:43", 160)
NMS: Final = Host("SRV-SUPERV", "10.42.160.161", "02:4c:4e:a0:00:a1", 160)
EAI: Final = Host("SRV-EAI", "10.42.160.30", "02:4c:4e:a0:00:1e", 160)
LIS: Final = Host("SRV-LABO", "10.42.160.31", "02:4c:4e:a0:00:1f", 160)
LLM_SERVER: Final = Host("SRV-IA-LOCAL", "10.42.160.80", "02:4c:4e:a0:00:50", 160)

WORKSTATIONS: Final = (PC_CARDIO_01, PC_CARDIO_02, PC_URG_07, PC_ADM_03, PC_ADM_04)

# -- the Internet: documentation addresses (RFC 5737), one per service ------------------------------

INTERNET: Final = {
    "chatgpt.com": "203.0.113.10",
    "ab.chatgpt.com": "203.0.113.11",
    "cdn.oaistatic.com": "203.0.113.12",
    "eu.api.nabla.com": "203.0.113.20",
    "api.deepl.com": "203.0.113.30",
    "api.mistral.ai": "203.0.113.40",
    "app.gleamer.ai": "203.0.113.50",
    "ollama.com": "203.0.113.60",
    "registry.ollama.ai": "203.0.113.61",
    "login.microsoftonline.com": "198.51.100.10",
    "outlook.office365.com": "198.51.100.11",
    "settings-win.data.microsoft.com": "198.51.100.12",
    "ctldl.windowsupdate.com": "198.51.100.13",
    "www.google.com": "198.51.100.20",
    "www.has-sante.fr": "198.51.100.30",
    "www.ameli.fr": "198.51.100.31",
    "www.legifrance.gouv.fr": "198.51.100.32",
}

#: A fictitious patient: present in the HL7 message, the DICOM data set and an LLM prompt, and
#: nowhere in what Lanterne stores or exports (``tests/agent/test_demo.py`` checks it).
FICTITIOUS_PATIENT: Final = ("FICTIF", "DEMO-PATIENT", "CHD0000042")
#: The SNMP community of the simulated supervision server: a secret, never stored.
SNMP_COMMUNITY: Final = b"chd-superv-ro"

WINDOWS_PRL: Final = (1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252)
CHROME_UA: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)
PYNETDICOM_UID: Final = "1.2.826.0.1.3680043.9.3811.3.0.4"  # what pynetdicom 3.0.4 sends
PYNETDICOM_VERSION: Final = "PYNETDICOM_304"
# The PACS's own implementation: an invented UID under a made-up root, so that it names nothing.
PACS_UID: Final = "1.2.250.1.999.42.1.7"
PACS_VERSION: Final = "CHD_PACS_7"


# -- TLS and QUIC bytes ----------------------------------------------------------------------------


def _u16(value: int) -> bytes:
    return struct.pack(">H", value)


def _ext(ext_type: int, body: bytes) -> bytes:
    return _u16(ext_type) + _u16(len(body)) + body


def client_hello(sni: str, alpn: Sequence[str], rng: random.Random, *, quic: bool = False) -> bytes:
    """A TLS 1.3 ClientHello handshake message shaped like a current browser's."""
    name = sni.encode()
    protocols = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
    extensions = [
        _ext(0x0000, _u16(len(name) + 3) + b"\x00" + _u16(len(name)) + name),
        _ext(0x0017, b""),  # extended master secret
        _ext(0xFF01, b"\x00"),  # renegotiation info
        _ext(0x000A, _u16(6) + _u16(0x001D) + _u16(0x0017) + _u16(0x0018)),  # groups
        _ext(0x000B, b"\x01\x00"),  # EC point formats
        _ext(0x0023, b""),  # session ticket
        _ext(0x0010, _u16(len(protocols)) + protocols),
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),  # status request
        _ext(
            0x000D,
            _u16(16)
            + b"".join(_u16(a) for a in (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)),
        ),
        _ext(0x0033, _u16(36) + _u16(0x001D) + _u16(32) + rng.randbytes(32)),  # key share (X25519)
        _ext(0x002D, b"\x01\x01"),  # PSK modes
        _ext(0x002B, b"\x02\x03\x04" if quic else b"\x04\x03\x04\x03\x03"),  # supported versions
    ]
    if quic:
        extensions.append(_ext(0x0039, rng.randbytes(48)))  # transport parameters (opaque here)
    ciphers = (0x1301, 0x1302, 0x1303) if quic else (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030)
    body = _u16(0x0303) + rng.randbytes(32)
    body += b"\x00" if quic else b"\x20" + rng.randbytes(32)  # legacy session id (none in QUIC)
    body += _u16(2 * len(ciphers)) + b"".join(_u16(c) for c in ciphers) + b"\x01\x00"
    block = b"".join(extensions)
    body += _u16(len(block)) + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_record(content_type: int, body: bytes) -> bytes:
    """One TLS record."""
    return bytes([content_type]) + _u16(0x0303) + _u16(len(body)) + body


def server_hello(rng: random.Random) -> bytes:
    """A TLS 1.3 ServerHello record, then ChangeCipherSpec and the encrypted rest of the handshake."""
    extensions = _ext(0x002B, _u16(0x0304)) + _ext(0x0033, _u16(0x001D) + _u16(32) + rng.randbytes(32))
    body = _u16(0x0303) + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + _u16(0x1301) + b"\x00"
    body += _u16(len(extensions)) + extensions
    hello = tls_record(22, b"\x02" + len(body).to_bytes(3, "big") + body)
    return hello + tls_record(20, b"\x01") + tls_record(23, rng.randbytes(rng.randint(900, 1300)))


def _hkdf_extract(salt: bytes, key: bytes) -> bytes:
    mac = HMAC(salt, hashes.SHA256())
    mac.update(key)
    return mac.finalize()


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = _u16(length) + bytes([len(full)]) + full + b"\x00"
    mac = HMAC(secret, hashes.SHA256())
    mac.update(info + b"\x01")  # one block is enough for every length used here (<= 32)
    return mac.finalize()[:length]


_QUIC_V1_SALT: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")  # RFC 9001 §5.2


def quic_initial(hello: bytes, rng: random.Random) -> bytes:
    """A QUIC v1 client Initial carrying ``hello`` in one CRYPTO frame, protected per RFC 9001 §5."""
    dcid, scid = rng.randbytes(8), rng.randbytes(8)
    client = _hkdf_expand_label(_hkdf_extract(_QUIC_V1_SALT, dcid), b"client in", 32)
    key = _hkdf_expand_label(client, b"quic key", 16)
    iv = _hkdf_expand_label(client, b"quic iv", 12)
    hp = _hkdf_expand_label(client, b"quic hp", 16)
    frame = b"\x06\x00" + _u16(0x4000 | len(hello)) + hello
    payload = frame + bytes(1162 - len(frame))  # PADDING: a client Initial fills 1,200 bytes
    header = b"\xc1" + struct.pack(">I", 1) + bytes([8]) + dcid + bytes([8]) + scid + b"\x00"
    header += _u16(0x4000 | (2 + len(payload) + 16))
    pn_offset = len(header)
    header += b"\x00\x00"  # packet number 0, two bytes
    sealed = AESGCM(key).encrypt(iv, payload, header)  # pn 0: the nonce is the IV itself
    # RFC 9001 §5.4.3: header protection is AES-ECB over one 16-byte sample, by design.
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sealed[2:18])  # noqa: S305
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    out[pn_offset] ^= mask[1]
    out[pn_offset + 1] ^= mask[2]
    return bytes(out)


# -- DICOM and HL7 bytes ---------------------------------------------------------------------------

_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_LE: Final = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE: Final = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR: Final = "1.2.840.10008.5.1.4.1.1.88.11"


def _item(item_type: int, body: bytes) -> bytes:
    return bytes([item_type, 0]) + _u16(len(body)) + body


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)  # UIDs are padded to an even length with NUL


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)


def associate(
    pdu: int,
    called: str,
    calling: str,
    syntaxes: Sequence[str],
    impl_uid: str,
    impl_version: str,
) -> bytes:
    """An A-ASSOCIATE-RQ (``pdu`` 1, proposing ``syntaxes``) or -AC (``pdu`` 2, accepting them)."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")  # the DICOM application context
    for number, syntax in enumerate(syntaxes):
        context_id = bytes([2 * number + 1])
        if pdu == 1:
            sub = (
                _item(0x30, _uid(syntax)) + _item(0x40, _uid(_EXPLICIT_LE)) + _item(0x40, _uid(_IMPLICIT_LE))
            )
            items += _item(0x20, context_id + b"\x00\x00\x00" + sub)
        else:
            items += _item(0x21, context_id + b"\x00\x00\x00" + _item(0x40, _uid(_EXPLICIT_LE)))
    user = (
        _item(0x51, struct.pack(">I", 16384))
        + _item(0x52, _uid(impl_uid))
        + _item(0x55, impl_version.encode())
    )
    items += _item(0x50, user)
    body = _u16(1) + b"\x00\x00" + _ae(called) + _ae(calling) + bytes(32) + items
    return bytes([pdu, 0]) + struct.pack(">I", len(body)) + body


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    value += b" " * (len(value) % 2)
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def p_data(context_id: int, rng: random.Random) -> bytes:
    """A P-DATA-TF PDU carrying the start of a data set about the fictitious patient."""
    last, first, patient_id = FICTITIOUS_PATIENT
    dataset = (
        _element(0x0008, 0x0060, b"CS", b"CT")
        + _element(0x0010, 0x0010, b"PN", f"{last}^{first}".encode())
        + _element(0x0010, 0x0020, b"LO", patient_id.encode())
        + _element(0x7FE0, 0x0010, b"OB", rng.randbytes(512))
    )
    pdv = bytes([context_id, 0x02]) + dataset  # data set fragment, last one
    item = struct.pack(">I", len(pdv)) + pdv
    return b"\x04\x00" + struct.pack(">I", len(item)) + item


A_RELEASE_RQ: Final = b"\x05\x00" + struct.pack(">I", 4) + bytes(4)
A_RELEASE_RP: Final = b"\x06\x00" + struct.pack(">I", 4) + bytes(4)


def hl7_adt(control_id: str, stamp: str) -> bytes:
    """An ADT^A01 (admission) framed in MLLP, about the fictitious patient."""
    last, first, patient_id = FICTITIOUS_PATIENT
    segments = (
        f"MSH|^~\\&|GAM|CHD|LABO|CHD|{stamp}||ADT^A01^ADT_A01|{control_id}|P|2.5|||AL|NE|FRA|8859/1",
        f"EVN|A01|{stamp}",
        f"PID|1||{patient_id}^^^CHD^PI||{last}^{first}^^^^^L||19700101|U",
        f"PV1|1|I|CARDIO^USIC^03^CHD||||||||||||||||{control_id}V",
    )
    return b"\x0b" + "\r".join(segments).encode("latin-1") + b"\r\x1c\r"


def hl7_ack(control_id: str, stamp: str) -> bytes:
    """The receiving application's ACK, framed in MLLP."""
    segments = (
        f"MSH|^~\\&|LABO|CHD|GAM|CHD|{stamp}||ACK^A01^ACK|A{control_id}|P|2.5",
        f"MSA|AA|{control_id}",
    )
    return b"\x0b" + "\r".join(segments).encode("latin-1") + b"\r\x1c\r"


# -- the capture -----------------------------------------------------------------------------------


class Capture:
    """Frames with their timestamps, built conversation by conversation."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible synthetic bytes, not secrets
        self.frames: list[tuple[float, bytes]] = []
        self._ip_id = 0x1000
        self._dns_id = 0x2000

    # - link and network layers -

    def _frame(self, ts: float, local: Host, src: Host, dst: Host, l4: Any) -> None:
        """Record one frame on ``local``'s VLAN; a remote peer is reached through the router."""
        router = ROUTERS[local.vlan]
        src_mac = src.mac if src.vlan == local.vlan else router.mac
        dst_mac = dst.mac if dst.vlan == local.vlan else router.mac
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        ttl = 128 if src.vlan == local.vlan else 56
        packet = (
            Ether(src=src_mac, dst=dst_mac)
            / Dot1Q(vlan=local.vlan, prio=0)
            / IP(src=src.ip, dst=dst.ip, id=self._ip_id, ttl=ttl, flags="DF")
            / l4
        )
        self.frames.append((round(ts, 6), bytes(packet)))

    def ephemeral_port(self) -> int:
        """A client port from the dynamic range (RFC 6335)."""
        return self.rng.randint(49152, 65000)

    # - UDP -

    def udp(
        self, ts: float, local: Host, src: Host, dst: Host, sport: int, dport: int, payload: bytes
    ) -> None:
        """One UDP datagram."""
        self._frame(ts, local, src, dst, UDP(sport=sport, dport=dport) / payload)

    def dns(self, ts: float, client: Host, name: str) -> None:
        """An A query from ``client`` to the site resolver and its answer."""
        self._dns_id = (self._dns_id + 7) & 0xFFFF
        port = self.ephemeral_port()
        query = DNS(id=self._dns_id, rd=1, qd=DNSQR(qname=name, qtype="A"))
        self.udp(ts, client, client, DNS_SERVER, port, 53, bytes(query))
        address = INTERNET[name]
        answer = DNS(
            id=self._dns_id,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname=name, qtype="A"),
            an=[DNSRR(rrname=name, type="A", ttl=300, rdata=address)],
        )
        self.udp(ts + 0.004 + self.rng.random() * 0.01, client, DNS_SERVER, client, 53, port, bytes(answer))

    # - TCP -

    def tcp(
        self,
        ts: float,
        client: Host,
        server: Host,
        dport: int,
        turns: Sequence[tuple[bool, bytes]],
        *,
        rtt: float = 0.02,
    ) -> float:
        """A TCP connection on the client's VLAN: handshake, ``turns`` (from_client, data), FIN; its end."""
        sport = self.ephemeral_port()
        cseq, sseq = self.rng.getrandbits(32), self.rng.getrandbits(32)
        t = ts

        def send(from_client: bool, flags: str, payload: bytes = b"") -> None:
            nonlocal cseq, sseq, t
            src, dst = (client, server) if from_client else (server, client)
            seq, ack = (cseq, sseq) if from_client else (sseq, cseq)
            ports = (sport, dport) if from_client else (dport, sport)
            segment = TCP(
                sport=ports[0],
                dport=ports[1],
                seq=seq,
                ack=ack if "A" in flags else 0,
                flags=flags,
                window=64240 if from_client else 65535,
            )
            self._frame(t, client, src, dst, segment / payload if payload else segment)
            step = len(payload) + (1 if "S" in flags or "F" in flags else 0)
            if from_client:
                cseq = (cseq + step) & 0xFFFFFFFF
            else:
                sseq = (sseq + step) & 0xFFFFFFFF

        send(True, "S")
        t += rtt
        send(False, "SA")
        t += 0.0003
        send(True, "A")
        for from_client, data in turns:
            t += 0.001 + self.rng.random() * rtt
            for start in range(0, len(data), 1400):  # a segment per 1,400 bytes (MSS-ish)
                send(from_client, "PA", data[start : start + 1400])
                t += 0.0002
            t += rtt / 2
            send(not from_client, "A")
        t += 0.01
        send(True, "FA")
        t += rtt
        send(False, "FA")
        t += 0.0003
        send(True, "A")
        return t

    def https(
        self, ts: float, client: Host, sni: str, exchanges: int = 3, alpn: Sequence[str] = ("h2", "http/1.1")
    ) -> float:
        """DNS, then a TLS connection to ``sni`` with a few encrypted exchanges."""
        self.dns(ts, client, sni)
        server = Host(sni, INTERNET[sni])
        rng = self.rng
        turns: list[tuple[bool, bytes]] = [
            (True, tls_record(22, client_hello(sni, alpn, rng))),
            (False, server_hello(rng)),
            (True, tls_record(20, b"\x01") + tls_record(23, rng.randbytes(74))),
        ]
        for _ in range(exchanges):
            turns.append((True, tls_record(23, rng.randbytes(rng.randint(90, 1800)))))
            turns.append((False, tls_record(23, rng.randbytes(rng.randint(200, 4000)))))
        return self.tcp(ts + 0.03, client, server, 443, turns)

    def quic(self, ts: float, client: Host, sni: str) -> None:
        """A QUIC v1 client Initial to ``sni`` (and a server packet the decoder cannot read, as in life)."""
        port = self.ephemeral_port()
        server = Host(sni, INTERNET[sni])
        self.udp(
            ts,
            client,
            client,
            server,
            port,
            443,
            quic_initial(client_hello(sni, ("h3",), self.rng, quic=True), self.rng),
        )
        reply = b"\x5a" + self.rng.randbytes(1150)  # a short-header (1-RTT) packet: opaque
        self.udp(ts + 0.021, client, server, client, 443, port, reply)

    def http(
        self, ts: float, client: Host, server: Host, port: int, request: bytes, response: bytes
    ) -> float:
        """A plain HTTP/1.1 exchange."""
        return self.tcp(ts, client, server, port, [(True, request), (False, response)])


# -- the scenario ----------------------------------------------------------------------------------


def _dhcp_options(*options: tuple[str, Any]) -> list[Any]:
    return [*options, "end"]


def dhcp_lease(
    cap: Capture,
    ts: float,
    host: Host,
    *,
    hostname: str | None,
    vendor_class: str | None,
    prl: Sequence[int],
    discover: bool,
) -> None:
    """A client getting its lease through the VLAN's relay: DISCOVER/OFFER (boot) then REQUEST/ACK."""
    router = ROUTERS[host.vlan]
    chaddr = bytes.fromhex(host.mac.replace(":", "")) + bytes(10)
    xid = cap.rng.getrandbits(32)
    client_id = b"\x01" + chaddr[:6]
    broadcast = Host("broadcast", "255.255.255.255", "ff:ff:ff:ff:ff:ff", host.vlan)
    anonymous = Host(host.name, "0.0.0.0", host.mac, host.vlan)  # noqa: S104 - a client before its lease
    identity: list[tuple[str, Any]] = [("client_id", client_id)]
    if hostname:
        identity.append(("hostname", hostname.encode()))
    if vendor_class:
        identity.append(("vendor_class_id", vendor_class.encode()))
    identity.append(("param_req_list", list(prl)))
    server_opts: list[tuple[str, Any]] = [
        ("server_id", DHCP_SERVER.ip),
        ("lease_time", 86400),
        ("subnet_mask", "255.255.255.0"),
        ("router", router.ip),
        ("name_server", DNS_SERVER.ip),
        ("domain", SITE_DOMAIN.encode()),
    ]
    mine = Host(host.name, host.ip, host.mac, host.vlan)

    unset = "0.0.0.0"  # noqa: S104 - an address field a client leaves empty, not a socket binding

    def bootp(op: int, yiaddr: str = unset) -> Any:
        return BOOTP(
            op=op,
            xid=xid,
            flags=0x8000 if op == 1 else 0,
            chaddr=chaddr,
            yiaddr=yiaddr,
            giaddr=unset if op == 1 else router.ip,
        )

    t = ts
    if discover:
        cap.udp(
            t,
            host,
            anonymous,
            broadcast,
            68,
            67,
            bytes(bootp(1) / DHCP(options=_dhcp_options(("message-type", "discover"), *identity))),
        )
        t += 0.35
        offer = bootp(2, host.ip) / DHCP(options=_dhcp_options(("message-type", "offer"), *server_opts))
        cap.udp(t, host, router, mine, 67, 68, bytes(offer))
        t += 0.05
    # After an OFFER the client names the server it chose (SELECTING); at boot it does not (INIT-REBOOT).
    chosen = (("server_id", DHCP_SERVER.ip),) if discover else ()
    request = (("message-type", "request"), ("requested_addr", host.ip), *chosen, *identity)
    cap.udp(t, host, anonymous, broadcast, 68, 67, bytes(bootp(1) / DHCP(options=_dhcp_options(*request))))
    t += 0.02
    ack = bootp(2, host.ip) / DHCP(options=_dhcp_options(("message-type", "ack"), *server_opts))
    cap.udp(t, host, router, mine, 67, 68, bytes(ack))


def snmp_poll(cap: Capture, ts: float, device: Host, descr: str, object_id: str) -> None:
    """The supervision server reading a device's system group (SNMPv2c get, then the device's response)."""
    oids = ("1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.2.0", "1.3.6.1.2.1.1.3.0", "1.3.6.1.2.1.1.5.0")
    request_id = cap.rng.getrandbits(24)
    port = cap.ephemeral_port()
    get = SNMP(
        version=1,
        community=SNMP_COMMUNITY,
        PDU=SNMPget(id=request_id, varbindlist=[SNMPvarbind(oid=ASN1_OID(o)) for o in oids]),
    )
    cap.udp(ts, device, NMS, device, port, 161, bytes(get))
    values = (
        ASN1_STRING(descr.encode()),
        ASN1_OID(object_id),
        ASN1_TIME_TICKS(cap.rng.randint(10_000_000, 90_000_000)),
        ASN1_STRING(device.name.encode()),
    )
    response = SNMP(
        version=1,
        community=SNMP_COMMUNITY,
        PDU=SNMPresponse(
            id=request_id,
            varbindlist=[SNMPvarbind(oid=ASN1_OID(o), value=v) for o, v in zip(oids, values, strict=True)],
        ),
    )
    cap.udp(ts + 0.012, device, device, NMS, 161, port, bytes(response))


def dicom_store(
    cap: Capture,
    ts: float,
    scu: Host,
    scp: Host,
    scu_ae: str,
    scp_ae: str,
    syntaxes: Sequence[str],
    scu_impl: tuple[str, str],
    scp_impl: tuple[str, str],
    images: int,
) -> float:
    """A C-STORE association: A-ASSOCIATE-RQ/AC, data sets (P-DATA-TF), release."""
    turns: list[tuple[bool, bytes]] = [
        (True, associate(1, scp_ae, scu_ae, syntaxes, *scu_impl)),
        (False, associate(2, scp_ae, scu_ae, syntaxes, *scp_impl)),
    ]
    for _ in range(images):
        turns.append((True, p_data(1, cap.rng)))
        turns.append(
            (False, b"\x04\x00" + struct.pack(">I", 10) + struct.pack(">I", 4) + b"\x01\x03\x00\x00")
        )
    turns += [(True, A_RELEASE_RQ), (False, A_RELEASE_RP)]
    return cap.tcp(ts, scu, scp, 104, turns, rtt=0.0004)


def _http_request(method: str, host: str, path: str, user_agent: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _http_response(body: bytes, content_type: str, server: str | None = None) -> bytes:
    head = "HTTP/1.1 200 OK\r\n"
    if server:
        head += f"Server: {server}\r\n"
    head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def scenario(cap: Capture) -> None:
    """One morning at CH Démo (08:00-08:40 UTC): who talks to what."""
    rng = cap.rng
    at = START

    # 08:00 - devices and workstations take their leases.
    for offset, pc in enumerate(WORKSTATIONS):
        dhcp_lease(
            cap,
            at + 2 + 3 * offset,
            pc,
            hostname=pc.name,
            vendor_class="MSFT 5.0",
            prl=WINDOWS_PRL,
            discover=False,
        )
    dhcp_lease(
        cap,
        at + 20,
        MONITOR,
        hostname=MONITOR.name,
        vendor_class="IntelliVue-MX750",
        prl=(1, 3, 6, 12, 15, 28, 42),
        discover=True,
    )
    dhcp_lease(
        cap,
        at + 24,
        PUMP,
        hostname=PUMP.name,
        vendor_class="BBraun-SpaceCom",
        prl=(1, 3, 6, 15, 28),
        discover=True,
    )
    # A device that says nothing about itself: no host name, no vendor class. Only its OUI speaks.
    dhcp_lease(cap, at + 31, UNKNOWN_DEVICE, hostname=None, vendor_class=None, prl=(1, 3, 28), discover=True)

    # Background: what every Windows workstation does all morning.
    for offset, pc in enumerate(WORKSTATIONS):
        t = at + 40 + 11 * offset
        t = cap.https(t, pc, "login.microsoftonline.com", 2)
        t = cap.https(t + 3, pc, "settings-win.data.microsoft.com", 1)
        t = cap.https(t + 5, pc, "outlook.office365.com", 4)
        cap.dns(t + 2, pc, "ctldl.windowsupdate.com")
        request = _http_request(
            "GET",
            "ctldl.windowsupdate.com",
            "/msdownload/update/v3/static/trustedr/en/authrootstl.cab",
            "Microsoft-CryptoAPI/10.0",
        )
        response = _http_response(rng.randbytes(900), "application/vnd.ms-cab-compressed")
        cap.http(t + 2.05, pc, Host("ctldl", INTERNET["ctldl.windowsupdate.com"]), 80, request, response)
        for minute in (4, 12, 23, 35):
            cap.https(at + 60 * minute + 7 * offset + rng.random(), pc, "outlook.office365.com", 2)
        cap.https(at + 60 * (9 + 4 * offset), pc, "www.google.com", 3)
    for minute, pc, site in (
        (7, PC_CARDIO_01, "www.has-sante.fr"),
        (16, PC_ADM_03, "www.legifrance.gouv.fr"),
        (18, PC_URG_07, "www.ameli.fr"),
        (29, PC_ADM_04, "www.ameli.fr"),
    ):
        cap.https(at + 60 * minute, pc, site, 3)

    # A printer announcing itself (SSDP), as printers do every few minutes.
    for minute in (1, 16, 31):
        notify = (
            "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age=1800\r\n"
            f"LOCATION: http://{PRINTER_ADM.ip}:80/upnp/printer.xml\r\n"
            "NT: upnp:rootdevice\r\nNTS: ssdp:alive\r\nSERVER: Linux/4.9 UPnP/1.0 MFP/1.0\r\n"
            "USN: uuid:7a3c9e10-0000-4000-8000-024c4e82005a::upnp:rootdevice\r\n\r\n"
        )
        group = Host("ssdp", "239.255.255.250", "01:00:5e:7f:ff:fa", 130)
        cap.udp(at + 60 * minute + 0.5, PRINTER_ADM, PRINTER_ADM, group, 1900, 1900, notify.encode())

    # Cardiology: two workstations on ChatGPT, undeclared (browser: TLS, and QUIC from one of them).
    for minute in (6, 14, 22, 33):
        t = cap.https(at + 60 * minute + 3, PC_CARDIO_01, "chatgpt.com", 6)
        cap.https(t + 0.2, PC_CARDIO_01, "cdn.oaistatic.com", 2)
        cap.https(t + 0.4, PC_CARDIO_01, "ab.chatgpt.com", 1)
    for minute in (11, 27):
        cap.dns(at + 60 * minute, PC_CARDIO_02, "chatgpt.com")
        cap.quic(at + 60 * minute + 0.05, PC_CARDIO_02, "chatgpt.com")
        cap.https(at + 60 * minute + 0.3, PC_CARDIO_02, "chatgpt.com", 4)

    # Emergency room: the declared AI scribe (Nabla), during consultations.
    for minute in (5, 13, 21, 30, 38):
        cap.https(at + 60 * minute + 17, PC_URG_07, "eu.api.nabla.com", 8)

    # Administration: DeepL's API (declared, SaaS), and Mistral's cloud API (declared by nobody).
    for minute in (8, 19, 34):
        cap.https(at + 60 * minute + 9, PC_ADM_03, "api.deepl.com", 3)
    for minute in (10, 26):
        cap.https(at + 60 * minute + 41, PC_ADM_04, "api.mistral.ai", 3)

    # Radiology: the PACS routes CT studies to the imaging-AI gateway (the PACS calls), the gateway
    # sends its results back (the gateway calls) and talks to the AI vendor's cloud over HTTPS: the
    # inventory declares it on-premise ("images never leave the hospital").
    for minute in (3, 17, 32):
        t = dicom_store(
            cap,
            at + 60 * minute,
            PACS,
            AI_GATEWAY,
            "PACS_CHD",
            "IA_GATEWAY",
            (CT_IMAGE_STORAGE,),
            (PACS_UID, PACS_VERSION),
            (PYNETDICOM_UID, PYNETDICOM_VERSION),
            4,
        )
        t = cap.https(t + 1, AI_GATEWAY, "app.gleamer.ai", 6)
        dicom_store(
            cap,
            t + 8,
            AI_GATEWAY,
            PACS,
            "IA_GATEWAY",
            "PACS_CHD",
            (SECONDARY_CAPTURE, BASIC_TEXT_SR),
            (PYNETDICOM_UID, PYNETDICOM_VERSION),
            (PACS_UID, PACS_VERSION),
            2,
        )

    # Biomedical: the supervision server polls the monitor and the pump (SNMPv2c) every 5 minutes.
    for minute in range(1, 40, 5):
        snmp_poll(
            cap,
            at + 60 * minute + 2,
            MONITOR,
            "Philips IntelliVue MX750 patient monitor, SW M.00.03",
            "1.3.6.1.4.1.19816.1.1.2",
        )
        snmp_poll(
            cap,
            at + 60 * minute + 3,
            PUMP,
            "B. Braun SpaceStation with SpaceCom 2",
            "1.3.6.1.4.1.22447.1.2.5",
        )

    # Interface engine: an admission (ADT^A01) to the laboratory system over MLLP.
    for number, minute in enumerate((9, 24)):
        stamp = datetime.fromtimestamp(at + 60 * minute, UTC).strftime("%Y%m%d%H%M%S")
        control = f"CHD{number + 1:06d}"
        cap.tcp(
            at + 60 * minute + 0.5,
            EAI,
            LIS,
            2575,
            [(True, hl7_adt(control, stamp)), (False, hl7_ack(control, stamp))],
            rtt=0.0004,
        )

    # Servers: the local LLM server fetches its runtime and a model; workstations query it over HTTP.
    t = cap.https(at + 60 * 2, LLM_SERVER, "ollama.com", 2)
    cap.https(t + 1, LLM_SERVER, "registry.ollama.ai", 12)
    last, first, _ = FICTITIOUS_PATIENT
    prompt = (
        f'{{"model":"mistral:7b","messages":[{{"role":"user","content":"Resume: {first} {last}, 56 ans"}}]}}'
    )
    answer = b'{"model":"mistral:7b","message":{"role":"assistant","content":"..."},"done":true}'
    for minute, pc in ((12, PC_CARDIO_02), (15, PC_ADM_04), (28, PC_CARDIO_02), (36, PC_ADM_04)):
        request = _http_request(
            "POST",
            f"srv-ia-local.{SITE_DOMAIN}:11434",
            "/api/chat",
            "ollama-python/0.4.7 (x86_64 windows) Python/3.12.7",
            prompt.encode(),
        )
        # No Server header: Ollama's HTTP server sends none.
        cap.http(
            at + 60 * minute + 4,
            pc,
            LLM_SERVER,
            11434,
            request,
            _http_response(answer, "application/json; charset=utf-8"),
        )


# -- output ----------------------------------------------------------------------------------------


def build(seed: int = SEED) -> list[tuple[float, bytes]]:
    """Every frame of the scenario, in capture order."""
    cap = Capture(seed)
    scenario(cap)
    return sorted(cap.frames, key=lambda frame: frame[0])  # stable: ties keep their build order


def write_pcap(frames: Sequence[tuple[float, bytes]]) -> bytes:
    """A classic little-endian pcap (Ethernet, microseconds) holding ``frames``."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for ts, frame in frames:
        micros = round(ts * 1_000_000)
        out += struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(frame), len(frame)) + frame
    return bytes(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the capture to the given path."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", type=Path, help="where to write the pcap")
    args = parser.parse_args(argv)
    data = write_pcap(build())
    args.output.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()[:16]
    sys.stderr.write(f"{args.output}: {len(data)} bytes, sha256 {digest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
