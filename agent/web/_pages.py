"""The server-rendered pages: alert queue, alert and product evidence, decision form, inventory, exports.

Jinja2 with autoescaping on for every template (and ``StrictUndefined``); no template marks data
``|safe``. Forms post back to these routes with the session's CSRF token; no JavaScript at all.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from agent._alert_channels import replay_dead_letters
from agent._export import HAS_SCOPE_LABELS, HAS_SCOPES
from agent._review import DECISIONS, ReviewError
from agent._users import (
    UserError,
    add_user,
    authenticate,
    close_session,
    get_user,
    open_session,
    revoke_tokens,
)
from agent.web import _views as views
from agent.web._actions import EXPORT_TYPES, NotFound, export_file, record_decision
from agent.web._schemas import SINGLE_LINE
from agent.web._security import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    PageAdmin,
    PageReviewer,
    PageUser,
    PageViewer,
    check_csrf,
    clear_cookie,
    get_catalog,
    get_settings,
    get_store,
    new_login_nonce,
    safe_next,
    same_origin,
    set_cookie,
)
from agent.web._settings import DEFAULT_PAGE, MAX_PAGE
from fingerprints._vocabulary import Category
from store._inventory import parse_date
from store._models import AlertReason, DeliveryStatus, ReconciliationStatus, ReviewDecision, UserRole

router = APIRouter(include_in_schema=False)

MAX_OFFSET: Final = 10_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Site = Annotated[str | None, Query(max_length=64, pattern=SINGLE_LINE)]
Text = Annotated[str | None, Query(max_length=200, pattern=SINGLE_LINE)]
RowId = Annotated[int, Path(ge=1, le=2**53)]
FormText = Annotated[str | None, Form(max_length=4000)]
LOGIN_NONCE_AGE: Final = 600


@cache
def templates() -> Environment:
    """The pages' Jinja2 environment: autoescape all, fail on undefined names (shared: compiled once)."""
    environment = Environment(
        loader=PackageLoader("agent.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals.update(
        link=link,
        decisions=[str(decision) for decision in DECISIONS],
        reasons=[str(reason) for reason in AlertReason],
        statuses=[str(value) for value in ReconciliationStatus],
        review_decisions=[str(value) for value in ReviewDecision],
        categories=[str(value) for value in Category],
        has_scopes=HAS_SCOPES,
        has_scope_labels=HAS_SCOPE_LABELS,
        roles=[str(role) for role in UserRole],
        csrf_field=CSRF_FIELD,
    )
    environment.filters["listed"] = lambda values: ", ".join(str(value) for value in values or ())
    return environment


def link(path: str, **params: Any) -> str:
    """``path`` with the non-empty ``params`` as its query string (the template escapes the ``&``)."""
    query = urlencode({key: value for key, value in params.items() if value not in (None, "")})
    return f"{path}?{query}" if query else path


def product_link(site: str, key: str) -> str:
    """The page of a product."""
    return link("/product", site=site, key=key)


def _render(request: Request, name: str, context: Mapping[str, Any], status_code: int = 200) -> HTMLResponse:
    settings = get_settings(request)
    zone = ZoneInfo(settings.timezone)

    def when(value: datetime | str | None) -> str:
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return value
        else:
            parsed = value
        return parsed.astimezone(zone).strftime("%d/%m/%Y %H:%M")

    environment: Environment = request.app.state.templates
    html = environment.get_template(name).render(
        request_path=request.url.path,
        when=when,
        product_link=product_link,
        timezone=settings.timezone,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    """An error page (no navigation: the request may not be signed in)."""
    return _render(
        request, "error.html.j2", {"user": None, "status_code": status_code, "message": message}, status_code
    )


def _base(user: PageUser) -> dict[str, Any]:
    return {
        "user": user.principal,
        "csrf_token": user.csrf_token,
        "can_decide": user.allows(UserRole.REVIEWER),
        "is_admin": user.allows(UserRole.ADMIN),
    }


def _sites(request: Request) -> list[str]:
    with get_store(request).session() as session:
        return views.sites(session)


# -- sign-in --------------------------------------------------------------------------------------


def _login_page(
    request: Request, next_url: str, error: str | None = None, status_code: int = 200
) -> Response:
    nonce = new_login_nonce()
    response = _render(
        request,
        "login.html.j2",
        {"user": None, "nonce": nonce, "next": next_url, "error": error},
        status_code=status_code,
    )
    set_cookie(response, LOGIN_COOKIE, nonce, LOGIN_NONCE_AGE, get_settings(request))
    return response


@router.get("/login")
def login_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    """The sign-in form."""
    return _login_page(request, safe_next(next))


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str | None, Form(max_length=200)] = None,
    nonce: Annotated[str | None, Form(max_length=200)] = None,
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    """Check the token and open a session (the form is protected by a double-submit cookie)."""
    expected = request.cookies.get(LOGIN_COOKIE, "")
    target = safe_next(next)
    if not same_origin(request) or not nonce or not expected or not _equal(nonce, expected):
        return _login_page(request, target, "The form expired: sign in again.", status.HTTP_403_FORBIDDEN)
    settings, store = get_settings(request), get_store(request)
    now = settings.clock()
    with store.write() as session:
        principal = authenticate(session, (token or "").strip(), now)
        if principal is None:
            cookie = None
        else:
            cookie, _browser = open_session(session, principal, now, settings.session_ttl)
    if cookie is None:
        return _login_page(request, target, "Unknown or revoked token.", status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    set_cookie(response, SESSION_COOKIE, cookie, int(settings.session_ttl.total_seconds()), settings)
    clear_cookie(response, LOGIN_COOKIE, settings)
    return response


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@router.post("/logout")
def logout(request: Request, user: PageViewer, csrf_token: FormText = None) -> Response:
    """Close the session."""
    check_csrf(request, user.csrf_token, csrf_token)
    with get_store(request).write() as session:
        close_session(session, user.cookie)
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    clear_cookie(response, SESSION_COOKIE, get_settings(request))
    return response


@router.get("/")
def home(_: PageViewer) -> Response:
    """The alert queue is the home page."""
    return RedirectResponse("/alerts", status.HTTP_303_SEE_OTHER)


# -- alerts and products --------------------------------------------------------------------------


@router.get("/alerts")
def alerts(
    request: Request,
    user: PageViewer,
    site: Site = None,
    state: Literal["open", "closed", "all"] = "open",
    severity: Literal["high", "medium", "low", ""] | None = None,
    reason: AlertReason | Literal[""] | None = None,
    category: Text = None,
    scope: Literal["ai", "dmn", "other", ""] | None = None,
    q: Text = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """The alert queue, filterable by site, state, severity, reason, category and AI/DMN."""
    filters = views.AlertFilters(
        site or None, state, severity or None, reason or None, category or None, scope or None, q or None
    )
    with get_store(request).session() as session:
        page = views.alerts_page(session, get_catalog(request), filters, limit, offset)
    params = {
        "site": filters.site,
        "state": state,
        "severity": filters.severity,
        "reason": filters.reason,
        "category": filters.category,
        "scope": filters.scope,
        "q": filters.q,
    }
    return _render(
        request,
        "alerts.html.j2",
        {**_base(user), "page": page, "filters": params, "sites": _sites(request)},
    )


def _decision_values(**values: Any) -> dict[str, Any]:
    defaults = {"decision": "", "reason": "", "conditions": "", "expires": ""}
    return {**defaults, **{key: value for key, value in values.items() if value is not None}}


@router.get("/alerts/{alert_id}")
def alert_page(
    request: Request,
    user: PageViewer,
    alert_id: RowId,
    decided: Annotated[int | None, Query(ge=1, le=2**53)] = None,
) -> Response:
    """An alert: its product's evidence, the decision form and the history."""
    return _alert_response(request, user, alert_id, decided=decided)


def _alert_response(
    request: Request,
    user: PageUser,
    alert_id: int,
    *,
    decided: int | None = None,
    error: str | None = None,
    form: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    with get_store(request).session() as session:
        detail = views.alert_detail(session, get_catalog(request), get_settings(request), alert_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
    context = {
        **_base(user),
        "alert": detail.alert,
        "product": detail.product,
        "decided": decided,
        "error": error,
        "form": form or _decision_values(),
    }
    return _render(request, "alert.html.j2", context, status_code)


@router.get("/product")
def product_page(
    request: Request,
    user: PageViewer,
    site: Annotated[str, Query(min_length=1, max_length=64, pattern=SINGLE_LINE)],
    key: Annotated[str, Query(min_length=1, max_length=160, pattern=SINGLE_LINE)],
    decided: Annotated[int | None, Query(ge=1, le=2**53)] = None,
) -> Response:
    """A product of a site: evidence, alerts, the decision form and the history."""
    return _product_response(request, user, site, key, decided=decided)


def _product_response(
    request: Request,
    user: PageUser,
    site: str,
    key: str,
    *,
    decided: int | None = None,
    error: str | None = None,
    form: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    with get_store(request).session() as session:
        detail = views.product_detail(session, get_catalog(request), get_settings(request), site, key)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such product at this site")
    context = {
        **_base(user),
        "product": detail,
        "decided": decided,
        "error": error,
        "form": form or _decision_values(),
    }
    return _render(request, "product.html.j2", context, status_code)


@router.post("/decide")
def decide_form(
    request: Request,
    user: PageReviewer,
    csrf_token: FormText = None,
    alert_id: Annotated[str | None, Form(max_length=20)] = None,
    site: Annotated[str | None, Form(max_length=64)] = None,
    product_key: Annotated[str | None, Form(max_length=160)] = None,
    decision: Annotated[str | None, Form(max_length=64)] = None,
    reason: FormText = None,
    conditions: FormText = None,
    expires: Annotated[str | None, Form(max_length=40)] = None,
) -> Response:
    """Record a decision made in the form (same function as ``lanterne review decide``)."""
    check_csrf(request, user.csrf_token, csrf_token)
    alert = (
        int(alert_id)
        if alert_id and alert_id.isascii() and alert_id.isdigit() and len(alert_id) < 16
        else None
    )
    form = _decision_values(decision=decision, reason=reason, conditions=conditions, expires=expires)

    def again(message: str) -> Response:
        if alert is not None:
            return _alert_response(
                request,
                user,
                alert,
                error=message,
                form=form,
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        if site and product_key:
            return _product_response(
                request,
                user,
                site,
                product_key,
                error=message,
                form=form,
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            )
        raise HTTPException(status.HTTP_400_BAD_REQUEST, message)

    expires_at = None
    if expires and expires.strip():
        try:
            expires_at = parse_date(expires)
        except ValueError:
            return again("The expiry is not a date (JJ/MM/AAAA or AAAA-MM-JJ).")
        if not 2000 <= expires_at.year <= 2999:
            return again("The expiry must be between 2000 and 2999.")
    try:
        review = record_decision(
            get_store(request),
            get_settings(request),
            get_catalog(request),
            user.principal,
            decision=decision or "",
            reason=reason or "",
            alert_id=alert,
            site=None if alert is not None else site,
            product_key=None if alert is not None else product_key,
            conditions=(conditions or "").strip() or None,
            expires_at=expires_at,
        )
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ReviewError as exc:
        return again(str(exc))
    if alert is not None:
        target = link(f"/alerts/{alert}", decided=review.id)
    else:
        target = link("/product", site=review.site, key=review.product_key, decided=review.id)
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


# -- inventory, endpoints, exports, logs ----------------------------------------------------------


@router.get("/inventory")
def inventory(
    request: Request,
    user: PageViewer,
    site: Site = None,
    reconciliation_status: ReconciliationStatus | Literal[""] | None = None,
    review_decision: ReviewDecision | Literal[""] | None = None,
) -> Response:
    """The reconciled inventory of a site: every product with both statuses, then the declared entries."""
    known = _sites(request)
    chosen = site or get_settings(request).default_site or (known[0] if known else None)
    rows: list[Any] = []
    entries: Any = None
    with get_store(request).session() as session:
        if chosen:
            rows = views.product_rows(session, get_catalog(request), get_settings(request), chosen)
            entries = views.inventory_page(session, chosen, None, MAX_PAGE, 0)
    rows = [
        row
        for row in rows
        if (not reconciliation_status or row.reconciliation_status == reconciliation_status)
        and (not review_decision or row.review_decision == review_decision)
    ]
    return _render(
        request,
        "inventory.html.j2",
        {
            **_base(user),
            "site": chosen,
            "sites": known,
            "rows": rows,
            "entries": entries,
            "filters": {"reconciliation_status": reconciliation_status, "review_decision": review_decision},
        },
    )


@router.get("/endpoints")
def endpoints(
    request: Request,
    user: PageViewer,
    site: Site = None,
    q: Text = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """Endpoints, most recently seen first."""
    with get_store(request).session() as session:
        page = views.endpoints_page(session, site or None, q or None, limit, offset)
    return _render(
        request,
        "endpoints.html.j2",
        {**_base(user), "page": page, "filters": {"site": site, "q": q}, "sites": _sites(request)},
    )


@router.get("/endpoints/{endpoint_id}")
def endpoint_page(request: Request, user: PageViewer, endpoint_id: RowId) -> Response:
    """An endpoint: what it was seen doing, and the products detected at it."""
    with get_store(request).session() as session:
        detail = views.endpoint_detail(session, endpoint_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no endpoint {endpoint_id}")
    return _render(request, "endpoint.html.j2", {**_base(user), "detail": detail})


@router.get("/exports")
def exports(request: Request, user: PageViewer) -> Response:
    """The export downloads, per site and format."""
    return _render(
        request, "exports.html.j2", {**_base(user), "sites": _sites(request), "formats": list(EXPORT_TYPES)}
    )


@router.get("/exports/download")
def export_download(
    request: Request,
    _: PageViewer,
    site: Annotated[str, Query(min_length=1, max_length=64, pattern=SINGLE_LINE)],
    export_format: Annotated[Literal["csv", "xlsx", "json", "cyclonedx", "html"], Query(alias="format")],
) -> Response:
    """Download the cartographie of a site (the export's own writers)."""
    return export_file(
        get_store(request), get_settings(request), get_catalog(request), site, export_format
    ).response()


@router.get("/probes")
def probes(
    request: Request,
    user: PageViewer,
    target: Text = None,
    protocol: Text = None,
    outcome: Text = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """The probe log: every active probe sent."""
    with get_store(request).session() as session:
        page = views.probes_page(session, target or None, protocol or None, outcome or None, limit, offset)
    filters = {"target": target, "protocol": protocol, "outcome": outcome}
    return _render(request, "probes.html.j2", {**_base(user), "page": page, "filters": filters})


@router.get("/changes")
def changes(
    request: Request,
    user: PageViewer,
    site: Site = None,
    action: Text = None,
    actor: Text = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """The change log: who changed what, when."""
    with get_store(request).session() as session:
        page = views.changes_page(session, site or None, action or None, actor or None, limit, offset)
    filters = {"site": site, "action": action, "actor": actor}
    return _render(
        request,
        "changes.html.j2",
        {**_base(user), "page": page, "filters": filters, "sites": _sites(request)},
    )


# -- administration -------------------------------------------------------------------------------


def _users_page(
    request: Request,
    user: PageUser,
    *,
    issued: Mapping[str, str] | None = None,
    error: str | None = None,
    code: int = 200,
) -> Response:
    with get_store(request).session() as session:
        people = views.users(session)
    return _render(
        request,
        "admin_users.html.j2",
        {**_base(user), "people": people, "issued": issued, "error": error},
        code,
    )


@router.get("/admin/users")
def admin_users(request: Request, user: PageAdmin) -> Response:
    """People and their roles."""
    return _users_page(request, user)


@router.post("/admin/users")
def admin_add_user(
    request: Request,
    user: PageAdmin,
    csrf_token: FormText = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
    role: Annotated[str | None, Form(max_length=32)] = None,
) -> Response:
    """Create a user; the page shows their token this once."""
    check_csrf(request, user.csrf_token, csrf_token)
    try:
        with get_store(request).write() as session:
            created, token = add_user(session, name or "", role or "", get_settings(request).clock())
    except UserError as exc:
        return _users_page(request, user, error=str(exc), code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    return _users_page(
        request, user, issued={"name": created.name, "role": str(created.role), "token": token}
    )


@router.post("/admin/users/revoke")
def admin_revoke(
    request: Request,
    user: PageAdmin,
    csrf_token: FormText = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    """Revoke every token of a user (and end their sessions)."""
    check_csrf(request, user.csrf_token, csrf_token)
    try:
        with get_store(request).write() as session:
            revoke_tokens(session, get_user(session, name or ""), get_settings(request).clock())
    except UserError as exc:
        return _users_page(request, user, error=str(exc), code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    return RedirectResponse("/admin/users", status.HTTP_303_SEE_OTHER)


@router.get("/admin/deliveries")
def admin_deliveries(
    request: Request,
    user: PageAdmin,
    channel: Text = None,
    delivery_status: Annotated[
        Literal["pending", "delivered", "dead", ""] | None, Query(alias="status")
    ] = "dead",
    offset: Offset = 0,
    limit: Limit = DEFAULT_PAGE,
) -> Response:
    """The alert channels' outbox (dead letters first)."""
    wanted = DeliveryStatus(delivery_status) if delivery_status else None
    with get_store(request).session() as session:
        page = views.deliveries_page(session, channel or None, wanted, limit, offset)
    filters = {"channel": channel, "status": delivery_status or ""}
    return _render(request, "admin_deliveries.html.j2", {**_base(user), "page": page, "filters": filters})


@router.post("/admin/deliveries/replay")
def admin_replay(
    request: Request,
    user: PageAdmin,
    csrf_token: FormText = None,
    channel: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    """Queue the dead letters again (the next delivery run sends them)."""
    check_csrf(request, user.csrf_token, csrf_token)
    with get_store(request).write() as session:
        replay_dead_letters(session, get_settings(request).clock(), channel=channel or None)
    return RedirectResponse("/admin/deliveries?status=pending", status.HTTP_303_SEE_OTHER)
