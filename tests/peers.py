"""Where the tests find the real peers they talk to (Debian programs, not Python look-alikes)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def system_command(name: str) -> str | None:
    """The path of ``name`` on PATH, skipping the running virtualenv's own ``bin``.

    pynetdicom installs console scripts named like dcmtk's programs (``storescp``, ``echoscp``):
    with the virtualenv activated, ``storescp`` would be pynetdicom's, whose arguments differ.
    The tests mean the real peer, dcmtk's.
    """
    own = Path(sys.prefix, "bin").resolve()
    path = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if entry and Path(entry).resolve() != own
    )
    return shutil.which(name, path=path)
