"""MAC vendor names from the registry netaddr ships; randomised MACs get none."""

from __future__ import annotations

from fingerprints import mac_vendor


def test_ma_l_names_as_registered() -> None:
    vendor = mac_vendor("00:09:fb:12:34:56")
    assert (vendor.organisation, vendor.prefix, vendor.randomised) == (
        "Philips Patient Monitoring",
        "0009fb",
        False,
    )


def test_iab_blocks_are_36_bits() -> None:
    vendor = mac_vendor("00:50:c2:f7:10:01")
    assert (vendor.organisation, vendor.prefix) == ("RF Code", "0050c2f71")


def test_randomised_macs_have_no_vendor() -> None:
    vendor = mac_vendor("02:09:fb:12:34:56")
    assert vendor.randomised
    assert vendor.organisation is None
    assert vendor.to_dict() == {
        "mac": "02:09:fb:12:34:56",
        "organisation": None,
        "prefix": None,
        "randomised": True,
    }


def test_unregistered_prefix() -> None:
    vendor = mac_vendor("00:00:00:00:00:01")  # Xerox: registered
    assert vendor.organisation is not None
    assert mac_vendor("f0:ff:ff:00:00:01").organisation is None
