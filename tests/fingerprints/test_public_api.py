"""The package's public surface is exactly its sorted ``__all__``."""

from __future__ import annotations

from types import ModuleType

import fingerprints


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's ``__all__`` order (RUF022): CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    # Submodules (``fingerprints.lint``, a command) appear as attributes once imported: not API.
    public = {
        name
        for name, value in vars(fingerprints).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert fingerprints.__all__ == sorted(fingerprints.__all__, key=_isort_key)
    assert set(fingerprints.__all__) == public
