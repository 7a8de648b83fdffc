"""DICOM A-ASSOCIATE-RQ/AC: checked against what pynetdicom (and dcmtk) really send on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from collectors import Endpoint, Kind, MalformedPacket, PacketContext, ParseError, Truncated, dicom
from tests.peers import system_command

MODALITY = Endpoint(ip="10.30.0.21", port=50123)
PACS = Endpoint(ip="10.30.0.2", port=104)
CTX = PacketContext(ts=1_700_000_000.0, src=MODALITY, dst=PACS)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


def associate_rq(
    calling: str = "CT_SCANNER_01",
    called: str = "PACS_MAIN",
    syntaxes: tuple[str, ...] = (CT_IMAGE_STORAGE, VERIFICATION),
    *,
    user_identity: tuple[bytes, bytes] | None = None,
) -> bytes:
    """Encode an A-ASSOCIATE-RQ with pynetdicom's own PDU classes."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = []
    for index, uid in enumerate(syntaxes):
        context = build_context(uid)
        context.context_id = 2 * index + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 32768
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = "1.2.826.0.1.3680043.2.1143.107"
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = "MODALITY_1.0"
    items: list[object] = [max_length, impl_uid, impl_version]
    if user_identity is not None:
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field, identity.secondary_field = user_identity
        items.append(identity)
    primitive.user_information = items
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@dataclass
class Recorded:
    """Bytes one association put on the wire, per direction, PDU by PDU."""

    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)


