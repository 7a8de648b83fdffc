"""``python -m fingerprints.lint``: the same checks as ``lanterne fingerprints test``, for authors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fingerprints.lint import main
from tests.fingerprints.conftest import KINDS_CATALOG, write_catalog


def test_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(KINDS_CATALOG)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3 products" in captured.err
    assert "0 failure(s)" in captured.err


def test_the_shipped_catalogue_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0, capsys.readouterr().out


def test_failures_and_load_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (KINDS_CATALOG / "llm_api" / "demo-ai.yaml").read_text()
    broken = text.replace(
        "{kind: tls.sni, value: demo-ai.example.org}", "{kind: tls.sni, value: demo-ai.example}"
    )
    assert main([str(write_catalog(tmp_path / "a", {"llm_api/demo-ai.yaml": broken}))]) == 1
    assert "negative example matched rule(s) site" in capsys.readouterr().out
    unloadable = text.replace("category: llm_api", "category: llm")
    assert main([str(write_catalog(tmp_path / "b", {"llm_api/demo-ai.yaml": unloadable}))]) == 2
    assert "b/llm_api/demo-ai.yaml:5: category: 'llm' is not one of" in capsys.readouterr().out


def test_an_absent_recog_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(KINDS_CATALOG), "--recog", str(tmp_path)]) == 2
    assert "no Recog XML" in capsys.readouterr().err
