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
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final, NamedTuple, TypeAlias

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
    # A ClientHello without a server name (a connection to a bare IP, common for devices and
    # local servers): value = its JA4; attrs as tls.sni plus transport ("tcp" or "quic").
    TLS_FINGERPRINT = "tls.fingerprint"
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
    # Kinds only active probes report (collectors.probe); the server side is ``dst`` as for HTTP above.
    ARP_HOST = "arp.host"  # an address that answered an ARP request (value: the IP; src: its IP and MAC)
    HTTP_FAVICON = "http.favicon"  # MD5 hex of a server's /favicon.ico, the form Recog's favicons.xml matches
    TLS_CERTIFICATE = "tls.certificate"  # certificate subject (attrs: issuer, san, not_after, sha256)
    LLM_SERVER = "llm.server"  # a local LLM API recognised by its answers (value: ollama/0.5.7, vllm, ...)


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
        name = name[:-1].rstrip()  # "a. ." must normalise like "a": idempotent
    return printable(name, MAX_NAME_LEN)


_tuple_new = tuple.__new__


class _EndpointFields(NamedTuple):
    ip: str | None
    mac: str | None
    port: int | None


class Endpoint(_EndpointFields):
    """One side of what was seen: any of IP, MAC and port may be unknown.

    Records are immutable tuples with named fields: one C call builds them (Endpoints and
    Observations are built for every packet that reaches a parser), fields read at C speed.
    """

    __slots__ = ()

    def __new__(cls, ip: str | None = None, mac: str | None = None, port: int | None = None) -> Endpoint:
        """Normalise and check every field; refuse to exist otherwise."""
        if port is not None and (port.__class__ is not int or not 0 <= port <= 65535):
            raise InvalidObservation(f"not a port number: {port!r}")
        return _tuple_new(
            cls, (None if ip is None else canonical_ip(ip), None if mac is None else canonical_mac(mac), port)
        )

    @classmethod
    def from_packet(cls, ip: str | None, mac: str | None, port: int | None) -> Endpoint:
        """Build an Endpoint from values canonical by construction (the decoder's fast path).

        ``ip`` must come from ``socket.inet_ntop(AF_INET, …)`` (IPv6 text still goes through
        ``canonical_ip``: glibc and RFC 5952 disagree on a few forms), ``mac`` from
        ``bytes.hex(":")`` of six bytes, ``port`` from two bytes of a header.
        """
        if ip is not None and (":" in ip or "." not in ip):
            ip = canonical_ip(ip)
        return _tuple_new(cls, (ip, mac, port))

    def __getnewargs__(self) -> tuple[str | None, str | None, int | None]:
        """Pickling goes through ``__new__`` (and its checks) again."""
        return (self.ip, self.mac, self.port)

    def _replace(self, **changes: Any) -> Endpoint:
        """A copy with some fields changed, normalised and checked like a new one."""
        return Endpoint(**{**self._asdict(), **changes})

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
        return value
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


#: (source, agent) pairs already validated: a handful per process (bounded anyway).
_GOOD_ORIGINS: set[tuple[str, str]] = set()


def _check_origin(source: object, agent: object) -> None:
    for name, text in (("source", source), ("agent", agent)):
        if not isinstance(text, str) or not text or len(text) > 64 or not text.isprintable():
            raise InvalidObservation(f"{name} must be a short printable name")
    if len(_GOOD_ORIGINS) < 256:
        _GOOD_ORIGINS.add((str(source), str(agent)))


#: Attribute names already validated (they come from code, so the set stays small; bounded anyway).
_GOOD_KEYS: set[str] = set()
_MAX_GOOD_KEYS: Final = 1024


def _normalise_attrs(attrs: Mapping[str, object]) -> dict[str, AttrValue]:
    if attrs.__class__ is not dict and not isinstance(attrs, Mapping):
        raise InvalidObservation("attrs must be a mapping")
    if len(attrs) > MAX_ATTRS:
        raise InvalidObservation(f"too many attributes ({len(attrs)} > {MAX_ATTRS})")
    clean: dict[str, AttrValue] = {}
    for key, value in attrs.items():
        if key not in _GOOD_KEYS:
            if not isinstance(key, str) or not _ATTR_KEY.fullmatch(key):
                raise InvalidObservation(f"attribute names are short snake_case words, not {key!r}")
            if len(_GOOD_KEYS) < _MAX_GOOD_KEYS:
                _GOOD_KEYS.add(key)
        if value.__class__ is str:
            fits = len(value) <= MAX_ATTR_STR and value.isprintable()
            clean[key] = value if fits else printable(value, MAX_ATTR_STR)
        elif value.__class__ is int or value is None or value.__class__ is bool:  # noqa: SIM114 - cheap first
            clean[key] = value
        elif value.__class__ is tuple and _fine_strings(value):
            clean[key] = value
        else:
            clean[key] = _normalise_attr_value(key, value)
    return clean


