"""The bundled demo capture: what its generator writes, small, and every scenario signal decodes."""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from pathlib import Path

import pytest

from agent.demo import CAPTURE, bundled_file
from agent.demo import generate as gen
from collectors import DecodeStats, Kind, Observation, decode_file

STALE = "agent/demo/hospital.pcap is stale: run `python -m agent.demo.generate agent/demo/hospital.pcap`"


@pytest.fixture(scope="module")
def generated() -> bytes:
    return gen.write_pcap(gen.build())


@pytest.fixture(scope="module")
def decoded() -> tuple[list[Observation], DecodeStats]:
    stats = DecodeStats()
    return list(decode_file(bundled_file(CAPTURE), agent="demo", stats=stats)), stats


def test_committed_capture_is_what_the_generator_writes(generated: bytes) -> None:
    committed = bundled_file(CAPTURE).read_bytes()
    assert hashlib.sha256(committed).hexdigest() == hashlib.sha256(generated).hexdigest(), STALE


def test_generator_command_line_is_deterministic(tmp_path: Path, generated: bytes) -> None:
    out = tmp_path / "h.pcap"
    assert gen.main([str(out)]) == 0
    assert out.read_bytes() == generated


def test_capture_is_small(generated: bytes) -> None:
    assert len(generated) < 2 * 1024 * 1024
    packets = 0
    pos = 24
    while pos < len(generated):
        (caplen,) = struct.unpack_from("<I", generated, pos + 8)
        pos += 16 + caplen
        packets += 1
    assert pos == len(generated)
    assert 1000 < packets < 5000


def test_capture_decodes_cleanly(decoded: tuple[list[Observation], DecodeStats]) -> None:
    _, stats = decoded
    assert stats.malformed == 0
    assert stats.parser_errors == 0
    assert stats.truncated_files == 0


def _values(observations: list[Observation], kind: Kind) -> set[str]:
    return {obs.value for obs in observations if obs.kind is kind}


def test_every_scenario_signal_is_in_the_capture(decoded: tuple[list[Observation], DecodeStats]) -> None:
    observations, _ = decoded
    sni = _values(observations, Kind.TLS_SNI)
    assert {"chatgpt.com", "eu.api.nabla.com", "api.deepl.com", "api.mistral.ai", "app.gleamer.ai"} <= sni
    assert {"ollama.com", "registry.ollama.ai"} <= sni
    assert _values(observations, Kind.QUIC_SNI) == {"chatgpt.com"}
    assert _values(observations, Kind.SNMP_SYSOBJECTID) == {
        "1.3.6.1.4.1.19816.1.1.2",
        "1.3.6.1.4.1.22447.1.2.5",
    }
    assert {"mon-usic-03", "pse-rea-12"} <= _values(observations, Kind.DHCP_HOSTNAME)
    assert {"IntelliVue-MX750", "BBraun-SpaceCom"} <= _values(observations, Kind.DHCP_VENDOR_CLASS)
    assert _values(observations, Kind.HL7_HEADER) == {"ADT^A01", "ACK^A01"}
    associations = [obs for obs in observations if obs.kind is Kind.DICOM_ASSOCIATION]
    assert {(obs.attrs["pdu"], obs.attrs["impl_version"]) for obs in associations} == {
        ("rq", gen.PYNETDICOM_VERSION),
        ("ac", gen.PYNETDICOM_VERSION),
        ("rq", gen.PACS_VERSION),
        ("ac", gen.PACS_VERSION),
    }
    # The device that says nothing but its OUI: only DHCP, no host name, no vendor class.
    unknown = {obs.kind for obs in observations if obs.src.mac == gen.UNKNOWN_DEVICE.mac}
    assert unknown == {Kind.DHCP_FINGERPRINT, Kind.DHCP_CLIENT_ID, Kind.DHCP_LEASE}


def test_every_observation_carries_its_vlan(decoded: tuple[list[Observation], DecodeStats]) -> None:
    observations, _ = decoded
    vlans = Counter(obs.attrs.get("vlan") for obs in observations)
    assert set(vlans) == set(gen.SERVICES)


def test_only_synthetic_addresses(decoded: tuple[list[Observation], DecodeStats]) -> None:
    """RFC 1918 inside, RFC 5737 documentation ranges outside, broadcast and multicast."""
    allowed = ("10.42.", "192.0.2.", "198.51.100.", "203.0.113.", "255.255.255.255", "239.255.255.250")
    for obs in decoded[0]:
        for ip in (obs.src.ip, obs.dst.ip):
            assert ip is None or ip.startswith(allowed), obs


def test_fictitious_patient_and_secrets_never_decoded(decoded: tuple[list[Observation], DecodeStats]) -> None:
    """The capture carries them (HL7 PID, DICOM data set, LLM prompt, SNMP community); no Observation does."""
    raw = bundled_file(CAPTURE).read_bytes()
    secrets = [*gen.FICTITIOUS_PATIENT, gen.SNMP_COMMUNITY.decode()]
    for secret in secrets:
        assert secret.encode() in raw
    text = repr([obs.to_dict() for obs in decoded[0]])
    for secret in secrets:
        assert secret not in text
