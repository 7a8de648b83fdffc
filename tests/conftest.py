"""Test-wide guards (nothing in a unit test may put a packet on a network) and shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from fingerprints import Catalog, load_catalog
from tests.agent.store_backends import session_on
from tests.store.dburl import BACKENDS


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The shipped catalogue, loaded once."""
    return load_catalog()


@pytest.fixture(params=BACKENDS)
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A session on an empty, migrated database: SQLite, then PostgreSQL."""
    with session_on(request.param, tmp_path_factory) as session:
        yield session


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
