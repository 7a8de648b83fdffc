"""Log hostile input once at WARNING, then at DEBUG (after python-zeroconf's QuietLogger).

A broken device repeating the same malformed packet every two seconds must not fill the disk. The
memory of what was already logged is bounded, because its keys can come from the network.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final

#: Distinct messages remembered; the oldest is forgotten past this.
MAX_SEEN: Final = 512


class QuietLogger:
    """Wraps a logger: the first occurrence of a message goes out loud, repeats quietly."""

    __slots__ = ("_logger", "_seen")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _first_time(self, key: str) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        return True

    def warning(self, message: str, *args: object) -> None:
        """Log ``message`` (a constant format string; hostile text goes in ``args``) once loudly."""
        level = logging.WARNING if self._first_time(message) else logging.DEBUG
        self._logger.log(level, message, *args)

    def exception(self, message: str, *args: object) -> None:
        """Log the current exception with its traceback once, then without it at DEBUG."""
        if self._first_time(message):
            self._logger.exception(message, *args)
        else:
            self._logger.debug(message, *args)
