"""Test-wide guards: nothing in a unit test may put a packet on a network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_scapy_traffic(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any unit test that would make scapy send (or ARP for a MAC it was not given).

    Lab tests (marked ``lab``) build their own network namespaces and may send there.
    """
    if request.node.get_closest_marker("lab") is not None:
        return
    import scapy.layers.l2 as l2  # scapy's import has side effects: only when a test runs
    import scapy.sendrecv as sendrecv

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a unit test tried to send packets with scapy: give every MAC and IP")

    for name in ("send", "sendp", "sr", "sr1", "srp", "srp1", "sndrcv", "sniff"):
        monkeypatch.setattr(sendrecv, name, refuse)
    monkeypatch.setattr(l2, "getmacbyip", refuse)
