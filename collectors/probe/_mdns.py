"""mDNS / DNS-SD browsing with python-zeroconf, bound to the configured interfaces only.

A long-running ``AsyncServiceBrowser`` asks for ``_services._dns-sd._udp.local.`` (the list of
service types, RFC 6763 §9) and adds one browser per type it learns; each instance is resolved
(addresses, port, host name, TXT) into the same Observations the passive mDNS parser reports:
``mdns.service`` (the instance, attrs ``service_type``, ``target``, ``port``), ``mdns.txt`` (attrs
``txt``) and ``mdns.host`` (attrs ``addresses``), with the announcing device as ``src``.

Nothing is sent to a host: queries go to the link-local group 224.0.0.251, which every station
of the segment receives. So the gate decides per interface (:meth:`SafetyGate.link_denial`): its
subnet must be in the scope, and neither it nor the interface passive-only. Zeroconf schedules
its own queries (backing off to an hour); each one is charged to the global rate limit as it
leaves, and the probe log gets a row when browsing starts and one with the count when it stops.

Memory is bounded: at most ``MAX_TYPES`` browsers and ``MAX_INSTANCES`` resolved instances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Final

from collectors._observation import NO_ENDPOINT, Endpoint, Kind, Observation
from collectors.probe._arp import Interface
from collectors.probe._errors import Outcome
from collectors.probe._gate import SafetyGate, TokenBucket

_LOGGER = logging.getLogger(__name__)

SOURCE: Final = "probe.mdns"
SERVICE_TYPE_ENUMERATION: Final = "_services._dns-sd._udp.local."
MDNS_GROUP: Final = "224.0.0.251"
MDNS_PORT: Final = 5353
#: Service types browsed, and instances resolved, at most (the names come from the network).
MAX_TYPES: Final = 256
MAX_INSTANCES: Final = 4096
#: TXT strings and addresses kept per instance.
MAX_TXT: Final = 32
MAX_ADDRESSES: Final = 4
#: IGMP reports the kernel sends when a socket joins (or leaves) the mDNS group on an interface.
IGMP_PACKETS: Final = 2
#: Seconds a resolution waits for the instance's SRV, TXT and address records.
DEFAULT_RESOLVE_TIMEOUT: Final = 3.0

Emit = Callable[[Observation], None]
ZeroconfFactory = Callable[[list[str], TokenBucket, list[int]], Any]
"""Builds the ``AsyncZeroconf`` for interface addresses, charging its sends to the bucket (counted)."""


@cache
def _charged_zeroconf_class() -> type[Any]:
    """A Zeroconf that charges every packet it sends to the token bucket (built once, lazily)."""
    # Local import: zeroconf is only needed when browsing.
    from zeroconf import Zeroconf  # noqa: PLC0415

    class ChargedZeroconf(Zeroconf):
        """Zeroconf whose sends are paid for by the prober's rate limit."""

        bucket: TokenBucket
        sent: list[int]

        def async_send(
            self, out: Any, addr: Any = None, port: int = MDNS_PORT, *args: Any, **kwargs: Any
        ) -> None:
            transport = kwargs.get("transport") or (args[1] if len(args) > 1 else None)
            packets = len(out.packets()) * (1 if transport is not None else max(1, len(self.engine.senders)))
            self.bucket.charge(packets)
            self.sent[0] += packets
            super().async_send(out, addr, port, *args, **kwargs)

    return ChargedZeroconf


def default_zeroconf(addresses: list[str], bucket: TokenBucket, sent: list[int]) -> Any:
    """An ``AsyncZeroconf`` on ``addresses`` only (IPv4), its sends charged to ``bucket``."""
    from zeroconf import IPVersion  # noqa: PLC0415 - see _charged_zeroconf_class
    from zeroconf.asyncio import AsyncZeroconf  # noqa: PLC0415

    zeroconf = _charged_zeroconf_class()(interfaces=addresses, ip_version=IPVersion.V4Only)
    zeroconf.bucket = bucket
    zeroconf.sent = sent
    return AsyncZeroconf(zc=zeroconf)


