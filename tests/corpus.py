"""Where the shared third-party corpus lives, and how tests skip cleanly without it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ``../shared`` beside the checkout (CI has it); ``LANTERNE_SHARED`` overrides.
SHARED = Path(os.environ.get("LANTERNE_SHARED", REPO.parent / "shared")).resolve()
CORPUS = SHARED / "corpus"
PCAP_DIR = CORPUS / "pcap"
RECOG_DIR = CORPUS / "recog"

_MISSING = (
    f"the shared corpus is absent ({CORPUS} not found): these tests read third-party captures "
    "and fingerprints that are not part of this repository"
)


def require_corpus() -> Path:
    """Skip the calling test when the corpus is not there; return its path otherwise."""
    if not PCAP_DIR.is_dir():
        pytest.skip(_MISSING)
    return CORPUS


def corpus_pcaps() -> list[Path]:
    """Every capture in the corpus (pcap and pcapng), sorted; empty when the corpus is absent."""
    if not PCAP_DIR.is_dir():
        return []
    return sorted(p for p in PCAP_DIR.rglob("*") if p.suffix in {".pcap", ".pcapng", ".cap"} and p.is_file())


def truth_of(capture: Path) -> dict[str, Any]:
    """The tshark ground truth recorded beside a capture."""
    with open(f"{capture}.truth.json", encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def captures_with_truth() -> Iterator[Path]:
    """Captures that have a ``*.truth.json`` beside them."""
    for capture in corpus_pcaps():
        if Path(f"{capture}.truth.json").is_file():
            yield capture
