"""Conformance with tshark on real captures nobody here wrote.

For every capture of ``../shared/corpus/pcap`` that has a ``*.truth.json`` (tshark 4.0.17's view),
the distinct names, SNIs, hosts, user agents, DHCP fields, SNMP sysDescr values and HL7 message
types that Lanterne extracts must equal tshark's. Every difference must be listed, with its
reason, in ``tshark_differences.yaml`` beside this file; a listed difference that no longer occurs
fails too, so the list stays short and true.

The mapping of each truth key onto Observations lives with each protocol family
(``fields_*.py``): ``FIELDS`` (what Lanterne extracted), ``NORMALISE`` (tshark's value in the same
form) and ``DERIVED`` (an expected set computed from the whole truth record).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors import DecodeStats, Observation, decode_file
from tests.conformance import fields_dhcp_snmp_ssdp, fields_dns, fields_http_hl7, fields_tls
from tests.corpus import PCAP_DIR, captures_with_truth, truth_of

DIFFERENCES_FILE = Path(__file__).with_name("tshark_differences.yaml")
FAMILIES = (fields_dns, fields_tls, fields_dhcp_snmp_ssdp, fields_http_hl7)

Extractor = Callable[[list[Observation]], set[str]]


def _registry() -> tuple[dict[str, Extractor], dict[str, Callable[[str], str | None]], dict[str, Any]]:
    fields: dict[str, Extractor] = {}
    normalise: dict[str, Callable[[str], str | None]] = {}
    derived: dict[str, Any] = {}
    for family in FAMILIES:
        for key, extractor in family.FIELDS.items():
            assert key not in fields, f"truth key {key} mapped twice"
            fields[key] = extractor
        normalise.update(getattr(family, "NORMALISE", {}))
        derived.update(getattr(family, "DERIVED", {}))
    return fields, normalise, derived


FIELDS, NORMALISE, DERIVED = _registry()


@cache
def _allowed() -> dict[tuple[str, str, str, str], str]:
    """(capture, field, side, value) → reason, from the committed list of known differences."""
    entries = yaml.safe_load(DIFFERENCES_FILE.read_text(encoding="utf-8")) or []
    allowed: dict[tuple[str, str, str, str], str] = {}
    for entry in entries:
        assert set(entry) == {"capture", "field", "value", "side", "reason"}, f"bad entry {entry}"
        assert entry["side"] in {"tshark_only", "lanterne_only"}, entry
        assert entry["field"] in FIELDS, f"unknown field in {entry}"
        assert len(str(entry["reason"])) >= 20, f"a difference needs a real reason: {entry}"
        key = (entry["capture"], entry["field"], entry["side"], str(entry["value"]))
        assert key not in allowed, f"listed twice: {key}"
        allowed[key] = entry["reason"]
    return allowed


def _expected(key: str, truth: dict[str, Any]) -> set[str]:
    if key in DERIVED:
        return set(DERIVED[key](truth))
    normalise = NORMALISE.get(key, lambda value: value)
    values = (normalise(str(value)) for value in truth.get(key, []))
    return {value for value in values if value is not None}


def _differences(capture: Path) -> tuple[list[tuple[str, str, str, str]], DecodeStats]:
    stats = DecodeStats()
    observations = list(decode_file(capture, stats=stats, strict=True))
    truth = truth_of(capture)
    name = capture.relative_to(PCAP_DIR).as_posix()
    found: list[tuple[str, str, str, str]] = []
    for key, extractor in FIELDS.items():
        expected = _expected(key, truth)
        got = extractor(observations)
        found += [(name, key, "tshark_only", value) for value in sorted(expected - got)]
        found += [(name, key, "lanterne_only", value) for value in sorted(got - expected)]
    return found, stats


CAPTURES = list(captures_with_truth())


@pytest.mark.corpus
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.relative_to(PCAP_DIR).as_posix())
def test_capture_matches_tshark(capture: Path) -> None:
    """What Lanterne extracts from this capture equals tshark's view, up to the listed differences."""
    found, stats = _differences(capture)
    assert stats.parser_errors == 0
    unexplained = [diff for diff in found if diff not in _allowed()]
    assert not unexplained, "differences with tshark not listed in tshark_differences.yaml:\n" + "\n".join(
        f"  {c} {f} {side}: {v!r}" for c, f, side, v in unexplained
    )


@pytest.mark.corpus
def test_listed_differences_still_occur() -> None:
    """Every listed difference is real today: a fixed one must leave the list."""
    if not CAPTURES:
        pytest.skip(f"the shared corpus is absent ({PCAP_DIR}): nothing to compare with tshark")
    occurring: set[tuple[str, str, str, str]] = set()
    listed_captures = {key[0] for key in _allowed()}
    for capture in CAPTURES:
        if capture.relative_to(PCAP_DIR).as_posix() in listed_captures:
            occurring.update(_differences(capture)[0])
    stale = sorted(set(_allowed()) - occurring)
    assert not stale, "listed differences that no longer occur (remove them):\n" + "\n".join(map(str, stale))


@pytest.mark.corpus
def test_corpus_is_compared_at_all() -> None:
    """Guard against a harness that compares nothing: the corpus has values for every family."""
    if not CAPTURES:
        pytest.skip(f"the shared corpus is absent ({PCAP_DIR}): nothing to compare with tshark")
    nonempty = {key for capture in CAPTURES for key in FIELDS if _expected(key, truth_of(capture))}
    for key in ("dns_qnames", "mdns_qnames", "llmnr_qnames", "nbns_names", "tls_sni", "quic_sni"):
        assert key in nonempty, key
    for key in (
        "http_hosts",
        "http_user_agents",
        "dhcp_hostnames",
        "dhcp_vendor_classes",
        "dhcp_opt55_lists",
    ):
        assert key in nonempty, key
    assert len(CAPTURES) >= 150
