"""SNMP v2c and v3 GET of the system group (sysDescr, sysObjectID, sysName, sysContact, sysLocation).

pysnmp 7's asyncio API does the protocol; :class:`PysnmpClient` wraps it and maps its error
indications to the ``ProbeError`` tree. The engine (``engine_factory``) and the command
(``command``, pysnmp's ``get_cmd``) are injected, so unit tests drive every error path with a fake
engine. pysnmp's own retries are off: the safety gate retries, so that every packet is charged to
the rate limit and every attempt is in the probe log.

Credentials (communities, v3 keys) live in :class:`Secret` objects whose ``repr`` and ``str`` hide
them; probe log rows and exceptions name a credential by its position and security level only
(``SNMPv3 authPriv SHA/AES (credential 2)``), never by its community, user name or keys.

Credentials are tried in order until one answers. Silence on a v2c community is how an agent
refuses it, so the next one is tried; silence on SNMPv3 means no v3 engine answered (any v3 agent
answers the engine-id discovery, even for an unknown user), so the other v3 credentials are not
tried on that host.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from collectors._observation import NO_ENDPOINT, Endpoint, Kind, Observation
from collectors.probe._errors import (
    ProbeAuthError,
    ProbeDenied,
    ProbeDryRun,
    ProbeError,
    ProbeProtocolError,
    ProbeTimeout,
)
from collectors.probe._gate import Probe, ProbeTicket, SafetyGate

SNMP_PORT: Final = 161
SOURCE: Final = "probe.snmp"

#: The system group (RFC 3418), in the order asked.
SYSTEM_OIDS: Final[Mapping[str, str]] = {
    "descr": "1.3.6.1.2.1.1.1.0",
    "object_id": "1.3.6.1.2.1.1.2.0",
    "name": "1.3.6.1.2.1.1.5.0",
    "contact": "1.3.6.1.2.1.1.4.0",
    "location": "1.3.6.1.2.1.1.6.0",
}
_WHAT: Final = "GET sysDescr.0 sysObjectID.0 sysName.0 sysContact.0 sysLocation.0"
_BY_OID: Final = {oid: name for name, oid in SYSTEM_OIDS.items()}
_OID_TEXT: Final = re.compile(r"\d+(?:\.\d+){1,127}")
#: Longest text kept from an answer (sysDescr is 255 octets at most by the MIB).
_MAX_TEXT: Final = 512

AUTH_PROTOCOLS: Final = ("md5", "sha", "sha224", "sha256", "sha384", "sha512")
PRIV_PROTOCOLS: Final = ("des", "3des", "aes", "aes192", "aes256")

# pysnmp error indications, by class name, that mean the agent refused the credentials.
_AUTH_ERRORS: Final = frozenset(
    {
        "WrongDigest",
        "UnknownUserName",
        "UnknownSecurityName",
        "AuthenticationFailure",
        "AuthenticationError",
        "DecryptionError",
        "UnsupportedSecurityLevel",
        "UnknownCommunityName",
        "NotInTimeWindow",
        "UnsupportedAuthProtocol",
        "UnsupportedPrivProtocol",
    }
)
_MALFORMED_ERRORS: Final = frozenset(
    {
        "SerializationError",
        "DeserializationError",
        "ParseError",
        "EmptyResponse",
        "DataMismatch",
        "InvalidMsg",
        "UnsupportedPDUtype",
        "UnknownPDUHandler",
    }
)
# PDU error-status values (RFC 3416) that mean "not for you" rather than "broken".
_ACCESS_STATUS: Final = frozenset({"noAccess", "authorizationError", "readOnly"})


class Secret:
    """A credential that never shows itself in logs, reprs or exception messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("an empty secret")
        self._value = value

    def reveal(self) -> str:
        """The value, for the one library call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class SnmpCredential:
    """One way of asking: a v2c community, or a v3 user with its keys (from the configuration or env)."""

    version: Literal["2c", "3"]
    community: Secret | None = None
    user: Secret | None = None
    """The v3 user name: not a key, but it is kept as secret as one (it says whom to attack)."""
    auth_protocol: str | None = None
    auth_key: Secret | None = None
    priv_protocol: str | None = None
    priv_key: Secret | None = None

    def __post_init__(self) -> None:
        if self.version == "2c":
            if self.community is None or self.user is not None or self.auth_key or self.priv_key:
                raise ValueError("an SNMPv2c credential is a community and nothing else")
            return
        if self.user is None or self.community is not None:
            raise ValueError("an SNMPv3 credential needs a user (and no community)")
        if (self.auth_key is None) != (self.auth_protocol is None):
            raise ValueError("SNMPv3 authentication needs both a protocol and a key")
        if (self.priv_key is None) != (self.priv_protocol is None):
            raise ValueError("SNMPv3 privacy needs both a protocol and a key")
        if self.priv_key is not None and self.auth_key is None:
            raise ValueError("SNMPv3 privacy needs authentication too")
        if self.auth_protocol is not None and self.auth_protocol not in AUTH_PROTOCOLS:
            raise ValueError(f"unknown SNMPv3 authentication protocol (one of {', '.join(AUTH_PROTOCOLS)})")
        if self.priv_protocol is not None and self.priv_protocol not in PRIV_PROTOCOLS:
            raise ValueError(f"unknown SNMPv3 privacy protocol (one of {', '.join(PRIV_PROTOCOLS)})")
        for key in (self.auth_key, self.priv_key):
            # RFC 3414 §11.2: pass phrases of at least 8 characters (net-snmp refuses shorter ones).
            if key is not None and len(key.reveal()) < 8:
                raise ValueError("SNMPv3 keys have at least 8 characters")

    @property
    def level(self) -> str:
        """The v3 security level (``noAuthNoPriv``, ``authNoPriv``, ``authPriv``), or ``v2c``."""
        if self.version == "2c":
            return "v2c"
        if self.priv_key is not None:
            return "authPriv"
        return "authNoPriv" if self.auth_key is not None else "noAuthNoPriv"

    def describe(self, position: int) -> str:
        """How the probe log names it: version, level, protocols and position; never a secret."""
        if self.version == "2c":
            return f"SNMPv2c (credential {position})"
        protocols = "/".join(p.upper() for p in (self.auth_protocol, self.priv_protocol) if p)
        return f"SNMPv3 {self.level}{' ' + protocols if protocols else ''} (credential {position})"


SnmpValues = dict[str, str]
"""System group values by name (``descr``, ``object_id``, ``name``, ``contact``, ``location``)."""


class SnmpClient(Protocol):
    """What the SNMP probe needs: one GET, mapped to ProbeErrors."""

    async def get(
        self, host: str, port: int, credential: SnmpCredential, oids: Sequence[str], seconds: float
    ) -> SnmpValues:
        """GET ``oids`` (waiting ``seconds``); the values found by name, or a ProbeError."""
        ...

    async def aclose(self) -> None:
        """Release sockets."""
        ...


class PysnmpClient:
    """The SNMP client over pysnmp 7 (asyncio); one engine per credential for all the GETs of a sweep.

    One engine per credential because pysnmp keeps one USM entry per user name and engine: two
    credentials of one user (a key being rotated) in one engine would use each other's keys.
    """

    def __init__(
        self,
        *,
        engine_factory: Callable[[], Any] | None = None,
        command: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self._engine_factory = engine_factory
        self._command = command
        self._engines: dict[SnmpCredential, Any] = {}

    def _engine_for(self, credential: SnmpCredential) -> Any:
        engine = self._engines.get(credential)
        if engine is None:
            if self._engine_factory is None:
                # Local import: pysnmp's import is heavy and only a sweep with SNMP needs it.
                from pysnmp.hlapi.v3arch.asyncio import SnmpEngine  # noqa: PLC0415

                engine = SnmpEngine()
            else:
                engine = self._engine_factory()
            self._engines[credential] = engine
        return engine

    async def get(
        self, host: str, port: int, credential: SnmpCredential, oids: Sequence[str], seconds: float
    ) -> SnmpValues:
        """GET ``oids``; map pysnmp's outcome to values or a ProbeError."""
        from pysnmp.error import PySnmpError  # noqa: PLC0415 - see _engine_for
        from pysnmp.hlapi.v3arch.asyncio import (  # noqa: PLC0415
            ContextData,
            ObjectIdentity,
            ObjectType,
            Udp6TransportTarget,
            UdpTransportTarget,
            get_cmd,
        )

        command = self._command or get_cmd
        engine = self._engine_for(credential)
        try:
            # retries=0: the safety gate retries, so each packet is charged and logged.
            transport = Udp6TransportTarget if ":" in host else UdpTransportTarget
            target = await transport.create((host, port), timeout=seconds, retries=0)
            answer = await command(
                engine,
                _auth_data(credential),
                target,
                ContextData(),
                *(ObjectType(ObjectIdentity(oid)) for oid in oids),
                lookupMib=False,
            )
        except PySnmpError as exc:
            raise ProbeProtocolError("the SNMP engine could not send or read the request") from exc
        error_indication, error_status, _error_index, varbinds = answer
        if error_indication:
            raise _map_indication(error_indication, credential)
        if error_status and int(error_status):
            status = error_status.prettyPrint() if hasattr(error_status, "prettyPrint") else str(error_status)
            if status in _ACCESS_STATUS:
                raise ProbeAuthError("the agent refused access to the system group")
            raise ProbeProtocolError(f"the agent answered with error-status {_word(status)}")
        return _values(varbinds)

    async def aclose(self) -> None:
        """Close the engines' sockets."""
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            close = getattr(engine, "close_dispatcher", None)
            if close is not None:
                close()