def instance_observations(
    service_type: str,
    name: str,
    *,
    addresses: Sequence[str],
    port: int | None,
    server: str | None,
    txt: Sequence[str],
    agent: str = "lanterne",
    ts: float,
) -> list[Observation]:
    """The observations of one resolved instance, one set per address (the device is ``src``)."""
    sources = [Endpoint(ip=address, port=port) for address in addresses[:MAX_ADDRESSES]] or [NO_ENDPOINT]
    out: list[Observation] = []
    service_attrs: dict[str, object] = {"service_type": service_type.rstrip(".").lower()}
    if server:
        service_attrs["target"] = server.rstrip(".").lower()
    if port is not None:
        service_attrs["port"] = port
    strings = tuple(txt[:MAX_TXT])
    for src in sources:
        out.append(Observation(ts, Kind.MDNS_SERVICE, name, src, NO_ENDPOINT, service_attrs, SOURCE, agent))
        if strings:
            out.append(
                Observation(ts, Kind.MDNS_TXT, name, src, NO_ENDPOINT, {"txt": strings}, SOURCE, agent)
            )
        if server and addresses:
            attrs = {"addresses": tuple(addresses[:MAX_ADDRESSES])}
            out.append(Observation(ts, Kind.MDNS_HOST, server, src, NO_ENDPOINT, attrs, SOURCE, agent))
    return out


def _txt_strings(properties: dict[bytes, bytes | None]) -> list[str]:
    strings: list[str] = []
    for key, value in list(properties.items())[:MAX_TXT]:
        text = key.decode("utf-8", "replace")
        if value is not None:
            text += "=" + value.decode("utf-8", "replace")
        if text:
            strings.append(text)
    return strings


