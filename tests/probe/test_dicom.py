"""DICOM C-ECHO probe: a fake AE for every outcome, and a real pynetdicom SCP on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.sop_class import Verification

from collectors import Kind
from collectors.probe import (
    DicomProber,
    EchoAnswer,
    ProbeError,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
    check_ae_title,
    echo_observation,
)
from fingerprints import default_index
from tests.probe.helpers import gate, outcomes

HOST = "127.0.0.40"


@pytest.fixture(autouse=True)
def _threads_end() -> Iterator[None]:
    """No association thread may outlive its test."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.02)
    assert not set(threading.enumerate()) - before


@dataclass
class FakeAssociation:
    established: bool = False
    rejected: bool = False
    aborted: bool = False
    released: bool = False
    acceptor: Any = None

    @property
    def is_established(self) -> bool:
        return self.established

    @property
    def is_rejected(self) -> bool:
        return self.rejected

    @property
    def is_aborted(self) -> bool:
        return self.aborted

    def send_c_echo(self) -> Any:
        return type("Status", (), {"Status": 0x0000})()

    def release(self) -> None:
        self.released = True


@dataclass
class FakeAE:
    title: str
    association: FakeAssociation
    connects: bool = True
    contexts: list[str] = field(default_factory=list)

    def add_requested_context(self, uid: str) -> None:
        self.contexts.append(uid)

    def associate(self, host: str, port: int, *, ae_title: str, evt_handlers: list[Any]) -> FakeAssociation:
        assert self.contexts == ["1.2.840.10008.1.1"]  # Verification only
        assert (self.title, ae_title) == ("LANTERNE", "ANY-SCP")
        if self.connects:
            for _event, handler in evt_handlers:
                handler(None)
        return self.association


def run(association: FakeAssociation, **options: Any) -> tuple[list[Any], list[Any]]:
    connects = options.pop("connects", True)
    port_error: ProbeError | None = options.pop("port_error", None)
    the_gate, records = gate(**options)

    async def port_check(host: str, port: int, seconds: float) -> None:
        assert (host, port, seconds) == (HOST, 11112, the_gate.policy.timeout)
        if port_error is not None:
            raise port_error

    prober = DicomProber(
        the_gate,
        ports=(11112,),
        ae_factory=lambda title: FakeAE(title, association, connects),
        port_check=port_check,
    )
    return asyncio.run(prober.async_probe(HOST, local_ip="127.0.0.1")), records


def test_an_accepted_association_reports_the_acceptor() -> None:
    acceptor = type(
        "Acceptor",
        (),
        {
            "implementation_class_uid": "1.2.276.0.7230010.3.0.3.6.7",
            "implementation_version_name": "OFFIS_DCMTK_367",
            "maximum_length": 16384,
        },
    )()
    association = FakeAssociation(established=True, acceptor=acceptor)
    found, records = run(association)
    (obs,) = found
    assert association.released
    assert (obs.kind, obs.value, obs.src.ip, obs.dst.ip, obs.dst.port) == (
        Kind.DICOM_ASSOCIATION,
        "LANTERNE -> ANY-SCP",
        "127.0.0.1",
        HOST,
        11112,
    )
    assert obs.attrs["pdu"] == "ac"
    assert obs.attrs["echo_status"] == 0
    index = default_index()
    (detection,) = index.assess_all(index.match(obs))
    assert detection.product_id == "dcmtk"
    assert [e.side for e in detection.evidence] == ["dst", "dst"]  # the acceptor is the one identified
    assert outcomes(records) == ["ok"]
    assert records[0].detail.startswith(
        "A-ASSOCIATE-RQ LANTERNE -> ANY-SCP (Verification), C-ECHO-RQ, A-RELEASE-RQ; association accepted, "
        "C-ECHO status 0x0000"
    )


@pytest.mark.parametrize(
    ("association", "options", "outcome"),
    [
        (FakeAssociation(rejected=True), {}, "refused"),
        (FakeAssociation(aborted=True), {}, "malformed"),
        (FakeAssociation(), {"port_error": ProbeRefused("connection refused (TCP reset)")}, "refused"),
        (FakeAssociation(), {"port_error": ProbeTimeout("no answer"), "retries": 0}, "timeout"),
        (FakeAssociation(), {"port_error": ProbeUnreachable("host unreachable")}, "unreachable"),
        (FakeAssociation(), {"connects": False}, "refused"),  # closed between the check and the association
        (FakeAssociation(), {"retries": 0}, "timeout"),  # connected, no A-ASSOCIATE answer
    ],
)
def test_failures_are_clear_outcomes(
    association: FakeAssociation, options: dict[str, Any], outcome: str
) -> None:
    found, records = run(association, **options)
    assert found == []
    assert outcomes(records) == [outcome]


def test_ae_titles_are_checked() -> None:
    assert check_ae_title(" PACS_1 ") == "PACS_1"
    for bad in ("", "X" * 17, "A\\B", "CAF\u00c9", "A\x00"):
        with pytest.raises(ValueError, match="AE title"):
            check_ae_title(bad)


def test_echo_observation_keeps_unknown_fields_out() -> None:
    obs = echo_observation(EchoAnswer(None, None, None, None), HOST, 104, calling="A", called="B", ts=1.0)
    assert "impl_class_uid" not in {k for k, v in obs.attrs.items() if v is not None}
    assert obs.src.ip is None  # our own address unknown: no endpoint for us


def test_a_real_scp_on_loopback() -> None:
    scp = AE(ae_title="LOOPBACK-SCP")
    scp.add_supported_context(Verification)
    # The probe's port check connects and closes: the SCP's acceptor thread waits for a PDU until this.
    scp.acse_timeout = scp.network_timeout = 1
    server = scp.start_server(("127.0.0.1", 0), block=False)
    port = server.server_address[1]
    try:
        the_gate, records = gate()
        prober = DicomProber(the_gate, ports=(port,))
        found = asyncio.run(prober.async_probe("127.0.0.1"))
    finally:
        server.shutdown()
    (obs,) = found
    assert (obs.attrs["impl_class_uid"], obs.attrs["impl_version"]) == (
        PYNETDICOM_IMPLEMENTATION_UID,
        PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    index = default_index()
    assert "pynetdicom" in {d.product_id for d in index.assess_all(index.match(obs))}
    assert outcomes(records) == ["ok"]


def test_a_closed_port_on_loopback_is_refused_without_pynetdicom() -> None:
    the_gate, records = gate(timeout=2.0)

    def no_association(title: str) -> Any:
        raise AssertionError("a closed port reached pynetdicom")

    found = asyncio.run(DicomProber(the_gate, ports=(1,), ae_factory=no_association).async_probe("127.0.0.1"))
    assert found == []
    assert outcomes(records) == ["refused"]
    assert "connection refused (TCP reset)" in records[0].detail
