"""ARP sweep: frames checked against scapy, replies read through the real add_reader path (socket pair)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

from collectors import Kind
from collectors.probe import ArpSweeper, Interface, arp_observation, build_request, parse_reply
from tests.probe.helpers import gate, outcomes

OURS = Interface("l6test0", "10.66.5.1", ipaddress.IPv4Network("10.66.5.0/24"), "02:00:00:00:05:01")
# who-has 10.66.5.7 tell 10.66.5.1 (42 bytes, padded by the NIC)
REQUEST = bytes(
    Ether(dst="ff:ff:ff:ff:ff:ff", src=OURS.mac)
    / ARP(op=1, hwsrc=OURS.mac, psrc=OURS.address, hwdst="00:00:00:00:00:00", pdst="10.66.5.7")
)


def reply(ip: str, mac: str) -> bytes:
    """# 10.66.5.x is-at mac (what a neighbour's kernel answers)."""
    return bytes(
        Ether(dst=OURS.mac, src=mac) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=OURS.mac, pdst=OURS.address)
    )


def test_the_request_is_what_scapy_builds() -> None:
    assert build_request(OURS.mac, OURS.address, "10.66.5.7") == REQUEST


def test_replies_are_parsed_and_everything_else_ignored() -> None:
    assert parse_reply(reply("10.66.5.7", "00:12:21:01:02:03")) == ("10.66.5.7", "00:12:21:01:02:03")
    assert parse_reply(reply("10.66.5.7", "00:12:21:01:02:03") + b"\x00" * 18) == (
        "10.66.5.7",
        "00:12:21:01:02:03",
    )
    assert parse_reply(REQUEST) is None  # a request, not a reply
    assert parse_reply(reply("10.66.5.7", "01:00:5e:00:00:01")) is None  # a multicast sender is no host
    assert parse_reply(reply("10.66.5.7", "00:00:00:00:00:00")) is None
    assert parse_reply(reply("10.66.5.7", "00:12:21:01:02:03")[:30]) is None
    ipv6_ether = bytes(Ether(dst=OURS.mac, src="00:12:21:01:02:03", type=0x86DD)) + b"\x00" * 40
    assert parse_reply(ipv6_ether) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=128))
def test_parse_reply_never_raises(frame: bytes) -> None:
    result = parse_reply(frame)
    assert result is None or isinstance(result, tuple)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=42, max_size=42))
def test_parse_reply_on_mutated_replies(noise: bytes) -> None:
    frame = bytes(a ^ b for a, b in zip(reply("10.66.5.7", "00:12:21:01:02:03"), noise, strict=False))
    result = parse_reply(frame)
    assert result is None or (ipaddress.ip_address(result[0]) and len(result[1]) == 17)


class Neighbours:
    """The other end of a socket pair: answers requests for the addresses it knows (some late)."""

    def __init__(self, known: dict[str, str], late: frozenset[str] = frozenset()) -> None:
        self.known = known
        self.late = late
        self.requests: list[str] = []
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.theirs.setblocking(False)

    def factory(self, interface: str) -> socket.socket:
        assert interface == OURS.name
        return self.ours

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def on_request() -> None:
            frame = self.theirs.recv(2048)
            target = socket.inet_ntoa(frame[38:42])
            self.requests.append(target)
            # Noise on the wire: a request from someone else, garbage.
            self.theirs.send(b"\x00" * 10)
            if target in self.known:
                delay = 0.15 if target in self.late and self.requests.count(target) == 1 else 0.0
                loop.call_later(delay, self.theirs.send, reply(target, self.known[target]))

        loop.add_reader(self.theirs.fileno(), on_request)

    def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.theirs.fileno())
        self.theirs.close()


