"""The Observation: the one record that crosses every boundary of Lanterne.

An Observation says what was seen (``kind`` and ``value``), between which endpoints, when,
by which collector and agent. It normalises itself on creation (lower-case names without a
trailing dot, canonical MAC and IP, bounded and printable strings) and refuses to exist
otherwise, so nothing downstream has to re-check it.

It carries metadata only: never a payload, a URL path or query, an HL7 segment past MSH or a
DICOM data set. The parsers that build Observations are responsible for not reading those;
the record bounds what can be attached (``attrs`` is a small flat mapping).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final, TypeAlias

AttrScalar: TypeAlias = str | int | float | bool | None
AttrValue: TypeAlias = AttrScalar | tuple[str | int, ...]
Attrs: TypeAlias = Mapping[str, AttrValue]


class Kind(StrEnum):
    """The closed vocabulary of what an Observation may report (DESIGN §3).

    Extend it here, deliberately, and nowhere else.
    """

    DNS_QUERY = "dns.query"
    DNS_ANSWER = "dns.answer"  # attrs: addresses, cnames (for IP -> name attribution)
    MDNS_SERVICE = "mdns.service"  # a DNS-SD service type or instance
    MDNS_HOST = "mdns.host"  # a .local host name (attrs: addresses)
    MDNS_TXT = "mdns.txt"  # TXT record of an instance (attrs: the key=value pairs)
    LLMNR_QUERY = "llmnr.query"
    NBNS_NAME = "nbns.name"
    TLS_SNI = "tls.sni"  # attrs: alpn, ja4, version
    QUIC_SNI = "quic.sni"  # attrs: alpn, ja4, version, quic_version
    HTTP_HOST = "http.host"
    HTTP_USER_AGENT = "http.user_agent"
    DHCP_HOSTNAME = "dhcp.hostname"
    DHCP_VENDOR_CLASS = "dhcp.vendor_class"
    DHCP_FINGERPRINT = "dhcp.fingerprint"  # option 55 list, comma-separated
    DHCP_CLIENT_ID = "dhcp.client_id"
    DHCP_LEASE = "dhcp.lease"  # an address bound to a client MAC (value: the IP)
    SSDP_SERVER = "ssdp.server"
    SSDP_LOCATION = "ssdp.location"
    SNMP_SYSDESCR = "snmp.sysdescr"
    SNMP_SYSOBJECTID = "snmp.sysobjectid"
    SNMP_SYSNAME = "snmp.sysname"
    HTTP_SERVER = "http.server"
    HTTP_TITLE = "http.title"
    DICOM_ASSOCIATION = "dicom.association"
    HL7_HEADER = "hl7.header"


#: Kinds whose value is a host or service name: lower-cased, trailing dot removed.
NAME_KINDS: Final = frozenset(
    {
        Kind.DNS_QUERY,
        Kind.DNS_ANSWER,
        Kind.MDNS_SERVICE,
        Kind.MDNS_HOST,
        Kind.MDNS_TXT,
        Kind.LLMNR_QUERY,
        Kind.TLS_SNI,
        Kind.QUIC_SNI,
        Kind.HTTP_HOST,
        Kind.DHCP_HOSTNAME,
    }
)

#: Longest value kept; longer ones are cut (a DNS name is at most 253 characters anyway).
MAX_VALUE_LEN: Final = 1024
#: Bounds on ``attrs``: it is a small summary, never a place to smuggle a payload.
MAX_ATTRS: Final = 24
MAX_ATTR_ITEMS: Final = 64
MAX_ATTR_STR: Final = 512
MAX_NAME_LEN: Final = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAC_HEX = re.compile(r"[0-9a-f]{12}")
_MAC_SEPARATORS = str.maketrans("", "", ":-. ")
_ATTR_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")


class InvalidObservation(ValueError):
    """Raised when an Observation (or an Endpoint) cannot be normalised."""


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str, limit: int = MAX_VALUE_LEN) -> str:
    """Return ``text`` bounded in length, with control characters escaped as ``\\xNN``."""
    if len(text) > limit:
        text = text[:limit]
    if text.isprintable():
        return text
    return _CONTROL.sub(_escape_control, text)


@lru_cache(maxsize=65536)
def canonical_mac(mac: str) -> str:
    """Return ``mac`` as ``aa:bb:cc:dd:ee:ff``; raise InvalidObservation if it is not a MAC-48."""
    hexdigits = mac.strip().lower().translate(_MAC_SEPARATORS)
    if not _MAC_HEX.fullmatch(hexdigits):
        raise InvalidObservation(f"not a MAC-48 address: {mac!r}")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


@lru_cache(maxsize=65536)
def canonical_ip(ip: str) -> str:
    """Return ``ip`` in canonical text form (RFC 5952 for IPv6); raise InvalidObservation otherwise."""
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError as exc:
        raise InvalidObservation(f"not an IP address: {ip!r}") from exc


def mac_from_bytes(raw: bytes) -> str:
    """Format six bytes as a canonical MAC."""
    if len(raw) != 6:
        raise InvalidObservation("a MAC-48 address has six bytes")
    return raw.hex(":")


def is_locally_administered(mac: str) -> bool:
    """Tell whether a canonical MAC has the locally-administered bit (randomised MACs have it)."""
    return bool(int(mac[:2], 16) & 0x02)


def normalise_name(name: str) -> str:
    """Normalise a host or service name: lower-case, no trailing dot, bounded, printable."""
    name = name.strip().lower()
    while name.endswith(".") and len(name) > 1:
        name = name[:-1]
    return printable(name, MAX_NAME_LEN)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of what was seen: any of IP, MAC and port may be unknown."""

    ip: str | None = None
    mac: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if self.ip is not None:
            object.__setattr__(self, "ip", canonical_ip(self.ip))
        if self.mac is not None:
            object.__setattr__(self, "mac", canonical_mac(self.mac))
        if self.port is not None and (
            not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535
        ):
            raise InvalidObservation(f"not a port number: {self.port!r}")

    def to_dict(self) -> dict[str, str | int | None]:
        """Return the JSON form (DESIGN §8)."""
        return {"ip": self.ip, "mac": self.mac, "port": self.port}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Endpoint:
        """Build an Endpoint from its JSON form."""
        if not data:
            return NO_ENDPOINT
        return cls(ip=data.get("ip"), mac=data.get("mac"), port=data.get("port"))


