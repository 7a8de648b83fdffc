"""DICOM C-ECHO (opt-in): associate, verify, release, and report the acceptor's implementation.

A DICOM node is often a modality or a PACS: it is probed only when the configuration asks for it
(``dicom = true``), with a configured calling AE title, on ports 104 and 11112 by default. One
association per port: A-ASSOCIATE-RQ proposing Verification only, C-ECHO-RQ, A-RELEASE-RQ. The
A-ASSOCIATE-AC tells the acceptor's implementation class UID and version name, which the catalogue
matches (``dicom.association``, ``pdu: ac``, as the passive parser reports it).

Each port is first tried with a plain TCP connection from the event loop, closed at once: a
refused, silent or unreachable port is told apart exactly and costs a SYN, and never reaches
pynetdicom (which cannot tell those apart, and leaks the socket of a failed connection). An open
port then gets the association, in a worker thread with pynetdicom's own timeouts set to the
probe's, so the thread ends shortly after the gate stops waiting. The AE is built by an injected
factory (unit tests pass a fake).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from collectors._observation import NO_ENDPOINT, Endpoint, Kind, Observation
from collectors.probe._errors import (
    ProbeDenied,
    ProbeError,
    ProbeProtocolError,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
)
from collectors.probe._gate import Probe, ProbeTicket, SafetyGate
from collectors.probe._tcp import port_open

SOURCE: Final = "probe.dicom"
DEFAULT_DICOM_PORTS: Final = (104, 11112)
DEFAULT_CALLING_AE: Final = "LANTERNE"
#: Most SCPs accept any called AE title; a site can configure the one its nodes expect.
DEFAULT_CALLED_AE: Final = "ANY-SCP"
#: The port check (SYN and a retransmit, ACK, FIN, last ACK), then the association's handshake,
#: A-ASSOCIATE-RQ, C-ECHO-RQ, A-RELEASE-RQ, their ACKs, FIN and last ACK.
ECHO_PACKETS: Final = 15
#: Verification SOP Class (PS3.4 A.4).
VERIFICATION: Final = "1.2.840.10008.1.1"


def check_ae_title(title: str) -> str:
    """Return ``title`` if it is a valid AE title (1 to 16 printable ASCII characters, no backslash)."""
    stripped = title.strip()
    if (
        not 0 < len(stripped) <= 16
        or not stripped.isascii()
        or not stripped.isprintable()
        or "\\" in stripped
    ):
        raise ValueError("an AE title has 1 to 16 printable ASCII characters and no backslash")
    return stripped


@dataclass(frozen=True, slots=True)
class EchoAnswer:
    """What an accepted association and its C-ECHO said."""

    impl_class_uid: str | None
    impl_version: str | None
    max_length: int | None
    echo_status: int | None


def _default_ae(title: str) -> Any:
    # Local import: pynetdicom (and pydicom) are heavy and only DICOM probing needs them.
    from pynetdicom import AE  # noqa: PLC0415

    return AE(ae_title=title)


def _quiet_pynetdicom() -> None:
    # pynetdicom logs every refused connection at ERROR and quotes peers' AE titles at INFO; the
    # probe log records each outcome instead, and hostile strings must not reach the logs raw.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def _echo_blocking(
    ae_factory: Callable[[str], Any], host: str, port: int, calling: str, called: str, timeout: float
) -> EchoAnswer:
    """Associate, C-ECHO, release, in the calling (worker) thread."""
    from pynetdicom import evt  # noqa: PLC0415 - see _default_ae

    ae = ae_factory(calling)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    connected: list[bool] = []
    assoc = ae.associate(
        host, port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))]
    )
    if assoc.is_established:
        try:
            acceptor = assoc.acceptor
            status = assoc.send_c_echo()
            code = getattr(status, "Status", None)
            return EchoAnswer(
                impl_class_uid=str(acceptor.implementation_class_uid or "") or None,
                impl_version=str(acceptor.implementation_version_name or "") or None,
                max_length=acceptor.maximum_length,
                echo_status=int(code) if code is not None else None,
            )
        finally:
            assoc.release()
    if not connected:  # the port closed between the check and the association
        raise ProbeRefused("connection refused")
    if assoc.is_rejected:
        raise ProbeRefused("association rejected")
    if assoc.is_aborted:
        raise ProbeProtocolError("association aborted by the peer")
    raise ProbeTimeout("no answer to the A-ASSOCIATE request")


def echo_observation(
    answer: EchoAnswer,
    host: str,
    port: int,
    *,
    calling: str,
    called: str,
    mac: str | None = None,
    local_ip: str | None = None,
    agent: str = "lanterne",
    ts: float | None = None,
) -> Observation:
    """The ``dicom.association`` of the accepted association (``src``: the prober, ``dst``: the node)."""
    attrs: dict[str, object] = {
        "pdu": "ac",
        "calling_ae": calling,
        "called_ae": called,
        "impl_class_uid": answer.impl_class_uid,
        "impl_version": answer.impl_version,
        "max_length": answer.max_length,
        "echo_status": answer.echo_status,
    }
    src = Endpoint(ip=local_ip) if local_ip else NO_ENDPOINT
    dst = Endpoint(ip=host, mac=mac, port=port)
    when = time.time() if ts is None else ts
    return Observation(when, Kind.DICOM_ASSOCIATION, f"{calling} -> {called}", src, dst, attrs, SOURCE, agent)


class DicomProber:
    """C-ECHO on the DICOM ports of hosts, through the safety gate."""

    def __init__(
        self,
        gate: SafetyGate,
        *,
        calling_ae: str = DEFAULT_CALLING_AE,
        called_ae: str = DEFAULT_CALLED_AE,
        ports: Sequence[int] = DEFAULT_DICOM_PORTS,
        ae_factory: Callable[[str], Any] | None = None,
        port_check: Callable[[str, int, float], Awaitable[None]] | None = None,
        agent: str = "lanterne",
    ) -> None:
        self.gate = gate
        self.calling_ae = check_ae_title(calling_ae)
        self.called_ae = check_ae_title(called_ae)
        self.ports = tuple(ports)
        self.agent = agent
        self._ae_factory = ae_factory or _default_ae
        self._port_check = port_check or port_open
        _quiet_pynetdicom()

    async def async_probe(
        self, host: str, *, mac: str | None = None, local_ip: str | None = None
    ) -> list[Observation]:
        """One C-ECHO per DICOM port; ProbeDenied stops it (the gate said so)."""
        out: list[Observation] = []
        for port in self.ports:
            what = (
                f"A-ASSOCIATE-RQ {self.calling_ae} -> {self.called_ae} (Verification), "
                "C-ECHO-RQ, A-RELEASE-RQ"
            )
            probe = Probe(host, "dicom", port, what, packets=ECHO_PACKETS)

            async def action(ticket: ProbeTicket, port: int = port) -> EchoAnswer:
                try:
                    await self._port_check(host, port, ticket.timeout)
                except ProbeRefused:
                    ticket.refund(ECHO_PACKETS - 1)  # one SYN, answered by a reset
                    raise
                except ProbeUnreachable:
                    ticket.refund(ECHO_PACKETS - 2)  # a SYN and its retransmit, then an ICMP error
                    raise
                answer = await asyncio.to_thread(
                    _echo_blocking,
                    self._ae_factory,
                    host,
                    port,
                    self.calling_ae,
                    self.called_ae,
                    ticket.timeout,
                )
                status = "?" if answer.echo_status is None else f"0x{answer.echo_status:04x}"
                ticket.note(f"association accepted, C-ECHO status {status}")
                return answer

            try:
                answer = await self.gate.run(probe, action)
            except ProbeDenied:
                raise
            except ProbeError:
                continue
            out.append(
                echo_observation(
                    answer,
                    host,
                    port,
                    calling=self.calling_ae,
                    called=self.called_ae,
                    mac=mac,
                    local_ip=local_ip,
                    agent=self.agent,
                )
            )
        return out
