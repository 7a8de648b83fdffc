"""The application: ``create_app(store, settings)`` assembles the API, the pages and the security layer."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent._export import lanterne_version
from agent.web import _api, _pages
from agent.web._security import ApiViewer, LoginRequired, SecurityMiddleware
from agent.web._settings import WebSettings
from fingerprints import Catalog, load_catalog
from store import Store

API_PREFIX = "/api/"
OPENAPI_PATH = "/api/openapi.json"


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def create_app(
    store: Store, settings: WebSettings | None = None, *, catalog: Catalog | None = None
) -> FastAPI:
    """The Lanterne web UI and REST API over ``store`` (the catalogue loads once, on first use)."""
    settings = settings or WebSettings()
    app = FastAPI(
        title="Lanterne",
        version=lanterne_version(),
        summary="Shadow AI and medical-device discovery: alerts, evidence, decisions, the cartographie.",
        # No Swagger UI or ReDoc: they load scripts from a CDN, which the CSP forbids; the schema
        # itself is served below, to authenticated callers only.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.templates = _pages.templates()
    app.state.catalog = _catalog_loader(catalog)
    app.add_middleware(SecurityMiddleware, hsts=settings.cookie_secure)
    app.include_router(_api.router)
    app.include_router(_pages.router)
    static = resources.files("agent.web") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get(OPENAPI_PATH, include_in_schema=False)
    def openapi(_: ApiViewer) -> JSONResponse:
        """The OpenAPI schema (authenticated, like everything else)."""
        return JSONResponse(app.openapi())

    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def _catalog_loader(catalog: Catalog | None) -> Callable[[], Catalog]:
    if catalog is not None:
        return lambda: catalog
    return cache(load_catalog)


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(_pages.link("/login", next=exc.next_url), 303)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if _is_api(request):
        return await http_exception_handler(request, exc)
    response = _pages.error_page(request, exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if _is_api(request):
        return await request_validation_exception_handler(request, exc)
    return _pages.error_page(request, 400, "Invalid request: check the address or the form.")
