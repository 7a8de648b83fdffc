"""Shared fixtures: the shipped catalogue compiled once, and a small catalogue using every rule kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fingerprints import DEFAULT_CATALOG_DIR, Index, load_catalog, load_index

#: A catalogue that uses every rule kind (the shipped one only has hosts, OIDs and OUIs so far).
KINDS_CATALOG = Path(__file__).resolve().parent / "data" / "kinds_catalog"


def write_catalog(root: Path, files: dict[str, str]) -> Path:
    """Write product files under ``root`` and return it."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


#: The three products the catalogue format was committed with; unit tests use only these, so
#: that adding products to the shipped catalogue never changes what they assert.
FORMAT_PRODUCTS = (
    "llm_chat/openai-chatgpt.yaml",
    "ambient_scribe/nabla.yaml",
    "medical_device/philips-patient-monitoring.yaml",
)


def copy_format_products(root: Path) -> Path:
    """Copy the format's three products from the shipped catalogue into ``root``."""
    for relative in FORMAT_PRODUCTS:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEFAULT_CATALOG_DIR / relative, root / relative)
    return root


@pytest.fixture(scope="session")
def shipped_index() -> Index:
    """The whole shipped catalogue, without Recog."""
    return load_index(with_recog=False)


@pytest.fixture(scope="session")
def format_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    """The format's three products (ChatGPT, Nabla, Philips monitors), without Recog."""
    return Index(load_catalog(copy_format_products(tmp_path_factory.mktemp("format") / "catalog")))


@pytest.fixture(scope="session")
def kinds_index() -> Index:
    """A catalogue with every rule kind, without Recog."""
    return Index(load_catalog(KINDS_CATALOG))


@pytest.fixture
def kinds_catalog_files() -> dict[str, str]:
    """The files of the every-kind catalogue, by relative path (to break in a test)."""
    return {
        path.relative_to(KINDS_CATALOG).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(KINDS_CATALOG.glob("*/*.yaml"))
    }
