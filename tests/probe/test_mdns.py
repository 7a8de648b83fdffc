"""mDNS / DNS-SD browsing: a real zeroconf responder on loopback, and the gate's say per interface."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from collectors import Observation
from collectors.probe import Interface, MdnsBrowser, instance_observations
from fingerprints import default_index
from tests.probe.helpers import gate, outcomes

LOOPBACK = Interface("lo", "127.0.0.1", ipaddress.IPv4Network("127.0.0.0/8"), "00:00:00:00:00:00")


def no_zeroconf(*_args: Any) -> Any:
    raise AssertionError("zeroconf was started where the gate said no")


def test_a_responder_on_loopback_is_browsed_resolved_and_identified() -> None:
    found: list[Observation] = []
    the_gate, records = gate(("127.0.0.0/8",))

    async def main() -> None:
        responder = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        services = [
            AsyncServiceInfo(
                "_dicom._tcp.local.",
                "HOROS-WS1._dicom._tcp.local.",
                addresses=[bytes([127, 0, 0, 1])],
                port=11112,
                properties={"path": "/", "aet": "HOROS_WS1"},
                server="horos-ws1.local.",
            ),
            AsyncServiceInfo(
                "_http._tcp.local.",
                "Pump fleet UI._http._tcp.local.",
                addresses=[bytes([127, 0, 0, 1])],
                port=8080,
                server="horos-ws1.local.",
            ),
        ]
        for info in services:
            # Cooperating responders skip the conflict probing (seconds) that a lab has no need for.
            await (await responder.async_register_service(info, cooperating_responders=True))
        browser = MdnsBrowser(found.append, gate=the_gate, interfaces=[LOOPBACK], agent="test")
        try:
            assert await browser.async_start()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len({obs.value for obs in found if str(obs.kind) == "mdns.service"}) == 2:
                    break
        finally:
            await browser.async_stop()
            await responder.async_unregister_all_services()
            await responder.async_close()

    asyncio.run(main())
    services = {obs.value: obs for obs in found if str(obs.kind) == "mdns.service"}
    dicom = services["horos-ws1._dicom._tcp.local"]
    assert dicom.attrs == {"service_type": "_dicom._tcp.local", "target": "horos-ws1.local", "port": 11112}
    assert (dicom.src.ip, dicom.src.port, dicom.source, dicom.agent) == (
        "127.0.0.1",
        11112,
        "probe.mdns",
        "test",
    )
    assert "pump fleet ui._http._tcp.local" in services
    txt = [obs for obs in found if str(obs.kind) == "mdns.txt" and obs.value == dicom.value]
    assert set(txt[0].attrs["txt"]) == {"path=/", "aet=HOROS_WS1"}
    index = default_index()
    assert "dicom-bonjour-node" in {d.product_id for d in index.assess_all(index.match(dicom))}
    started, stopped = records
    assert (started.target, started.protocol, started.port, str(started.outcome)) == (
        "224.0.0.251",
        "mdns",
        5353,
        "ok",
    )
    assert "2 service types, 2 instances resolved" in stopped.detail
    assert the_gate.bucket.packets >= 1  # zeroconf's queries were charged to the rate limit


def test_no_browsing_on_a_passive_interface_or_outside_the_scope() -> None:
    other = Interface("eth9", "10.99.0.1", ipaddress.IPv4Network("10.99.0.0/24"), "02:00:00:00:00:09")
    the_gate, records = gate(("127.0.0.0/8",), passive_interfaces=frozenset({"lo"}))
    browser = MdnsBrowser(
        lambda obs: None, gate=the_gate, interfaces=[LOOPBACK, other], zeroconf_factory=no_zeroconf
    )
    assert not asyncio.run(browser.async_start())
    assert outcomes(records) == ["denied", "denied"]
    assert "passive-only interface (lo)" in records[0].detail
    assert "the subnet of eth9 is outside the allowed scope" in records[1].detail
    asyncio.run(browser.async_stop())  # nothing to stop: no error


def test_dry_run_browses_nothing() -> None:
    the_gate, records = gate(("127.0.0.0/8",), dry_run=True)
    browser = MdnsBrowser(
        lambda obs: None, gate=the_gate, interfaces=[LOOPBACK], zeroconf_factory=no_zeroconf
    )
    assert not asyncio.run(browser.async_start())
    assert outcomes(records) == ["dry_run"]


def test_instance_observations_are_bounded_and_need_no_address() -> None:
    found = instance_observations(
        "_ipp._tcp.local.",
        "Printer._ipp._tcp.local.",
        addresses=[f"10.0.0.{i}" for i in range(10)],
        port=631,
        server="printer.local.",
        txt=[f"k{i}=v" for i in range(100)],
        ts=1.0,
    )
    assert len({obs.src.ip for obs in found}) == 4
    assert len(found[1].attrs["txt"]) == 32
    (alone,) = instance_observations(
        "_x._tcp.local.", "a._x._tcp.local.", addresses=[], port=None, server=None, txt=[], ts=1.0
    )
    assert alone.src.ip is None
    assert alone.attrs == {"service_type": "_x._tcp.local"}
