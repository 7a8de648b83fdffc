"""Type stub of the optional C formatter of stored times (store/_timetext.c)."""

from collections.abc import Callable
from datetime import datetime

class Processor:
    """Epoch seconds (float) -> SQLite's stored text; None -> None; anything else -> ``other(value)``."""

    def __init__(self, other: Callable[[datetime | float | None], str | None], /) -> None: ...
    def __call__(self, value: datetime | float | None, /) -> str | None: ...