def _fine_strings(items: tuple[object, ...]) -> bool:
    """Whether a tuple already holds only short printable strings (checked in C loops, no copy)."""
    if len(items) > MAX_ATTR_ITEMS:
        return False
    try:
        joined = "".join(items)  # type: ignore[arg-type]
    except TypeError:  # integers (or worse) in it: the general path decides
        return False
    return joined.isprintable() and (not items or max(map(len, items)) <= MAX_ATTR_STR)  # type: ignore[arg-type]


class _ObservationFields(NamedTuple):
    ts: float
    """Seconds since the epoch, from the capture or the clock of the agent."""
    kind: Kind
    """What this is, from the closed vocabulary."""
    value: str
    """The thing seen: a name, a banner, a fingerprint; normalised per kind."""
    src: Endpoint
    """The client side (or the device that announced itself)."""
    dst: Endpoint
    """The server side (or the receiver of the announcement)."""
    attrs: Attrs
    """A small flat summary (ALPN, JA4, addresses...): never a payload."""
    source: str
    """The collector that produced it (``pcap``, ``live``, ``zeek``, ``probe.snmp``...)."""
    agent: str
    """The agent (sensor) that produced it."""


class Observation(_ObservationFields):
    """What was seen, between which endpoints, when, by which collector and agent.

    An immutable tuple with named fields, normalised and checked in ``__new__``: a malformed
    Observation cannot exist. Its hash leaves ``attrs`` out (a dict); equality compares all.
    """

    __slots__ = ()

    def __new__(
        cls,
        ts: float,
        kind: Kind | str,
        value: str,
        src: Endpoint = NO_ENDPOINT,
        dst: Endpoint = NO_ENDPOINT,
        attrs: Mapping[str, object] | None = None,
        source: str = "pcap",
        agent: str = "lanterne",
    ) -> Observation:
        """Normalise and check every field; refuse to exist otherwise."""
        if kind.__class__ is not Kind:
            try:
                kind = Kind(kind)
            except ValueError as exc:
                raise InvalidObservation(f"unknown observation kind {kind!r}") from exc
        if ts.__class__ is not float:
            if isinstance(ts, bool) or not isinstance(ts, int | float):
                raise InvalidObservation(f"timestamp must be a number, not {ts!r}")
            ts = float(ts)
        if ts - ts != 0.0:  # inf - inf and nan - nan are nan: not finite (cheaper than math.isfinite)
            raise InvalidObservation("timestamp must be finite")
        if value.__class__ is not str:
            raise InvalidObservation(f"value must be text, not {type(value).__name__}")
        if kind in NAME_KINDS:
            value = value.strip().lower()
            if value[-1:] == "." or len(value) > MAX_NAME_LEN or not value.isprintable():
                value = normalise_name(value)
        else:
            value = value.strip()
            if len(value) > MAX_VALUE_LEN or not value.isprintable():
                value = printable(value)
        if not value:
            raise InvalidObservation(f"empty value for {kind}")
        if src.__class__ is not Endpoint or dst.__class__ is not Endpoint:
            raise InvalidObservation("src and dst must be Endpoints")
        if (source, agent) not in _GOOD_ORIGINS:
            _check_origin(source, agent)
        clean = _normalise_attrs(attrs) if attrs else {}
        return _tuple_new(cls, (ts, kind, value, src, dst, clean, source, agent))

    def __hash__(self) -> int:
        """Hash every field but ``attrs`` (a dict)."""
        return hash((self[0], self[1], self[2], self[3], self[4], self[6], self[7]))

    def __getnewargs__(self) -> tuple[Any, ...]:
        """Pickling goes through ``__new__`` (and its checks) again."""
        return tuple(self)

    def _replace(self, **changes: Any) -> Observation:
        """A copy with some fields changed, normalised and checked like a new one."""
        return Observation(**{**self._asdict(), **changes})

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
