"""TCP liveness for targets that are not on an attached subnet (no ARP possible there).

A routed target is asked with a TCP connection to a few common ports, closed at once, through the
safety gate: an accepted or a refused connection both prove the host is there; silence or an ICMP
unreachable on every port means it is not, and its other probes are not sent at all. This is what
spares an absent host the SNMP timeouts and the round of HTTP ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Sequence
from typing import Final

from collectors.probe._errors import (
    ProbeDenied,
    ProbeDryRun,
    ProbeError,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
)
from collectors.probe._gate import Probe, ProbeTicket, SafetyGate

#: Ports asked, in order, until one answers (what most devices with a network stack listen on, or reset).
DEFAULT_LIVENESS_PORTS: Final = (80, 443)
#: SYN and a possible retransmit, ACK, FIN, last ACK.
LIVENESS_PACKETS: Final = 5
_UNREACHABLE: Final = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


async def port_open(host: str, port: int, seconds: float) -> None:
    """Check the port with a TCP connection closed at once; a ProbeError says why it is not open."""
    try:
        async with asyncio.timeout(seconds):
            _reader, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError as exc:
        raise ProbeRefused("connection refused (TCP reset)") from exc
    except TimeoutError as exc:
        raise ProbeTimeout("no answer to the TCP connection") from exc
    except OSError as exc:
        if exc.errno in _UNREACHABLE:
            raise ProbeUnreachable("host unreachable") from exc
        raise ProbeError("the TCP connection failed") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _connect(host: str, port: int, ticket: ProbeTicket) -> bool:
    try:
        await port_open(host, port, ticket.timeout)
    except ProbeRefused as exc:
        ticket.refund(LIVENESS_PACKETS - 1)  # one SYN, answered by a reset
        raise ProbeRefused("connection refused (TCP reset): the host is there") from exc.__cause__
    ticket.note("open")
    return True


async def async_tcp_alive(gate: SafetyGate, host: str, ports: Sequence[int] = DEFAULT_LIVENESS_PORTS) -> bool:
    """Whether ``host`` answers a TCP connection on one of ``ports`` (ProbeDenied: the gate refused).

    In dry-run mode every port is listed and the host counts as alive, so its other probes are listed too.
    """
    dry_run = False
    for port in ports:
        probe = Probe(host, "tcp", port, "TCP connect (liveness), closed at once", packets=LIVENESS_PACKETS)

        async def action(ticket: ProbeTicket, port: int = port) -> bool:
            return await _connect(host, port, ticket)

        try:
            return await gate.run(probe, action)
        except ProbeRefused:
            return True
        except ProbeDenied:
            raise
        except ProbeDryRun:
            dry_run = True
        except ProbeError:
            continue
    return dry_run
