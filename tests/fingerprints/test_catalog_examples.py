"""Every example of the shipped catalogue passes, positive and negative, and the lint finds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fingerprints import Index, lint_catalog, load_catalog, run_catalog_examples
from tests.fingerprints.conftest import write_catalog


def test_every_example_passes(shipped_index: Index) -> None:
    failures = run_catalog_examples(shipped_index, shipped_index.catalog)
    assert not failures, "\n".join(map(str, failures))


def test_the_lint_finds_nothing(shipped_index: Index) -> None:
    findings = lint_catalog(shipped_index, shipped_index.catalog)
    assert not findings, "\n".join(map(str, findings))


def test_every_product_has_positive_and_negative_examples(shipped_index: Index) -> None:
    for product in shipped_index.catalog.products:
        assert any(example.positive for example in product.examples), product.id
        assert any(not example.positive for example in product.examples), product.id


def test_every_rule_kind_of_the_kinds_catalogue_passes(kinds_index: Index) -> None:
    failures = run_catalog_examples(kinds_index, kinds_index.catalog) + lint_catalog(
        kinds_index, kinds_index.catalog
    )
    assert not failures, "\n".join(map(str, failures))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "{kind: tls.sni, value: demo-ai.example.org}",
            "{kind: tls.sni, value: www.demo-ai.example}",
            "negative",
        ),
        ("rule: api, detects: true", "rule: app, detects: true", "rule 'app' did not fire"),
        ("rule: site, detects: false", "rule: site, detects: true", "detects is wrong"),
        (
            "{kind: tls.sni, value: demo-ai.auth0.com, rule: login, detects: false}",
            "{kind: tls.sni, value: x.y}",
            "not exercised",
        ),
    ],
)
def test_a_failing_example_is_reported_with_its_line(
    tmp_path: Path, kinds_catalog_files: dict[str, str], old: str, new: str, message: str
) -> None:
    files = dict(kinds_catalog_files)
    assert old in files["llm_api/demo-ai.yaml"]
    files["llm_api/demo-ai.yaml"] = files["llm_api/demo-ai.yaml"].replace(old, new)
    root = write_catalog(tmp_path / "catalog", files)
    catalog = load_catalog(root)
    index = Index(catalog)
    failures = run_catalog_examples(index, catalog) + lint_catalog(index, catalog)
    assert any(message in failure.message for failure in failures), failures
    assert all(failure.where.startswith("catalog/llm_api/demo-ai.yaml:") for failure in failures)


def test_a_regex_without_a_literal_is_linted(tmp_path: Path, kinds_catalog_files: dict[str, str]) -> None:
    files = dict(kinds_catalog_files)
    files["interface_engine/demo-engine.yaml"] = files["interface_engine/demo-engine.yaml"].replace(
        "regex: '^Demo Engine Console'", r"regex: '^(?:Demo|Test)(\d+)$'"
    )
    catalog = load_catalog(write_catalog(tmp_path / "catalog", files))
    index = Index(catalog)
    findings = lint_catalog(index, catalog)
    assert any("no literal the index can bucket" in finding.message for finding in findings)