def test_a_sweep_finds_the_live_neighbours_and_retries_the_silent_ones() -> None:
    neighbours = Neighbours(
        {"10.66.5.7": "00:12:21:01:02:03", "10.66.5.9": "52:54:00:aa:bb:cc"}, late=frozenset({"10.66.5.9"})
    )
    the_gate, records = gate(("10.66.5.0/24",), retries=1)
    targets = ["10.66.5.7", "10.66.5.8", "10.66.5.9"]

    async def main() -> dict[str, str]:
        neighbours.start()
        try:
            sweeper = ArpSweeper(the_gate, OURS, socket_factory=neighbours.factory, timeout=0.1)
            return await sweeper.async_sweep(targets)
        finally:
            neighbours.stop()

    found = asyncio.run(main())
    assert found == {"10.66.5.7": "00:12:21:01:02:03", "10.66.5.9": "52:54:00:aa:bb:cc"}
    assert sorted(neighbours.requests) == ["10.66.5.7", "10.66.5.8", "10.66.5.8", "10.66.5.9", "10.66.5.9"]
    by_target = {}
    for record in records:
        by_target.setdefault(record.target, []).append(str(record.outcome))
    assert by_target == {
        "10.66.5.7": ["ok"],
        "10.66.5.8": ["timeout", "timeout"],
        "10.66.5.9": ["timeout", "ok"],
    }
    assert records[0].protocol == "arp"
    assert records[0].port is None
    assert "ARP who-has 10.66.5.7 tell 10.66.5.1 on l6test0; is-at 00:12:21:01:02:03" in records[0].detail
    assert the_gate.bucket.packets == 5  # one packet per request, no first-contact ARP for ARP itself
    assert neighbours.ours.fileno() == -1  # closed after the sweep


def test_denied_targets_get_no_request() -> None:
    neighbours = Neighbours({"10.66.5.7": "00:12:21:01:02:03"})
    the_gate, records = gate(("10.66.5.0/24",), deny=("10.66.5.7/32",))

    async def main() -> dict[str, str]:
        neighbours.start()
        try:
            return await ArpSweeper(
                the_gate, OURS, socket_factory=neighbours.factory, timeout=0.05
            ).async_sweep(["10.66.5.7"])
        finally:
            neighbours.stop()

    assert asyncio.run(main()) == {}
    assert neighbours.requests == []
    assert outcomes(records) == ["denied"]


def test_passive_interfaces_send_no_arp() -> None:
    the_gate, records = gate(("10.66.5.0/24",), passive_interfaces=frozenset({OURS.name}))
    neighbours = Neighbours({})

    async def main() -> None:
        neighbours.start()
        try:
            await ArpSweeper(the_gate, OURS, socket_factory=neighbours.factory).async_sweep(["10.66.5.7"])
        finally:
            neighbours.stop()

    asyncio.run(main())
    assert neighbours.requests == []
    assert "behind a passive-only interface (l6test0)" in records[0].detail


def test_dry_run_opens_no_socket() -> None:
    the_gate, records = gate(("10.66.5.0/24",), dry_run=True)

    def no_socket(interface: str) -> socket.socket:
        raise AssertionError("a dry run opened a socket")

    asyncio.run(
        ArpSweeper(the_gate, OURS, socket_factory=no_socket).async_dry_run(["10.66.5.7", "10.66.5.8"])
    )
    assert outcomes(records) == ["dry_run", "dry_run"]


def test_without_cap_net_raw_the_error_reaches_the_caller() -> None:
    the_gate, _ = gate(("10.66.5.0/24",))

    def refused(interface: str) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    with pytest.raises(PermissionError):
        asyncio.run(ArpSweeper(the_gate, OURS, socket_factory=refused).async_sweep(["10.66.5.7"]))


def test_arp_observation() -> None:
    obs = arp_observation("10.66.5.7", "00:12:21:01:02:03", "eth0", ts=5.0)
    assert (obs.kind, obs.value, obs.src.ip, obs.src.mac, obs.source) == (
        Kind.ARP_HOST,
        "10.66.5.7",
        "10.66.5.7",
        "00:12:21:01:02:03",
        "probe.arp",
    )
