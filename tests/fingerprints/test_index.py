"""The compiled index: which rule fires for which Observation, on which side, and the caches."""

from __future__ import annotations

import json

import pytest

from collectors import Endpoint, Kind, Observation
from fingerprints import Index, load_catalog
from fingerprints._index import service_type

CLIENT = Endpoint(ip="10.0.0.5", mac="00:09:fb:01:02:03", port=50000)
SERVER = Endpoint(ip="10.0.0.9", mac="50:a0:30:81:00:01", port=104)
NO_ENDPOINT = Endpoint()


def _obs(
    kind: str,
    value: str,
    attrs: dict[str, object] | None = None,
    src: Endpoint = NO_ENDPOINT,
    dst: Endpoint = NO_ENDPOINT,
) -> Observation:
    return Observation(ts=1.0, kind=Kind(kind), value=value, attrs=attrs or {}, src=src, dst=dst)


def _rules(index: Index, observation: Observation) -> list[str]:
    return [item.rule.rule_id for item in index.match(observation)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api.demo-ai.example", ["demo-ai:api"]),  # exact beats the marketing suffix above it
        ("x.api.demo-ai.example", ["demo-ai:site"]),  # the exact rule does not cover children
        ("eu.app.demo-ai.example", ["demo-ai:app"]),  # the deeper suffix wins
        ("app.demo-ai.example", ["demo-ai:app"]),  # a suffix covers its own name
        ("demo-ai.example", ["demo-ai:site"]),
        ("xdemo-ai.example", []),  # label boundary
        ("demo-ai.example.org", []),
        ("fonts.googleapis.com", ["demo-ai:cdn"]),
        ("demo-ai-models.storage.googleapis.com", ["demo-ai:bucket"]),
        ("a.demo-ai-models.storage.googleapis.com", ["demo-ai:cdn"]),
        ("example", []),
    ],
)
def test_host_most_specific_rule_wins(kinds_index: Index, name: str, expected: list[str]) -> None:
    for kind in ("dns.query", "dns.answer", "tls.sni", "quic.sni", "http.host"):
        assert _rules(kinds_index, _obs(kind, name)) == expected


def test_host_rules_only_apply_to_host_kinds(kinds_index: Index) -> None:
    assert _rules(kinds_index, _obs("http.server", "api.demo-ai.example")) == []
    assert _rules(kinds_index, _obs("mdns.host", "api.demo-ai.example")) == []


def test_host_regex_narrows_a_suffix(format_index: Index) -> None:
    hub = "chatgpt-async-webps-prod-westeurope-3.webpubsub.azure.com"
    assert _rules(format_index, _obs("tls.sni", hub)) == ["openai-chatgpt:webpubsub"]
    assert _rules(format_index, _obs("tls.sni", "other-hub.webpubsub.azure.com")) == []


@pytest.mark.parametrize(
    ("oid", "expected"),
    [
        ("1.3.6.1.4.1.19816", ["philips-patient-monitoring:pen-boeblingen"]),
        ("1.3.6.1.4.1.19816.3.2.1", ["philips-patient-monitoring:pen-boeblingen"]),
        (".1.3.6.1.4.1.19816.3", ["philips-patient-monitoring:pen-boeblingen"]),
        ("1.3.6.1.4.1.1981", []),
        ("1.3.6.1.4.1.198161", []),
        ("1.3.6.1.4.1.1776.1", ["philips-patient-monitoring:pen-philips"]),
        ("1.3.6.1.4.1.9.1.1", []),
    ],
)
def test_oid_prefix_on_arc_boundaries(format_index: Index, oid: str, expected: list[str]) -> None:
    assert _rules(format_index, _obs("snmp.sysobjectid", oid)) == expected


def test_oui_24_28_36_bits_and_randomised(kinds_index: Index, format_index: Index) -> None:
    def mac_rules(index: Index, mac: str) -> list[str]:
        return _rules(index, _obs("dhcp.lease", "10.0.0.5", src=Endpoint(mac=mac)))

    assert mac_rules(format_index, "00:09:fb:aa:bb:cc") == [
        "philips-patient-monitoring:oui-patient-monitoring"
    ]
    assert mac_rules(kinds_index, "50:a0:30:8f:ff:ff") == ["demo-engine:oui28"]
    assert mac_rules(kinds_index, "50:a0:30:90:00:00") == []
    assert mac_rules(kinds_index, "70:b3:d5:20:cf:ff") == ["demo-engine:oui36"]
    assert mac_rules(kinds_index, "70:b3:d5:20:d0:00") == []
    # The locally administered bit: a randomised address, whatever its other bits say.
    assert mac_rules(format_index, "02:09:fb:aa:bb:cc") == []
    assert mac_rules(format_index, "0a:09:fb:aa:bb:cc") == []


