"""Live capture without a network: the real add_reader path on a socketpair; graded errors; attribution."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import collectors._live as live
from collectors import Decoder, Endpoint, Kind, Observation
from collectors._live import FlowAttributor, LiveCapture, restore_vlan

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


# DNS 10.0.0.1 -> 10.0.0.53 query A chatgpt.com
def _query(name: str = "chatgpt.com", *, vlan: int | None = None) -> bytes:
    frame = Ether(src=CLIENT_MAC, dst=SERVER_MAC) / IP(src="10.0.0.1", dst="10.0.0.53")
    return bytes(frame / UDP(sport=40000, dport=53) / DNS(id=1, qd=DNSQR(qname=name)))


class FakeSocket:
    """One end of a datagram socketpair behind the socket methods the capture uses (optionally failing)."""

    def __init__(self, sock: socket.socket, fail_with: BaseException | None = None) -> None:
        self.sock = sock
        self.fail_with = fail_with
        self.family = sock.family

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockopt(self, *args: Any) -> Any:
        return self.sock.getsockopt(*args)

    def recvmsg_into(self, buffers: list[memoryview], ancsize: int) -> tuple[int, list[Any], int, Any]:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            self.sock.recv(65536)  # consume the datagram that woke us up
            raise exc
        return self.sock.recvmsg_into(buffers, ancsize)

    def close(self) -> None:
        self.sock.close()


class Wire:
    """Hands out capture sockets; the test writes frames into the current one."""

    def __init__(self, failures: list[BaseException | None] | None = None) -> None:
        self.failures = list(failures or [])
        self.writers: list[socket.socket] = []
        self.opened = 0

    def opener(self) -> Any:
        self.opened += 1
        failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, OSError) and failure.errno == errno.ENODEV:
            raise failure  # the interface does not exist (yet)
        reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        reader.setblocking(False)
        self.writers.append(writer)
        return FakeSocket(reader, failure)

    def send(self, frame: bytes) -> None:
        self.writers[-1].send(frame)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def _until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _run_capture(wire: Wire, scenario: Callable[[LiveCapture, list[Observation]], Any]) -> LiveCapture:
    seen: list[Observation] = []

    async def main() -> LiveCapture:
        capture = LiveCapture("l5fake0", seen.extend, opener=wire.opener, decoder=Decoder(source="live"))
        task = asyncio.ensure_future(capture.async_run())
        try:
            await scenario(capture, seen)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return capture

    try:
        return asyncio.run(main())
    finally:
        wire.close()


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "MIN_BACKOFF", 0.01)
    monkeypatch.setattr(live, "BUG_BACKOFF", 0.01)


def test_frames_are_read_from_the_loop_and_decoded() -> None:
    wire = Wire()

    async def scenario(capture: LiveCapture, seen: list[Observation]) -> None:
        await _until(lambda: capture.stats.running)
        wire.send(_query("chatgpt.com"))
        wire.send(b"\x00" * 5)  # garbage between frames: counted by the decoder, never fatal
        wire.send(_query("api.openai.com"))
        await _until(lambda: len(seen) == 2)

    capture = _run_capture(wire, scenario)
    assert capture.stats.frames == 3
    assert not capture.stats.running
    assert capture.decoder.stats.malformed == 1


def test_an_oserror_reopens_the_socket() -> None:
    wire = Wire([OSError(errno.ENETDOWN, "Network is down")])

    async def scenario(capture: LiveCapture, seen: list[Observation]) -> None:
        await _until(lambda: capture.stats.running)
        wire.send(_query())  # the read fails: the interface went down
        await _until(lambda: wire.opened == 2 and capture.stats.running)
        wire.send(_query("claude.ai"))
        await _until(lambda: [obs.value for obs in seen] == ["claude.ai"])

    capture = _run_capture(wire, scenario)
    assert capture.stats.restarts == 1


def test_a_missing_interface_is_retried() -> None:
    wire = Wire([OSError(errno.ENODEV, "No such device"), OSError(errno.ENODEV, "No such device")])

    async def scenario(capture: LiveCapture, seen: list[Observation]) -> None:
        await _until(lambda: capture.stats.running)
        wire.send(_query())
        await _until(lambda: len(seen) == 1)

    capture = _run_capture(wire, scenario)
    assert wire.opened == 3
    assert capture.stats.errors == 2


def test_an_unexpected_error_restarts_the_capture_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wire = Wire([RuntimeError("bug")])

    async def scenario(capture: LiveCapture, seen: list[Observation]) -> None:
        await _until(lambda: capture.stats.running)
        wire.send(_query())
        await _until(lambda: wire.opened == 2 and capture.stats.running)
        wire.send(_query("claude.ai"))
        await _until(lambda: len(seen) == 1)

    with caplog.at_level(logging.ERROR, logger="collectors._live"):
        _run_capture(wire, scenario)
    assert any(record.exc_info and "unexpected" in record.getMessage() for record in caplog.records)


def test_a_decoder_failure_skips_the_frame_only(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = Wire()
    original = Decoder.feed

    def feed(self: Decoder, ts: float, linktype: int, buf: bytes, off: int, caplen: int) -> None:
        if b"boom" in buf:
            raise IndexError("a decoder bug")
        original(self, ts, linktype, buf, off, caplen)

    monkeypatch.setattr(Decoder, "feed", feed)

    async def scenario(capture: LiveCapture, seen: list[Observation]) -> None:
        await _until(lambda: capture.stats.running)
        wire.send(_query() + b"boom")
        wire.send(_query("claude.ai"))
        await _until(lambda: len(seen) == 1)

    capture = _run_capture(wire, scenario)
    assert capture.stats.decoder_errors == 1
    assert capture.stats.restarts == 0


def test_what_is_left_in_the_socket_is_read_at_shutdown() -> None:
    wire = Wire()

    async def scenario(capture: LiveCapture, seen: list[Observation]) -> None:
        await _until(lambda: capture.stats.running)
        loop = asyncio.get_running_loop()
        loop.remove_reader(capture._sock.fileno())  # type: ignore[union-attr]  # the loop is busy elsewhere
        for index in range(50):
            wire.send(_query(f"host{index}.example"))

    seen_after: list[Observation] = []

    async def main() -> None:
        capture = LiveCapture(
            "l5fake0", seen_after.extend, opener=wire.opener, decoder=Decoder(source="live")
        )
        task = asyncio.ensure_future(capture.async_run())
        await scenario(capture, seen_after)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    wire.close()
    assert len(seen_after) == 50


def test_the_stripped_vlan_tag_is_put_back() -> None:
    frame = _query()
    auxdata = struct.pack(
        "=IIIHHHH", live.TP_STATUS_VLAN_VALID | live.TP_STATUS_VLAN_TPID_VALID, 0, 0, 0, 0, 120, 0x88A8
    )
    tagged = restore_vlan(frame, auxdata)
    assert tagged[12:16] == b"\x88\xa8\x00\x78"
    assert tagged[:12] + tagged[16:] == frame
    old_kernel = struct.pack("=IIIHHHH", live.TP_STATUS_VLAN_VALID, 0, 0, 0, 0, 7, 0)
    assert restore_vlan(frame, old_kernel)[12:16] == b"\x81\x00\x00\x07"
    assert restore_vlan(frame, struct.pack("=IIIHHHH", 0, 0, 0, 0, 0, 0, 0)) == frame
    decoder = Decoder(strict=True)
    decoder.feed(0.0, 1, tagged, 0, len(tagged))
    assert decoder.flush()[0].attrs["vlan"] == 120


# -- flow attribution --------------------------------------------------------------------------------


def _answer(
    name: str, addresses: tuple[str, ...], client: str = "10.0.0.1", ts: float = 100.0
) -> Observation:
    return Observation(
        ts,
        Kind.DNS_ANSWER,
        name,
        Endpoint(client),
        Endpoint("10.0.0.53"),
        {"addresses": addresses, "ttl": 300},
    )


def _hello(
    server: str, *, client: str = "10.0.0.1", ts: float = 110.0, sni: str | None = None, quic: bool = False
) -> Observation:
    if sni is None:
        attrs = {"ja4": "t13d1516h2_x_y", "transport": "quic" if quic else "tcp", "alpn": ("h2",)}
        return Observation(
            ts, Kind.TLS_FINGERPRINT, "t13d1516h2_x_y", Endpoint(client), Endpoint(server, port=443), attrs
        )
    return Observation(ts, Kind.TLS_SNI, sni, Endpoint(client), Endpoint(server, port=443), {"ech": True})


def test_a_hello_without_sni_is_named_by_the_clients_dns_answer() -> None:
    attributor = FlowAttributor()
    assert attributor.process([_answer("chatgpt.com", ("10.9.0.7", "10.9.0.8"))]) == []
    (named,) = attributor.process([_hello("10.9.0.8")])
    assert (named.kind, named.value, named.attrs["attributed_from"]) == (Kind.TLS_SNI, "chatgpt.com", "dns")
    assert named.attrs["alpn"] == ("h2",)
    (over_quic,) = attributor.process([_hello("10.9.0.7", quic=True)])
    assert over_quic.kind is Kind.QUIC_SNI


def test_ech_outer_names_are_replaced_by_the_resolved_name() -> None:
    attributor = FlowAttributor()
    attributor.process([_answer("claude.ai", ("10.9.0.9",))])
    (named,) = attributor.process([_hello("10.9.0.9", sni="cloudflare-ech.com")])
    assert (named.value, named.attrs["outer_sni"]) == ("claude.ai", "cloudflare-ech.com")
    assert attributor.process([_hello("10.9.0.9", sni="claude.ai")]) == []  # names itself: nothing to add


def test_shared_addresses_are_attributed_per_client_only() -> None:
    attributor = FlowAttributor()
    attributor.process([_answer("a.example", ("10.9.0.1",), client="10.0.0.1")])
    attributor.process([_answer("b.example", ("10.9.0.1",), client="10.0.0.2")])
    assert attributor.name_of("10.0.0.1", "10.9.0.1", 110.0) == "a.example"
    assert attributor.name_of("10.0.0.2", "10.9.0.1", 110.0) == "b.example"
    assert attributor.name_of("10.0.0.3", "10.9.0.1", 110.0) is None  # a CDN address: which one?
    attributor.process([_answer("c.example", ("10.9.0.2",), client="10.0.0.1")])
    assert attributor.name_of("10.0.0.3", "10.9.0.2", 110.0) == "c.example"  # unambiguous: by server


def test_answers_expire_and_the_memory_is_bounded() -> None:
    attributor = FlowAttributor(max_entries=100)
    attributor.process([_answer("a.example", ("10.9.0.1",), ts=100.0)])
    assert attributor.name_of("10.0.0.1", "10.9.0.1", 100.0 + 301) is None
    for index in range(1000):
        attributor.process([_answer(f"r{index}.example", (f"10.8.{index // 250}.{index % 250}",))])
    assert len(attributor) <= 200
    assert attributor.stats.evicted >= 1800
    attributor.clear()
    assert len(attributor) == 0


def test_answers_from_the_wire_feed_the_memory() -> None:
    frame = (
        Ether(src=SERVER_MAC, dst=CLIENT_MAC)
        / IP(src="10.0.0.53", dst="10.0.0.1")
        / UDP(sport=53, dport=40000)
    )
    frame = frame / DNS(
        id=1, qr=1, qd=DNSQR(qname="chatgpt.com"), an=DNSRR(rrname="chatgpt.com", rdata="10.9.0.5")
    )
    decoder = Decoder(strict=True)
    raw = bytes(frame)
    decoder.feed(0.0, 1, raw, 0, len(raw))
    attributor = FlowAttributor()
    attributor.process(decoder.flush())
    assert attributor.name_of("10.0.0.1", "10.9.0.5", 1.0) == "chatgpt.com"
