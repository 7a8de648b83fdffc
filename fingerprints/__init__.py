"""Fingerprints: the catalogue, its schema and loader, the compiled match index, Recog import."""

from fingerprints._evidence import (
    DETECTION_THRESHOLD,
    UNKNOWN,
    Detection,
    Evidence,
    RuleInfo,
    Side,
    assess,
    assess_all,
    rule_weight,
)
from fingerprints._index import Explanation, Index, default_index, load_index
from fingerprints._loader import DEFAULT_CATALOG_DIR, CatalogError, Issue, load_catalog
from fingerprints._model import Catalog, Example, Location, Product, Rule, Source
from fingerprints._oui import MacVendor, mac_vendor
from fingerprints._recog import Recog, default_recog_dir, load_recog
from fingerprints._selftest import (
    Failure,
    RecogFailure,
    lint_catalog,
    run_catalog_examples,
    run_recog_examples,
)
from fingerprints._vocabulary import AI_CATEGORIES, Category, Tristate

__all__ = [
    "AI_CATEGORIES",
    "DEFAULT_CATALOG_DIR",
    "DETECTION_THRESHOLD",
    "UNKNOWN",
    "Catalog",
    "CatalogError",
    "Category",
    "Detection",
    "Evidence",
    "Example",
    "Explanation",
    "Failure",
    "Index",
    "Issue",
    "Location",
    "MacVendor",
    "Product",
    "Recog",
    "RecogFailure",
    "Rule",
    "RuleInfo",
    "Side",
    "Source",
    "Tristate",
    "assess",
    "assess_all",
    "default_index",
    "default_recog_dir",
    "lint_catalog",
    "load_catalog",
    "load_index",
    "load_recog",
    "mac_vendor",
    "rule_weight",
    "run_catalog_examples",
    "run_recog_examples",
]
