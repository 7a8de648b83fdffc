"""Fingerprints: the catalogue, its schema and loader, the compiled match index, Recog import."""

from fingerprints._loader import DEFAULT_CATALOG_DIR, CatalogError, Issue, load_catalog
from fingerprints._model import Catalog, Example, Location, Product, Rule, Source

__all__ = [
    "DEFAULT_CATALOG_DIR",
    "Catalog",
    "CatalogError",
    "Example",
    "Issue",
    "Location",
    "Product",
    "Rule",
    "Source",
    "load_catalog",
]
