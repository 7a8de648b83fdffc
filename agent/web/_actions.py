"""What the pages and the API change or produce: decisions and exports, through the CLI's own functions.

A decision is ``agent._review.decide`` followed by ``agent._reconcile.reconcile`` in one
transaction, exactly as ``lanterne review decide`` does; an export is ``agent._export.cartographie``
through the same writers as ``lanterne export``. The author of a decision is the authenticated
user, never a name the request supplies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from starlette.responses import Response

from agent._export import FORMATS, cartographie, export_meta
from agent._reconcile import ReconcileConfig, reconcile
from agent._review import ReviewError, ReviewPolicy, decide
from agent._users import Principal
from agent.web._schemas import ReviewOut
from agent.web._settings import WebSettings
from fingerprints import Catalog
from store import Store
from store._models import Alert

#: Each export format: its media type and file extension.
EXPORT_TYPES: Final = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    "json": ("application/json", "json"),
    "cyclonedx": ("application/vnd.cyclonedx+json", "cdx.json"),
    "html": ("text/html; charset=utf-8", "html"),
}
_UNSAFE_FILENAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


class NotFound(LookupError):
    """The alert or product a request names does not exist."""


@dataclass(frozen=True, slots=True)
class Export:
    """A file to download."""

    data: bytes
    media_type: str
    filename: str

    def response(self) -> Response:
        """The download: the file as an attachment under its name."""
        return Response(
            self.data,
            media_type=self.media_type,
            headers={"content-disposition": f'attachment; filename="{self.filename}"'},
        )


def record_decision(
    store: Store,
    settings: WebSettings,
    catalog: Catalog,
    principal: Principal,
    *,
    decision: str,
    reason: str,
    alert_id: int | None = None,
    site: str | None = None,
    product_key: str | None = None,
    conditions: str | None = None,
    expires_at: datetime | None = None,
) -> ReviewOut:
    """Record a decision by ``principal`` and reconcile its site; ReviewError, or NotFound for no alert."""
    now = settings.clock()
    with store.write() as session:
        if alert_id is not None:
            if session.get(Alert, alert_id) is None:
                raise NotFound(f"no alert {alert_id}")
            target: int | str = alert_id
        else:
            if not site or not product_key:
                raise ReviewError("a decision names an alert_id, or a site and a product_key")
            target = product_key
        review = decide(
            session,
            target,
            decision,
            reason,
            by=principal.name,
            now=now,
            site=site,
            conditions=conditions or None,
            expires_at=expires_at,
            policy=ReviewPolicy(review_interval_months=settings.review_interval_months),
        )
        out = ReviewOut.model_validate(review)
        # As the CLI does: bring the alerts in line with the decision at once.
        reconcile(
            session, review.site, now, config=ReconcileConfig(lookback=settings.lookback), catalog=catalog
        )
    return out


def export_file(store: Store, settings: WebSettings, catalog: Catalog, site: str, fmt: str) -> Export:
    """The cartographie of ``site`` in ``fmt``, written by the export's own writer."""
    writer = FORMATS[fmt]
    now = settings.clock()
    config = ReconcileConfig(lookback=settings.lookback)
    with store.session() as session:
        rows = cartographie(session, site, now, config=config, catalog=catalog)
    meta = export_meta(
        rows,
        site,
        now,
        catalog=catalog,
        config=config,
        policy=ReviewPolicy(review_interval_months=settings.review_interval_months),
        timezone=settings.timezone,
    )
    media_type, extension = EXPORT_TYPES[fmt]
    stem = _UNSAFE_FILENAME.sub("_", site).strip("._") or "site"
    return Export(writer(rows, meta), media_type, f"cartographie-{stem}.{extension}")
