"""The REST API (``/api/v1``): detections, alerts, endpoints, the declared inventory, decisions, exports.

Bearer tokens only (see ``_security``). Lists are paginated (``limit``, ``offset``; the answer says
the ``total``). A decision needs the ``reviewer`` role; users, tokens and dead letters ``admin``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from sqlalchemy import func, select

from agent._alert_channels import replay_dead_letters
from agent._export import CartographieRow
from agent._review import ReviewError, review_history
from agent._users import UnknownUser, UserError, add_user, get_user, issue_token, revoke_tokens
from agent.web import _views as views
from agent.web._actions import NotFound, export_file, record_decision
from agent.web._schemas import (
    SINGLE_LINE,
    AlertDetail,
    AlertOut,
    ChangeOut,
    DecisionIn,
    DeliveryOut,
    DetectionOut,
    EndpointDetail,
    EndpointOut,
    InventoryEntryOut,
    Me,
    Page,
    ProbeOut,
    ProductDetail,
    ReplayIn,
    ReplayOut,
    ReviewOut,
    TokenOut,
    UserIn,
    UserOut,
)
from agent.web._security import ApiAdmin, ApiReviewer, ApiViewer, get_catalog, get_settings, get_store
from agent.web._settings import DEFAULT_PAGE, MAX_PAGE
from store._models import AlertReason, DeliveryStatus, Detection, ReconciliationStatus, ReviewDecision

router = APIRouter(prefix="/api/v1")

#: The largest offset a list accepts (beyond, SQLite integers would overflow; no list is that long).
MAX_OFFSET: Final = 10_000_000
ExportFormat = Literal["csv", "xlsx", "json", "cyclonedx", "html"]

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Rows per page.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")]
Site = Annotated[str | None, Query(min_length=1, max_length=64, pattern=SINGLE_LINE, description="A site.")]
RequiredSite = Annotated[str, Query(min_length=1, max_length=64, pattern=SINGLE_LINE, description="A site.")]
ProductKey = Annotated[
    str, Query(min_length=1, max_length=160, pattern=SINGLE_LINE, description="e.g. openai-chatgpt")
]
Text = Annotated[str | None, Query(min_length=1, max_length=200, pattern=SINGLE_LINE)]
RowId = Annotated[int, Path(ge=1, le=2**53)]


@router.get("/me", response_model=Me, tags=["session"])
def me(principal: ApiViewer) -> Me:
    """Who the token belongs to."""
    return Me(name=principal.name, role=principal.role)


@router.get("/sites", response_model=list[str], tags=["inventory"])
def list_sites(request: Request, _: ApiViewer) -> list[str]:
    """Every site the store knows of."""
    with get_store(request).session() as session:
        return views.sites(session)


@router.get("/alerts", response_model=Page[AlertOut], tags=["alerts"])
def list_alerts(
    request: Request,
    _: ApiViewer,
    site: Site = None,
    state: Annotated[
        Literal["open", "closed", "all"], Query(description="open includes acknowledged")
    ] = "open",
    severity: Literal["high", "medium", "low"] | None = None,
    reason: AlertReason | None = None,
    category: Text = None,
    scope: Annotated[Literal["ai", "dmn", "other"] | None, Query(description="AI tools or DMN")] = None,
    q: Text = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[AlertOut]:
    """The alert queue: most severe and most recent first."""
    filters = views.AlertFilters(site, state, severity, reason, category, scope, q)
    with get_store(request).session() as session:
        return views.alerts_page(session, get_catalog(request), filters, limit, offset)


@router.get("/alerts/{alert_id}", response_model=AlertDetail, tags=["alerts"])
def get_alert(request: Request, _: ApiViewer, alert_id: RowId) -> AlertDetail:
    """An alert with its product's evidence, alerts and decisions."""
    with get_store(request).session() as session:
        detail = views.alert_detail(session, get_catalog(request), get_settings(request), alert_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
    return detail


@router.get("/products", response_model=list[CartographieRow], tags=["inventory"])
def list_products(
    request: Request,
    _: ApiViewer,
    site: RequiredSite,
    reconciliation_status: ReconciliationStatus | None = None,
    review_decision: ReviewDecision | None = None,
    scope: Literal["dmn_usage_professionnel", "outil_organisation_soins", "hors_perimetre"] | None = None,
) -> list[CartographieRow]:
    """The reconciled inventory of a site (the cartographie): every product with both statuses."""
    with get_store(request).session() as session:
        rows = views.product_rows(session, get_catalog(request), get_settings(request), site)
    return [
        row
        for row in rows
        if (reconciliation_status is None or row.reconciliation_status == reconciliation_status)
        and (review_decision is None or row.review_decision == review_decision)
        and (scope is None or row.has_scope == scope)
    ]


@router.get("/product", response_model=ProductDetail, tags=["inventory"])
def get_product(request: Request, _: ApiViewer, site: RequiredSite, product_key: ProductKey) -> ProductDetail:
    """A product of a site: its row, evidence (detections and endpoints), alerts and decisions."""
    with get_store(request).session() as session:
        detail = views.product_detail(session, get_catalog(request), get_settings(request), site, product_key)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no product {product_key!r} at site {site!r}")
    return detail


@router.get("/detections", response_model=Page[DetectionOut], tags=["evidence"])
def list_detections(
    request: Request,
    _: ApiViewer,
    site: Site = None,
    product_key: Annotated[str | None, Query(min_length=1, max_length=160, pattern=SINGLE_LINE)] = None,
    endpoint_id: Annotated[int | None, Query(ge=1, le=2**53)] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[DetectionOut]:
    """Detections (a product seen at an endpoint, with evidence), most recent first."""
    conditions: list[Any] = []
    if site:
        conditions.append(Detection.site == site)
    if product_key:
        conditions.append(Detection.product_key == product_key)
    if endpoint_id is not None:
        conditions.append(Detection.endpoint_id == endpoint_id)
    with get_store(request).session() as session:
        total = session.scalar(select(func.count()).select_from(Detection).where(*conditions)) or 0
        items = views.detections(session, conditions, limit, offset)
    return Page[DetectionOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/endpoints", response_model=Page[EndpointOut], tags=["evidence"])
def list_endpoints(
    request: Request,
    _: ApiViewer,
    site: Site = None,
    q: Text = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[EndpointOut]:
    """Endpoints, most recently seen first (``q``: host name, address, MAC or vendor)."""
    with get_store(request).session() as session:
        return views.endpoints_page(session, site, q, limit, offset)


@router.get("/endpoints/{endpoint_id}", response_model=EndpointDetail, tags=["evidence"])
def get_endpoint(request: Request, _: ApiViewer, endpoint_id: RowId) -> EndpointDetail:
    """An endpoint with its observations and detections."""
    with get_store(request).session() as session:
        detail = views.endpoint_detail(session, endpoint_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no endpoint {endpoint_id}")
    return detail


@router.get("/inventory", response_model=Page[InventoryEntryOut], tags=["inventory"])
def list_inventory(
    request: Request,
    _: ApiViewer,
    site: Site = None,
    active: bool | None = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[InventoryEntryOut]:
    """The declared inventory entries, as imported."""
    with get_store(request).session() as session:
        return views.inventory_page(session, site, active, limit, offset)


@router.get("/decisions", response_model=list[ReviewOut], tags=["decisions"])
def list_decisions(
    request: Request, _: ApiViewer, site: RequiredSite, product_key: ProductKey
) -> list[ReviewOut]:
    """Every decision about a product, oldest first."""
    with get_store(request).session() as session:
        return [ReviewOut.model_validate(review) for review in review_history(session, site, product_key)]


@router.post(
    "/decisions",
    response_model=ReviewOut,
    status_code=status.HTTP_201_CREATED,
    tags=["decisions"],
    responses={404: {"description": "No such alert or product"}, 422: {"description": "Invalid decision"}},
)
def create_decision(request: Request, principal: ApiReviewer, body: DecisionIn) -> ReviewOut:
    """Record a decision (its author is the token's user); closes the product's open alerts."""
    try:
        return record_decision(
            get_store(request),
            get_settings(request),
            get_catalog(request),
            principal,
            decision=body.decision,
            reason=body.reason,
            alert_id=body.alert_id,
            site=body.site,
            product_key=body.product_key,
            conditions=body.conditions,
            expires_at=body.expires_at,
        )
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ReviewError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.get(
    "/exports/{export_format}",
    tags=["exports"],
    response_class=Response,
    responses={200: {"description": "The cartographie file", "content": {"application/octet-stream": {}}}},
)
def download_export(
    request: Request, _: ApiViewer, export_format: ExportFormat, site: RequiredSite
) -> Response:
    """The cartographie of a site as CSV, XLSX, JSON, CycloneDX or HTML (the CLI's writers)."""
    return export_file(
        get_store(request), get_settings(request), get_catalog(request), site, export_format
    ).response()


@router.get("/probes", response_model=Page[ProbeOut], tags=["evidence"])
def list_probes(
    request: Request,
    _: ApiViewer,
    target: Text = None,
    protocol: Text = None,
    outcome: Text = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[ProbeOut]:
    """The probe log: every active probe sent, most recent first."""
    with get_store(request).session() as session:
        return views.probes_page(session, target, protocol, outcome, limit, offset)


@router.get("/changes", response_model=Page[ChangeOut], tags=["decisions"])
def list_changes(
    request: Request,
    _: ApiViewer,
    site: Site = None,
    action: Text = None,
    actor: Text = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[ChangeOut]:
    """The change log of the cartographie (who changed what, when), most recent first."""
    with get_store(request).session() as session:
        return views.changes_page(session, site, action, actor, limit, offset)


# -- administration -------------------------------------------------------------------------------


@router.get("/users", response_model=list[UserOut], tags=["admin"])
def list_users(request: Request, _: ApiAdmin) -> list[UserOut]:
    """Every user and their number of live tokens."""
    with get_store(request).session() as session:
        return views.users(session)


@router.post("/users", response_model=TokenOut, status_code=status.HTTP_201_CREATED, tags=["admin"])
def create_user(request: Request, principal: ApiAdmin, body: UserIn) -> TokenOut:
    """Create a user; the answer carries their token, shown this once."""
    try:
        with get_store(request).write() as session:
            user, token = add_user(session, body.name, body.role, get_settings(request).clock())
    except UserError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return TokenOut(name=user.name, role=user.role, token=token)


@router.post("/users/tokens", response_model=TokenOut, status_code=status.HTTP_201_CREATED, tags=["admin"])
def create_token(
    request: Request,
    _: ApiAdmin,
    name: Annotated[str, Query(min_length=1, max_length=128, pattern=SINGLE_LINE)],
) -> TokenOut:
    """Issue another token for a user (shown this once)."""
    try:
        with get_store(request).write() as session:
            user = get_user(session, name)
            token = issue_token(session, user, get_settings(request).clock())
    except UnknownUser as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return TokenOut(name=user.name, role=user.role, token=token)


@router.post("/users/revoke", response_model=dict[str, int], tags=["admin"])
def revoke_user_tokens(
    request: Request,
    _: ApiAdmin,
    name: Annotated[str, Query(min_length=1, max_length=128, pattern=SINGLE_LINE)],
) -> dict[str, int]:
    """Revoke every token of a user (and end their browser sessions)."""
    try:
        with get_store(request).write() as session:
            revoked = revoke_tokens(session, get_user(session, name), get_settings(request).clock())
    except UnknownUser as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return {"revoked": revoked}


@router.get("/deliveries", response_model=Page[DeliveryOut], tags=["admin"])
def list_deliveries(
    request: Request,
    _: ApiAdmin,
    channel: Text = None,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> Page[DeliveryOut]:
    """The alert channels' outbox (``status=dead``: the dead letters)."""
    with get_store(request).session() as session:
        return views.deliveries_page(session, channel, delivery_status, limit, offset)


@router.post("/deliveries/replay", response_model=ReplayOut, tags=["admin"])
def replay_deliveries(request: Request, _: ApiAdmin, body: ReplayIn) -> ReplayOut:
    """Queue dead letters again (the next delivery run sends them)."""
    with get_store(request).write() as session:
        count = replay_dead_letters(
            session, get_settings(request).clock(), channel=body.channel, ids=body.ids
        )
    return ReplayOut(replayed=count)
