"""Alert channels: syslog in CEF (RFC 5424 over UDP or TCP) for the SIEM, and signed webhooks (httpx).

The rules, in one place:

- **What is sent.** Each state an alert reaches (``open``, ``acknowledged``, ``closed``) is one
  event per channel, identified by the idempotency key ``alert:<id>:<state>``. A re-detection that
  only counts one more occurrence is not an event (the daemon would otherwise flood the SIEM).
- **Filters** per channel: minimum severity, reasons, sites, categories, states.
- **Digests.** When more than ``digest_threshold`` events are waiting for a channel in one run,
  they leave as digests (one message per ``max_digest_items`` events, key ``digest:<hash>``): a
  flood of detections is one message, not a thousand.
- **Outbox.** Every message is first written to ``alert_deliveries`` with its body frozen, then
  sent; ``alerts.delivered[<channel>]`` records the state queued and whether it went out. Nothing
  is lost when a channel is down: messages wait in the outbox, in order.
- **Order and retries.** A channel's messages leave in the order they were queued. A message that
  fails is retried in the run (``attempts_per_run``, with doubling delays), then in later runs
  (``backoff`` doubling up to ``max_backoff``); while it waits, the channel's later messages wait
  too (the receiver is down for them as well). After ``max_attempts`` it becomes a **dead letter**:
  kept with its last error until ``replay_dead_letters`` queues it again; the channel moves on.
- **Once.** A message is marked delivered in the same run it was sent; its key travels with it
  (webhook ``Idempotency-Key`` header and body, CEF ``cs3``) so a receiver can drop the duplicate
  that a crash between sending and recording could cause. UDP syslog has no acknowledgement: sent
  is as delivered as it gets (use TCP where the SIEM must not miss one).
- **Webhook.** ``POST`` of the JSON body with ``X-Lanterne-Timestamp`` (epoch seconds of the
  attempt), ``X-Lanterne-Signature: sha256=<hex HMAC-SHA256, with the channel's secret, of the
  timestamp, a dot, and the body>`` and ``Idempotency-Key``. The timestamp is signed, so a receiver
  refuses a replayed request as well as a forged one (``verify``: five minutes of tolerance by
  default). Any answer but 2xx, or no answer, is a failure.
- **Syslog.** RFC 5424 messages (``<PRI>1 TIMESTAMP HOST lanterne - MSGID - CEF:0|…``); over TCP
  with octet-counting framing (RFC 6587), over UDP one datagram each (RFC 5426). CEF header
  fields escape ``\\`` and ``|``; extension values escape ``\\``, ``=`` and line breaks.

``async_deliver_pending(store, channels, now)`` is the one entry point: the daemon's scheduler
calls it periodically (never two at once: ``max_instances=1``). Database work runs in a thread,
never on the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent._export import lanterne_version
from agent._review import alert_document
from store import Store
from store._inventory import as_utc
from store._models import Alert, AlertDelivery, AlertReason, AlertState, DeliveryStatus

_LOGGER = logging.getLogger(__name__)

SEVERITY_RANK: Final = {"low": 0, "medium": 1, "high": 2}
#: CEF severity (0-10) of an alert's severity; a closed alert is informational.
CEF_SEVERITY: Final = {"high": 8, "medium": 5, "low": 3}
CEF_CLOSED_SEVERITY: Final = 1
#: Syslog severity (RFC 5424 §6.2.1) of an alert's severity: error, warning, notice; closed: info.
SYSLOG_SEVERITY: Final = {"high": 3, "medium": 4, "low": 5}
SYSLOG_CLOSED_SEVERITY: Final = 6
FACILITIES: Final = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
#: Longest value of a CEF extension field (titles and signals are bounded before they get here).
MAX_CEF_VALUE: Final = 1000
#: Items named in a syslog digest (counts say the rest; a datagram must stay small).
SYSLOG_DIGEST_NAMES: Final = 10
BODY_VERSION: Final = 1
_CHUNK: Final = 500  # bound IN (...) lists
#: How long a run holds a message it is sending before another run may take it over.
CLAIM_LEASE: Final = timedelta(minutes=5)


class ChannelError(Exception):
    """A message could not be sent (the receiver is down, refused it, or answered an error)."""


class ChannelConfigError(ValueError):
    """A channel's configuration is invalid."""


