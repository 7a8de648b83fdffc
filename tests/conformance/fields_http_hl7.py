"""What the tshark conformance harness compares for HTTP and HL7, and how tshark's values are normalised.

``FIELDS`` maps a truth key to what Lanterne extracted from a capture; ``NORMALISE`` turns one of
tshark's values into Lanterne's form (None drops it); ``DERIVED`` computes an expected set from
the whole truth dictionary when tshark has no flat list for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Padding, Raw
from scapy.utils import PcapReader

import collectors
from collectors import Endpoint, Kind, Observation, PacketContext, ParseError, dicom, hl7, http
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


# --- Until the maintainer's decoder exists: the same job done slowly with scapy -------------------

#: Bytes reassembled per TCP direction, as the decoder does.
STREAM_CAP = 16 * 1024


def tcp_streams(path: Path) -> list[tuple[tuple[str, int, str, int], float, bytes]]:
    """Return ``(src, sport, dst, dport)``, first timestamp and first bytes of each TCP direction."""
    segments: dict[tuple[str, int, str, int], list[tuple[int, float, bytes]]] = {}
    initial: dict[tuple[str, int, str, int], int] = {}
    with PcapReader(str(path)) as reader:
        for packet in reader:
            ip = packet.getlayer(IP) or packet.getlayer(IPv6)
            if ip is None and packet.haslayer(Raw):
                # Link types scapy does not know (BSD loopback): find the IP header by its version.
                load = bytes(packet[Raw].load)
                for offset in (0, 4):
                    version = load[offset] >> 4 if len(load) > offset else 0
                    if version in (4, 6):
                        ip = (IP if version == 4 else IPv6)(load[offset:])
                        break
            if ip is None or not ip.haslayer(TCP):
                continue
            tcp = ip[TCP]
            key = (str(ip.src), int(tcp.sport), str(ip.dst), int(tcp.dport))
            payload = bytes(tcp.payload)
            if tcp.haslayer(Padding):
                payload = payload[: len(payload) - len(tcp[Padding])]
            if tcp.flags & 0x02:  # SYN: the stream starts at ISN + 1
                initial[key] = (int(tcp.seq) + 1) % 2**32
            if payload:
                segments.setdefault(key, []).append((int(tcp.seq), float(packet.time), payload))
    streams = []
    for key, parts in segments.items():
        base = initial.get(key, min(seq for seq, _, _ in parts))
        buffer = bytearray()
        first_ts = parts[0][1]
        for seq, _ts, payload in sorted(parts, key=lambda part: (part[0] - base) % 2**32):
            offset = (seq - base) % 2**32
            if offset > len(buffer) or offset > STREAM_CAP:
                break  # a hole: the decoder stops there too
            buffer[offset : offset + len(payload)] = payload
        streams.append((key, first_ts, bytes(buffer[:STREAM_CAP])))
    return streams


def emulate_decode(path: Path) -> list[Observation]:
    """Observe the start of each TCP direction with the HTTP, HL7 and DICOM parsers (by content)."""
    parsers = (
        (http.is_request_start, http.observe_request),
        (http.is_response_start, http.observe_response),
        (hl7.is_mllp_start, hl7.observe),
        (dicom.is_pdu_start, dicom.observe),
    )
    observations: list[Observation] = []
    for (src, sport, dst, dport), ts, data in tcp_streams(path):
        ctx = PacketContext(ts=ts, src=Endpoint(ip=src, port=sport), dst=Endpoint(ip=dst, port=dport))
        for recognise, observe in parsers:
            if recognise(data):
                # Truncated at the end of the capture, or malformed: nothing seen, as in the decoder.
                with contextlib.suppress(ParseError):
                    observations.extend(observe(data, ctx))
                break
    return observations


def observe_capture(path: Path) -> list[Observation]:
    """Every Observation of a capture: the project's decoder once it exists, the emulation until then."""
    decode_file = getattr(collectors, "decode_file", None)
    if decode_file is not None:
        return list(decode_file(path))
    return emulate_decode(path)
