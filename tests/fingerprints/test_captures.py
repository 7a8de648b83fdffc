"""What the real captures of the corpus detect: golden output, checked by hand once.

Every capture of ``../shared/corpus/pcap`` is decoded by ``collectors.decode_file``, matched
against the shipped catalogue and Recog, and assessed per endpoint (its MAC when seen, else its
IP). The golden file lists, per capture, the detections worth a person's look (named products,
and unknowns that look like AI or medical devices) and the catalogue evidence that named nothing
(marketing visits, shared infrastructure, OUIs). Regenerate it after a deliberate change with
``LANTERNE_UPDATE_GOLDEN=1 pytest tests/fingerprints/test_captures.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import collectors
from collectors import Endpoint, Kind, Observation
from fingerprints import Evidence, Index, default_index
from fingerprints._vocabulary import SHARED_ZONES, HostRole
from tests.corpus import PCAP_DIR, corpus_pcaps, require_corpus

GOLDEN = Path(__file__).resolve().parent / "golden" / "capture_detections.json"
UPDATE = os.environ.get("LANTERNE_UPDATE_GOLDEN") == "1"

pytestmark = pytest.mark.corpus


def _decode_file() -> Any:
    """``collectors.decode_file``, or a skip while the maintainer has not written it."""
    decode_file = getattr(collectors, "decode_file", None)
    if decode_file is None:
        pytest.skip("collectors.decode_file does not exist yet: the capture golden test needs the decoder")
    return decode_file


def _scope(observation: Observation, item: Evidence) -> str:
    endpoint = observation.src if item.side == "src" else observation.dst
    return endpoint.mac or endpoint.ip or "?"


def _under_shared_zone(value: str) -> bool:
    labels = value.split(".")
    return any(".".join(labels[i:]) in SHARED_ZONES for i in range(len(labels) - 1))


def _capture_report(index: Index, path: Path) -> dict[str, Any]:
    """The detections of one capture, per endpoint, in a stable order."""
    decode_file = _decode_file()
    by_scope: dict[str, list[Evidence]] = defaultdict(list)
    for observation in decode_file(path):
        for item in index.match(observation):
            by_scope[_scope(observation, item)].append(item)
    detections: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    for scope in sorted(by_scope):
        evidence = by_scope[scope]
        named_rules: set[str] = set()
        for detection in index.assess_all(evidence):
            if detection.identified:
                named_rules.update(item.rule.rule_id for item in detection.evidence)
                # The acceptance criterion: shared infrastructure alone never names a product.
                specific = [item for item in detection.evidence if not _under_shared_zone(item.value)]
                assert index.assess(specific) is not None
                assert any(item.rule.decisive for item in specific), detection
            if detection.of_interest:
                detections.append(
                    {
                        "endpoint": scope,
                        "product": detection.product_id,
                        "vendor": detection.vendor,
                        "category": None if detection.category is None else str(detection.category),
                        "confidence": detection.confidence,
                        "rules": sorted({item.rule.rule_id for item in detection.evidence}),
                    }
                )
        unnamed = {
            (item.rule.rule_id, item.value)
            for item in evidence
            if item.rule.origin == "catalog" and item.rule.rule_id not in named_rules
        }
        withheld.extend({"endpoint": scope, "rule": rule, "value": value} for rule, value in sorted(unnamed))
    return {"detections": detections, "withheld": withheld}


def test_captures_match_the_golden_output() -> None:
    require_corpus()
    index = default_index()
    report = {path.relative_to(PCAP_DIR).as_posix(): _capture_report(index, path) for path in corpus_pcaps()}
    if UPDATE or not GOLDEN.exists():
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"{GOLDEN.name} did not exist: written now, review it and commit it")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert report == expected, "the detections changed: review, then LANTERNE_UPDATE_GOLDEN=1 to accept"


#: Shared-infrastructure host names: every corpus name under a shared zone, plus typical ones.
_SHARED_HOSTS = (
    "fonts.googleapis.com",
    "storage.googleapis.com",
    "www.googleapis.com",
    "login.microsoftonline.com",
    "login.live.com",
    "eastus-0.in.applicationinsights.azure.com",
    "management.azure.com",
    "westeurope.cognitiveservices.azure.com",
    "d111111abcdef8.cloudfront.net",
    "az416426.vo.msecnd.azureedge.net",
    "nuancehdp.auth0.com",
    "tenant.eu.auth0.com",
    "github.com",
    "objects.githubusercontent.com",
    "www.microsoft.com",
    "aka.ms",
    "o123.ingest.sentry.io",
    "widget.intercom.io",
    "browser-intake-datadoghq.com",
    "s3.amazonaws.com",
)


def test_shared_infrastructure_alone_names_no_product() -> None:
    """All of it, from one endpoint, against the whole shipped catalogue: nothing is named."""
    index = default_index()
    client = Endpoint(ip="10.1.2.3", mac="00:11:22:33:44:55")
    names = set(_SHARED_HOSTS)
    if PCAP_DIR.is_dir() and getattr(collectors, "decode_file", None) is not None:
        for path in corpus_pcaps():
            for observation in collectors.decode_file(path):
                is_host = observation.kind in {Kind.DNS_QUERY, Kind.TLS_SNI, Kind.QUIC_SNI, Kind.HTTP_HOST}
                if is_host and _under_shared_zone(observation.value):
                    names.add(observation.value)
    evidence = [
        item
        for name in sorted(names)
        for kind in (Kind.DNS_QUERY, Kind.TLS_SNI)
        for item in index.match(Observation(ts=0, kind=kind, value=name, src=client))
    ]
    named = [d.product_id for d in index.assess_all(evidence) if d.identified]
    shared_rules = [item for item in evidence if item.rule.needs_company]
    assert named == [], (named, sorted({item.rule.rule_id for item in evidence}))
    # The shipped catalogue does declare shared hosts, so this is not vacuous.
    assert shared_rules or not any(
        rule.role in {HostRole.SHARED, HostRole.AUTH, HostRole.CDN} for rule in index.catalog.rules
    )