def test_mac_evidence_is_about_the_side_that_carries_it(format_index: Index, kinds_index: Index) -> None:
    sni = _obs("tls.sni", "chatgpt.com", src=CLIENT, dst=Endpoint(ip="1.2.3.4", mac="00:09:fb:00:00:09"))
    # The dst MAC of traffic to the internet is the router's: never evidence about the server.
    assert [(e.rule.rule_id, e.side) for e in format_index.match(sni)] == [
        ("openai-chatgpt:chatgpt", "src"),
        ("philips-patient-monitoring:oui-patient-monitoring", "src"),
    ]
    banner = _obs("http.server", "DemoPACS/3", src=CLIENT, dst=SERVER)
    assert [(e.rule.rule_id, e.side) for e in kinds_index.match(banner)] == [
        ("demo-pacs:server", "dst"),
        ("demo-engine:oui28", "dst"),
    ]


def test_dicom_sides_follow_the_pdu(kinds_index: Index) -> None:
    attrs = {"calling_ae": "CT1", "called_ae": "DEMOPACS", "impl_class_uid": "1.2.826.0.1.3680043.99.7"}
    request = _obs("dicom.association", "CT1 -> DEMOPACS", {**attrs, "pdu": "rq"})
    answer = _obs("dicom.association", "CT1 -> DEMOPACS", {**attrs, "pdu": "ac"})
    # In an RQ the implementation is the caller's (src); in an AC, the acceptor's (dst).
    assert [(e.rule.rule_id, e.side) for e in kinds_index.match(request)] == [
        ("demo-pacs:uid", "src"),
        ("demo-pacs:ae", "dst"),
    ]
    assert [(e.rule.rule_id, e.side, e.value) for e in kinds_index.match(answer)] == [
        ("demo-pacs:uid", "dst", "impl_class_uid=1.2.826.0.1.3680043.99.7"),
        ("demo-pacs:ae", "dst", "called_ae=DEMOPACS"),
    ]


def test_hl7_sending_app_is_src_and_receiving_app_dst(kinds_index: Index) -> None:
    message = _obs("hl7.header", "ORU^R01", {"sending_app": "DEMOENGINE", "receiving_app": "DEMOENGINE"})
    assert [(e.rule.rule_id, e.side) for e in kinds_index.match(message)] == [
        ("demo-engine:app", "src"),
        ("demo-engine:receiver", "dst"),
    ]


def test_mdns_instances_match_their_service_type(kinds_index: Index) -> None:
    assert service_type("My.Room._demopacs._tcp.local") == "_demopacs._tcp.local"
    assert service_type("_demopacs._tcp.local") == "_demopacs._tcp.local"
    assert service_type("host.local") is None
    assert _rules(kinds_index, _obs("mdns.service", "_DEMOPACS._tcp.local.")) == ["demo-pacs:bonjour"]


def test_value_kinds_go_to_their_own_rules(kinds_index: Index) -> None:
    assert _rules(kinds_index, _obs("snmp.sysdescr", "Demo Engine Appliance 7")) == ["demo-engine:descr"]
    assert _rules(kinds_index, _obs("http.server", "Demo Engine Appliance 7")) == []
    assert _rules(kinds_index, _obs("dhcp.fingerprint", "1, 3, 6, 15, 119, 252")) == [
        "demo-engine:fingerprint"
    ]


def test_cached_and_uncached_agree_and_the_cache_is_used(kinds_index: Index) -> None:
    observation = _obs("tls.sni", "eu.app.demo-ai.example", src=CLIENT)
    first = kinds_index.match(observation)
    assert kinds_index.match(observation) is first
    assert kinds_index.match_uncached(observation) == first
    kinds_index.cache_clear()
    assert kinds_index.match(observation) == first


def test_multi_line_values_use_every_line_for_prefix_buckets(kinds_index: Index) -> None:
    # ``^`` anchors a line in Recog's dialect; catalogue regexes are plain Python: the prefix
    # bucket must not hide a match the regex itself would find.
    assert _rules(kinds_index, _obs("snmp.sysdescr", "Demo Engine Appliance\nrev 2")) == ["demo-engine:descr"]


def test_evidence_and_detections_serialise_to_json(kinds_index: Index) -> None:
    evidence = kinds_index.match(_obs("tls.sni", "api.demo-ai.example", src=CLIENT))
    (detection,) = kinds_index.assess_all(evidence)
    data = json.loads(json.dumps(detection.to_dict()))
    assert data["product"] == "demo-ai"
    assert data["catalog_version"] == kinds_index.version
    assert data["evidence"][0]["rule"] == "demo-ai:api"


def test_the_version_is_the_catalogue_hash(format_index: Index, shipped_index: Index) -> None:
    assert format_index.version == format_index.catalog.version
    assert shipped_index.version == load_catalog().version


def test_detections_carry_the_network_roles(kinds_index: Index) -> None:
    answer = _obs(
        "dicom.association", "CT1 -> DEMOPACS", {"pdu": "ac", "impl_class_uid": "1.2.826.0.1.3680043.99.2"}
    )
    (detection,) = kinds_index.assess_all(kinds_index.match(answer))
    assert (detection.product_id, [str(role) for role in detection.roles]) == ("demo-pacs", ["pacs"])
    assert detection.to_dict()["roles"] == ["pacs"]
