"""Authentication, roles, CSRF and the security headers of every response.

- **API** (``/api/…``): ``Authorization: Bearer <token>`` only. No cookie is ever read there, so a
  cross-site page cannot make the browser call the API with the user's rights: no CSRF exposure.
- **Pages**: a sign-in form takes the token and opens a server-side session (``agent._users``); the
  cookie is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` behind TLS. Every form carries the
  session's synchronizer token, checked in constant time on every POST; a POST whose ``Origin``
  names another host is refused as well (browsers send ``null`` under ``no-referrer``: no
  verdict then). The sign-in form itself is protected by a double-submit cookie (no session
  yet), so nobody can sign a victim in under someone else's name.
- **Headers**: a strict Content-Security-Policy (no script at all, no inline style, no frame, no
  form to elsewhere), ``nosniff``, ``no-referrer``, ``no-store`` on everything but the CSS; HSTS
  when cookies are ``Secure``. Requests with control characters in the path or the query are
  refused before routing: no handler ever sees them.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final
from urllib.parse import unquote_to_bytes, urlsplit

from fastapi import BackgroundTasks, Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent._users import BrowserSession, Principal, authenticate, find_session, touch
from agent.web._settings import WebSettings
from fingerprints import Catalog
from store import Store
from store._models import UserRole

SESSION_COOKIE: Final = "lanterne_session"
LOGIN_COOKIE: Final = "lanterne_login"
CSRF_FIELD: Final = "csrf_token"
CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
STATIC_PREFIX: Final = "/static/"
_HEADERS: Final = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), usb=(), serial=()"),
)
_CONTROL: Final = frozenset(range(0x20)) | {0x7F}


class SecurityMiddleware:
    """Refuse control characters in the request line; add the security headers to every response."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        """Wrap ``app``."""
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        static = path.startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS:
                    headers[name] = value
                # Pages and API answers carry evidence about people's devices: never cache them.
                headers["cache-control"] = "private, max-age=3600" if static else "no-store"
                if self.hsts:
                    headers["strict-transport-security"] = "max-age=31536000"
            await send(message)

        if _has_control(path.encode("utf-8", "surrogatepass")) or _has_control(
            unquote_to_bytes(scope.get("query_string", b""))
        ):
            await _refuse(send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _has_control(data: bytes) -> bool:
    return any(byte in _CONTROL for byte in data)


async def _refuse(send: Send) -> None:
    body = b'{"detail":"control characters are not allowed in the path or the query"}'
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- the application's state ----------------------------------------------------------------------


def get_store(request: Request) -> Store:
    """The store the app serves."""
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> WebSettings:
    """The app's settings."""
    settings: WebSettings = request.app.state.settings
    return settings


def get_catalog(request: Request) -> Catalog:
    """The catalogue the app reconciles with (loaded on first use)."""
    catalog: Catalog = request.app.state.catalog()
    return catalog


def _touch_later(store: Store, principal: Principal, settings: WebSettings, tasks: BackgroundTasks) -> None:
    # Recording the last use writes: after the response, never delaying it (and never on a busy
    # database's critical path: a scan may hold SQLite's write lock for a while).
    if principal.needs_touch:
        tasks.add_task(_touch, store, principal, settings)


def _touch(store: Store, principal: Principal, settings: WebSettings) -> None:
    with store.write() as session:
        touch(session, principal, settings.clock())


# -- the API: bearer tokens -----------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token: `lanterne users add NAME --role viewer|reviewer|admin` prints one.",
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def api_principal(
    request: Request,
    tasks: BackgroundTasks,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The user of the request's bearer token, or 401."""
    if credentials is None:
        raise _unauthorized("an API token is required (Authorization: Bearer <token>)")
    store, settings = get_store(request), get_settings(request)
    with store.session() as session:
        principal = authenticate(session, credentials.credentials, settings.clock())
    if principal is None:
        raise _unauthorized("unknown or revoked token")
    _touch_later(store, principal, settings, tasks)
    return principal


def api_role(needed: UserRole) -> Callable[[Principal], Principal]:
    """A dependency: the API caller, who must have at least the role ``needed`` (else 403)."""

    def dependency(principal: Annotated[Principal, Depends(api_principal)]) -> Principal:
        if not principal.allows(needed):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {needed} role")
        return principal

    return dependency


ApiViewer = Annotated[Principal, Depends(api_role(UserRole.VIEWER))]
ApiReviewer = Annotated[Principal, Depends(api_role(UserRole.REVIEWER))]
ApiAdmin = Annotated[Principal, Depends(api_role(UserRole.ADMIN))]


# -- pages: session cookie and CSRF ---------------------------------------------------------------


class LoginRequired(Exception):
    """No live session: the page handler answers with a redirect to the sign-in form."""

    def __init__(self, next_url: str) -> None:
        """Remember where to come back to."""
        super().__init__(next_url)
        self.next_url = next_url


@dataclass(frozen=True, slots=True)
class PageUser:
    """The signed-in user of a page request, and what the page's forms must carry."""

    principal: Principal
    csrf_token: str
    cookie: str

    def allows(self, needed: UserRole) -> bool:
        """Whether the user's role includes ``needed``."""
        return self.principal.allows(needed)


def _current_url(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def page_user(request: Request, tasks: BackgroundTasks) -> PageUser:
    """The signed-in user of a page request; LoginRequired otherwise."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    store, settings = get_store(request), get_settings(request)
    browser: BrowserSession | None = None
    if cookie:
        with store.session() as session:
            browser = find_session(session, cookie, settings.clock())
    if browser is None:
        raise LoginRequired(_current_url(request) if request.method == "GET" else "/")
    _touch_later(store, browser.principal, settings, tasks)
    return PageUser(browser.principal, browser.csrf_token, cookie)


def page_role(needed: UserRole) -> Callable[[PageUser], PageUser]:
    """A dependency: the signed-in user, who must have at least the role ``needed`` (else 403)."""

    def dependency(user: Annotated[PageUser, Depends(page_user)]) -> PageUser:
        if not user.allows(needed):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {needed} role")
        return user

    return dependency


PageViewer = Annotated[PageUser, Depends(page_role(UserRole.VIEWER))]
PageReviewer = Annotated[PageUser, Depends(page_role(UserRole.REVIEWER))]
PageAdmin = Annotated[PageUser, Depends(page_role(UserRole.ADMIN))]


def same_origin(request: Request) -> bool:
    """False when the request names an ``Origin`` other than the host it was sent to."""
    origin = request.headers.get("origin")
    # Absent (non-browser clients) or "null" (what browsers send under Referrer-Policy:
    # no-referrer) says nothing either way: the CSRF token and SameSite=Strict still decide.
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def check_csrf(request: Request, expected: str, given: str | None) -> None:
    """Refuse (403) a form whose CSRF token is missing or wrong, or that comes from another origin."""
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin form refused")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or invalid form token (reload the page)")


def new_login_nonce() -> str:
    """The double-submit value of the sign-in form."""
    return secrets.token_urlsafe(32)


def safe_next(target: str | None, default: str = "/alerts") -> str:
    """A local path to return to after sign-in (anything else would be an open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(char in target for char in "\\\r\n\t") or target.startswith("/login"):
        return default
    return target


def set_cookie(response: Response, name: str, value: str, max_age: int, settings: WebSettings) -> None:
    """Set a cookie with the attributes every UI cookie has (HttpOnly, SameSite=Strict, Secure over TLS)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
    )


def clear_cookie(response: Response, name: str, settings: WebSettings) -> None:
    """Delete a cookie set by ``set_cookie``."""
    response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=settings.cookie_secure)
