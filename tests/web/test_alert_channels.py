"""Alert channels against real receivers on loopback: syslog (UDP, TCP) and an HTTP receiver that fails.

Every alert event is delivered once per channel, in order; a failing receiver gets retries with
backoff, then a dead letter that is kept and replayed; digests turn a flood into one message; the
webhook's signature verifies. The delivery code runs on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent._alert_channels import (
    AlertChannel,
    ChannelConfigError,
    ChannelFilter,
    RetryPolicy,
    SyslogChannel,
    WebhookChannel,
    async_deliver_pending,
    body_bytes,
    cef_header,
    cef_value,
    channels_from_config,
    replay_dead_letters,
    sign,
    syslog_frame,
    verify,
)
from agent._review import decide
from fingerprints import Catalog
from store import Store, open_store
from store._models import Alert, AlertDelivery, AlertReason, AlertState, DeliveryStatus
from tests.agent.store_backends import database_url
from tests.store.dburl import BACKENDS
from tests.web.conftest import EVIL_VENDOR, NOW, SITE, SYSDESCR, populate

pytestmark = pytest.mark.anyio

SECRET = b"s3cret-for-the-tests-only-32bytes"


async def no_sleep(_seconds: float) -> None:
    """In-run backoff without waiting (the delays are asserted through the policy instead)."""


@pytest.fixture(params=BACKENDS)
def alerts_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, catalog: Catalog
) -> Iterator[Store]:
    """A store with the three alerts of the web fixtures (one vendor name is hostile)."""
    with database_url(request.param, tmp_path_factory) as url:
        store = open_store(url)
        try:
            populate(store, catalog)
            yield store
        finally:
            store.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path, catalog: Catalog) -> Iterator[Store]:
    """The same, on SQLite only (for the cases the backend does not change)."""
    store = open_store(f"sqlite:///{tmp_path / 'channels.db'}")
    try:
        populate(store, catalog)
        yield store
    finally:
        store.dispose()


def alert_ids(store: Store) -> list[int]:
    """Every alert id, in order."""
    with store.session() as session:
        return list(session.scalars(select(Alert.id).order_by(Alert.id)))


def outbox(store: Store) -> list[AlertDelivery]:
    """Every message of every channel, in order."""
    with store.session() as session:
        return list(session.scalars(select(AlertDelivery).order_by(AlertDelivery.id)))


def add_alerts(store: Store, count: int, *, severity: str = "medium") -> None:
    """Many alerts at once (a flood of detections)."""
    with store.write() as session:
        for index in range(count):
            session.add(
                Alert(
                    site=SITE,
                    product_key=f"unknown:vendor-{index}",
                    reason=AlertReason.UNKNOWN_OBSERVED,
                    state=AlertState.OPEN,
                    severity=severity,
                    title=f"Unidentified vendor-{index} device seen on 1 endpoint",
                    summary={"category": "medical_device"},
                    first_raised=NOW,
                    last_seen=NOW,
                    occurrences=1,
                    delivered={},
                )
            )


# -- receivers ------------------------------------------------------------------------------------


@dataclass
class SyslogReceiver:
    """What a loopback syslog listener got."""

    port: int
    messages: list[bytes] = field(default_factory=list)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sink.append(data)


@pytest.fixture
async def udp_receiver() -> AsyncIterator[SyslogReceiver]:
    """A syslog listener on UDP (RFC 5426: one message per datagram)."""
    loop = asyncio.get_running_loop()
    messages: list[bytes] = []
    transport, _protocol = await loop.create_datagram_endpoint(
        lambda: _Datagrams(messages), local_addr=("127.0.0.1", 0)
    )
    try:
        yield SyslogReceiver(transport.get_extra_info("sockname")[1], messages)
    finally:
        transport.close()


@pytest.fixture
async def tcp_receiver() -> AsyncIterator[SyslogReceiver]:
    """A syslog listener on TCP that reads RFC 6587 octet-counted frames."""
    messages: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = await reader.readuntil(b" ")
                messages.append(await reader.readexactly(int(length[:-1])))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield SyslogReceiver(server.sockets[0].getsockname()[1], messages)
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Received:
    """One request the HTTP receiver got."""

    status: int
    headers: dict[str, str]
    body: bytes


class HttpReceiver:
    """A webhook receiver on loopback that answers ``fail_first`` errors (or always fails) first."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.fail_first = 0
        self.down = False
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver._lock:
                    failing = receiver.down or receiver.fail_first > 0
                    receiver.fail_first = max(0, receiver.fail_first - 1)
                    status = 503 if failing else 204
                    receiver.requests.append(
                        Received(status, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="webhook-receiver",
            daemon=True,
        )
        self.thread.start()

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lanterne"

    def accepted(self) -> list[Received]:
        """The requests answered 2xx."""
        return [request for request in self.requests if request.status < 300]

    def close(self) -> None:
        """Stop the server and its thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    """A webhook receiver on loopback."""
    receiver = HttpReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def webhook(url: str, **policies: Any) -> WebhookChannel:
    """A webhook channel with the tests' secret and quick retries."""
    policies.setdefault("retry", RetryPolicy(attempts_per_run=3, first_delay=0.0, backoff=timedelta(0)))
    return WebhookChannel("soc", url, SECRET, **policies)


# -- formats --------------------------------------------------------------------------------------


def cef_extension(line: str) -> dict[str, str]:
    """Parse a CEF line's extension back (unescaping), to prove the escaping round-trips."""
    fields = re.split(r"(?<!\\)\|", line, maxsplit=7)
    assert len(fields) == 8, line
    extension = fields[7]
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", extension))
    values: dict[str, str] = {}
    for index, match in enumerate(keys):
        end = keys[index + 1].start() if index + 1 < len(keys) else len(extension)
        raw = extension[match.end() : end]
        values[match.group(1)] = re.sub(
            r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw
        )
    return values


def test_cef_escaping() -> None:
    assert cef_header("a|b\\c\nd") == "a\\|b\\\\c d"
    assert cef_value("k=v\\w\r\nx\ny|z") == "k\\=v\\\\w\\nx\\ny|z"
    assert cef_value("bell\x07") == "bell "
    assert len(cef_value("x" * 5000)) == 1000


def test_syslog_frame_is_rfc5424_with_a_cef_message() -> None:
    body = {
        "type": "lanterne.alert",
        "idempotency_key": "alert:7:open",
        "queued_at": "2026-11-28T12:00:00.123456+00:00",
        "alert": {
            "id": 7,
            "site": "ch|x",
            "product_key": "unknown:a=b",
            "reason": "unknown_observed",
            "state": "open",
            "severity": "high",
            "title": "Unidentified a|b=c\ndevice",
            "first_raised": "2026-11-28T11:00:00+00:00",
            "last_seen": "2026-11-28T11:30:00+00:00",
            "occurrences": 3,
            "summary": {"signals": [f"snmp.sysdescr={SYSDESCR}"]},
        },
    }
    frame = syslog_frame(body, facility=16, hostname="sensor 1", version="0.1.0", max_bytes=8192).decode()
    head, cef = frame.split(" - alert - ", 1)
    assert head == "<131>1 2026-11-28T12:00:00.123Z sensor1 lanterne"  # local0 (16) * 8 + error (3)
    assert cef.startswith("CEF:0|Lanterne|Lanterne|0.1.0|unknown_observed|Unidentified a\\|b=c device|8|")
    assert "\n" not in frame
    values = cef_extension(cef)
    assert values["cs1"] == "ch|x"
    assert values["cs2"] == "unknown:a=b"
    assert values["cs3"] == "alert:7:open"
    assert values["cs5"] == f"snmp.sysdescr={SYSDESCR}"
    assert values["msg"] == "Unidentified a|b=c\ndevice"
    assert values["externalId"] == "7"
    assert values["cnt"] == "3"
    assert values["start"] == str(int(datetime(2026, 11, 28, 11, 0, tzinfo=UTC).timestamp() * 1000))
    closed = {**body, "alert": {**body["alert"], "state": "closed"}}
    closed_frame = syslog_frame(closed, facility=16, hostname="h", version="1", max_bytes=8192).decode()
    assert closed_frame.startswith("<134>1 ")  # informational
    assert "|1|" in closed_frame
    short = syslog_frame(body, facility=16, hostname="h", version="1", max_bytes=480)
    assert len(short) <= 480
    assert b"cs3=alert:7:open" in short  # the key comes early enough to survive a cut


def test_signatures() -> None:
    data = body_bytes({"b": 1, "a": "é"})
    assert data == '{"a":"é","b":1}'.encode()
    sent = 1_795_000_000
    signature = sign(SECRET, data, sent)
    assert signature.startswith("sha256=")
    assert len(signature) == 7 + 64
    # The documented construction, as a receiver in another language would compute it.
    expected = hmac.new(SECRET, b"1795000000." + data, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify(SECRET, data, signature, str(sent), now=sent + 10)
    assert not verify(b"another secret of 32 bytes......", data, signature, sent, now=sent)
    assert not verify(SECRET, data + b" ", signature, sent, now=sent)
    # The timestamp is signed: moving it is a forgery, and an old request is a replay.
    assert not verify(SECRET, data, signature, sent + 1, now=sent)
    assert not verify(SECRET, data, signature, sent, now=sent + 301)
    assert verify(SECRET, data, signature, sent, now=sent + 3600, tolerance=4000)
    assert not verify(SECRET, data, signature, "not-a-number", now=sent)


def test_channels_from_config() -> None:
    channels = channels_from_config(
        [
            {"name": "siem", "type": "syslog", "host": "127.0.0.1", "port": 6514, "protocol": "tcp",
             "min_severity": "medium", "reasons": ["undeclared_observed"], "digest_threshold": 5},
            {"name": "soc", "type": "webhook", "url": "https://soc.example/hook", "secret_env": "SOC_SECRET",
             "sites": ["ch-web"], "states": ["open"], "max_attempts": 4},
        ],
        env={"SOC_SECRET": "x" * 32},
    )  # fmt: skip
    syslog, hook = channels
    assert isinstance(syslog, SyslogChannel)
    assert syslog.protocol == "tcp"
    assert syslog.digest_threshold == 5
    assert syslog.filter.reasons == {AlertReason.UNDECLARED_OBSERVED}
    assert isinstance(hook, WebhookChannel)
    assert hook.retry.max_attempts == 4
    assert "x" * 32 not in repr(hook)
    for bad, message in (
        ({"name": "a", "type": "pager"}, "syslog or webhook"),
        ({"name": "a", "type": "syslog"}, "invalid or missing"),
        ({"name": "a", "type": "syslog", "host": "h", "protocol": "sctp"}, "udp or tcp"),
        ({"name": "a", "type": "syslog", "host": "h", "min_severity": "urgent"}, "min_severity"),
        ({"name": "a", "type": "syslog", "host": "h", "reasons": "all"}, "list of strings"),
        ({"name": "a", "type": "syslog", "host": "h", "states": ["gone"]}, "invalid or missing"),
        ({"name": "a", "type": "webhook", "url": "https://x"}, "LANTERNE_WEBHOOK_SECRET"),
        ({"name": "a", "type": "webhook", "url": "ftp://x", "secret_env": "S"}, "http"),
        ({"name": "", "type": "syslog", "host": "h"}, "1 to 64"),
    ):
        with pytest.raises(ChannelConfigError, match=message):
            channels_from_config([bad], env={"S": "y" * 32})
    with pytest.raises(ChannelConfigError, match="two channels"):
        channels_from_config([{"name": "a", "type": "syslog", "host": "h"}] * 2, env={})


# -- delivery against real receivers --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_syslog_delivers_every_alert_once(
    sqlite_store: Store, udp_receiver: SyslogReceiver, tcp_receiver: SyslogReceiver, protocol: str
) -> None:
    receiver = udp_receiver if protocol == "udp" else tcp_receiver
    channel = SyslogChannel("siem", "127.0.0.1", receiver.port, protocol=protocol, hostname="sensor-1")  # type: ignore[arg-type]
    report = await async_deliver_pending(sqlite_store, [channel], NOW, sleep=no_sleep)
    assert report.channels["siem"].delivered == 3
    again = await async_deliver_pending(sqlite_store, [channel], NOW + timedelta(minutes=1), sleep=no_sleep)
    assert (again.channels["siem"].queued_events, again.channels["siem"].delivered) == (0, 0)
    for _ in range(100):  # UDP and TCP reads finish on the loop: give them their turn
        if len(receiver.messages) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(receiver.messages) == 3
    keys = sorted(
        cef_extension(message.decode().split(" - alert - ", 1)[1])["cs3"] for message in receiver.messages
    )
    assert keys == sorted(f"alert:{alert_id}:open" for alert_id in alert_ids(sqlite_store))
    evil = next(message.decode() for message in receiver.messages if "Evil" in message.decode())
    assert cef_extension(evil.split(" - alert - ", 1)[1])["cs2"] == f"unknown:{EVIL_VENDOR}"
    with sqlite_store.session() as session:
        for alert in session.scalars(select(Alert)):
            assert alert.delivered["siem"]["status"] == "delivered"
            assert alert.delivered["siem"]["state"] == "open"


async def test_webhook_retries_until_the_receiver_recovers(
    alerts_store: Store, http_receiver: HttpReceiver
) -> None:
    http_receiver.fail_first = 2
    channel = webhook(http_receiver.url)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    report = await async_deliver_pending(alerts_store, [channel], NOW, sleep=sleep)
    assert report.channels["soc"].delivered == 3
    assert report.channels["soc"].failed_attempts == 0  # retried within the run: not a failure
    assert [request.status for request in http_receiver.requests] == [503, 503, 204, 204, 204]
    assert delays == [0.0, 0.0]
    accepted = http_receiver.accepted()
    keys = [request.headers["idempotency-key"] for request in accepted]
    assert sorted(keys) == sorted(f"alert:{alert_id}:open" for alert_id in alert_ids(alerts_store))
    for request in http_receiver.requests:
        signature, sent = request.headers["x-lanterne-signature"], request.headers["x-lanterne-timestamp"]
        assert verify(SECRET, request.body, signature, sent)
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-lanterne-timestamp"].isdigit()
        document = json.loads(request.body)
        assert document["idempotency_key"] == request.headers["idempotency-key"]
        assert document["type"] == "lanterne.alert"
    # The retried message was byte-identical each time (its body is frozen in the outbox).
    first_key = http_receiver.requests[0].headers["idempotency-key"]
    assert (
        len(
            {
                request.body
                for request in http_receiver.requests
                if request.headers["idempotency-key"] == first_key
            }
        )
        == 1
    )
    rerun = await async_deliver_pending(alerts_store, [channel], NOW + timedelta(minutes=5), sleep=no_sleep)
    assert rerun.channels["soc"].delivered == 0
    assert len(http_receiver.requests) == 5


async def test_a_receiver_that_stays_down_gets_a_dead_letter_and_nothing_is_lost(
    alerts_store: Store, http_receiver: HttpReceiver
) -> None:
    http_receiver.down = True
    retry = RetryPolicy(attempts_per_run=2, first_delay=0.0, backoff=timedelta(minutes=1), max_attempts=4)
    channel = webhook(http_receiver.url, retry=retry)
    first = await async_deliver_pending(alerts_store, [channel], NOW, sleep=no_sleep)
    assert (first.channels["soc"].delivered, first.channels["soc"].failed_attempts) == (0, 2)
    assert first.channels["soc"].waiting == 3
    assert "HTTP 503" in (first.channels["soc"].error or "")
    # The head waits for its backoff: a run before it sends nothing (order is kept).
    early = await async_deliver_pending(alerts_store, [channel], NOW + timedelta(seconds=30), sleep=no_sleep)
    assert early.channels["soc"].failed_attempts == 0
    assert len(http_receiver.requests) == 2
    second = await async_deliver_pending(alerts_store, [channel], NOW + timedelta(minutes=2), sleep=no_sleep)
    assert second.channels["soc"].dead == 1
    messages = outbox(alerts_store)
    assert [message.status for message in messages] == [
        DeliveryStatus.DEAD,
        DeliveryStatus.PENDING,
        DeliveryStatus.PENDING,
    ]
    assert messages[0].attempts == 4
    assert messages[1].attempts == 2
    # The second message's backoff doubles with each failed run.
    assert messages[1].next_attempt_at == NOW + timedelta(minutes=2) + timedelta(minutes=1)
    with alerts_store.session() as session:
        dead_alert = session.get(Alert, messages[0].items[0][0])
        assert dead_alert is not None
        assert dead_alert.delivered["soc"]["status"] == "dead"
    # The receiver comes back: what waited goes out; the dead letter stays until replayed.
    http_receiver.down = False
    later = NOW + timedelta(hours=1)
    third = await async_deliver_pending(alerts_store, [channel], later, sleep=no_sleep)
    assert third.channels["soc"].delivered == 2
    with alerts_store.write() as session:
        assert replay_dead_letters(session, later, channel="soc") == 1
    fourth = await async_deliver_pending(alerts_store, [channel], later, sleep=no_sleep)
    assert fourth.channels["soc"].delivered == 1
    accepted = [request.headers["idempotency-key"] for request in http_receiver.accepted()]
    assert sorted(accepted) == sorted(f"alert:{alert_id}:open" for alert_id in alert_ids(alerts_store))
    assert len(accepted) == len(set(accepted)) == 3  # every alert once
    with alerts_store.session() as session:
        assert {alert.delivered["soc"]["status"] for alert in session.scalars(select(Alert))} == {"delivered"}


async def test_an_unreachable_receiver_is_a_failure_not_a_crash(sqlite_store: Store) -> None:
    # A port nobody listens on: connection refused, for the webhook and for syslog over TCP.
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    retry = RetryPolicy(attempts_per_run=1, first_delay=0.0)
    channels: list[AlertChannel] = [
        webhook(f"http://127.0.0.1:{port}/", retry=retry),
        SyslogChannel("siem", "127.0.0.1", port, protocol="tcp", retry=retry),
    ]
    report = await async_deliver_pending(sqlite_store, channels, NOW, sleep=no_sleep)
    for name in ("soc", "siem"):
        assert report.channels[name].delivered == 0
        assert report.channels[name].failed_attempts == 1
        assert report.channels[name].waiting == 3
    assert len(outbox(sqlite_store)) == 6


async def test_one_failing_channel_never_stops_another(
    sqlite_store: Store, http_receiver: HttpReceiver, tcp_receiver: SyslogReceiver
) -> None:
    http_receiver.down = True
    channels: list[AlertChannel] = [
        webhook(http_receiver.url, retry=RetryPolicy(attempts_per_run=1, first_delay=0.0)),
        SyslogChannel("siem", "127.0.0.1", tcp_receiver.port, protocol="tcp"),
    ]
    report = await async_deliver_pending(sqlite_store, channels, NOW, sleep=no_sleep)
    assert report.channels["siem"].delivered == 3
    assert report.channels["soc"].delivered == 0
    assert report.delivered == 3
    with sqlite_store.session() as session:
        records = [alert.delivered for alert in session.scalars(select(Alert).order_by(Alert.id))]
    assert [record["siem"]["status"] for record in records] == ["delivered"] * 3
    # The webhook's head failed and waits; the two behind it wait in the queue, in order.
    assert [record["soc"]["status"] for record in records] == ["retrying", "queued", "queued"]


async def test_a_flood_becomes_one_digest(sqlite_store: Store, http_receiver: HttpReceiver) -> None:
    add_alerts(sqlite_store, 40)
    channel = webhook(http_receiver.url, digest_threshold=10, max_digest_items=100)
    report = await async_deliver_pending(sqlite_store, [channel], NOW, sleep=no_sleep)
    assert (report.channels["soc"].queued_events, report.channels["soc"].delivered) == (43, 1)
    (request,) = http_receiver.requests
    digest = json.loads(request.body)
    assert digest["type"] == "lanterne.digest"
    assert digest["count"] == 43
    assert digest["by_severity"] == {"high": 3, "medium": 40}
    assert request.headers["idempotency-key"].startswith("digest:")
    assert request.headers["x-lanterne-event"] == "digest"
    assert sorted(item["id"] for item in digest["alerts"]) == alert_ids(sqlite_store)
    # A few more alerts later: below the threshold, each goes on its own.
    add_alerts(sqlite_store, 2)
    report = await async_deliver_pending(sqlite_store, [channel], NOW + timedelta(minutes=1), sleep=no_sleep)
    assert report.channels["soc"].delivered == 2
    assert [json.loads(r.body)["type"] for r in http_receiver.requests[1:]] == ["lanterne.alert"] * 2


async def test_a_syslog_digest_stays_small(sqlite_store: Store, udp_receiver: SyslogReceiver) -> None:
    add_alerts(sqlite_store, 300)
    channel = SyslogChannel(
        "siem", "127.0.0.1", udp_receiver.port, max_message_bytes=2048, max_digest_items=500
    )
    report = await async_deliver_pending(sqlite_store, [channel], NOW, sleep=no_sleep)
    assert report.channels["siem"].delivered == 1
    for _ in range(100):
        if udp_receiver.messages:
            break
        await asyncio.sleep(0.01)
    (message,) = udp_receiver.messages
    assert len(message) <= 2048
    text = message.decode()
    assert " - digest - CEF:0|Lanterne|Lanterne|" in text
    assert "cnt=303" in text
    assert "and 293 more" in text


async def test_state_changes_are_events_and_filters_apply(
    sqlite_store: Store, http_receiver: HttpReceiver
) -> None:
    add_alerts(sqlite_store, 1, severity="low")
    everything = webhook(http_receiver.url)
    high_open = WebhookChannel(
        "only-high-open",
        http_receiver.url,
        SECRET,
        filter=ChannelFilter(min_severity="high", states=frozenset({AlertState.OPEN})),
    )
    elsewhere = WebhookChannel(
        "other-site", http_receiver.url, SECRET, filter=ChannelFilter(sites=frozenset({"x"}))
    )
    channels: list[AlertChannel] = [everything, high_open, elsewhere]
    report = await async_deliver_pending(sqlite_store, channels, NOW, sleep=no_sleep)
    assert {name: item.delivered for name, item in report.channels.items()} == {
        "soc": 4,
        "only-high-open": 3,
        "other-site": 0,
    }
    with sqlite_store.write() as session:
        alert = session.scalars(select(Alert).where(Alert.product_key == "openai-chatgpt")).one()
        decide(session, alert.id, "rejected_to_block", "Données patients", by="rssi", now=NOW)
    report = await async_deliver_pending(sqlite_store, channels, NOW + timedelta(minutes=1), sleep=no_sleep)
    assert {name: item.delivered for name, item in report.channels.items()} == {
        "soc": 1,
        "only-high-open": 0,
        "other-site": 0,
    }
    closed = json.loads(http_receiver.requests[-1].body)
    assert (closed["alert"]["state"], closed["idempotency_key"]) == ("closed", f"alert:{alert.id}:closed")


async def test_a_delivery_run_survives_a_broken_channel(sqlite_store: Store) -> None:
    class Broken(AlertChannel):
        async def async_send(self, message: AlertDelivery) -> None:
            raise RuntimeError("bug")

    report = await async_deliver_pending(sqlite_store, [Broken("broken")], NOW, sleep=no_sleep)
    assert report.channels["broken"].error == "RuntimeError: bug"
    assert report.delivered == 0


async def test_two_runs_sharing_a_store_send_each_message_once(
    alerts_store: Store, http_receiver: HttpReceiver
) -> None:
    # Two agents with the same channel on the central store: each message is claimed by one run.
    first, second = webhook(http_receiver.url), webhook(http_receiver.url)
    reports = await asyncio.gather(
        async_deliver_pending(alerts_store, [first], NOW, sleep=no_sleep),
        async_deliver_pending(alerts_store, [second], NOW, sleep=no_sleep),
    )
    assert sum(report.delivered for report in reports) <= 3
    for _ in range(3):  # whichever run stepped back finishes on a later run
        await async_deliver_pending(alerts_store, [first], NOW + timedelta(minutes=10), sleep=no_sleep)
    keys = [request.headers["idempotency-key"] for request in http_receiver.accepted()]
    assert sorted(keys) == sorted(f"alert:{alert_id}:open" for alert_id in alert_ids(alerts_store))
    assert [message.status for message in outbox(alerts_store)] == [DeliveryStatus.DELIVERED] * 3