def _word(text: str) -> str:
    """A short identifier-like word from a library (never free text from the network)."""
    return text if text.isidentifier() and len(text) <= 40 else "unknown"


def _map_indication(indication: object, credential: SnmpCredential) -> ProbeError:
    """The ProbeError for a pysnmp error indication (an instance of one of ``errind``'s classes)."""
    name = type(indication).__name__
    if name == "RequestTimedOut":
        if credential.level == "authPriv":
            return ProbeTimeout("no answer (for SNMPv3 authPriv: no agent, or a wrong privacy key)")
        if credential.version == "2c":
            return ProbeTimeout("no answer (no agent, or the community was refused)")
        return ProbeTimeout("no answer (no SNMPv3 agent)")
    if name in _AUTH_ERRORS:
        return ProbeAuthError(f"credentials refused ({name})")
    if name in _MALFORMED_ERRORS:
        return ProbeProtocolError(f"malformed answer ({name})")
    return ProbeError(f"SNMP error ({_word(name)})")


def _auth_data(credential: SnmpCredential) -> Any:
    """pysnmp's CommunityData or UsmUserData for ``credential``."""
    from pysnmp.hlapi.v3arch.asyncio import CommunityData, UsmUserData  # noqa: PLC0415 - see _engine_for
    from pysnmp.hlapi.v3arch.asyncio import auth as usm  # noqa: PLC0415

    if credential.version == "2c":
        assert credential.community is not None
        # The index is a fixed name: a community used as its own index would end up in pysnmp's tables.
        # v2c is what many clinical devices speak; the configuration chooses it, v3 is tried first if listed.
        return CommunityData("lanterne", credential.community.reveal(), mpModel=1)  # noqa: S508
    auth_protocols = {
        "md5": usm.USM_AUTH_HMAC96_MD5,
        "sha": usm.USM_AUTH_HMAC96_SHA,
        "sha224": usm.USM_AUTH_HMAC128_SHA224,
        "sha256": usm.USM_AUTH_HMAC192_SHA256,
        "sha384": usm.USM_AUTH_HMAC256_SHA384,
        "sha512": usm.USM_AUTH_HMAC384_SHA512,
    }
    priv_protocols = {
        "des": usm.USM_PRIV_CBC56_DES,
        "3des": usm.USM_PRIV_CBC168_3DES,
        "aes": usm.USM_PRIV_CFB128_AES,
        "aes192": usm.USM_PRIV_CFB192_AES,
        "aes256": usm.USM_PRIV_CFB256_AES,
    }
    assert credential.user is not None
    return UsmUserData(
        credential.user.reveal(),
        authKey=credential.auth_key.reveal() if credential.auth_key else None,
        privKey=credential.priv_key.reveal() if credential.priv_key else None,
        authProtocol=auth_protocols[credential.auth_protocol]
        if credential.auth_protocol
        else usm.USM_AUTH_NONE,
        privProtocol=priv_protocols[credential.priv_protocol]
        if credential.priv_protocol
        else usm.USM_PRIV_NONE,
    )


