"""``collectors.probe``'s public surface is exactly its sorted ``__all__``; every module imports alone."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import pytest

import collectors.probe as probe

MODULES = ("_arp", "_dicom", "_errors", "_gate", "_http", "_mdns", "_snmp", "_tcp")


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's ``__all__`` order (RUF022): CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name, value in vars(probe).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert probe.__all__ == sorted(probe.__all__, key=_isort_key)
    assert set(probe.__all__) == public


@pytest.mark.parametrize(
    "module", [f"collectors.probe.{name}" for name in MODULES] + ["agent._probing", "agent.cli_probe"]
)
def test_each_module_imports_in_a_fresh_interpreter(module: str) -> None:
    """No circular import hides behind the order the test suite happens to import things in."""
    subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"], check=True, timeout=60)


def test_importing_the_probes_does_not_import_the_heavy_libraries() -> None:
    """pysnmp, pynetdicom, zeroconf and scapy load only when a probe of theirs runs."""
    code = (
        "import sys, collectors.probe, agent._probing; "
        "heavy = [m for m in ('pysnmp', 'pynetdicom', 'zeroconf', 'scapy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
