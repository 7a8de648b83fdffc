"""The knobs of ``lanterne serve`` (each documented where it is declared)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from agent._export import DEFAULT_TIMEZONE
from agent._reconcile import DEFAULT_LOOKBACK
from agent._users import DEFAULT_SESSION_TTL

#: Rows per page of a list, unless the request asks for fewer (or more, up to MAX_PAGE).
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 500


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """How the web UI and the API behave."""

    cookie_secure: bool = False
    """Mark cookies ``Secure`` and send HSTS: set it whenever the UI is served over TLS (a proxy)."""
    session_ttl: timedelta = DEFAULT_SESSION_TTL
    """A browser session ends this long after sign-in."""
    lookback: timedelta = DEFAULT_LOOKBACK
    """The reconciliation look-back of the pages and exports (same default as the CLI)."""
    review_interval_months: int = 12
    """Months from a decision to its next review (same default as ``lanterne review decide``)."""
    timezone: str = DEFAULT_TIMEZONE
    """Time zone of the dates shown in pages and written in CSV, XLSX and HTML exports."""
    default_site: str | None = None
    """The site the pages open on (default: every site for lists, the first site for exports)."""
    clock: Callable[[], datetime] = field(default=_utcnow, compare=False)
    """The current time (tests pass a fixed clock)."""
