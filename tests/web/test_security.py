"""Security of the web layer, in process: escaping of hostile network strings, headers, CSP, templates."""

from __future__ import annotations

from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest

from agent.web._pages import templates
from agent.web._security import CSP
from tests.web.conftest import (
    DHCP_HOSTNAME,
    EVIL_VENDOR,
    MDNS_NAME,
    PAYLOADS,
    SITE,
    SNI,
    SYSDESCR,
    Fixture,
    bearer,
    sign_in,
)
from tests.web.test_pages import ADMIN_PAGES, PAGES, page_path

pytestmark = pytest.mark.anyio

EXPECTED_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: Where each hostile string is shown (so the checks below are not vacuous).
SHOWN_ON = {
    "/endpoints/{workstation}": (DHCP_HOSTNAME, SNI),
    "/endpoints/{monitor}": (MDNS_NAME, SYSDESCR),
    "/alerts/{evil}": (EVIL_VENDOR, SYSDESCR, MDNS_NAME),
    "/alerts/{chatgpt}": (SNI, DHCP_HOSTNAME),
    "/probes": (SYSDESCR,),
    "/endpoints": (DHCP_HOSTNAME, MDNS_NAME),
}


class _Elements(HTMLParser):
    """Collect what a browser could execute in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.executable: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "iframe", "object", "embed", "svg", "img", "base", "meta") and not (
            tag == "meta" and dict(attrs).get("http-equiv") is None
        ):
            self.executable.append(tag)
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith(
                ("javascript:", "data:text")
            ):
                self.executable.append(f"{tag}[{name}]")


def _escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )


async def test_the_payloads_are_shown_escaped_where_they_appear(
    client: httpx.AsyncClient, data: Fixture
) -> None:
    await sign_in(client, data.tokens.admin)
    for page, strings in SHOWN_ON.items():
        html = (await client.get(page_path(page, data))).text
        for text in strings:
            assert _escaped(text) in html, (page, text)


@pytest.mark.parametrize("page", PAGES + ADMIN_PAGES)
async def test_no_page_carries_live_markup_from_the_network(
    client: httpx.AsyncClient, data: Fixture, page: str
) -> None:
    await sign_in(client, data.tokens.admin)
    html = (await client.get(page_path(page, data))).text
    for payload in PAYLOADS:
        assert payload not in html, (page, payload)
    # Parsed as a browser would: no script element, no event handler, no javascript: URL, no frame.
    parsed = _Elements()
    parsed.feed(html)
    assert not parsed.executable, (page, parsed.executable)


async def test_the_api_returns_the_strings_as_data(client: httpx.AsyncClient, data: Fixture) -> None:
    response = await client.get(f"/api/v1/endpoints/{data.monitor}", headers=bearer(data.tokens.viewer))
    assert response.headers["content-type"] == "application/json"
    values = {obs["value"] for obs in response.json()["observations"]}
    assert {MDNS_NAME, SYSDESCR} <= values


@pytest.mark.parametrize(
    "path",
    [
        "/login",
        "/alerts",
        "/api/v1/alerts",
        "/api/openapi.json",
        "/static/lanterne.css",
        "/nowhere",
        "/api/v1/x",
    ],
)
async def test_security_headers_on_every_response(
    client: httpx.AsyncClient, data: Fixture, path: str
) -> None:
    for headers in ({}, bearer(data.tokens.viewer)):
        response = await client.get(path, headers=headers)
        assert response.headers["content-security-policy"] == EXPECTED_CSP == CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
        assert "strict-transport-security" not in response.headers
        expected_cache = "private, max-age=3600" if path.startswith("/static/") else "no-store"
        assert response.headers["cache-control"] == expected_cache


async def test_hsts_and_secure_cookies_behind_tls(
    client: httpx.AsyncClient, data: Fixture, app: object
) -> None:
    from dataclasses import replace

    from fastapi import FastAPI

    from agent.web import create_app

    assert isinstance(app, FastAPI)
    secure = create_app(
        app.state.store, replace(app.state.settings, cookie_secure=True), catalog=app.state.catalog()
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=secure), base_url="https://testserver"
    ) as tls:
        form = await tls.get("/login")
        assert form.headers["strict-transport-security"] == "max-age=31536000"
        assert "Secure" in form.headers["set-cookie"]
        csrf = await sign_in(tls, data.tokens.viewer)
        assert csrf


async def test_control_characters_are_refused_before_routing(client: httpx.AsyncClient) -> None:
    for path in ("/alerts?q=%00", "/login?next=/%0d%0aLocation:%20x", "/static/%1b.css"):
        response = await client.get(path)
        assert response.status_code == 400
        assert response.headers["content-security-policy"] == EXPECTED_CSP


async def test_static_css_is_the_only_public_resource(client: httpx.AsyncClient) -> None:
    css = await client.get("/static/lanterne.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "url(" not in css.text  # nothing fetched from elsewhere
    assert (await client.get("/static/../_pages.py")).status_code == 404


def test_every_template_autoescapes_and_none_trusts_data() -> None:
    environment = templates()
    assert environment.autoescape is True
    folder = resources.files("agent.web") / "templates"
    names = sorted(item.name for item in folder.iterdir() if item.name.endswith(".j2"))
    assert len(names) >= 14
    for name in names:
        source = (folder / name).read_text(encoding="utf-8")
        assert "|safe" not in source.replace(" ", ""), name
        assert "autoescape false" not in source, name
        assert "Markup" not in source, name
        assert "<script" not in source, name
        assert " style=" not in source, name  # inline styles would need 'unsafe-inline'
        environment.get_template(name)  # compiles


async def test_hostile_site_and_product_keys_stay_in_their_attribute(
    client: httpx.AsyncClient, data: Fixture
) -> None:
    await sign_in(client, data.tokens.viewer)
    page = await client.get(f"/alerts/{data.evil_alert}")
    # The link to the product puts the key in the query string, percent-encoded.
    assert (
        f'href="/product?site={SITE}&amp;key=unknown%3AEvil%3Cimg+src%3Dx+onerror%3Dwindow.__xss%3D1%3E"'
        in page.text
    )
    product = await client.get("/product", params={"site": SITE, "key": f"unknown:{EVIL_VENDOR}"})
    assert product.status_code == 200
    assert EVIL_VENDOR not in product.text


def test_the_checker_sees_live_markup() -> None:
    for payload in PAYLOADS:
        parsed = _Elements()
        parsed.feed(f"<p>{payload}</p><input value='{payload}'><input value=\"{payload}\">")
        assert parsed.executable, payload
