"""Property tests: the loader fails only with CatalogError; host lookups agree with brute force."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import Kind, Observation
from fingerprints import Catalog, CatalogError, Index, Issue, Location, Product, Rule, Source, load_catalog
from fingerprints._vocabulary import (
    Category,
    Deployment,
    HdsStatus,
    HostingLocation,
    HostRole,
    MdrClass,
    Quality,
    RuleKind,
    Strength,
    Tristate,
)
from tests.fingerprints.conftest import KINDS_CATALOG

_SOURCE = (KINDS_CATALOG / "pacs" / "demo-pacs.yaml").read_text(encoding="utf-8")


def _load_issues(text: str) -> tuple[Issue, ...]:
    """Load a one-file catalogue; return its issues (none when it loads)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "catalog" / "pacs" / "demo-pacs.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")
        try:
            load_catalog(path.parents[1])
        except CatalogError as exc:
            return exc.issues
    return ()


@settings(max_examples=150, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(_SOURCE)),
    length=st.integers(min_value=0, max_value=40),
    junk=st.text(alphabet=" \t\n:-[]{}'\"#&*!|>%@`,?abcxyz019._\\", max_size=20),
)
def test_a_mangled_file_fails_only_with_catalog_error(cut: int, length: int, junk: str) -> None:
    # Any other exception escaping ``load_catalog`` fails the test by itself.
    issues = _load_issues(_SOURCE[:cut] + junk + _SOURCE[cut + length :])
    assert all(issue.line >= 1 and issue.path.endswith("demo-pacs.yaml") for issue in issues)


_LABELS = st.sampled_from(["a", "b", "api", "www", "example", "com", "net", "x-1"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=5).map(".".join)


def _catalog(rules: list[tuple[str, bool]]) -> Catalog:
    products = []
    for number, (name, exact) in enumerate(rules):
        matcher = {"exact": name} if exact else {"suffix": name}
        rule = Rule(
            id=f"p{number}:r",
            product_id=f"p{number}",
            kind=RuleKind.HOST,
            strength=Strength.STRONG,
            quality=Quality.VENDOR,
            source="test",
            location=Location("test", 1),
            role=HostRole.APP,
            **matcher,
        )
        products.append(
            Product(
                id=f"p{number}",
                name="p",
                vendor="v",
                category=Category.LLM_API,
                ai=Tristate.YES,
                medical_purpose=Tristate.NO,
                mdr_class=MdrClass.NONE,
                deployment=Deployment.SAAS,
                hosting_location=HostingLocation.UNKNOWN,
                hds=HdsStatus.UNKNOWN,
                sources=(Source("test", Quality.VENDOR),),
                rules=(rule,),
                examples=(),
                location=Location("test", 1),
            )
        )
    return Catalog(products=tuple(products), version="test")


def _brute_force(rules: list[tuple[str, bool]], name: str) -> set[str]:
    """The most specific rules, found by trying every rule: exact first, then the longest suffix."""
    exact = {f"p{n}:r" for n, (rule, is_exact) in enumerate(rules) if is_exact and rule == name}
    if exact:
        return exact
    suffixes = [
        (rule.count("."), f"p{n}:r")
        for n, (rule, is_exact) in enumerate(rules)
        if not is_exact and (name == rule or name.endswith("." + rule))
    ]
    if not suffixes:
        return set()
    deepest = max(depth for depth, _ in suffixes)
    return {rule_id for depth, rule_id in suffixes if depth == deepest}


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(st.tuples(_NAMES, st.booleans()), max_size=12),
    names=st.lists(_NAMES, min_size=1, max_size=8),
)
def test_host_lookup_agrees_with_brute_force(rules: list[tuple[str, bool]], names: list[str]) -> None:
    index = Index(_catalog(rules))
    for name in names + [rule for rule, _ in rules]:
        found = {item.rule.rule_id for item in index.match(Observation(ts=0, kind=Kind.TLS_SNI, value=name))}
        assert found == _brute_force(rules, name), (rules, name)