def _values(varbinds: Sequence[Any]) -> SnmpValues:
    """System group values of an answer; ProbeProtocolError when it carries none."""
    values: SnmpValues = {}
    for item in varbinds:
        try:
            oid, value = item
        except (TypeError, ValueError):
            continue
        name = _BY_OID.get(str(oid).lstrip("."))
        if name is None:
            continue
        # noSuchObject, noSuchInstance, endOfMibView: the agent does not have it.
        if type(value).__name__ in {"NoSuchObject", "NoSuchInstance", "EndOfMibView", "Null"}:
            continue
        if name == "object_id":
            text = str(value).lstrip(".")
            if not _OID_TEXT.fullmatch(text):
                continue
        else:
            raw = value.asOctets() if hasattr(value, "asOctets") else None
            if not isinstance(raw, bytes):
                continue
            text = raw[:_MAX_TEXT].decode("utf-8", "replace").replace("\x00", "").strip()
        if text:
            values[name] = text
    if not values:
        raise ProbeProtocolError("the answer carries no system group value")
    return values


def system_observations(
    values: Mapping[str, str],
    host: str,
    *,
    version: str,
    mac: str | None = None,
    port: int = SNMP_PORT,
    local_ip: str | None = None,
    agent: str = "lanterne",
    ts: float | None = None,
) -> list[Observation]:
    """Observations of one answer: the device (``src``) announced its sysDescr, sysObjectID, sysName."""
    when = time.time() if ts is None else ts
    src = Endpoint(ip=host, mac=mac, port=port)
    dst = Endpoint(ip=local_ip) if local_ip else NO_ENDPOINT
    attrs: dict[str, str] = {"version": version, "pdu": "get-response"}
    for extra in ("location", "contact"):
        if extra in values:
            attrs[extra] = values[extra]
    out: list[Observation] = []
    for name, kind in (
        ("descr", Kind.SNMP_SYSDESCR),
        ("object_id", Kind.SNMP_SYSOBJECTID),
        ("name", Kind.SNMP_SYSNAME),
    ):
        if name in values:
            out.append(Observation(when, kind, values[name], src, dst, attrs, SOURCE, agent))
    return out