def ct_dataset(patient_name: str) -> Dataset:
    """A tiny CT image data set naming a patient."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = "123456"
    ds.Modality = "CT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def record_association(port: int, called: str, *, store: Dataset | None = None) -> Recorded:
    """Associate from a pynetdicom SCU to ``127.0.0.1:port``, echo (and store), release; record it all."""
    recorded = Recorded()
    ae = AE(ae_title="CT_SCANNER_01")
    for context in (CTImageStorage, MRImageStorage, Verification):
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    handlers = [
        (evt.EVT_DATA_SENT, lambda event: recorded.sent.append(bytes(event.data))),
        (evt.EVT_DATA_RECV, lambda event: recorded.received.append(bytes(event.data))),
    ]
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=handlers)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        if store is not None:
            assert assoc.send_c_store(store).Status == 0
    finally:
        assoc.release()
        ae.shutdown()
    return recorded


@contextlib.contextmanager
def pynetdicom_scp(ae_title: str = "PACS_MAIN") -> Iterator[int]:
    """A pynetdicom storage SCP on a loopback port; yields the port."""
    ae = AE(ae_title=ae_title)
    for context in (CTImageStorage, MRImageStorage, Verification):
        ae.add_supported_context(context, ExplicitVRLittleEndian)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        ae.shutdown()


# --- against what pynetdicom encodes -----------------------------------------------------------------


def test_rq_as_pynetdicom_encodes_it() -> None:
    raw = associate_rq()
    assert dicom.is_pdu_start(raw)
    (obs,) = dicom.observe(raw, CTX)
    assert obs.kind is Kind.DICOM_ASSOCIATION
    assert obs.value == "CT_SCANNER_01 -> PACS_MAIN"
    assert obs.src == MODALITY
    assert obs.dst == PACS
    assert obs.attrs == {
        "pdu": "rq",
        "calling_ae": "CT_SCANNER_01",
        "called_ae": "PACS_MAIN",
        "impl_class_uid": "1.2.826.0.1.3680043.2.1143.107",
        "impl_version": "MODALITY_1.0",
        "max_length": 32768,
        "contexts": 2,
        "abstract_syntaxes": (CT_IMAGE_STORAGE, VERIFICATION),
    }


def test_user_identity_is_never_read() -> None:
    raw = associate_rq(user_identity=(b"drhouse", b"S3cret!"))
    assert b"S3cret!" in raw
    (obs,) = dicom.observe(raw, CTX)
    text = json.dumps(obs.to_dict())
    assert "drhouse" not in text
    assert "S3cret" not in text
    assert obs.attrs["impl_version"] == "MODALITY_1.0"


def test_abstract_syntaxes_are_bounded_and_distinct() -> None:
    uids = (*(f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, 41)), CT_IMAGE_STORAGE)
    (obs,) = dicom.observe(associate_rq(syntaxes=uids), CTX)
    assert obs.attrs["abstract_syntaxes"] == uids[: dicom.MAX_ABSTRACT_SYNTAXES]
    assert obs.attrs["contexts"] == len(uids)


def test_truncated_until_the_whole_pdu_is_there() -> None:
    raw = associate_rq()
    for cut in (0, 1, 5, 6, 9, 74, len(raw) - 1):
        with pytest.raises(Truncated):
            dicom.observe(raw[:cut], CTX)
    assert dicom.observe(raw + b"\x04\x00garbage", CTX)


def test_very_large_proposal_is_read_up_to_the_cap() -> None:
    # 128 presentation contexts (the most a PDU may propose), each with five transfer syntaxes.
    raw = associate_rq(syntaxes=tuple(f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(128)))
    assert len(raw) > dicom.MAX_READ_BYTES
    with pytest.raises(Truncated):
        dicom.observe(raw[: dicom.MAX_READ_BYTES - 1], CTX)
    (obs,) = dicom.observe(raw[: dicom.MAX_READ_BYTES + 10], CTX)
    assert obs.attrs["calling_ae"] == "CT_SCANNER_01"
    assert len(obs.attrs["abstract_syntaxes"]) == dicom.MAX_ABSTRACT_SYNTAXES
    assert obs.attrs["impl_class_uid"] is None  # the user information item comes last: not reached


# --- real associations on loopback ------------------------------------------------------------------


def test_real_association_with_pynetdicom() -> None:
    with pynetdicom_scp() as port:
        recorded = record_association(port, "PACS_MAIN")
    rq, ac = recorded.sent[0], recorded.received[0]
    (request,) = dicom.observe(rq, CTX)
    assert request.value == "CT_SCANNER_01 -> PACS_MAIN"
    assert request.attrs["impl_class_uid"] == PYNETDICOM_IMPLEMENTATION_UID
    assert request.attrs["impl_version"] == PYNETDICOM_IMPLEMENTATION_VERSION
    assert request.attrs["abstract_syntaxes"] == (CTImageStorage, MRImageStorage, Verification)
    reply_ctx = PacketContext(ts=2.0, src=PACS, dst=MODALITY)
    (accept,) = dicom.observe(ac, reply_ctx)
    assert accept.value == "CT_SCANNER_01 -> PACS_MAIN"
    assert accept.src == MODALITY  # reversed: src stays the calling side
    assert accept.dst == PACS
    assert accept.attrs["pdu"] == "ac"
    assert accept.attrs["accepted_contexts"] == 3
    assert accept.attrs["impl_class_uid"] == PYNETDICOM_IMPLEMENTATION_UID
    # Every other PDU of the association (P-DATA, release) gives nothing and is not read.
    for other in recorded.sent[1:] + recorded.received[1:]:
        assert not dicom.is_pdu_start(other)
        assert dicom.observe(other, CTX) == []


def test_p_data_with_a_patient_name_is_not_read() -> None:
    with pynetdicom_scp() as port:
        recorded = record_association(port, "PACS_MAIN", store=ct_dataset("DUPONT^JEANNE"))
    pdata = [pdu for pdu in recorded.sent if pdu[0] == 0x04 and b"DUPONT" in pdu]
    assert pdata, "the C-STORE data set travels in a P-DATA-TF PDU"
    for pdu in pdata:
        assert dicom.observe(pdu, CTX) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.skipif(system_command("storescp") is None, reason="dcmtk's storescp is not installed")
def test_real_association_with_dcmtk_storescp(tmp_path: Path) -> None:
    port = _free_port()
    scp = subprocess.Popen(
        [
            str(system_command("storescp")),
            "--aetitle",
            "DCMTK_PACS",
            "--output-directory",
            str(tmp_path),
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or scp.poll() is not None:
                pytest.fail("storescp did not start listening on loopback")
            time.sleep(0.05)
        recorded = record_association(port, "DCMTK_PACS")
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    (accept,) = dicom.observe(b"".join(recorded.received), PacketContext(ts=2.0, src=PACS, dst=MODALITY))
    assert accept.value == "CT_SCANNER_01 -> DCMTK_PACS"
    assert accept.attrs["impl_class_uid"].startswith("1.2.276.0.7230010.3.")  # OFFIS dcmtk root
    assert accept.attrs["impl_version"].startswith("OFFIS_DCMTK_")
    assert accept.attrs["accepted_contexts"] == 3


# --- edge cases and hostile input -------------------------------------------------------------------


def _with_titles(raw: bytes, called: bytes, calling: bytes) -> bytes:
    return raw[:10] + called.ljust(16, b" ")[:16] + calling.ljust(16, b" ")[:16] + raw[42:]


def test_ae_titles_with_odd_bytes() -> None:
    raw = _with_titles(associate_rq(), b"\x00PACS\x00\x00", b"  IRM\xe9 \x01X")
    (obs,) = dicom.observe(raw, CTX)
    assert obs.attrs["called_ae"] == "PACS"
    assert obs.attrs["calling_ae"] == "IRM\ufffd \\x01X"
    (obs,) = dicom.observe(_with_titles(associate_rq(), b"", b""), CTX)
    assert obs.value == "->"


@pytest.mark.parametrize("pdu_type", [0x03, 0x04, 0x05, 0x06, 0x07, 0xFF])
def test_other_pdu_types_give_nothing(pdu_type: int) -> None:
    assert dicom.observe(bytes([pdu_type]) + b"\x00\x00\x00\x00\x04", CTX) == []


@pytest.mark.parametrize(
    "header",
    [
        b"\x01\x01\x00\x00\x01\x00\x00\x01",  # reserved byte set
        b"\x01\x00\x00\x00\x00\x10\x00\x01",  # shorter than the fixed part
        b"\x01\x00\x7f\x00\x00\x00\x00\x01",  # absurd length
        b"\x01\x00\x00\x00\x01\x00\x00\x02",  # protocol version 2
    ],
)
def test_malformed_headers(header: bytes) -> None:
    assert not dicom.is_pdu_start(header + b"\x00\x00")
    with pytest.raises(MalformedPacket):
        dicom.observe(header + bytes(300), CTX)


def test_items_overrunning_the_pdu_are_ignored() -> None:
    raw = associate_rq()
    broken = raw[:76] + b"\xff\xff" + raw[78:]  # the application context item claims 64 KiB
    (obs,) = dicom.observe(broken, CTX)
    assert obs.attrs["contexts"] == 0
    assert obs.attrs["impl_class_uid"] is None


@settings(max_examples=400)
@given(
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"\x01\x00" + b)
    | st.tuples(st.integers(0, 400), st.binary(max_size=6), st.booleans()).map(
        lambda t: associate_rq()[: t[0]] + t[1] + associate_rq()[t[0] + (1 if t[2] else 0) :]
    )
)
def test_only_parse_errors_escape(data: bytes) -> None:
    dicom.is_pdu_start(data)
    with contextlib.suppress(ParseError):
        dicom.observe(data, CTX)


def test_is_pdu_start_rejects_common_payloads() -> None:
    for payload in (
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x0bMSH|",
        bytes(12),
    ):
        assert not dicom.is_pdu_start(payload)
