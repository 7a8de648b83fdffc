"""What can go wrong with an active probe, as one exception tree mapped from the libraries' errors.

::

    ProbeError                  anything else (outcome ``error``)
    ├── ProbeTimeout            no answer within the timeout, retries included (``timeout``)
    ├── ProbeRefused            the host answered "no": TCP reset, association rejected (``refused``)
    ├── ProbeUnreachable        no route or no host: ICMP unreachable, EHOSTUNREACH (``unreachable``)
    ├── ProbeProtocolError      an answer that breaks the protocol (``malformed``)
    ├── ProbeAuthError          credentials refused: SNMPv3 digest, unknown user (``auth_failed``)
    ├── ProbeDenied             the safety gate refused to send it (``denied``)
    └── ProbeDryRun             dry-run mode: the gate recorded it and sent nothing (``dry_run``)

Each class carries the ``outcome`` written to the probe log. Probers map library exceptions to the
most specific class with ``raise ... from exc``. Messages are fixed text chosen by Lanterne: never
a library's message (it could quote what the network sent) and never a credential.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Outcome(StrEnum):
    """How one probe attempt ended, as the probe log records it."""

    OK = "ok"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    MALFORMED = "malformed"
    AUTH_FAILED = "auth_failed"
    ERROR = "error"
    DENIED = "denied"
    DRY_RUN = "dry_run"


class ProbeError(Exception):
    """A probe did not give an answer Lanterne can use."""

    outcome: ClassVar[Outcome] = Outcome.ERROR


class ProbeTimeout(ProbeError):
    """No answer came back within the timeout."""

    outcome = Outcome.TIMEOUT


class ProbeRefused(ProbeError):
    """The host is there and said no (TCP reset, DICOM association rejected)."""

    outcome = Outcome.REFUSED


class ProbeUnreachable(ProbeError):
    """Nothing answers at that address (no route, no neighbour, ICMP unreachable)."""

    outcome = Outcome.UNREACHABLE


class ProbeProtocolError(ProbeError):
    """The answer breaks the protocol (not HTTP, not SNMP, an unexpected PDU)."""

    outcome = Outcome.MALFORMED


class ProbeAuthError(ProbeError):
    """The host refused the credentials (SNMPv3 wrong digest, unknown user)."""

    outcome = Outcome.AUTH_FAILED


class ProbeDenied(ProbeError):
    """The safety gate refused the probe: out of scope, denied, passive-only, medical device."""

    outcome = Outcome.DENIED


class ProbeDryRun(ProbeError):
    """Dry-run mode: the gate recorded what would be sent and sent nothing."""

    outcome = Outcome.DRY_RUN
