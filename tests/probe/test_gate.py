"""The safety gate: scope, deny list, passive-only, medical devices, pacing, one probe per host, the log."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

import collectors.probe._gate as gate_module
from collectors.probe import (
    MedicalRegistry,
    Outcome,
    Probe,
    ProbeDenied,
    ProbeDryRun,
    ProbeError,
    ProbePolicy,
    ProbeRefused,
    ProbeTicket,
    ProbeTimeout,
    TokenBucket,
    parse_networks,
)
from tests.probe.helpers import VirtualClock, gate, outcomes, policy

HOST = "127.0.0.10"


def probe(target: str = HOST, packets: int = 1, **options: object) -> Probe:
    return Probe(target, "snmp", 161, "GET sysDescr.0", packets=packets, **options)  # type: ignore[arg-type]


async def answer(ticket: ProbeTicket) -> str:
    ticket.note("answered")
    return "value"


# -- policy and scope ------------------------------------------------------------------------------


def test_parse_networks_names_the_bad_value() -> None:
    assert parse_networks(["10.0.0.0/24", " 10.0.1.7 ", ""]) == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("10.0.1.7/32"),
    )
    with pytest.raises(ValueError, match="deny 'nope' is not a CIDR"):
        parse_networks(["nope"], what="deny")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 1e9}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"burst": 0}, "burst"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 3600}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 10}, "retries"),
    ],
)
def test_policy_refuses_values_that_would_make_a_flood(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(**options)  # type: ignore[arg-type]


def test_denial_reasons_in_the_order_of_the_rules() -> None:
    the_gate, _ = gate(
        ("10.66.0.0/24", "10.66.1.0/25"), deny=("10.66.1.10/32",), passive_only=("10.66.0.128/26",)
    )
    the_gate.medical.mark("10.66.1.20", "B. Braun, medical_device, detected")
    assert the_gate.denial("10.66.0.5") is None
    assert the_gate.denial("10.66.1.200") == "outside the allowed scope"
    assert the_gate.denial("192.0.2.1") == "outside the allowed scope"
    assert the_gate.denial("10.66.1.10") == "on the deny list (10.66.1.10/32)"
    assert the_gate.denial("10.66.0.130") == "in a passive-only subnet (10.66.0.128/26)"
    assert the_gate.denial("10.66.1.20") == "a medical device (B. Braun, medical_device, detected)"
    assert the_gate.denial("224.0.0.251") == "not a unicast address"
    assert the_gate.denial("0.0.0.0") == "not a unicast address"
    assert the_gate.denial("not-an-ip") == "not an IP address"
    assert the_gate.denial("::1") == "outside the allowed scope"  # another family is never inside


def test_probe_medical_lifts_only_the_medical_rule() -> None:
    the_gate, _ = gate(("10.66.0.0/24",), deny=("10.66.0.9/32",), probe_medical=True)
    the_gate.medical.mark("10.66.0.20", "infusion pump")
    assert the_gate.denial("10.66.0.20") is None
    assert the_gate.denial("10.66.0.9") == "on the deny list (10.66.0.9/32)"


def test_an_empty_scope_allows_nothing() -> None:
    the_gate, records = gate(())
    assert the_gate.denial("127.0.0.1") == "no scope configured: nothing may be probed"
    assert not the_gate.admit("127.0.0.1")
    assert [(r.protocol, str(r.outcome)) for r in records] == [("all", "denied")]


def test_passive_interfaces_and_link_denial() -> None:
    the_gate, _ = gate(("10.66.0.0/24",), passive_interfaces=frozenset({"eth0.20"}))
    assert the_gate.denial("10.66.0.5", interface="eth0.20") == "behind a passive-only interface (eth0.20)"
    assert the_gate.link_denial("eth0", "10.66.0.1") is None
    assert the_gate.link_denial("eth0.20", "10.66.0.1") == "passive-only interface (eth0.20)"
    assert the_gate.link_denial("eth1", "10.99.0.1") == "the subnet of eth1 is outside the allowed scope"


def test_admit_writes_one_row_per_refused_host() -> None:
    the_gate, records = gate(("10.66.0.0/24",))
    assert the_gate.admit("10.66.0.1")
    assert not the_gate.admit("10.66.9.1")
    assert [(r.target, r.protocol, r.port, str(r.outcome), r.detail) for r in records] == [
        ("10.66.9.1", "all", None, "denied", "outside the allowed scope")
    ]
    assert the_gate.stats.denied_hosts == 1


# -- running probes --------------------------------------------------------------------------------


def test_a_denied_probe_never_calls_its_action_and_is_logged() -> None:
    the_gate, records = gate(("10.66.0.0/24",))
    called: list[str] = []

    async def action(ticket: ProbeTicket) -> None:
        called.append(ticket.probe.target)

    with pytest.raises(ProbeDenied, match="outside the allowed scope"):
        asyncio.run(the_gate.run(probe("10.66.7.7"), action))
    assert not called
    assert outcomes(records) == ["denied"]
    assert records[0].detail == "GET sysDescr.0; outside the allowed scope"


def test_dry_run_records_what_would_be_sent_and_sends_nothing() -> None:
    the_gate, records = gate(dry_run=True)
    called: list[str] = []

    async def action(ticket: ProbeTicket) -> None:
        called.append("sent")

    with pytest.raises(ProbeDryRun):
        asyncio.run(the_gate.run(probe(), action))
    assert not called
    assert [(r.target, r.protocol, r.port, str(r.outcome)) for r in records] == [
        (HOST, "snmp", 161, "dry_run")
    ]
    assert "not sent (dry run)" in records[0].detail
    assert the_gate.bucket.packets == 0


def test_an_answer_is_recorded_with_the_note() -> None:
    the_gate, records = gate()
    assert asyncio.run(the_gate.run(probe(), answer)) == "value"
    (record,) = records
    assert (record.outcome, record.attempt) == (Outcome.OK, 1)
    assert record.detail.startswith("GET sysDescr.0; answered; ")
    assert record.detail.endswith(" ms")


def test_timeouts_are_retried_a_bounded_number_of_times() -> None:
    the_gate, records = gate(retries=2)
    attempts: list[int] = []

    async def silent(ticket: ProbeTicket) -> None:
        attempts.append(ticket.attempt)
        raise ProbeTimeout("no answer")

    with pytest.raises(ProbeTimeout):
        asyncio.run(the_gate.run(probe(), silent))
    assert attempts == [1, 2, 3]
    assert outcomes(records) == ["timeout"] * 3
    assert "attempt 3" in records[-1].detail


def test_a_probe_may_opt_out_of_retries() -> None:
    the_gate, records = gate(retries=1)

    async def silent(ticket: ProbeTicket) -> None:
        raise ProbeTimeout("no answer")

    with pytest.raises(ProbeTimeout):
        asyncio.run(the_gate.run(probe(retry=False), silent))
    assert outcomes(records) == ["timeout"]


def test_refusals_are_not_retried() -> None:
    the_gate, records = gate(retries=3)

    async def refused(ticket: ProbeTicket) -> None:
        raise ProbeRefused("connection refused")

    with pytest.raises(ProbeRefused):
        asyncio.run(the_gate.run(probe(), refused))
    assert outcomes(records) == ["refused"]


def test_the_gate_times_out_an_action_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate_module, "BACKSTOP_GRACE", 0.0)
    the_gate, records = gate(timeout=0.02, retries=1)

    async def hangs(ticket: ProbeTicket) -> None:
        await asyncio.sleep(30)

    with pytest.raises(ProbeTimeout, match=r"no answer within 0\.02 s"):
        asyncio.run(the_gate.run(probe(), hangs))
    assert outcomes(records) == ["timeout", "timeout"]


def test_a_bug_in_a_prober_is_recorded_and_reported_as_a_probe_error() -> None:
    the_gate, records = gate()

    async def broken(ticket: ProbeTicket) -> None:
        raise KeyError("oops")

    with pytest.raises(ProbeError, match="unexpected KeyError") as caught:
        asyncio.run(the_gate.run(probe(), broken))
    assert isinstance(caught.value.__cause__, KeyError)
    assert outcomes(records) == ["error"]


def test_one_probe_at_a_time_per_host_but_hosts_in_parallel() -> None:
    the_gate, _ = gate()
    active: dict[str, int] = {}
    most: dict[str, int] = {}
    overlap = 0

    async def slow(ticket: ProbeTicket) -> None:
        nonlocal overlap
        host = ticket.probe.target
        active[host] = active.get(host, 0) + 1
        most[host] = max(most.get(host, 0), active[host])
        overlap = max(overlap, sum(active.values()))
        await asyncio.sleep(0.01)
        active[host] -= 1

    async def main() -> None:
        await asyncio.gather(*(the_gate.run(probe(f"127.0.0.{1 + i % 4}"), slow) for i in range(16)))

    asyncio.run(main())
    assert set(most.values()) == {1}
    assert overlap == 4  # four hosts at once, never two probes on one host
    assert len(the_gate._locks) == 0  # the per-host locks are forgotten once free


def test_concurrency_is_bounded_over_all_hosts() -> None:
    the_gate, _ = gate(concurrency=3)
    active = 0
    most = 0

    async def slow(ticket: ProbeTicket) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.005)
        active -= 1

    async def main() -> None:
        await asyncio.gather(*(the_gate.run(probe(f"127.0.1.{i}"), slow) for i in range(1, 20)))

    asyncio.run(main())
    assert most == 3


def test_a_host_found_medical_while_waiting_is_not_probed() -> None:
    the_gate, records = gate()
    sent: list[str] = []

    async def finds_a_pump(ticket: ProbeTicket) -> None:
        sent.append(ticket.probe.what)
        await asyncio.sleep(0.01)
        the_gate.medical.mark(HOST, "infusion pump seen in sysObjectID")

    async def main() -> None:
        first = asyncio.create_task(the_gate.run(probe(), finds_a_pump))
        await asyncio.sleep(0)
        second = the_gate.run(Probe(HOST, "http", 80, "GET /"), finds_a_pump)
        await first
        with pytest.raises(ProbeDenied, match="infusion pump"):
            await second

    asyncio.run(main())
    assert sent == ["GET sysDescr.0"]
    assert outcomes(records) == ["ok", "denied"]


def test_medical_registry_canonicalises_addresses() -> None:
    registry = MedicalRegistry({"2001:DB8::0001": "monitor"})
    registry.mark("10.0.0.1", "pump")
    registry.mark("10.0.0.1", "second reason is ignored")
    assert registry.reason("2001:db8::1") == "monitor"
    assert registry.reason("10.0.0.1") == "pump"
    assert "10.0.0.1" in registry
    assert len(registry) == 2


# -- the rate limit --------------------------------------------------------------------------------


def test_the_bucket_never_exceeds_rate_times_time_plus_burst() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(100.0, 5, clock=clock, sleep=clock.sleep)
    sent: list[float] = []

    async def main() -> None:
        async def one(cost: int) -> None:
            await bucket.acquire(cost)
            sent.extend([clock.now] * cost)

        await asyncio.gather(*(one(1 + i % 3) for i in range(200)))

    asyncio.run(main())
    assert len(sent) == bucket.packets == sum(1 + i % 3 for i in range(200))
    start = sent[0]
    for index, moment in enumerate(sent):
        window = [t for t in sent[: index + 1] if t > moment - 1.0]
        assert len(window) <= 100 * 1.0 + 5 + 1e-9
    # and it is not slower than it has to be: (packets - burst) / rate
    assert sent[-1] - start == pytest.approx((len(sent) - 5) / 100, abs=0.03)


def test_debt_delays_the_next_probe() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(10.0, 2, clock=clock, sleep=clock.sleep)

    async def main() -> float:
        await bucket.acquire(2)
        bucket.charge(8)  # ACKs of a long answer, learnt afterwards
        before = clock.now
        await bucket.acquire(1)
        return clock.now - before

    assert asyncio.run(main()) == pytest.approx(0.9)


def test_a_probe_larger_than_the_bucket_waits_for_a_full_bucket() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(10.0, 3, clock=clock, sleep=clock.sleep)

    async def main() -> list[float]:
        moments = []
        for _ in range(3):
            await bucket.acquire(10)
            moments.append(clock.now)
        return moments

    first, second, third = asyncio.run(main())
    assert (second - first, third - second) == (pytest.approx(1.0), pytest.approx(1.0))


def test_every_attempt_is_charged_and_the_first_contact_costs_an_arp_too() -> None:
    the_gate, _ = gate(retries=1)

    async def silent(ticket: ProbeTicket) -> None:
        raise ProbeTimeout("no answer")

    async def main() -> None:
        with pytest.raises(ProbeTimeout):
            await the_gate.run(probe(packets=2), silent)
        await the_gate.run(probe(packets=2), answer)
        await the_gate.run(Probe("127.0.0.11", "arp", None, "ARP who-has", packets=1), answer)

    asyncio.run(main())
    # 2 + 1 (first contact), 2 (retry), 2, and 1 for the ARP request (no kernel ARP before it)
    assert the_gate.bucket.packets == 8


def test_policy_defaults_are_gentle() -> None:
    default = ProbePolicy(allow=())
    assert (default.rate, default.timeout, default.retries, default.probe_medical, default.dry_run) == (
        50.0,
        2.0,
        1,
        False,
        False,
    )


def test_refunds_give_back_unused_tokens_up_to_the_depth() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(10.0, 5, clock=clock, sleep=clock.sleep)

    async def main() -> float:
        await bucket.acquire(5)
        bucket.refund(4)  # a refused connection sent one SYN of the five estimated
        before = clock.now
        await bucket.acquire(4)
        return clock.now - before

    assert asyncio.run(main()) == 0.0
    assert bucket.packets == 5
    bucket.refund(100)
    assert bucket._tokens <= bucket.capacity