NO_ENDPOINT: Final = Endpoint()


def _normalise_attr_value(key: str, value: object) -> AttrValue:
    if value is None or isinstance(value, bool | int):
        return value  # type: ignore[return-value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidObservation(f"attribute {key!r} is not a finite number")
        return value
    if isinstance(value, str):
        return printable(value, MAX_ATTR_STR)
    if isinstance(value, list | tuple):
        items: list[str | int] = []
        for item in value[:MAX_ATTR_ITEMS]:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise InvalidObservation(f"attribute {key!r} may only list strings or integers")
            items.append(printable(item, MAX_ATTR_STR) if isinstance(item, str) else item)
        return tuple(items)
    raise InvalidObservation(f"attribute {key!r} has an unsupported type {type(value).__name__}")


def _normalise_attrs(attrs: Mapping[str, object]) -> dict[str, AttrValue]:
    if len(attrs) > MAX_ATTRS:
        raise InvalidObservation(f"too many attributes ({len(attrs)} > {MAX_ATTRS})")
    clean: dict[str, AttrValue] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not _ATTR_KEY.fullmatch(key):
            raise InvalidObservation(f"attribute names are short snake_case words, not {key!r}")
        clean[key] = _normalise_attr_value(key, value)
    return clean


@dataclass(frozen=True, slots=True)
class Observation:
    """What was seen, between which endpoints, when, by which collector and agent."""

    ts: float
    """Seconds since the epoch, from the capture or the clock of the agent."""
    kind: Kind
    """What this is, from the closed vocabulary."""
    value: str
    """The thing seen: a name, a banner, a fingerprint; normalised per kind."""
    src: Endpoint = NO_ENDPOINT
    """The client side (or the device that announced itself)."""
    dst: Endpoint = NO_ENDPOINT
    """The server side (or the receiver of the announcement)."""
    attrs: Attrs = field(default_factory=dict, hash=False)
    """A small flat summary (ALPN, JA4, addresses...): never a payload."""
    source: str = "pcap"
    """The collector that produced it (``pcap``, ``live``, ``zeek``, ``probe.snmp``...)."""
    agent: str = "lanterne"
    """The agent (sensor) that produced it."""

    def __post_init__(self) -> None:
        try:
            kind = Kind(self.kind)
        except ValueError as exc:
            raise InvalidObservation(f"unknown observation kind {self.kind!r}") from exc
        object.__setattr__(self, "kind", kind)
        if isinstance(self.ts, bool) or not isinstance(self.ts, int | float) or not math.isfinite(self.ts):
            raise InvalidObservation(f"timestamp must be a finite number, not {self.ts!r}")
        object.__setattr__(self, "ts", float(self.ts))
        if not isinstance(self.value, str):
            raise InvalidObservation(f"value must be text, not {type(self.value).__name__}")
        value = normalise_name(self.value) if kind in NAME_KINDS else printable(self.value.strip())
        if not value:
            raise InvalidObservation(f"empty value for {kind}")
        object.__setattr__(self, "value", value)
        if not isinstance(self.src, Endpoint) or not isinstance(self.dst, Endpoint):
            raise InvalidObservation("src and dst must be Endpoints")
        object.__setattr__(self, "attrs", _normalise_attrs(self.attrs))
        for name in ("source", "agent"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text or not text.isprintable() or len(text) > 64:
                raise InvalidObservation(f"{name} must be a short printable name")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-line form of ``lanterne decode`` (DESIGN §8)."""
        return {
            "ts": round(self.ts, 6),
            "kind": str(self.kind),
            "value": self.value,
            "src": self.src.to_dict(),
            "dst": self.dst.to_dict(),
            "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs.items()},
            "source": self.source,
            "agent": self.agent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        """Rebuild an Observation from its JSON form (validating it again)."""
        try:
            return cls(
                ts=data["ts"],
                kind=data["kind"],
                value=data["value"],
                src=Endpoint.from_dict(data.get("src")),
                dst=Endpoint.from_dict(data.get("dst")),
                attrs=data.get("attrs") or {},
                source=data.get("source", "pcap"),
                agent=data.get("agent", "lanterne"),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidObservation(f"not an observation: {exc}") from exc
