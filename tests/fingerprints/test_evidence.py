"""The confidence model: weights, repetition, co-occurrence, the threshold, unknowns."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from collectors import Kind
from fingerprints import DETECTION_THRESHOLD, UNKNOWN, Evidence, RuleInfo, assess, assess_all
from fingerprints._evidence import combine, make_evidence, rule_weight
from fingerprints._vocabulary import Category, HostRole, Strength


def _rule(
    rule_id: str,
    strength: Strength = Strength.STRONG,
    role: HostRole | None = HostRole.APP,
    product: str | None = "p",
    vendor: str | None = "Vendor",
    category: Category | None = Category.LLM_CHAT,
) -> RuleInfo:
    return RuleInfo(
        rule_id=rule_id,
        product_id=product,
        vendor=vendor,
        category=category,
        strength=strength,
        weight=rule_weight(strength, role),
        role=role,
        origin="catalog",
        description=rule_id,
    )


def _ev(rule: RuleInfo, value: str = "x.example") -> Evidence:
    return Evidence(rule, Kind.TLS_SNI, value)


def test_weights() -> None:
    assert rule_weight(Strength.STRONG, HostRole.API) == 0.9
    assert rule_weight(Strength.MEDIUM, None) == 0.6
    assert rule_weight(Strength.WEAK, None) == 0.2
    assert rule_weight(Strength.STRONG, HostRole.MARKETING) == 0.36
    assert rule_weight(Strength.STRONG, HostRole.SHARED) == 0.27
    assert rule_weight(Strength.MEDIUM, None, certainty=0.5) == 0.3


def test_combine_is_a_noisy_or() -> None:
    assert combine([]) == 0.0
    assert combine([0.9]) == 0.9
    assert combine([0.9, 0.6]) == 0.96
    assert combine([0.2, 0.2]) == 0.36


def test_one_strong_rule_names_the_product() -> None:
    detection = assess([_ev(_rule("p:app"))], "v1")
    assert detection is not None
    assert (detection.product_id, detection.confidence, detection.catalog_version) == ("p", 0.9, "v1")
    assert detection.identified


def test_repetition_is_not_corroboration() -> None:
    rule = _rule("p:app")
    detection = assess([_ev(rule, "a.example"), _ev(rule, "b.example"), _ev(rule)])
    assert detection is not None
    assert detection.confidence == 0.9
    assert len(detection.evidence) == 1


def test_distinct_rules_add_up() -> None:
    detection = assess([_ev(_rule("p:app")), _ev(_rule("p:www", role=HostRole.MARKETING))])
    assert detection is not None
    assert detection.confidence == combine([0.9, 0.36])


def test_a_marketing_visit_alone_is_unknown_with_the_vendor() -> None:
    detection = assess(
        [_ev(_rule("p:www", role=HostRole.MARKETING)), _ev(_rule("p:apex", role=HostRole.MARKETING))]
    )
    assert detection is not None
    # 0.59 is above the threshold, but no rule may name the product alone.
    assert detection.confidence > DETECTION_THRESHOLD
    assert (detection.product_id, detection.vendor) == (UNKNOWN, "Vendor")
    assert not detection.identified


@pytest.mark.parametrize("role", [HostRole.SHARED, HostRole.CDN, HostRole.AUTH])
def test_shared_infrastructure_alone_says_nothing(role: HostRole) -> None:
    assert assess([_ev(_rule("p:shared", role=role))]) is None
    assert (
        assess_all([_ev(_rule("p:shared", role=role)), _ev(_rule("q:shared", role=role, product="q"))]) == ()
    )


def test_shared_infrastructure_counts_beside_a_specific_rule() -> None:
    detection = assess([_ev(_rule("p:shared", role=HostRole.SHARED)), _ev(_rule("p:api", role=HostRole.API))])
    assert detection is not None
    assert detection.product_id == "p"
    assert detection.confidence == combine([0.27, 0.9])


def test_weak_evidence_names_a_vendor_never_a_product() -> None:
    rules = [
        _rule(f"p:oui{i}", strength=Strength.WEAK, role=None, category=Category.MEDICAL_DEVICE)
        for i in range(6)
    ]
    detection = assess([_ev(rule) for rule in rules])
    assert detection is not None
    assert detection.product_id == UNKNOWN
    assert detection.confidence > DETECTION_THRESHOLD
    assert (detection.vendor, detection.category) == ("Vendor", Category.MEDICAL_DEVICE)
    assert detection.of_interest


def test_below_the_threshold_a_decisive_rule_is_not_enough() -> None:
    recog_like = RuleInfo("p:faint", "p", "Vendor", None, Strength.MEDIUM, 0.3, None, "catalog", "faint")
    detection = assess([_ev(recog_like)])
    assert detection is not None
    assert detection.product_id == UNKNOWN


def test_assess_refuses_several_products() -> None:
    with pytest.raises(ValueError, match="assess_all"):
        assess([_ev(_rule("p:app")), _ev(_rule("q:app", product="q"))])


def test_assess_all_names_each_product_and_folds_the_rest_by_vendor() -> None:
    monitor_oui = _rule(
        "m:oui", Strength.WEAK, None, product="m", vendor="Philips", category=Category.MEDICAL_DEVICE
    )
    other_oui = _rule(
        "n:oui", Strength.WEAK, None, product="n", vendor="Philips", category=Category.MEDICAL_DEVICE
    )
    monitor_oid = _rule(
        "m:oid", Strength.STRONG, None, product="m", vendor="Philips", category=Category.MEDICAL_DEVICE
    )
    chat = _rule("c:app", product="c", vendor="OpenAI")
    stray = _rule("z:oui", Strength.WEAK, None, product="z", vendor="Acme", category=None)
    detections = assess_all([_ev(monitor_oui), _ev(other_oui), _ev(monitor_oid), _ev(chat), _ev(stray)], "v")
    assert [(d.product_id, d.vendor) for d in detections] == [
        ("m", "Philips"),
        ("c", "OpenAI"),
        (UNKNOWN, "Acme"),
    ]
    # Philips is already named: its other product's OUI does not also make an unknown Philips.
    assert detections[0].confidence == combine([0.2, 0.9])
    assert not detections[2].of_interest


def test_recog_evidence_enriches_and_makes_unknowns() -> None:
    recog = RuleInfo("recog:snmp_sysdescr:1", None, "Cisco", None, Strength.MEDIUM, 0.6, None, "recog", "IOS")
    item = Evidence(recog, Kind.SNMP_SYSDESCR, "Cisco IOS", fields=(("os.family", "IOS"),))
    (detection,) = assess_all([item])
    assert (detection.product_id, detection.vendor, detection.fields) == (
        UNKNOWN,
        "Cisco",
        (("os.family", "IOS"),),
    )
    named = assess([item, _ev(_rule("p:app"))])
    assert named is not None
    assert named.product_id == "p"
    assert named.fields == (("os.family", "IOS"),)


def test_the_fast_constructor_builds_the_same_frozen_record() -> None:
    rule = _rule("p:app")
    fast = make_evidence(rule, Kind.TLS_SNI, "a.example", "dst", (("k", "v"),))
    slow = Evidence(rule, Kind.TLS_SNI, "a.example", "dst", (("k", "v"),))
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    with pytest.raises(FrozenInstanceError):
        fast.value = "b.example"  # type: ignore[misc]
