"""Shared helpers of the probe tests: a virtual clock, a gate that keeps its records."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

from collectors.probe import Outcome, ProbePolicy, ProbeRecord, SafetyGate, TokenBucket


class VirtualClock:
    """Monotonic time that only moves when a sleeper asks it to (no real waiting)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def policy(
    allow: Iterable[str] = ("127.0.0.0/8",),
    *,
    deny: Iterable[str] = (),
    passive_only: Iterable[str] = (),
    **options: object,
) -> ProbePolicy:
    """A policy from CIDR strings."""
    return ProbePolicy(
        allow=tuple(ipaddress.ip_network(n) for n in allow),
        deny=tuple(ipaddress.ip_network(n) for n in deny),
        passive_only=tuple(ipaddress.ip_network(n) for n in passive_only),
        **options,  # type: ignore[arg-type]
    )


def gate(
    allow: Iterable[str] = ("127.0.0.0/8",), *, clock: VirtualClock | None = None, **options: object
) -> tuple[SafetyGate, list[ProbeRecord]]:
    """A gate over ``allow`` whose records land in the returned list (and whose bucket never waits)."""
    records: list[ProbeRecord] = []
    the_policy = policy(allow, **options)  # type: ignore[arg-type]
    clock = clock or VirtualClock()
    bucket = TokenBucket(the_policy.rate, the_policy.burst, clock=clock, sleep=clock.sleep)
    return SafetyGate(the_policy, record=records.append, bucket=bucket, clock=clock), records


def outcomes(records: Iterable[ProbeRecord]) -> list[str]:
    """The outcomes of ``records`` as plain strings."""
    return [str(record.outcome) for record in records]


__all__ = ["Outcome", "VirtualClock", "gate", "outcomes", "policy"]