class MdnsBrowser:
    """Browses DNS-SD on the allowed interfaces and emits an Observation per resolved instance."""

    def __init__(
        self,
        emit: Emit,
        *,
        gate: SafetyGate,
        interfaces: Sequence[Interface],
        zeroconf_factory: ZeroconfFactory | None = None,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        agent: str = "lanterne",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.emit = emit
        self.gate = gate
        self.interfaces = tuple(interfaces)
        self.resolve_timeout = resolve_timeout
        self.agent = agent
        self._factory = zeroconf_factory or default_zeroconf
        self._clock = clock
        self._zeroconf: Any = None
        self._browsers: dict[str, Any] = {}
        self._known: dict[tuple[str, str], tuple[str, str]] = {}
        """(type, name) folded -> as announced: the instances resolved, refreshed by ``refresh``."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent = [0]
        self._bound: list[Interface] = []
        self.instances = 0
        """Instances resolved so far."""

    @property
    def running(self) -> bool:
        """Whether browsing started (some interface was allowed)."""
        return self._zeroconf is not None

    async def async_start(self) -> bool:
        """Start browsing on every interface the gate allows; False if none is."""
        for interface in self.interfaces:
            target = f"{MDNS_GROUP} via {interface.name}"
            reason = self.gate.link_denial(interface.name, interface.address)
            if reason is not None:
                self.gate.log(
                    MDNS_GROUP,
                    "mdns",
                    MDNS_PORT,
                    Outcome.DENIED,
                    f"mDNS browse on {interface.name}; {reason}",
                )
            elif self.gate.policy.dry_run:
                what = f"mDNS browse on {interface.name}: PTR {SERVICE_TYPE_ENUMERATION}, then each type"
                self.gate.log(MDNS_GROUP, "mdns", MDNS_PORT, Outcome.DRY_RUN, f"{what}; not sent")
            else:
                self._bound.append(interface)
                _LOGGER.debug("mDNS browsing on %s", target)
        if not self._bound:
            return False
        self._zeroconf = self._factory(
            [interface.address for interface in self._bound], self.gate.bucket, self._sent
        )
        self.gate.bucket.charge(IGMP_PACKETS * len(self._bound))
        for interface in self._bound:
            what = f"mDNS browse on {interface.name}: PTR {SERVICE_TYPE_ENUMERATION}, then each type found"
            self.gate.log(MDNS_GROUP, "mdns", MDNS_PORT, Outcome.OK, f"{what}; started")
        self._browse(SERVICE_TYPE_ENUMERATION)
        return True

    def _browse(self, service_type: str) -> None:
        from zeroconf.asyncio import AsyncServiceBrowser  # noqa: PLC0415 - see _charged_zeroconf_class

        self._browsers[service_type] = AsyncServiceBrowser(
            self._zeroconf.zeroconf, service_type, handlers=[self._on_change]
        )

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        """Zeroconf's handler (called on the loop): a new type to browse, or an instance to resolve."""
        del zeroconf
        if self._zeroconf is None:
            return
        key = (service_type.lower(), name.lower())
        if getattr(state_change, "name", "") == "Removed":
            self._known.pop(key, None)  # gone (goodbye packet): not refreshed; resolved again if back
            return
        if service_type == SERVICE_TYPE_ENUMERATION:
            found = name.lower()
            if found not in self._browsers and len(self._browsers) < MAX_TYPES and found.endswith(".local."):
                self._browse(found)
            return
        if key in self._known or len(self._known) >= MAX_INSTANCES:
            return
        self._known[key] = (service_type, name)
        self._start_resolution(service_type, name)

    def _start_resolution(self, service_type: str, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    def refresh(self) -> int:
        """Resolve every known instance again (a long-running browser's devices stay current).

        Zeroconf tells of an instance once, when it appears: a device that keeps announcing
        itself would otherwise never be seen again. Returns how many resolutions started (each
        query is charged to the gate's bucket like the first ones).
        """
        if self._zeroconf is None:
            return 0
        for service_type, name in list(self._known.values()):
            self._start_resolution(service_type, name)
        return len(self._known)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf import IPVersion  # noqa: PLC0415 - see _charged_zeroconf_class
        from zeroconf.asyncio import AsyncServiceInfo  # noqa: PLC0415

        info = AsyncServiceInfo(service_type, name)
        try:
            if not await info.async_request(self._zeroconf.zeroconf, self.resolve_timeout * 1000):
                return
        except Exception:  # zeroconf raises on a closing instance or hostile records: skip the instance
            _LOGGER.debug("mDNS resolution failed", exc_info=True)
            return
        properties = info.properties or {}
        observations = instance_observations(
            service_type,
            name,
            addresses=info.parsed_addresses(IPVersion.V4Only),
            port=info.port,
            server=info.server,
            txt=_txt_strings(properties),
            agent=self.agent,
            ts=self._clock(),
        )
        self.instances += 1
        for observation in observations:
            self.emit(observation)

    async def async_stop(self) -> None:
        """Stop browsing, wait for resolutions to end, close the sockets, record what was sent."""
        if self._zeroconf is None:
            return
        for browser in list(self._browsers.values()):
            await browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        zeroconf, self._zeroconf = self._zeroconf, None
        await zeroconf.async_close()
        self.gate.bucket.charge(IGMP_PACKETS * len(self._bound))
        names = ", ".join(interface.name for interface in self._bound)
        detail = (
            f"mDNS browse on {names} stopped: {self._sent[0]} query packets sent, "
            f"{len(self._browsers) - 1} service types, {self.instances} instances resolved"
        )
        self.gate.log(MDNS_GROUP, "mdns", MDNS_PORT, Outcome.OK, detail)


async def async_start(
    emit: Emit, *, gate: SafetyGate, interfaces: Sequence[Interface], **options: Any
) -> MdnsBrowser:
    """Start a long-running browser (the collector seam); ``await browser.async_stop()`` stops it.

    The daemon can keep one running between sweeps: ``emit`` feeds its aggregator, the gate's
    policy decides the interfaces, and its bucket pays for zeroconf's queries.
    """
    browser = MdnsBrowser(emit, gate=gate, interfaces=interfaces, **options)
    await browser.async_start()
    return browser
