"""Structured logs for the daemon: one JSON object a line on stderr, hostile strings made harmless.

Log messages quote what the network sent (host names, mDNS names, banners): a name with a newline
could forge a log line, an ANSI sequence could rewrite a terminal, a bidirectional override could
make a name read backwards. Every string that reaches a log line — the formatted message, the
exception text, the extra fields — goes through ``safe_text``: anything not printable (control,
format and separator characters, lone surrogates) becomes a visible ``\\xNN``/``\\uNNNN`` escape,
and long strings are cut. JSON output then adds its own escaping on top.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, TextIO

#: Longest message or field value kept in a log line.
MAX_FIELD: Final = 2048
#: ``LogRecord`` attributes that are not user-supplied ``extra`` fields.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_text(text: str, limit: int = MAX_FIELD) -> str:
    """``text`` bounded, with every non-printable character shown as an escape (never raw)."""
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _safe_lines(text: str) -> str:
    """A traceback: each line made safe, the line breaks kept (JSON escapes them)."""
    return "\n".join(safe_text(line) for line in text.splitlines()[:200])


def _safe_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return safe_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, then the extra fields and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must not lose the record
            message = f"{record.msg!s} {record.args!r}"
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": safe_text(message),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[safe_text(key, 64)] = _safe_value(value)
        if record.exc_info:
            entry["exception"] = _safe_lines(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """Human-readable lines (for a terminal), escaped the same way."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        """Format with the message made safe."""
        record.message = safe_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # logging's name
        """The traceback, escaped but for its line breaks."""
        return _safe_lines(super().formatException(ei))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO 8601 in UTC."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> logging.Handler:
    """Send the ``lanterne`` loggers (agent, collectors, store, fingerprints) to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in [h for h in root.handlers if getattr(h, "_lanterne", False)]:
        root.removeHandler(existing)
    handler._lanterne = True  # type: ignore[attr-defined]  # so that configuring twice replaces it
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Third-party libraries speak at WARNING and above only: their INFO is noise in a daemon's log.
    for name in ("sqlalchemy", "alembic", "scapy"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # APScheduler warns when a run is skipped because the previous one still runs: by design here
    # (max_instances=1), and it would repeat every interval of a long database outage.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, root.level))
    return handler
