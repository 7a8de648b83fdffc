"""The safety gate: the one place every active probe goes through (DESIGN §6).

Active probes can crash fragile clinical devices, which is why hospitals refuse most scanners.
The gate makes the rules hold whatever a prober does, because probers never send by themselves:
they hand the gate a description of the probe (:class:`Probe`) and an action, and only the gate
calls the action. For each probe, in this order:

1. **Scope**: the target must be inside an allowed network (an empty scope allows nothing), not on
   the deny list, not in a passive-only subnet or behind a passive-only interface, and not a
   known medical device (unless ``probe_medical``). Otherwise the probe is recorded ``denied``
   and :class:`ProbeDenied` is raised: nothing is sent.
2. **Dry run**: the probe is recorded ``dry_run`` with what would be sent; :class:`ProbeDryRun`.
3. **One probe at a time per host** (an asyncio lock per target) and **bounded concurrency** (a
   semaphore over all hosts). The scope is checked again once the lock is held: a host found to be
   a medical device by the probe before it is not probed any further.
4. **Global packet rate**: a token bucket over the packets of all probes (``rate`` per second,
   ``burst`` at most at once). Each attempt takes its estimated packets *before* sending; what a
   probe only learns afterwards (ACKs of a longer answer, mDNS queries sent by zeroconf) is charged
   as debt, which delays the next probe. The bucket runs ``KERNEL_HEADROOM`` below ``rate``: the
   kernel sends a few packets nobody asked for (ARP replies to neighbours, IGMP reports). Over any
   interval of T seconds the machine sends at most ``rate * T + burst`` packets, plus any debt
   not yet paid back.
5. **Short timeouts, bounded retries**: an attempt gets ``timeout`` seconds (2 by default); a
   timeout is retried ``retries`` times (1 by default); no other failure is retried.
6. **Every attempt is recorded** (:class:`ProbeRecord`: target, protocol, port, time, outcome,
   what was sent) through the ``record`` callback; the agent writes them to the probe log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, TypeAlias, TypeVar

from collectors._observation import printable
from collectors.probe._errors import Outcome, ProbeDenied, ProbeDryRun, ProbeError, ProbeTimeout

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

#: Packets per second over all probes: gentle for clinical networks, still a /24 in seconds.
DEFAULT_RATE: Final = 50.0
#: Packets that may leave at once after a quiet period (the bucket's depth).
DEFAULT_BURST: Final = 10
#: Probes in flight over all hosts (each host has one at most).
DEFAULT_CONCURRENCY: Final = 256
#: Seconds an attempt may wait for its answer.
DEFAULT_TIMEOUT: Final = 2.0
#: Times a timed-out attempt is tried again (refusals and errors never are).
DEFAULT_RETRIES: Final = 1
#: Upper bounds a configuration may not pass: a typo must not turn the prober into a flood.
MAX_RATE: Final = 10_000.0
MAX_TIMEOUT: Final = 30.0
MAX_RETRIES: Final = 3
#: Share of the rate left to what the kernel sends on its own (ARP replies, IGMP, retransmissions).
KERNEL_HEADROOM: Final = 0.05
#: Seconds the gate waits beyond a probe's own timeout before it gives up on the action itself
#: (probers map their libraries' timeouts first; this only catches one that hangs).
BACKSTOP_GRACE: Final = 0.5
#: Longest detail kept per probe log row.
MAX_DETAIL: Final = 400
_EPSILON: Final = 1e-6
#: Protocol name of a host-level denial (one row for a host the scope refuses as a whole).
ALL_PROTOCOLS: Final = "all"


def parse_networks(values: Iterable[str], *, what: str = "network") -> tuple[Network, ...]:
    """Parse CIDRs (or single addresses); raise ValueError naming the bad one."""
    networks: list[Network] = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"{what} {text!r} is not a CIDR or an IP address") from exc
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """The safety knobs of active probing (configuration ``[probe]``; CLI flags of ``lanterne probe``)."""

    allow: tuple[Network, ...]
    """The scope: the only networks a probe may target. Empty means no probe at all."""
    deny: tuple[Network, ...] = ()
    """Never probed, even inside the scope (a fragile ward, a lab with an agreement...)."""
    passive_only: tuple[Network, ...] = ()
    """Subnets (VLANs) that are only ever listened to."""
    passive_interfaces: frozenset[str] = frozenset()
    """Interfaces (a VLAN's sub-interface, say) on which nothing is sent: no ARP, no mDNS query."""
    probe_medical: bool = False
    """Probe endpoints already identified as medical devices too (off: they are left alone)."""
    rate: float = DEFAULT_RATE
    """Packets per second over all probes together."""
    burst: int = DEFAULT_BURST
    """Packets that may leave at once after a quiet period."""
    concurrency: int = DEFAULT_CONCURRENCY
    """Probes in flight over all hosts (one per host at most, always)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds an attempt waits for its answer."""
    retries: int = DEFAULT_RETRIES
    """Times a timed-out attempt is retried."""
    dry_run: bool = False
    """Record what would be sent, send nothing."""

    def __post_init__(self) -> None:
        if not (0 < self.rate <= MAX_RATE) or not math.isfinite(self.rate):
            raise ValueError(f"the probe rate must be between 0 and {MAX_RATE:g} packets per second")
        if self.burst < 1:
            raise ValueError("the probe burst must be at least one packet")
        if self.concurrency < 1:
            raise ValueError("the probe concurrency must be at least 1")
        if not (0 < self.timeout <= MAX_TIMEOUT):
            raise ValueError(f"the probe timeout must be between 0 and {MAX_TIMEOUT:g} seconds")
        if not (0 <= self.retries <= MAX_RETRIES):
            raise ValueError(f"the probe retries must be between 0 and {MAX_RETRIES}")


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe about to be sent: what the gate checks, charges, and writes to the probe log."""

    target: str
    """The IP address probed."""
    protocol: str
    """``arp``, ``snmp``, ``http``, ``https``, ``tcp``, ``dicom``, ``mdns``."""
    port: int | None
    what: str
    """What is sent, in words (``GET /favicon.ico``): the probe log and dry-run show it. Never a secret."""
    packets: int = 1
    """Packets this attempt may send, charged to the rate limit before it starts."""
    interface: str | None = None
    """The interface it leaves by, when the prober chooses it (ARP, mDNS)."""
    timeout: float | None = None
    """Overrides the policy's timeout for this probe (ARP answers in milliseconds or never)."""
    retry: bool = True
    """Whether a timeout is retried (per the policy's ``retries``)."""


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One probe attempt as the probe log keeps it: what biomedical engineering reads."""

    ts: float
    target: str
    protocol: str
    port: int | None
    outcome: Outcome
    detail: str
    attempt: int = 1


class ProbeTicket:
    """What the gate hands to a probe's action: its timeout, a note for the log, a way to charge more."""

    __slots__ = ("_bucket", "attempt", "detail", "probe", "timeout")

    def __init__(self, probe: Probe, bucket: TokenBucket, timeout: float, attempt: int) -> None:
        self.probe = probe
        self._bucket = bucket
        self.timeout = timeout
        self.attempt = attempt
        self.detail = ""

    def note(self, detail: str) -> None:
        """Say what came back (``200, Server and title``); shown after ``what`` in the probe log."""
        self.detail = printable(detail, MAX_DETAIL)

    def charge(self, packets: int) -> None:
        """Charge packets the attempt sent beyond its estimate (they delay the next probe)."""
        if packets > 0:
            self._bucket.charge(packets)

    def refund(self, packets: int) -> None:
        """Give back packets of the estimate surely not sent (a refused connection sent one SYN)."""
        if packets > 0:
            self._bucket.refund(packets)


class TokenBucket:
    """A global packet-rate limit: ``rate`` tokens a second, ``burst`` deep, waiters served in order."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = float(rate)
        self.capacity = float(max(1, burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()  # FIFO: a probe waiting for many tokens is not starved by small ones
        self.packets = 0
        """Packets charged so far (estimates and debts)."""

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, packets: int) -> None:
        """Wait until ``packets`` may be sent now, then take them."""
        async with self._lock:
            self._refill()
            # A probe larger than the bucket waits for a full bucket and leaves a debt behind.
            need = min(float(packets), self.capacity)
            # The epsilon ends the wait when rounding leaves a hair of a token missing.
            while self._tokens + _EPSILON < need:
                await self._sleep((need - self._tokens) / self.rate)
                self._refill()
            self._tokens -= packets
            self.packets += packets

    def charge(self, packets: int) -> None:
        """Take tokens for packets already sent, possibly into debt (the next acquire waits it out)."""
        self._refill()
        self._tokens -= packets
        self.packets += packets

    def refund(self, packets: int) -> None:
        """Return tokens taken for packets that were not sent (never above the bucket's depth)."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens + packets)
        self.packets -= packets


class MedicalRegistry:
    """Addresses known to be medical devices, with the reason (a detection, a MAC vendor)."""

    def __init__(self, known: Mapping[str, str] | None = None) -> None:
        self._known: dict[str, str] = {}
        for address, reason in (known or {}).items():
            self.mark(address, reason)

    def mark(self, address: str, reason: str) -> None:
        """Remember that ``address`` is a medical device (the first reason is kept)."""
        key = str(ipaddress.ip_address(address))
        self._known.setdefault(key, printable(reason, 200))

    def reason(self, address: str) -> str | None:
        """Why ``address`` is a medical device, or None."""
        return self._known.get(address)

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, address: object) -> bool:
        return address in self._known


class _HostLocks:
    """One asyncio lock per host, forgotten when nobody holds or waits for it (memory stays bounded)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        """Hold the host's lock for the block."""
        entry = self._locks.get(host)
        if entry is None:
            entry = self._locks[host] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[host]

    def __len__(self) -> int:
        return len(self._locks)


@dataclass(slots=True)
class GateStats:
    """What the gate let through and what it stopped."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    denied_hosts: int = 0


class SafetyGate:
    """Checks, paces, serialises, times out and records every probe (the module docstring says how)."""

    def __init__(
        self,
        policy: ProbePolicy,
        *,
        record: Callable[[ProbeRecord], None],
        medical: MedicalRegistry | None = None,
        bucket: TokenBucket | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.medical = medical if medical is not None else MedicalRegistry()
        if bucket is None:
            bucket = TokenBucket(policy.rate * (1 - KERNEL_HEADROOM), policy.burst)
        self.bucket = bucket
        self.stats = GateStats()
        self._record = record
        self._clock = clock
        self._locks = _HostLocks()
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._contacted: set[str] = set()

    # -- scope ---------------------------------------------------------------------------------

    def denial(self, target: str, *, interface: str | None = None) -> str | None:
        """Why ``target`` may not be probed (None: it may)."""
        try:
            address = ipaddress.ip_address(target)
        except ValueError:
            return "not an IP address"
        policy = self.policy
        if address.is_multicast or address.is_unspecified or str(address) == "255.255.255.255":
            return "not a unicast address"
        if not policy.allow:
            return "no scope configured: nothing may be probed"
        if not _inside(address, policy.allow):
            return "outside the allowed scope"
        if (network := _inside(address, policy.deny)) is not None:
            return f"on the deny list ({network})"
        if (network := _inside(address, policy.passive_only)) is not None:
            return f"in a passive-only subnet ({network})"
        if interface is not None and interface in policy.passive_interfaces:
            return f"behind a passive-only interface ({interface})"
        if not policy.probe_medical and (reason := self.medical.reason(str(address))) is not None:
            return f"a medical device ({reason})"
        return None

    def admit(self, target: str, *, interface: str | None = None) -> bool:
        """Whether ``target`` may be probed at all; if not, record one host-level ``denied`` row."""
        reason = self.denial(target, interface=interface)
        if reason is None:
            return True
        self.stats.denied_hosts += 1
        self._emit(ProbeRecord(self._clock(), target, ALL_PROTOCOLS, None, Outcome.DENIED, reason))
        return False

    def link_denial(self, interface: str, address: str) -> str | None:
        """Why nothing may be sent to a link-local group (mDNS) on ``interface`` (None: it may).

        Multicast reaches every station of the segment, so the interface's own subnet must be in
        the scope and neither it nor the interface passive-only.
        """
        policy = self.policy
        if interface in policy.passive_interfaces:
            return f"passive-only interface ({interface})"
        try:
            own = ipaddress.ip_address(address)
        except ValueError:
            return "the interface has no IP address"
        if not policy.allow:
            return "no scope configured: nothing may be probed"
        if not _inside(own, policy.allow):
            return f"the subnet of {interface} is outside the allowed scope"
        if (network := _inside(own, policy.passive_only)) is not None:
            return f"{interface} is in a passive-only subnet ({network})"
        return None

    def log(self, target: str, protocol: str, port: int | None, outcome: Outcome, detail: str) -> None:
        """Record what a prober sent outside :meth:`run` (multicast queries a library sends itself)."""
        self._emit(ProbeRecord(self._clock(), target, protocol, port, outcome, printable(detail, MAX_DETAIL)))

    # -- running a probe -----------------------------------------------------------------------

    async def run(self, probe: Probe, action: Callable[[ProbeTicket], Awaitable[T]]) -> T:
        """Run ``action`` as ``probe`` under every rule of the gate; a ProbeError if it gives nothing."""
        self._check(probe)
        if self.policy.dry_run:
            self._emit(self._record_of(probe, Outcome.DRY_RUN, "not sent (dry run)", 1))
            raise ProbeDryRun("dry run: nothing sent")
        attempts = 1 + (self.policy.retries if probe.retry else 0)
        timeout = probe.timeout if probe.timeout is not None else self.policy.timeout
        async with self._locks.hold(probe.target), self._slots:
            for attempt in range(1, attempts + 1):
                # The host may have been found to be a medical device while this probe waited.
                self._check(probe)
                await self.bucket.acquire(self._cost(probe))
                ticket = ProbeTicket(probe, self.bucket, timeout, attempt)
                started = self._clock()
                try:
                    async with asyncio.timeout(timeout + BACKSTOP_GRACE):
                        result = await action(ticket)
                except TimeoutError as exc:
                    error: ProbeError = ProbeTimeout(f"no answer within {timeout:g} s")
                    error.__cause__ = exc
                except ProbeError as exc:
                    error = exc
                except asyncio.CancelledError:
                    self._emit(self._record_of(probe, Outcome.ERROR, "cancelled", attempt, started, ticket))
                    raise
                except Exception as exc:
                    # A bug in a prober: recorded (something may have been sent) and reported as such.
                    text = f"unexpected {type(exc).__name__}"
                    self._emit(self._record_of(probe, Outcome.ERROR, text, attempt, started, ticket))
                    raise ProbeError(text) from exc
                else:
                    self._emit(self._record_of(probe, Outcome.OK, "", attempt, started, ticket))
                    return result
                self._emit(self._record_of(probe, error.outcome, str(error), attempt, started, ticket))
                if not isinstance(error, ProbeTimeout) or attempt == attempts:
                    raise error
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _check(self, probe: Probe) -> None:
        reason = self.denial(probe.target, interface=probe.interface)
        if reason is not None:
            self._emit(self._record_of(probe, Outcome.DENIED, reason, 1))
            raise ProbeDenied(reason)

    def _cost(self, probe: Probe) -> int:
        """Packets charged for an attempt: the first contact with a host costs the kernel's ARP too."""
        cost = probe.packets
        if probe.protocol != "arp" and probe.target not in self._contacted:
            self._contacted.add(probe.target)
            cost += 1
        return cost

    def _record_of(
        self,
        probe: Probe,
        outcome: Outcome,
        why: str,
        attempt: int,
        started: float | None = None,
        ticket: ProbeTicket | None = None,
    ) -> ProbeRecord:
        parts = [probe.what]
        if ticket is not None and ticket.detail:
            parts.append(ticket.detail)
        if why:
            parts.append(why)
        if attempt > 1:
            parts.append(f"attempt {attempt}")
        if started is not None:
            parts.append(f"{(self._clock() - started) * 1000:.0f} ms")
        ts = started if started is not None else self._clock()
        return ProbeRecord(
            ts,
            probe.target,
            probe.protocol,
            probe.port,
            outcome,
            printable("; ".join(parts), MAX_DETAIL),
            attempt,
        )

    def _emit(self, record: ProbeRecord) -> None:
        self.stats.outcomes[record.outcome] += 1
        self._record(record)


def _inside(address: Address, networks: tuple[Network, ...]) -> Network | None:
    for network in networks:
        if address.version == network.version and address in network:
            return network
    return None
