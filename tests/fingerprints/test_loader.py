"""The catalogue loader: the shipped catalogue loads, and every error says file:line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fingerprints import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from fingerprints._vocabulary import RuleKind, Strength
from tests.fingerprints.conftest import copy_format_products

CHATGPT = DEFAULT_CATALOG_DIR / "llm_chat" / "openai-chatgpt.yaml"


def _copy_catalog(tmp_path: Path) -> Path:
    """A private copy of the format's three products, to break on purpose."""
    return copy_format_products(tmp_path / "catalog")


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_shipped_catalogue_loads() -> None:
    catalog = load_catalog()
    ids = {product.id for product in catalog.products}
    assert {"openai-chatgpt", "nabla", "philips-patient-monitoring"} <= ids
    assert len(catalog.version) == 16


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    before = load_catalog(root).version
    assert before == load_catalog(_copy_catalog(tmp_path / "again")).version
    _replace(root / "llm_chat" / "openai-chatgpt.yaml", "name: ChatGPT", "name: ChatGPT (web)")
    assert load_catalog(root).version != before


def test_oui_forms_are_normalised() -> None:
    product = load_catalog().product("philips-patient-monitoring")
    ouis = {rule.oui for rule in product.rules if rule.kind is RuleKind.MAC_OUI}
    assert ouis == {"00095c", "0009fb", "7c94b2"}
    assert all(rule.strength is Strength.WEAK for rule in product.rules if rule.kind is RuleKind.MAC_OUI)


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        ("role: content", "role: contnt", "role: contnt", "host role: 'contnt' is not one of"),
        ("suffix: chat.com", "suffix: Chat.com", "suffix: Chat.com", "not a lower-case DNS name"),
        ("ai: true", "ai: yes", "ai: yes", "ai: 'yes' is not one of: true, false, unknown"),
        ("category: llm_chat", "category: llm_chatt", "category: llm_chatt", "category: 'llm_chatt'"),
        (
            "    quality: C\n    source: v2fly data/openai\n",
            "    quality: C\n",
            "id: chatgpt",
            "missing 'source'",
        ),
        ("suffix: sora.com", "suffix: googleapis.com", "suffix: googleapis.com", "shared infrastructure"),
        ("regex: ^chatgpt", "regex: (^chatgpt", "regex: (^chatgpt", "invalid regex"),
        (
            "    role: app\n    quality: C\n    source: v2fly data/openai\n  - id: chat-com",
            "    role: app\n    quality: U\n    source: v2fly data/openai\n  - id: chat-com",
            "quality: U",
            "may only be a weak rule",
        ),
        ("rule: voice", "rule: voise", "rule: voise", "'voise' is not a rule of this product"),
        (
            "{kind: tls.sni, value: notchatgpt.com}",
            "{kind: tls.snii, value: notchatgpt.com}",
            "tls.snii",
            "example kind",
        ),
        ("name: ChatGPT", "name: ChatGPT\nname: again", "name: again", "duplicate key 'name'"),
        ("mdr_class: none", "mdr_class: none\nmdr: none", "mdr: none", "unknown key 'mdr'"),
    ],
)
def test_an_error_is_reported_with_file_and_line(
    tmp_path: Path, old: str, new: str, needle: str, message: str
) -> None:
    root = _copy_catalog(tmp_path)
    path = root / "llm_chat" / "openai-chatgpt.yaml"
    _replace(path, old, new)
    with pytest.raises(CatalogError) as caught:
        load_catalog(root)
    expected = f"catalog/llm_chat/openai-chatgpt.yaml:{_line_of(path, needle)}: "
    assert any(
        str(issue).startswith(expected) and message in issue.message for issue in caught.value.issues
    ), str(caught.value)


def test_every_error_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    _replace(root / "llm_chat" / "openai-chatgpt.yaml", "ai: true", "ai: maybe")
    _replace(root / "ambient_scribe" / "nabla.yaml", "role: api", "role: apii")
    (root / "llm_chat" / "broken.yaml").write_text("id: broken\n  name: [\n", encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(root)
    paths = {issue.path for issue in caught.value.issues}
    assert paths == {
        "catalog/llm_chat/openai-chatgpt.yaml",
        "catalog/ambient_scribe/nabla.yaml",
        "catalog/llm_chat/broken.yaml",
    }
    syntax = next(issue for issue in caught.value.issues if issue.path.endswith("broken.yaml"))
    assert syntax.line == 2
    assert "YAML syntax" in syntax.message


def test_duplicate_product_ids_are_rejected(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    (root / "llm_api").mkdir()
    shutil.copy(root / "llm_chat" / "openai-chatgpt.yaml", root / "llm_api" / "openai-chatgpt.yaml")
    _replace(root / "llm_api" / "openai-chatgpt.yaml", "category: llm_chat", "category: llm_api")
    with pytest.raises(CatalogError, match="already used by"):
        load_catalog(root)


def test_a_stray_file_is_rejected(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    (root / "stray.yaml").write_text("id: stray\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"catalog/stray\.yaml:1: catalogue files live at"):
        load_catalog(root)


def test_examples_must_be_valid_observations(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    path = root / "medical_device" / "philips-patient-monitoring.yaml"
    _replace(path, '{mac: "00:17:88:01:02:03"}', '{mac: "00:17:88:01:02"}')
    with pytest.raises(CatalogError) as caught:
        load_catalog(root)
    (issue,) = caught.value.issues
    assert issue.line == _line_of(path, '"00:17:88:01:02"')
    assert "not a valid Observation" in issue.message


def test_unknown_is_not_a_product_id(tmp_path: Path) -> None:
    root = _copy_catalog(tmp_path)
    (root / "llm_chat" / "openai-chatgpt.yaml").rename(root / "llm_chat" / "unknown.yaml")
    _replace(root / "llm_chat" / "unknown.yaml", "id: openai-chatgpt", "id: unknown")
    with pytest.raises(CatalogError, match="'unknown' is what a detection that names no product is called"):
        load_catalog(root)