# -- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelFilter:
    """Which alert events a channel wants (an empty set means: all)."""

    min_severity: str = "low"
    reasons: frozenset[AlertReason] = frozenset()
    sites: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    states: frozenset[AlertState] = frozenset()

    def accepts(self, alert: Alert) -> bool:
        """Whether an alert's current state is an event for this channel."""
        if SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK[self.min_severity]:
            return False
        if self.reasons and alert.reason not in self.reasons:
            return False
        if self.sites and alert.site not in self.sites:
            return False
        if self.states and alert.state not in self.states:
            return False
        return not self.categories or (alert.summary or {}).get("category") in self.categories


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard a channel tries before a message becomes a dead letter."""

    attempts_per_run: int = 3
    """Attempts of one message within one run before waiting for a later run."""
    first_delay: float = 0.5
    """Seconds between the first two attempts in a run (doubling after each)."""
    backoff: timedelta = timedelta(minutes=1)
    """Wait before the next run retries a failed message (doubling after each failed run)."""
    max_backoff: timedelta = timedelta(hours=1)
    max_attempts: int = 12
    """Attempts in all before the message is a dead letter (kept, replayable)."""


class AlertChannel(abc.ABC):
    """Somewhere alert events go."""

    def __init__(
        self,
        name: str,
        *,
        filter: ChannelFilter | None = None,
        retry: RetryPolicy | None = None,
        digest_threshold: int = 10,
        max_digest_items: int = 200,
    ) -> None:
        """Name the channel (the key of ``alerts.delivered``) and set its policies."""
        if not name or len(name) > 64:
            raise ChannelConfigError("a channel name has 1 to 64 characters")
        self.name = name
        self.filter = filter or ChannelFilter()
        self.retry = retry or RetryPolicy()
        self.digest_threshold = max(0, digest_threshold)
        self.max_digest_items = max(1, max_digest_items)

    @abc.abstractmethod
    async def async_send(self, message: AlertDelivery) -> None:
        """Send one message of the outbox; raise ChannelError when it did not go out."""

    async def async_close(self) -> None:  # noqa: B027 - a no-op by default, on purpose
        """Release what a run opened (connections)."""


# -- CEF and syslog -------------------------------------------------------------------------------


def _clean(text: str) -> str:
    # Other control characters have no business in a SIEM event (CEF escapes only CR and LF).
    return "".join(char if char >= " " or char in "\r\n" else " " for char in text)


def cef_header(text: str) -> str:
    """Escape a CEF header field: backslash and pipe; line breaks become spaces."""
    text = _clean(text).replace("\r", " ").replace("\n", " ")
    return text.replace("\\", "\\\\").replace("|", "\\|")


def cef_value(text: str, limit: int = MAX_CEF_VALUE) -> str:
    """Escape a CEF extension value: backslash, equals sign, line breaks (bounded first)."""
    text = _clean(text)[:limit]
    return (
        text.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def _epoch_ms(iso: str | None) -> str | None:
    if not iso:
        return None
    return str(int(datetime.fromisoformat(iso).timestamp() * 1000))


def cef_event(body: Mapping[str, Any], version: str) -> str:
    """The CEF line of a message body (one alert event, or a digest)."""
    extension: list[tuple[str, str | None]]
    if body["type"] == "lanterne.digest":
        counts = body.get("by_severity", {})
        top = max((SEVERITY_RANK.get(name, 0) for name, count in counts.items() if count), default=0)
        severity = CEF_SEVERITY[{2: "high", 1: "medium", 0: "low"}[top]]
        shown = body["alerts"][:SYSLOG_DIGEST_NAMES]
        names = ", ".join(f"#{item['id']} {item['product_key']} {item['state']}" for item in shown)
        if len(body["alerts"]) > len(shown):
            names += f" and {len(body['alerts']) - len(shown)} more"
        by_reason = ", ".join(f"{name}: {count}" for name, count in sorted(body.get("by_reason", {}).items()))
        signature, name = "digest", f"Lanterne digest: {body['count']} alert events"
        extension = [
            ("rt", _epoch_ms(body.get("queued_at"))),
            ("cs3Label", "idempotencyKey"),
            ("cs3", body["idempotency_key"]),
            ("cnt", str(body["count"])),
            ("cs1Label", "sites"),
            ("cs1", ", ".join(body.get("sites", ()))),
            ("msg", f"{by_reason}; {names}"),
        ]
    else:
        alert = body["alert"]
        closed = alert["state"] == "closed"
        severity = CEF_CLOSED_SEVERITY if closed else CEF_SEVERITY.get(alert["severity"], 5)
        signature, name = alert["reason"], alert["title"]
        summary = alert.get("summary") or {}
        extension = [
            ("rt", _epoch_ms(body.get("queued_at"))),
            # The key first: it must survive when a datagram is cut to the receiver's size.
            ("cs3Label", "idempotencyKey"),
            ("cs3", body["idempotency_key"]),
            ("externalId", str(alert["id"])),
            ("cat", alert["reason"]),
            ("act", alert["state"]),
            ("start", _epoch_ms(alert.get("first_raised"))),
            ("end", _epoch_ms(alert.get("last_seen"))),
            ("cnt", str(alert.get("occurrences", 1))),
            ("cs1Label", "site"),
            ("cs1", alert["site"]),
            ("cs2Label", "product"),
            ("cs2", alert["product_key"]),
            ("cs4Label", "severity"),
            ("cs4", alert["severity"]),
            ("cs5Label", "signals"),
            ("cs5", ", ".join(str(signal) for signal in summary.get("signals", ()))),
            ("msg", alert["title"]),
        ]
    head = "|".join(
        ["CEF:0", "Lanterne", "Lanterne", cef_header(version), cef_header(signature), cef_header(name)[:512]]
    )
    ext = " ".join(f"{key}={cef_value(value)}" for key, value in extension if value is not None)
    return f"{head}|{severity}|{ext}"


def _syslog_severity(body: Mapping[str, Any]) -> int:
    if body["type"] == "lanterne.digest":
        counts = body.get("by_severity", {})
        worst = max((SEVERITY_RANK.get(name, 0) for name, count in counts.items() if count), default=0)
        return SYSLOG_SEVERITY[{2: "high", 1: "medium", 0: "low"}[worst]]
    alert = body["alert"]
    if alert["state"] == "closed":
        return SYSLOG_CLOSED_SEVERITY
    return SYSLOG_SEVERITY.get(alert["severity"], 4)


def _ascii_token(text: str, limit: int) -> str:
    # RFC 5424 header fields are printable US-ASCII without spaces; "-" when nothing is left.
    cleaned = "".join(char for char in text if "!" <= char <= "~")[:limit]
    return cleaned or "-"


def syslog_frame(
    body: Mapping[str, Any], *, facility: int, hostname: str, version: str, max_bytes: int
) -> bytes:
    """The RFC 5424 message carrying the CEF event of ``body`` (bounded to ``max_bytes``)."""
    pri = facility * 8 + _syslog_severity(body)
    queued = datetime.fromisoformat(body["queued_at"]).astimezone(UTC)
    stamp = queued.strftime("%Y-%m-%dT%H:%M:%S.") + f"{queued.microsecond // 1000:03d}Z"
    msgid = "digest" if body["type"] == "lanterne.digest" else "alert"
    head = f"<{pri}>1 {stamp} {_ascii_token(hostname, 255)} lanterne - {msgid} - "
    data = (head + cef_event(body, version)).encode("utf-8")
    if len(data) > max_bytes:
        # Cut on a character boundary; the key and the header fields come first, so they survive.
        data = data[:max_bytes].decode("utf-8", "ignore").encode("utf-8")
    return data


class SyslogChannel(AlertChannel):
    """CEF events in RFC 5424 syslog messages, over UDP or TCP."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 514,
        *,
        protocol: Literal["udp", "tcp"] = "udp",
        facility: str = "local0",
        max_message_bytes: int = 8192,
        timeout: float = 5.0,
        hostname: str | None = None,
        **policies: Any,
    ) -> None:
        """Configure the receiver (``host``, ``port``, ``protocol``) and the framing."""
        super().__init__(name, **policies)
        if protocol not in ("udp", "tcp"):
            raise ChannelConfigError(f"syslog protocol is udp or tcp, not {protocol!r}")
        if facility not in FACILITIES:
            raise ChannelConfigError(f"unknown syslog facility {facility!r}")
        if not 0 < port < 65536:
            raise ChannelConfigError(f"bad port {port}")
        self.host, self.port, self.protocol = host, port, protocol
        self.facility = FACILITIES[facility]
        self.max_message_bytes = max(480, max_message_bytes)  # RFC 5424 §6.1: receivers take 480
        self.timeout = timeout
        self.hostname = hostname or socket.gethostname()
        self.version = lanterne_version()
        self._writer: asyncio.StreamWriter | None = None
        self._datagram: asyncio.DatagramTransport | None = None

    def frame(self, message: AlertDelivery) -> bytes:
        """The syslog message of an outbox entry."""
        return syslog_frame(
            message.body,
            facility=self.facility,
            hostname=self.hostname,
            version=self.version,
            max_bytes=self.max_message_bytes,
        )

    async def async_send(self, message: AlertDelivery) -> None:
        """Send one message (connecting first if needed)."""
        data = self.frame(message)
        try:
            if self.protocol == "tcp":
                await self._async_send_tcp(data)
            else:
                await self._async_send_udp(data)
        except (OSError, TimeoutError) as exc:
            await self.async_close()
            raise ChannelError(f"syslog {self.protocol} {self.host}:{self.port}: {exc!r}") from exc

    async def _async_send_tcp(self, data: bytes) -> None:
        if self._writer is None:
            _reader, opened = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout
            )
            self._writer = opened
        writer: asyncio.StreamWriter = self._writer
        # RFC 6587 octet counting: "<length> <message>", so messages may hold line breaks.
        writer.write(b"%d " % len(data) + data)
        await asyncio.wait_for(writer.drain(), self.timeout)

    async def _async_send_udp(self, data: bytes) -> None:
        if self._datagram is None:
            loop = asyncio.get_running_loop()
            self._datagram, _protocol = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self.host, self.port)
            )
        self._datagram.sendto(data)

    async def async_close(self) -> None:
        """Close the connection or socket of the run."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            # The peer may have gone away: nothing is left to flush then.
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.timeout)
        datagram, self._datagram = self._datagram, None
        if datagram is not None:
            datagram.close()


# -- webhooks -------------------------------------------------------------------------------------


def body_bytes(body: Mapping[str, Any]) -> bytes:
    """The exact bytes a webhook sends (and signs) for a body: sorted keys, compact, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


