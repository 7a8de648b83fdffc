"""MAC vendor names from the IEEE registry that the ``netaddr`` package ships (no download).

``netaddr/eui/oui.txt`` holds the MA-L (24-bit) assignments and ``iab.txt`` the old 36-bit IAB
blocks. They are parsed once, on first use, into dicts keyed by hex prefix. A locally
administered MAC (the bit randomised phones and laptops set) is reported as such and never
given a vendor: its first bytes were chosen by software, not assigned by the IEEE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Final

import netaddr

_MA_L_LINE: Final = re.compile(r"^([0-9A-F]{6})\s+\(base 16\)\s+(.+?)\s*$")
_IAB_LINE: Final = re.compile(r"^([0-9A-F]{6})-[0-9A-F]{6}\s+\(base 16\)\s+(.+?)\s*$")
_IAB_BLOCK: Final = re.compile(r"^([0-9A-F]{2})-([0-9A-F]{2})-([0-9A-F]{2})\s+\(hex\)")


@dataclass(frozen=True, slots=True)
class MacVendor:
    """Who a MAC address belongs to, as far as the IEEE registry says."""

    mac: str
    organisation: str | None
    """The registered organisation name, exactly as the registry spells it."""
    prefix: str | None
    """The matched prefix in hex digits (6 for MA-L, 9 for an IAB block)."""
    randomised: bool
    """The locally administered bit is set: the address says nothing about the maker."""

    def to_dict(self) -> dict[str, str | bool | None]:
        """Return the JSON form."""
        return {
            "mac": self.mac,
            "organisation": self.organisation,
            "prefix": self.prefix,
            "randomised": self.randomised,
        }


def _registry_dir() -> Path:
    return Path(netaddr.__file__).resolve().parent / "eui"


@cache
def _registry() -> tuple[dict[str, str], dict[str, str]]:
    """MA-L and IAB organisation names by hex prefix, parsed once."""
    ma_l: dict[str, str] = {}
    with open(_registry_dir() / "oui.txt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            # Most lines are postal addresses: a substring test skips them cheaply.
            match = _MA_L_LINE.match(line) if "(base 16)" in line else None
            if match:
                ma_l.setdefault(match.group(1).lower(), match.group(2))
    iab: dict[str, str] = {}
    block = ""
    with open(_registry_dir() / "iab.txt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            head = _IAB_BLOCK.match(line)
            if head:
                block = "".join(head.groups()).lower()
                continue
            match = _IAB_LINE.match(line)
            if match and block:
                # The IAB range is written as the low 24 bits; a block is the top 36 bits.
                iab.setdefault(block + match.group(1)[:3].lower(), match.group(2))
    return ma_l, iab


def is_randomised(mac: str) -> bool:
    """Whether a canonical MAC has the locally administered bit set."""
    return bool(int(mac[:2], 16) & 0x02)


@lru_cache(maxsize=16384)
def mac_vendor(mac: str) -> MacVendor:
    """The registered organisation of a canonical MAC (``aa:bb:cc:dd:ee:ff``)."""
    if is_randomised(mac):
        return MacVendor(mac=mac, organisation=None, prefix=None, randomised=True)
    digits = mac.replace(":", "")
    ma_l, iab = _registry()
    if (name := iab.get(digits[:9])) is not None:
        return MacVendor(mac=mac, organisation=name, prefix=digits[:9], randomised=False)
    if (name := ma_l.get(digits[:6])) is not None:
        return MacVendor(mac=mac, organisation=name, prefix=digits[:6], randomised=False)
    return MacVendor(mac=mac, organisation=None, prefix=None, randomised=False)
