"""HL7 v2 over MLLP: the MSH segment is read, every other segment is left unread."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import Endpoint, Kind, MalformedPacket, PacketContext, ParseError, Truncated, decode_file, hl7
from tests.collectors.test_http import tcp_streams
from tests.conformance.fields_http_hl7 import DERIVED, FIELDS
from tests.corpus import require_corpus, truth_of

SENDER = Endpoint(ip="10.20.0.5", port=40000)
RECEIVER = Endpoint(ip="10.20.0.9", port=2575)
CTX = PacketContext(ts=1_700_000_000.0, src=SENDER, dst=RECEIVER)

MSH = "MSH|^~\\&|LAB_APP|CHU-NORD^1.2.250.1.1^ISO|EPIC|HOSP|20240101120000||ADT^A01^ADT_A01|M1|P|2.5.1^FRA"
PID = "PID|1||123456^^^HOSP^PI||DUPONT^JEANNE||19850101|F"


def mllp(*segments: str, terminator: str = "\r", end: bytes = b"\x1c\r") -> bytes:
    """Frame segments in MLLP."""
    return b"\x0b" + "".join(s + terminator for s in segments).encode("latin-1") + end


def test_msh_fields_and_message_type() -> None:
    (obs,) = hl7.observe(mllp(MSH, "EVN|A01|20240101120000", PID), CTX)
    assert obs.kind is Kind.HL7_HEADER
    assert obs.value == "ADT^A01"
    assert obs.attrs == {
        "sending_app": "LAB_APP",
        "sending_facility": "CHU-NORD^1.2.250.1.1^ISO",
        "receiving_app": "EPIC",
        "receiving_facility": "HOSP",
        "version": "2.5.1",
        "processing_id": "P",
    }
    assert obs.src == SENDER
    assert obs.dst == RECEIVER


def test_patient_segments_are_never_kept() -> None:
    (obs,) = hl7.observe(mllp(MSH, PID), CTX)
    text = json.dumps(obs.to_dict())
    for secret in ("DUPONT", "JEANNE", "123456", "19850101", "PID"):
        assert secret not in text


def test_bytes_past_msh_are_not_decoded() -> None:
    # Invalid UTF-8 and garbage after the MSH terminator change nothing: they are not read.
    clean = hl7.observe(mllp(MSH, PID), CTX)
    dirty = hl7.observe(b"\x0b" + MSH.encode() + b"\r\xff\xfe\x00PID|\x80\x81" * 500, CTX)
    assert clean == dirty


def test_ack_without_event_and_short_msh() -> None:
    ack = "MSH|^~\\&|RECV_APP|RECV_FAC|SEND_APP|SEND_FAC|2018||ACK|1|P|2.3"
    (obs,) = hl7.observe(mllp(ack, "MSA|AA|1"), CTX)
    assert obs.value == "ACK"
    assert obs.attrs["version"] == "2.3"
    (obs,) = hl7.observe(mllp("MSH|^~\\&|A|B|C|D|2018||ORU^R01"), CTX)
    assert obs.value == "ORU^R01"
    assert obs.attrs["version"] is None


def test_other_separators_are_honoured() -> None:
    (obs,) = hl7.observe(mllp("MSH#*~\\&#APP*X#FAC#RAPP#RFAC#2024##ORM*O01#1#T#2.4"), CTX)
    assert obs.value == "ORM^O01"
    assert obs.attrs["sending_app"] == "APP^X"
    assert obs.attrs["processing_id"] == "T"


def test_lf_terminators_and_missing_end_block() -> None:
    (obs,) = hl7.observe(mllp(MSH, PID, terminator="\n", end=b""), CTX)
    assert obs.value == "ADT^A01"
    assert "DUPONT" not in json.dumps(obs.to_dict())
    # A single-segment message whose MSH ends at the MLLP end block.
    (obs,) = hl7.observe(b"\x0b" + MSH.encode() + b"\x1c\r", CTX)
    assert obs.attrs["version"] == "2.5.1"


def test_latin1_facility() -> None:
    (obs,) = hl7.observe(b"\x0bMSH|^~\\&|APP|H\xd4PITAL|R|F|2024||ADT^A04|1|P|2.5\r", CTX)
    assert obs.attrs["sending_facility"] == "HÔPITAL"


def test_truncated_until_the_msh_terminator_then_malformed_past_the_cap() -> None:
    raw = mllp(MSH, PID)
    for cut in (1, 3, 4, 10, len(MSH)):
        with pytest.raises(Truncated):
            hl7.observe(raw[:cut], CTX)
    assert hl7.observe(raw[: len(MSH) + 2], CTX)  # the terminator is enough: PID not awaited
    with pytest.raises(MalformedPacket):
        hl7.observe(b"\x0bMSH|^~\\&|" + b"A" * hl7.MAX_MSH_BYTES, CTX)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0bMSH\r",
        b"\x0bMSH|\r",
        b"\x0bMSH||A|B|C|D|E||ADT^A01\r",  # no encoding characters
        b"\x0bMSH|^~\\&|A|B|C|D\r",  # no MSH-9
        b"\x0bMSH|^~\\&|A|B|C|D|E||^A01\r",  # empty message type
        b"\x0bMSH|^~\\&|A|B|C|D|E||\x0c^A01\r",
        b"\x0bPID|1\r",
        b"MSH|^~\\&|A|B|C|D|E||ADT^A01\r",
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        hl7.observe(data, CTX)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"\x0bMSH|^~", True), (b"\x0bMSH", True), (b"\x0bPID|", False), (b"MSH|^~", False), (b"", False)],
)
def test_is_mllp_start(data: bytes, expected: bool) -> None:
    assert hl7.is_mllp_start(data) is expected


@settings(max_examples=500)
@given(
    st.binary(max_size=200).map(lambda b: b"\x0bMSH" + b)
    | st.binary(max_size=64)
    | st.tuples(st.integers(0, 140), st.binary(max_size=6)).map(
        lambda t: mllp(MSH, PID)[: t[0]] + t[1] + mllp(MSH, PID)[t[0] + 1 :]
    )
)
def test_only_parse_errors_escape(data: bytes) -> None:
    hl7.is_mllp_start(data)
    with contextlib.suppress(ParseError):
        hl7.observe(data, CTX)


@pytest.mark.corpus
def test_ndpi_hl7_capture_matches_tshark() -> None:
    corpus = require_corpus()
    capture = corpus / "pcap" / "ndpi" / "hl7.pcap"
    observations = list(decode_file(capture))
    assert FIELDS["hl7_message_types"](observations) == DERIVED["hl7_message_types"](truth_of(capture))
    assert FIELDS["hl7_message_types"](observations) == {"ADT^A01", "ACK"}
    adt = next(o for o in observations if o.value == "ADT^A01")
    assert adt.attrs["sending_app"] == "SENDING_APPLICATION"
    assert adt.attrs["receiving_facility"] == "RECEIVING_FACILITY"
    assert adt.dst.port == 6661  # recognised by content: tshark needed -d tcp.port==6661,hl7
    dump = json.dumps([o.to_dict() for o in observations])
    for secret in ("MOUSE", "MICKEY", "MINNIE", "Penicillin", "135769", "19281118"):
        assert secret not in dump
    # Each direction's first message is parsed straight from its reassembled bytes too.
    streams = [data for _, _, data in tcp_streams(capture) if hl7.is_mllp_start(data)]
    assert sorted(hl7.observe(d, CTX)[0].value for d in streams) == ["ACK", "ADT^A01"]
