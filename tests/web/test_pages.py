"""The server-rendered pages, in process: sign-in, every page, the decision form, CSRF, roles."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from agent.web import WebSettings, create_app
from fingerprints import Catalog
from store import Store
from store._models import Review, WebSession
from tests.web.conftest import NOW, SITE, Fixture, _hidden, sign_in

pytestmark = pytest.mark.anyio

#: Every page a viewer may open (ids filled from the fixture).
PAGES = (
    "/alerts",
    "/alerts?state=all&severity=high&scope=dmn&reason=unknown_observed&category=medical_device&q=evil",
    "/alerts?site=ch-web&state=closed",
    "/alerts/{chatgpt}",
    "/alerts/{evil}",
    "/alerts/{device}",
    f"/product?site={SITE}&key=openai-chatgpt",
    f"/product?site={SITE}&key=nuance-dmo",
    "/inventory",
    f"/inventory?site={SITE}&reconciliation_status=undeclared_observed&review_decision=pending_review",
    "/endpoints",
    "/endpoints?q=pc&site=ch-web",
    "/endpoints/{workstation}",
    "/endpoints/{monitor}",
    "/exports",
    "/probes",
    "/probes?protocol=snmp&outcome=ok&target=10.2.0.20",
    "/changes",
    "/changes?site=ch-web&action=alert&actor=lanterne",
)
ADMIN_PAGES = ("/admin/users", "/admin/deliveries", "/admin/deliveries?status=&channel=siem")


def page_path(template: str, data: Fixture) -> str:
    """A page's path with the fixture's ids."""
    return template.format(
        chatgpt=data.chatgpt_alert,
        evil=data.evil_alert,
        device=data.device_alert,
        workstation=data.workstation,
        monitor=data.monitor,
    )


def text_of(html: str) -> str:
    """The visible text of a page, roughly (tags dropped, entities decoded)."""
    return unescape(re.sub(r"<[^>]+>", " ", html))


@pytest.mark.parametrize("page", PAGES + ADMIN_PAGES + ("/",))
async def test_every_page_needs_a_session(client: httpx.AsyncClient, data: Fixture, page: str) -> None:
    path = page_path(page, data)
    response = await client.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")
    client.cookies.set("lanterne_session", "forged")
    wrong = await client.get(path)
    assert wrong.status_code == 303


@pytest.mark.parametrize("page", PAGES)
async def test_every_page_renders_for_a_viewer(client: httpx.AsyncClient, data: Fixture, page: str) -> None:
    await sign_in(client, data.tokens.viewer)
    response = await client.get(page_path(page, data))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "victor-viewer" in response.text


async def test_admin_pages(client: httpx.AsyncClient, data: Fixture) -> None:
    await sign_in(client, data.tokens.reviewer)
    for page in ADMIN_PAGES:
        assert (await client.get(page)).status_code == 403
    await client.post(
        "/logout", data={"csrf_token": _hidden((await client.get("/alerts")).text, "csrf_token")}
    )
    await sign_in(client, data.tokens.admin)
    for page in ADMIN_PAGES:
        assert (await client.get(page)).status_code == 200


async def test_sign_in_and_out(client: httpx.AsyncClient, data: Fixture, store: Store) -> None:
    form = await client.get("/login?next=/inventory")
    assert form.status_code == 200
    assert 'name="next" value="/inventory"' in form.text
    nonce = _hidden(form.text, "nonce")
    wrong = await client.post("/login", data={"token": "lnt_nope", "nonce": nonce, "next": "/inventory"})
    assert wrong.status_code == 401
    assert "Unknown or revoked token" in wrong.text
    nonce = _hidden(wrong.text, "nonce")
    response = await client.post(
        "/login", data={"token": data.tokens.viewer, "nonce": nonce, "next": "/inventory"}
    )
    assert (response.status_code, response.headers["location"]) == (303, "/inventory")
    cookie = response.headers["set-cookie"]
    assert "lanterne_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    with store.session() as session:
        (stored,) = session.scalars(select(WebSession)).all()
    assert client.cookies["lanterne_session"] not in stored.id_hash  # only its hash is kept
    page = await client.get("/alerts")
    csrf = _hidden(page.text, "csrf_token")
    refused = await client.post("/logout", data={})
    assert refused.status_code == 403
    out = await client.post("/logout", data={"csrf_token": csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert (await client.get("/alerts")).status_code == 303
    with store.session() as session:
        assert session.scalars(select(WebSession)).all() == []


async def test_sign_in_form_refuses_a_forged_post(client: httpx.AsyncClient, data: Fixture) -> None:
    # No double-submit cookie: a cross-site form cannot sign the victim in under another name.
    response = await client.post("/login", data={"token": data.tokens.viewer, "nonce": "x", "next": "/"})
    assert response.status_code == 403
    assert "lanterne_session" not in response.headers.get("set-cookie", "")
    form = await client.get("/login")
    nonce = _hidden(form.text, "nonce")
    other = await client.post(
        "/login",
        data={"token": data.tokens.viewer, "nonce": nonce, "next": "/"},
        headers={"Origin": "https://evil.example"},
    )
    assert other.status_code == 403


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/product?site=a&key=b", "/product?site=a&key=b"),
        ("https://evil.example/", "/alerts"),
        ("//evil.example/", "/alerts"),
        ("/\\evil.example", "/alerts"),
        ("/login", "/alerts"),
        ("", "/alerts"),
    ],
)
async def test_sign_in_returns_only_to_local_pages(
    client: httpx.AsyncClient, data: Fixture, target: str, expected: str
) -> None:
    nonce = _hidden((await client.get("/login")).text, "nonce")
    response = await client.post("/login", data={"token": data.tokens.viewer, "nonce": nonce, "next": target})
    assert response.headers["location"] == expected


async def test_sessions_expire_and_die_with_their_token(
    store: Store, data: Fixture, catalog: Catalog
) -> None:
    clock = {"now": NOW}
    app = create_app(
        store, WebSettings(clock=lambda: clock["now"], session_ttl=timedelta(hours=1)), catalog=catalog
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        await sign_in(client, data.tokens.viewer)
        clock["now"] = NOW + timedelta(minutes=59)
        assert (await client.get("/alerts")).status_code == 200
        clock["now"] = NOW + timedelta(hours=1, seconds=1)
        assert (await client.get("/alerts")).status_code == 303
        clock["now"] = NOW
        await sign_in(client, data.tokens.viewer)
        from agent._users import get_user, revoke_tokens

        with store.write() as session:
            revoke_tokens(session, get_user(session, "victor-viewer"), NOW)
        assert (await client.get("/alerts")).status_code == 303


async def _decision_form(client: httpx.AsyncClient, path: str) -> dict[str, str]:
    page = await client.get(path)
    assert page.status_code == 200
    form = page.text[page.text.index('action="/decide"') :]
    return {name: _hidden(form, name) for name in ("csrf_token", "site", "product_key")} | (
        {"alert_id": _hidden(form, "alert_id")} if 'name="alert_id"' in form.split("</form>")[0] else {}
    )


async def test_a_reviewer_decides_through_the_form(
    client: httpx.AsyncClient, data: Fixture, store: Store
) -> None:
    await sign_in(client, data.tokens.reviewer)
    path = f"/alerts/{data.chatgpt_alert}"
    fields = await _decision_form(client, path)
    assert fields["alert_id"] == str(data.chatgpt_alert)
    response = await client.post(
        "/decide",
        data={
            **fields,
            "decision": "approved_with_conditions",
            "reason": "Pilote <b>encadré</b>",
            "conditions": "Pas de données patients",
            "expires": "2027-06-30",
        },
    )
    assert response.status_code == 303, response.text
    with store.session() as session:
        (review,) = session.scalars(select(Review)).all()
    assert (review.decided_by, review.decision, review.reason) == (
        "rita-reviewer",
        "approved_with_conditions",
        "Pilote <b>encadré</b>",
    )
    assert response.headers["location"] == f"{path}?decided={review.id}"
    page = await client.get(response.headers["location"])
    assert f"Decision #{review.id} recorded" in page.text
    assert "Pilote &lt;b&gt;encadré&lt;/b&gt;" in page.text
    assert "closed" in text_of(page.text)
    product = await client.get(f"/product?site={SITE}&key=openai-chatgpt")
    assert "rita-reviewer" in product.text
    assert "approved_with_conditions" in product.text
    inventory = await client.get(f"/inventory?site={SITE}&review_decision=approved_with_conditions")
    assert "openai-chatgpt" in inventory.text


async def test_a_decision_by_product_and_its_errors(
    client: httpx.AsyncClient, data: Fixture, store: Store
) -> None:
    await sign_in(client, data.tokens.reviewer)
    fields = await _decision_form(client, f"/product?site={SITE}&key=nuance-dmo")
    assert "alert_id" not in fields
    missing = await client.post(
        "/decide",
        data={**fields, "decision": "approved_with_conditions", "reason": "Essai", "expires": "31/02/2027"},
    )
    assert missing.status_code == 422
    assert "not a date" in missing.text
    assert ">Essai</textarea>" in missing.text  # what was typed is kept
    nothing = await client.post("/decide", data={**fields, "decision": "approved", "reason": "  "})
    assert nothing.status_code == 422
    assert "needs a reason" in nothing.text
    done = await client.post("/decide", data={**fields, "decision": "retired", "reason": "Remplacé en 2026"})
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/product?site={SITE}&key=nuance-dmo&decided=")
    unknown = await client.post(
        "/decide",
        data={
            "csrf_token": fields["csrf_token"],
            "alert_id": "999999",
            "decision": "approved",
            "reason": "x",
        },
    )
    assert unknown.status_code == 404
    odd = await client.post(
        "/decide",
        data={
            "csrf_token": fields["csrf_token"],
            "alert_id": "\u00b2",
            "decision": "approved",
            "reason": "x",
        },
    )
    assert odd.status_code == 400  # neither an alert nor a product: nothing to decide on


async def test_csrf_and_roles_guard_the_decision_form(
    client: httpx.AsyncClient, data: Fixture, store: Store
) -> None:
    await sign_in(client, data.tokens.reviewer)
    fields = await _decision_form(client, f"/alerts/{data.chatgpt_alert}")
    decision = {"decision": "approved", "reason": "ok"}
    no_token = {key: value for key, value in fields.items() if key != "csrf_token"}
    assert (await client.post("/decide", data={**no_token, **decision})).status_code == 403
    assert (
        await client.post("/decide", data={**fields, **decision, "csrf_token": "forged"})
    ).status_code == 403
    cross = await client.post(
        "/decide", data={**fields, **decision}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    with store.session() as session:
        assert session.scalars(select(Review)).all() == []
    # Another session's token is not this session's token.
    other = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    async with other:
        other_csrf = await sign_in(other, data.tokens.reviewer)
    assert (
        await client.post("/decide", data={**fields, **decision, "csrf_token": other_csrf})
    ).status_code == 403
    # The same form with its token goes through; "null" (no-referrer) origins give no verdict.
    ok = await client.post("/decide", data={**fields, **decision}, headers={"Origin": "null"})
    assert ok.status_code == 303


async def test_a_viewer_cannot_decide(client: httpx.AsyncClient, data: Fixture, store: Store) -> None:
    await sign_in(client, data.tokens.viewer)
    page = await client.get(f"/alerts/{data.chatgpt_alert}")
    assert 'action="/decide"' not in page.text
    assert "may read but not decide" in page.text
    csrf = _hidden(page.text, "csrf_token")
    response = await client.post(
        "/decide",
        data={"csrf_token": csrf, "alert_id": str(data.chatgpt_alert), "decision": "approved", "reason": "x"},
    )
    assert response.status_code == 403
    with store.session() as session:
        assert session.scalars(select(Review)).all() == []


async def test_admin_adds_a_user_and_revokes_tokens(client: httpx.AsyncClient, data: Fixture) -> None:
    csrf = await sign_in(client, data.tokens.admin)
    assert (await client.post("/admin/users", data={"name": "nina", "role": "viewer"})).status_code == 403
    created = await client.post("/admin/users", data={"csrf_token": csrf, "name": "nina", "role": "viewer"})
    assert created.status_code == 200
    token = re.search(r'<code class="token">([^<]+)</code>', created.text)
    assert token is not None
    again = await client.post("/admin/users", data={"csrf_token": csrf, "name": "nina", "role": "viewer"})
    assert again.status_code == 422
    assert "already exists" in again.text
    bad = await client.post("/admin/users", data={"csrf_token": csrf, "name": "x", "role": "root"})
    assert bad.status_code == 422
    fresh = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    async with fresh:
        await sign_in(fresh, token.group(1))
        revoked = await client.post("/admin/users/revoke", data={"csrf_token": csrf, "name": "nina"})
        assert revoked.status_code == 303
        assert (await fresh.get("/alerts")).status_code == 303
    unknown = await client.post("/admin/users/revoke", data={"csrf_token": csrf, "name": "nobody"})
    assert unknown.status_code == 422


async def test_admin_replays_dead_letters(client: httpx.AsyncClient, data: Fixture, store: Store) -> None:
    from store._models import AlertDelivery, DeliveryStatus

    with store.write() as session:
        session.add(
            AlertDelivery(
                channel="siem",
                key="alert:1:open",
                kind="alert",
                items=[[data.chatgpt_alert, "open"]],
                body={"type": "lanterne.alert"},
                status=DeliveryStatus.DEAD,
                attempts=12,
                created_at=NOW,
                next_attempt_at=NOW,
                last_error="connection refused <b>",
            )
        )
    csrf = await sign_in(client, data.tokens.admin)
    page = await client.get("/admin/deliveries")
    assert "alert:1:open" in page.text
    assert "connection refused &lt;b&gt;" in page.text
    assert (await client.post("/admin/deliveries/replay", data={"channel": "siem"})).status_code == 403
    replayed = await client.post("/admin/deliveries/replay", data={"csrf_token": csrf, "channel": "siem"})
    assert replayed.status_code == 303
    with store.session() as session:
        (message,) = session.scalars(select(AlertDelivery)).all()
    assert (message.status, message.attempts) == (DeliveryStatus.PENDING, 0)


async def test_exports_download(client: httpx.AsyncClient, data: Fixture) -> None:
    await sign_in(client, data.tokens.viewer)
    page = await client.get("/exports")
    for fmt in ("csv", "xlsx", "json", "cyclonedx", "html"):
        assert f"/exports/download?site={SITE}&amp;format={fmt}" in page.text
        response = await client.get("/exports/download", params={"site": SITE, "format": fmt})
        assert response.status_code == 200
        assert "attachment" in response.headers["content-disposition"]
    assert (await client.get("/exports/download", params={"site": SITE, "format": "pdf"})).status_code == 400


async def test_error_pages_are_html(client: httpx.AsyncClient, data: Fixture) -> None:
    await sign_in(client, data.tokens.viewer)
    for path, code in (
        ("/alerts/999999", 404),
        ("/endpoints/999999", 404),
        (f"/product?site={SITE}&key=nothing", 404),
        ("/alerts?offset=-3", 400),
        ("/alerts/abc", 400),
        ("/nowhere", 404),
    ):
        response = await client.get(path)
        assert response.status_code == code, path
        assert response.headers["content-type"].startswith("text/html")
        assert f"Error {code}" in response.text


async def test_pagination_links(client: httpx.AsyncClient, data: Fixture) -> None:
    await sign_in(client, data.tokens.viewer)
    first = await client.get("/alerts?limit=1&state=all")
    assert "1\N{EN DASH}1 of 3" in first.text
    assert "offset=1" in first.text
    second = await client.get("/alerts?limit=1&offset=1&state=all")
    assert "Previous" in second.text
    assert "Next" in second.text


def test_app_factory_defaults(store: Store) -> None:
    app = create_app(store)
    assert isinstance(app, FastAPI)
    assert app.docs_url is None
    assert app.redoc_url is None
    assert app.openapi_url is None