async def async_probe_snmp(
    gate: SafetyGate,
    client: SnmpClient,
    host: str,
    credentials: Sequence[SnmpCredential],
    *,
    port: int = SNMP_PORT,
    mac: str | None = None,
    local_ip: str | None = None,
    agent: str = "lanterne",
) -> list[Observation]:
    """Ask ``host`` for its system group with each credential in turn; the first answer wins.

    Raises ProbeDenied when the gate stops probing this host; other failures give no observation.
    """
    v3_silent = False
    for position, credential in enumerate(credentials, start=1):
        if credential.version == "3" and v3_silent:
            continue
        probe = Probe(
            host,
            "snmp",
            port,
            f"{credential.describe(position)} {_WHAT}",
            # v3: the engine-id discovery, then the request itself.
            packets=2 if credential.version == "3" else 1,
        )

        async def action(ticket: ProbeTicket, credential: SnmpCredential = credential) -> SnmpValues:
            values = await client.get(host, port, credential, tuple(SYSTEM_OIDS.values()), ticket.timeout)
            ticket.note(f"answered: {', '.join(sorted(values))}")
            return values

        try:
            values = await gate.run(probe, action)
        except ProbeDenied:
            raise
        except ProbeDryRun:
            continue
        except ProbeTimeout:
            v3_silent = v3_silent or credential.version == "3"
            continue
        except ProbeError:
            continue
        return system_observations(
            values,
            host,
            version="v2c" if credential.version == "2c" else "v3",
            mac=mac,
            port=port,
            local_ip=local_ip,
            agent=agent,
        )
    return []