#: How far a webhook's signed timestamp may be from the receiver's clock (``verify``).
SIGNATURE_TOLERANCE: Final = 300.0


def sign(secret: bytes, data: bytes, timestamp: int) -> str:
    """The ``X-Lanterne-Signature`` value of a body sent at ``timestamp`` (epoch seconds)."""
    signed = str(timestamp).encode("ascii") + b"." + data
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    data: bytes,
    signature: str,
    timestamp: str | int,
    *,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver runs: the signature is the body's at that timestamp, and the timestamp fresh.

    ``timestamp`` is the ``X-Lanterne-Timestamp`` header as received; constant-time comparison.
    """
    try:
        moment = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - moment) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, data, moment), signature)


class WebhookChannel(AlertChannel):
    """A JSON ``POST`` per message, HMAC-signed."""

    def __init__(
        self,
        name: str,
        url: str,
        secret: bytes,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
        **policies: Any,
    ) -> None:
        """Configure the receiver's URL and the signing secret (``transport`` for tests)."""
        super().__init__(name, **policies)
        if not url.startswith(("https://", "http://")):
            raise ChannelConfigError(f"webhook URL must be http(s), not {url[:40]!r}")
        if len(secret) < 16:
            raise ChannelConfigError("a webhook secret has at least 16 bytes")
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self._transport = transport
        self._clock = clock or (lambda: datetime.now(UTC))
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        """Never show the secret."""
        return f"WebhookChannel({self.name!r}, {self.url!r})"

    async def async_send(self, message: AlertDelivery) -> None:
        """POST one message; a non-2xx answer is a failure."""
        data = body_bytes(message.body)
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.timeout, follow_redirects=False
            )
        moment = int(self._clock().timestamp())
        headers = {
            "content-type": "application/json",
            "user-agent": f"lanterne/{lanterne_version()}",
            "x-lanterne-signature": sign(self._secret, data, moment),
            "x-lanterne-timestamp": str(moment),
            "x-lanterne-event": message.kind,
            "idempotency-key": message.key,
        }
        try:
            response = await self._client.post(self.url, content=data, headers=headers)
        except httpx.HTTPError as exc:
            raise ChannelError(f"webhook {self.name}: {exc.__class__.__name__}: {exc}") from exc
        if not response.is_success:
            raise ChannelError(f"webhook {self.name}: HTTP {response.status_code}")

    async def async_close(self) -> None:
        """Close the run's HTTP client."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


# -- configuration files --------------------------------------------------------------------------


def _strings(value: Any, what: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ChannelConfigError(f"{what} is a list of strings")
    return frozenset(value)


def channels_from_config(
    items: Iterable[Mapping[str, Any]], env: Mapping[str, str] | None = None
) -> list[AlertChannel]:
    """Build the channels of a configuration's ``[[alerts.channels]]`` tables.

    Keys: ``name``, ``type`` (``syslog`` or ``webhook``); syslog: ``host``, ``port``,
    ``protocol`` (udp/tcp), ``facility``; webhook: ``url``, ``secret_env`` (the name of the
    environment variable holding the secret: secrets never sit in the file); filters:
    ``min_severity``, ``reasons``, ``sites``, ``categories``, ``states``; policies:
    ``digest_threshold``, ``max_digest_items``, ``attempts_per_run``, ``max_attempts``,
    ``backoff_seconds``, ``max_backoff_seconds``, ``timeout``.
    """
    env = os.environ if env is None else env
    channels: list[AlertChannel] = []
    names: set[str] = set()
    for item in items:
        name = str(item.get("name", ""))
        if name in names:
            raise ChannelConfigError(f"two channels are named {name!r}")
        names.add(name)
        try:
            min_severity = str(item.get("min_severity", "low"))
            if min_severity not in SEVERITY_RANK:
                raise ChannelConfigError(f"min_severity is one of low, medium, high, not {min_severity!r}")
            channel_filter = ChannelFilter(
                min_severity=min_severity,
                reasons=frozenset(AlertReason(r) for r in _strings(item.get("reasons"), "reasons")),
                sites=_strings(item.get("sites"), "sites"),
                categories=_strings(item.get("categories"), "categories"),
                states=frozenset(AlertState(s) for s in _strings(item.get("states"), "states")),
            )
            retry = RetryPolicy(
                attempts_per_run=int(item.get("attempts_per_run", 3)),
                backoff=timedelta(seconds=float(item.get("backoff_seconds", 60))),
                max_backoff=timedelta(seconds=float(item.get("max_backoff_seconds", 3600))),
                max_attempts=int(item.get("max_attempts", 12)),
            )
            policies: dict[str, Any] = {
                "filter": channel_filter,
                "retry": retry,
                "digest_threshold": int(item.get("digest_threshold", 10)),
                "max_digest_items": int(item.get("max_digest_items", 200)),
            }
            kind = item.get("type")
            if kind == "syslog":
                channels.append(
                    SyslogChannel(
                        name,
                        str(item["host"]),
                        int(item.get("port", 514)),
                        protocol=item.get("protocol", "udp"),
                        facility=str(item.get("facility", "local0")),
                        timeout=float(item.get("timeout", 5)),
                        **policies,
                    )
                )
            elif kind == "webhook":
                variable = str(item.get("secret_env", "LANTERNE_WEBHOOK_SECRET"))
                secret = env.get(variable)
                if not secret:
                    raise ChannelConfigError(f"the webhook secret is read from ${variable}, which is not set")
                channels.append(
                    WebhookChannel(
                        name,
                        str(item["url"]),
                        secret.encode("utf-8"),
                        timeout=float(item.get("timeout", 10)),
                        **policies,
                    )
                )
            else:
                raise ChannelConfigError(f"channel type is syslog or webhook, not {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ChannelConfigError):
                raise ChannelConfigError(f"channel {name!r}: {exc}") from exc
            raise ChannelConfigError(f"channel {name!r}: invalid or missing {exc}") from exc
    return channels


# -- the outbox -----------------------------------------------------------------------------------


#: What a digest says of each of its alerts (a part of ``alert_document``).
_DIGEST_FIELDS: Final = (
    "id", "site", "product_key", "reason", "state", "severity", "title", "last_seen", "occurrences",
)  # fmt: skip


def _counts(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _digest_body(alerts: Sequence[Alert], now: datetime) -> tuple[str, dict[str, Any]]:
    pairs = sorted(f"{alert.id}:{alert.state}" for alert in alerts)
    key = "digest:" + hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:32]
    body = {
        "type": "lanterne.digest",
        "version": BODY_VERSION,
        "idempotency_key": key,
        "queued_at": now.isoformat(),
        "count": len(alerts),
        "by_severity": _counts(alert.severity for alert in alerts),
        "by_reason": _counts(str(alert.reason) for alert in alerts),
        "by_state": _counts(str(alert.state) for alert in alerts),
        "sites": sorted({alert.site for alert in alerts}),
        "alerts": [
            {field: document[field] for field in _DIGEST_FIELDS} for document in map(alert_document, alerts)
        ],
    }
    return key, body


def _mark(alert: Alert, channel: str, **values: Any) -> None:
    # JSON columns are not mutation-tracked: assign a new dict.
    delivered = dict(alert.delivered or {})
    delivered[channel] = {**dict(delivered.get(channel) or {}), **values}
    alert.delivered = delivered


def _waits(alert: Alert, channel: AlertChannel) -> bool:
    queued = (alert.delivered or {}).get(channel.name, {}).get("state")
    return queued != str(alert.state) and channel.filter.accepts(alert)


def queue_pending(session: Session, channel: AlertChannel, now: datetime) -> int:
    """Write the channel's new events to the outbox (one message each, or digests); return how many events."""
    candidates = [
        alert.id for alert in session.scalars(select(Alert).order_by(Alert.id)) if _waits(alert, channel)
    ]
    waiting: list[Alert] = []
    for start in range(0, len(candidates), _CHUNK):
        # Lock the rows (PostgreSQL; SQLite's writer lock already serialises) and read them again:
        # another channel's run may have just written its own entry of ``delivered``.
        locked = session.scalars(
            select(Alert)
            .where(Alert.id.in_(candidates[start : start + _CHUNK]))
            .order_by(Alert.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        waiting.extend(alert for alert in locked if _waits(alert, channel))
    if not waiting:
        return 0
    messages: list[tuple[str, str, list[Alert], dict[str, Any]]] = []
    if len(waiting) > channel.digest_threshold:
        for start in range(0, len(waiting), channel.max_digest_items):
            chunk = waiting[start : start + channel.max_digest_items]
            key, body = _digest_body(chunk, now)
            messages.append(("digest", key, chunk, body))
    else:
        for alert in waiting:
            key = f"alert:{alert.id}:{alert.state}"
            body = {
                "type": "lanterne.alert",
                "version": BODY_VERSION,
                "idempotency_key": key,
                "queued_at": now.isoformat(),
                "alert": alert_document(alert),
            }
            messages.append(("alert", key, [alert], body))
    for kind, key, alerts, body in messages:
        known = session.scalar(
            select(AlertDelivery.id).where(AlertDelivery.channel == channel.name, AlertDelivery.key == key)
        )
        if known is None:
            # Another agent's run may queue the same key at the same moment: the constraint decides.
            with contextlib.suppress(IntegrityError), session.begin_nested():
                session.add(
                    AlertDelivery(
                        channel=channel.name,
                        key=key,
                        kind=kind,
                        items=[[alert.id, str(alert.state)] for alert in alerts],
                        body=body,
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        created_at=now,
                        next_attempt_at=now,
                    )
                )
        for alert in alerts:
            _mark(
                alert,
                channel.name,
                state=str(alert.state),
                key=key,
                status="queued",
                queued_at=now.isoformat(),
            )
    session.flush()
    return len(waiting)


def _record(
    session: Session, message_id: int, outcome: _Outcome, channel: AlertChannel, now: datetime
) -> str:
    message = session.get(AlertDelivery, message_id, with_for_update=True)
    if message is None:  # purged meanwhile: nothing to record
        return "gone"
    message.attempts += outcome.attempts
    message.last_attempt_at = now
    if outcome.error is None:
        message.status = DeliveryStatus.DELIVERED
        message.delivered_at = now
        message.last_error = None
        status, extra = "delivered", {"at": now.isoformat()}
    else:
        message.last_error = outcome.error[:2000]
        if message.attempts >= channel.retry.max_attempts:
            message.status = DeliveryStatus.DEAD
            status, extra = "dead", {}
        else:
            failed_runs = max(1, -(-message.attempts // max(1, channel.retry.attempts_per_run)))
            wait = min(channel.retry.backoff * (2 ** (failed_runs - 1)), channel.retry.max_backoff)
            message.next_attempt_at = now + wait
            status, extra = "retrying", {}
    for alert_id, state in message.items:
        alert = session.get(Alert, alert_id, with_for_update=True)
        record = None if alert is None else (alert.delivered or {}).get(channel.name, {})
        # Only the message that carried the alert's latest queued state may say how it went.
        if alert is not None and record is not None and record.get("key") == message.key:
            _mark(alert, channel.name, state=state, status=status, **extra)
    return status


def replay_dead_letters(
    session: Session, now: datetime, *, channel: str | None = None, ids: Sequence[int] | None = None
) -> int:
    """Queue dead letters again (all, one channel's, or the given ids); return how many."""
    query = select(AlertDelivery).where(AlertDelivery.status == DeliveryStatus.DEAD)
    if channel is not None:
        query = query.where(AlertDelivery.channel == channel)
    if ids is not None:
        query = query.where(AlertDelivery.id.in_(list(ids)))
    count = 0
    for message in session.scalars(query.order_by(AlertDelivery.id)):
        message.status = DeliveryStatus.PENDING
        message.attempts = 0
        message.next_attempt_at = now
        count += 1
        for alert_id, _state in message.items:
            alert = session.get(Alert, alert_id, with_for_update=True)
            if (
                alert is not None
                and (alert.delivered or {}).get(message.channel, {}).get("key") == message.key
            ):
                _mark(alert, message.channel, status="queued")
    session.flush()
    return count


# -- the delivery run -----------------------------------------------------------------------------


@dataclass(slots=True)
class ChannelReport:
    """What one run did for one channel."""

    queued_events: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0
    waiting: int = 0
    """Messages still pending after the run (waiting for a retry)."""
    error: str | None = None


@dataclass(slots=True)
class DeliveryReport:
    """What one run did, per channel."""

    channels: dict[str, ChannelReport] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        """Messages delivered in the run, all channels."""
        return sum(report.delivered for report in self.channels.values())

    @property
    def dead(self) -> int:
        """Messages that became dead letters in the run."""
        return sum(report.dead for report in self.channels.values())


@dataclass(frozen=True, slots=True)
class _Outcome:
    attempts: int
    error: str | None


def _queue(store: Store, channel: AlertChannel, now: datetime) -> tuple[int, list[AlertDelivery]]:
    with store.write() as session:
        queued = queue_pending(session, channel, now)
    with store.session() as session:
        pending = list(
            session.scalars(
                select(AlertDelivery)
                .where(AlertDelivery.channel == channel.name, AlertDelivery.status == DeliveryStatus.PENDING)
                .order_by(AlertDelivery.id)
            )
        )
    return queued, pending


def _claim(store: Store, message_id: int, now: datetime) -> bool:
    # A conditional update is the lock: of two runs sharing a store (two agents on the central
    # PostgreSQL), one sends the message; the other sees it leased and leaves it. A run that dies
    # mid-send loses the lease after CLAIM_LEASE and the message goes again (same key).
    with store.write() as session:
        claimed = session.execute(
            update(AlertDelivery)
            .where(
                AlertDelivery.id == message_id,
                AlertDelivery.status == DeliveryStatus.PENDING,
                AlertDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + CLAIM_LEASE)
        )
        return bool(getattr(claimed, "rowcount", 0))


def _save(store: Store, message_id: int, outcome: _Outcome, channel: AlertChannel, now: datetime) -> str:
    with store.write() as session:
        return _record(session, message_id, outcome, channel, now)


async def _async_attempts(
    channel: AlertChannel, message: AlertDelivery, sleep: Callable[[float], Awaitable[None]]
) -> _Outcome:
    delay = channel.retry.first_delay
    error = ""
    attempts = max(1, channel.retry.attempts_per_run)
    for attempt in range(1, attempts + 1):
        try:
            await channel.async_send(message)
        except ChannelError as exc:
            error = str(exc)
            _LOGGER.debug(
                "channel %s: attempt %d of %s failed: %s", channel.name, attempt, message.key, error
            )
            if attempt < attempts:
                await sleep(delay)
                delay *= 2
            continue
        return _Outcome(attempt, None)
    return _Outcome(attempts, error)


async def _async_run_channel(
    store: Store, channel: AlertChannel, now: datetime, sleep: Callable[[float], Awaitable[None]]
) -> ChannelReport:
    report = ChannelReport()
    queued, pending = await asyncio.to_thread(_queue, store, channel, now)
    report.queued_events = queued
    try:
        for index, message in enumerate(pending):
            if as_utc(message.next_attempt_at) > now or not await asyncio.to_thread(
                _claim, store, message.id, now
            ):
                # The head waits for its backoff (or another run holds it): later messages wait
                # too, so the order is kept.
                report.waiting = len(pending) - index
                break
            outcome = await _async_attempts(channel, message, sleep)
            status = await asyncio.to_thread(_save, store, message.id, outcome, channel, now)
            if outcome.error is None:
                report.delivered += 1
                continue
            report.failed_attempts += outcome.attempts
            report.error = outcome.error
            if status == "dead":
                report.dead += 1
                _LOGGER.warning(
                    "channel %s: %s is a dead letter: %s", channel.name, message.key, outcome.error
                )
                continue
            report.waiting = len(pending) - index
            break
    finally:
        await channel.async_close()
    return report


async def async_deliver_pending(
    store: Store,
    channels: Sequence[AlertChannel],
    now: datetime,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> DeliveryReport:
    """Queue the channels' new alert events and send what is due (a failing channel never stops another)."""
    report = DeliveryReport()
    results = await asyncio.gather(
        *(_async_run_channel(store, channel, now, sleep) for channel in channels), return_exceptions=True
    )
    for channel, result in zip(channels, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            _LOGGER.error("channel %s: delivery run failed", channel.name, exc_info=result)
            report.channels[channel.name] = ChannelReport(error=f"{result.__class__.__name__}: {result}")
        else:
            report.channels[channel.name] = result
    return report
