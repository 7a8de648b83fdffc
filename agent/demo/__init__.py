"""The bundled simulated hospital of ``lanterne demo``: a capture, its generator and a declared inventory."""

from importlib import resources
from pathlib import Path

__all__ = ["CAPTURE", "INVENTORY", "SITE", "SITE_NAME", "bundled_file"]

#: The site the demo's data belongs to.
SITE = "ch-demo"
SITE_NAME = "CH Démo"
#: Names of the bundled files, beside this module.
CAPTURE = "hospital.pcap"
INVENTORY = "inventaire.csv"


def bundled_file(name: str) -> Path:
    """The path of a bundled demo file (the package is installed as files, never zipped)."""
    return Path(str(resources.files(__package__ or "agent.demo").joinpath(name)))
