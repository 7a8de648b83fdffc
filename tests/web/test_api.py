"""The REST API, in process: authentication, roles, every route, decisions and exports."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest
from openpyxl import load_workbook

from agent._export import rows_from_json
from agent.web._views import alert_out, scope_of
from fingerprints import Catalog
from store import Store
from store._models import Alert, AlertDelivery, AlertReason, AlertState, DeliveryStatus
from tests.web.conftest import EVIL_VENDOR, NOW, SITE, SNI, SYSDESCR, Fixture, bearer, sign_in

pytestmark = pytest.mark.anyio

#: Every GET route of the API, with the parameters it needs (filled from the fixture's ids).
READ_ROUTES = (
    "/api/v1/me",
    "/api/v1/sites",
    "/api/v1/alerts",
    "/api/v1/alerts/{chatgpt}",
    f"/api/v1/products?site={SITE}",
    f"/api/v1/product?site={SITE}&product_key=openai-chatgpt",
    "/api/v1/detections",
    "/api/v1/endpoints",
    "/api/v1/endpoints/{monitor}",
    "/api/v1/inventory",
    f"/api/v1/decisions?site={SITE}&product_key=openai-chatgpt",
    f"/api/v1/exports/json?site={SITE}",
    "/api/v1/probes",
    "/api/v1/changes",
    "/api/openapi.json",
)
ADMIN_ROUTES = ("/api/v1/users", "/api/v1/deliveries")


def _route(template: str, data: Fixture) -> str:
    return template.format(chatgpt=data.chatgpt_alert, monitor=data.monitor)


@pytest.mark.parametrize("route", READ_ROUTES + ADMIN_ROUTES)
async def test_nothing_without_a_valid_token(client: httpx.AsyncClient, data: Fixture, route: str) -> None:
    path = _route(route, data)
    for headers in (
        {},
        bearer("lnt_" + "x" * 43),
        bearer(data.tokens.viewer[:-1] + ("A" if data.tokens.viewer[-1] != "A" else "B")),
        {"Authorization": f"Basic {data.tokens.viewer}"},
        {"Authorization": "Bearer"},
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "items" not in response.text


@pytest.mark.parametrize("route", READ_ROUTES)
async def test_a_viewer_reads_everything(client: httpx.AsyncClient, data: Fixture, route: str) -> None:
    response = await client.get(_route(route, data), headers=bearer(data.tokens.viewer))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("route", ADMIN_ROUTES)
async def test_admin_routes_need_the_admin_role(client: httpx.AsyncClient, data: Fixture, route: str) -> None:
    for token in (data.tokens.viewer, data.tokens.reviewer):
        response = await client.get(route, headers=bearer(token))
        assert response.status_code == 403, response.text
    assert (await client.get(route, headers=bearer(data.tokens.admin))).status_code == 200


async def test_me_and_sites(client: httpx.AsyncClient, data: Fixture) -> None:
    me = (await client.get("/api/v1/me", headers=bearer(data.tokens.reviewer))).json()
    assert me == {"name": "rita-reviewer", "role": "reviewer"}
    assert (await client.get("/api/v1/sites", headers=bearer(data.tokens.viewer))).json() == [SITE]


async def test_alert_queue_filters_and_pages(client: httpx.AsyncClient, data: Fixture) -> None:
    headers = bearer(data.tokens.viewer)

    async def keys(**params: object) -> list[str]:
        response = await client.get("/api/v1/alerts", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return sorted(item["product_key"] for item in response.json()["items"])

    everything = await keys()
    assert everything == sorted(["openai-chatgpt", f"unknown:{EVIL_VENDOR}", "unknown:B. Braun"])
    assert await keys(scope="ai") == ["openai-chatgpt"]
    assert await keys(scope="dmn") == sorted([f"unknown:{EVIL_VENDOR}", "unknown:B. Braun"])
    assert await keys(scope="other") == []
    assert await keys(category="llm_chat") == ["openai-chatgpt"]
    assert await keys(reason="unknown_observed") == sorted([f"unknown:{EVIL_VENDOR}", "unknown:B. Braun"])
    assert await keys(site=SITE, severity="high") == everything
    assert await keys(site="elsewhere") == []
    assert await keys(state="closed") == []
    assert await keys(q="chatgpt") == ["openai-chatgpt"]
    page = (await client.get("/api/v1/alerts", params={"limit": 2, "offset": 2}, headers=headers)).json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (3, 2, 2, 1)
    chatgpt = next(
        item
        for item in (await client.get("/api/v1/alerts", headers=headers)).json()["items"]
        if item["product_key"] == "openai-chatgpt"
    )
    assert chatgpt["scope"] == ["ai"]
    assert chatgpt["reason"] == "undeclared_observed"
    assert chatgpt["summary"]["signals"] == sorted(["tls.sni=chatgpt.com", f"tls.sni={SNI}"])


async def test_invalid_parameters_are_422_not_500(client: httpx.AsyncClient, data: Fixture) -> None:
    headers = bearer(data.tokens.viewer)
    for path in (
        "/api/v1/alerts?limit=0",
        "/api/v1/alerts?limit=100000",
        "/api/v1/alerts?offset=-1",
        "/api/v1/alerts?offset=99999999999999999999",
        "/api/v1/alerts?state=maybe",
        "/api/v1/alerts/0",
        "/api/v1/alerts/99999999999999999999999",
        "/api/v1/products",
        "/api/v1/exports/pdf?site=x",
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 422, (path, response.text)
    for path in ("/api/v1/alerts?site=a%00b", "/api/v1/alerts?q=%0d%0aSet-Cookie:x", "/api/v1/al%01erts"):
        assert (await client.get(path, headers=headers)).status_code == 400, path
    assert (await client.get("/api/v1/alerts/999999", headers=headers)).status_code == 404
    assert (await client.get("/api/v1/endpoints/999999", headers=headers)).status_code == 404
    missing = await client.get(
        "/api/v1/product", params={"site": SITE, "product_key": "nothing"}, headers=headers
    )
    assert missing.status_code == 404


async def test_alert_detail_carries_the_evidence(client: httpx.AsyncClient, data: Fixture) -> None:
    response = await client.get(f"/api/v1/alerts/{data.evil_alert}", headers=bearer(data.tokens.viewer))
    detail = response.json()
    assert detail["alert"]["product_key"] == f"unknown:{EVIL_VENDOR}"
    product = detail["product"]
    assert product["row"]["reconciliation_status"] == "unknown_observed"
    assert product["row"]["services"] == ["Réanimation"]
    assert product["row"]["vlans"] == [30]
    (detection,) = product["detections"]
    assert detection["endpoint"]["id"] == data.monitor
    assert {(item["kind"], item["value"]) for item in detection["evidence"]} >= {("snmp.sysdescr", SYSDESCR)}
    assert detection["confidence"] == 0.5
    assert [alert["id"] for alert in product["alerts"]] == [data.evil_alert]
    assert product["reviews"] == []
    assert {change["action"] for change in product["changes"]} == {"status", "alert"}


async def test_products_endpoints_inventory_probes_changes(client: httpx.AsyncClient, data: Fixture) -> None:
    headers = bearer(data.tokens.viewer)
    rows = (await client.get("/api/v1/products", params={"site": SITE}, headers=headers)).json()
    statuses = {row["product_key"]: row["reconciliation_status"] for row in rows}
    assert statuses["openai-chatgpt"] == "undeclared_observed"
    assert statuses["nuance-dmo"] == "declared_not_observed"
    only = await client.get(
        "/api/v1/products",
        params={
            "site": SITE,
            "reconciliation_status": "declared_not_observed",
            "review_decision": "pending_review",
        },
        headers=headers,
    )
    assert [row["product_key"] for row in only.json()] == ["nuance-dmo"]
    found = (await client.get("/api/v1/endpoints", params={"q": "pc-"}, headers=headers)).json()
    assert [item["id"] for item in found["items"]] == [data.workstation]
    endpoint = (await client.get(f"/api/v1/endpoints/{data.monitor}", headers=headers)).json()
    assert {obs["kind"] for obs in endpoint["observations"]} >= {"snmp.sysdescr", "mdns.service"}
    assert endpoint["observations_total"] == len(endpoint["observations"])
    detections = (
        await client.get("/api/v1/detections", params={"endpoint_id": data.workstation}, headers=headers)
    ).json()
    assert [item["product_key"] for item in detections["items"]] == ["openai-chatgpt"]
    inventory = (
        await client.get("/api/v1/inventory", params={"site": SITE, "active": True}, headers=headers)
    ).json()
    assert [entry["ref"] for entry in inventory["items"]] == ["CHW-1"]
    probes = (await client.get("/api/v1/probes", params={"protocol": "snmp"}, headers=headers)).json()
    assert [(probe["target"], probe["outcome"]) for probe in probes["items"]] == [("10.2.0.20", "ok")]
    changes = (await client.get("/api/v1/changes", params={"action": "alert"}, headers=headers)).json()
    assert changes["total"] == 3


async def test_a_decision_through_the_api(client: httpx.AsyncClient, data: Fixture) -> None:
    body = {
        "alert_id": data.chatgpt_alert,
        "decision": "approved_with_conditions",
        "reason": "Pilote encadré par la DSI",
        "conditions": "Comptes entreprise uniquement, pas de données patients",
        "expires_at": "2027-06-30",
        # A request cannot choose its author: the field does not exist, and extra fields are refused.
    }
    refused = await client.post(
        "/api/v1/decisions", json={**body, "decided_by": "someone"}, headers=bearer(data.tokens.reviewer)
    )
    assert refused.status_code == 422
    viewer = await client.post("/api/v1/decisions", json=body, headers=bearer(data.tokens.viewer))
    assert viewer.status_code == 403
    nobody = await client.post("/api/v1/decisions", json=body)
    assert nobody.status_code == 401
    response = await client.post("/api/v1/decisions", json=body, headers=bearer(data.tokens.reviewer))
    assert response.status_code == 201, response.text
    review = response.json()
    assert (review["decision"], review["decided_by"], review["expires_at"]) == (
        "approved_with_conditions",
        "rita-reviewer",
        "2027-06-30T00:00:00Z",
    )
    assert review["decided_at"] == NOW.isoformat().replace("+00:00", "Z")
    headers = bearer(data.tokens.viewer)
    alert = (await client.get(f"/api/v1/alerts/{data.chatgpt_alert}", headers=headers)).json()["alert"]
    assert (alert["state"], alert["closed_by_review"]) == ("closed", review["id"])
    history = (
        await client.get(
            "/api/v1/decisions", params={"site": SITE, "product_key": "openai-chatgpt"}, headers=headers
        )
    ).json()
    assert [item["id"] for item in history] == [review["id"]]
    exported = await client.get(f"/api/v1/exports/json?site={SITE}", headers=headers)
    _meta, rows = rows_from_json(exported.content)
    row = next(row for row in rows if row.product_key == "openai-chatgpt")
    assert (row.review_decision, row.decided_by, row.rationale) == (
        "approved_with_conditions",
        "rita-reviewer",
        "Pilote encadré par la DSI",
    )


async def test_decisions_that_cannot_be_recorded(client: httpx.AsyncClient, data: Fixture) -> None:
    headers = bearer(data.tokens.reviewer)

    async def post(**body: object) -> httpx.Response:
        return await client.post("/api/v1/decisions", json=body, headers=headers)

    assert (await post(alert_id=999999, decision="approved", reason="x")).status_code == 404
    assert (await post(decision="approved", reason="x")).status_code == 422
    missing = await post(alert_id=data.chatgpt_alert, decision="approved_with_conditions", reason="x")
    assert missing.status_code == 422
    assert "needs the conditions and their expiry" in missing.json()["detail"]
    past = await post(
        alert_id=data.chatgpt_alert,
        decision="approved_with_conditions",
        reason="x",
        conditions="y",
        expires_at="2020-01-01",
    )
    assert past.status_code == 422
    assert (await post(alert_id=data.chatgpt_alert, decision="pending_review", reason="x")).status_code == 422
    assert (await post(alert_id=data.chatgpt_alert, decision="approved", reason="")).status_code == 422
    assert (await post(alert_id=data.chatgpt_alert, decision="approved", reason="a\x00b")).status_code == 422
    far = await post(
        alert_id=data.chatgpt_alert, decision="approved", reason="x", expires_at="0001-01-01T00:00:00+14:00"
    )
    assert far.status_code == 422
    by_key = await post(
        site=SITE, product_key="unknown:B. Braun", decision="false_positive", reason="Pompe déclarée ailleurs"
    )
    assert by_key.status_code == 201, by_key.text


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "json", "cyclonedx", "html"])
async def test_exports_use_the_cli_writers(client: httpx.AsyncClient, data: Fixture, fmt: str) -> None:
    response = await client.get(
        f"/api/v1/exports/{fmt}", params={"site": SITE}, headers=bearer(data.tokens.viewer)
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith('attachment; filename="cartographie-ch-web.')
    if fmt == "csv":
        text = response.content.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text), delimiter=";"))
        assert any("openai-chatgpt" in row for row in rows)
    elif fmt == "xlsx":
        sheet = load_workbook(io.BytesIO(response.content)).active
        assert sheet is not None
        assert any("openai-chatgpt" in [str(cell.value) for cell in row] for row in sheet.iter_rows())
    elif fmt == "cyclonedx":
        assert json.loads(response.content)["bomFormat"] == "CycloneDX"
    elif fmt == "html":
        assert response.headers["content-type"].startswith("text/html")
        assert b"<script>window.__xss" not in response.content
    else:
        assert json.loads(response.content)["meta"]["site"] == SITE


async def test_admin_manages_users_and_tokens(client: httpx.AsyncClient, data: Fixture) -> None:
    admin = bearer(data.tokens.admin)
    created = await client.post("/api/v1/users", json={"name": "nina", "role": "reviewer"}, headers=admin)
    assert created.status_code == 201
    token = created.json()["token"]
    assert (await client.get("/api/v1/me", headers=bearer(token))).json()["name"] == "nina"
    assert (
        await client.post("/api/v1/users", json={"name": "nina", "role": "viewer"}, headers=admin)
    ).status_code == 409
    second = await client.post("/api/v1/users/tokens", params={"name": "nina"}, headers=admin)
    assert second.status_code == 201
    listed = {user["name"]: user for user in (await client.get("/api/v1/users", headers=admin)).json()}
    assert listed["nina"]["active_tokens"] == 2
    assert "lnt_" not in json.dumps(listed)
    revoked = await client.post("/api/v1/users/revoke", params={"name": "nina"}, headers=admin)
    assert revoked.json() == {"revoked": 2}
    assert (await client.get("/api/v1/me", headers=bearer(token))).status_code == 401
    assert (
        await client.post("/api/v1/users/revoke", params={"name": "nobody"}, headers=admin)
    ).status_code == 404
    assert (
        await client.post("/api/v1/users/tokens", params={"name": "nobody"}, headers=admin)
    ).status_code == 404
    refused = await client.post(
        "/api/v1/users", json={"name": "eve", "role": "admin"}, headers=bearer(data.tokens.reviewer)
    )
    assert refused.status_code == 403


async def test_openapi_is_published_to_authenticated_callers(
    client: httpx.AsyncClient, data: Fixture
) -> None:
    assert (await client.get("/api/openapi.json")).status_code == 401
    schema = (await client.get("/api/openapi.json", headers=bearer(data.tokens.viewer))).json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/alerts" in schema["paths"]
    assert "/login" not in schema["paths"]
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await client.get(path, headers=bearer(data.tokens.viewer))).status_code == 404


def test_declared_flags_win_over_the_catalogue(catalog: Catalog) -> None:
    assert scope_of("openai-chatgpt", None, catalog) == ["ai"]
    assert scope_of(None, "medical_device", catalog) == ["dmn"]
    assert scope_of(None, "pacs", catalog) == ["dmn"]
    assert scope_of(None, None, catalog) == ["other"]
    assert scope_of(None, "imaging_ai", catalog, (None, True)) == ["ai", "dmn"]
    assert scope_of("openai-chatgpt", None, catalog, (False, None)) == ["other"]
    alert = Alert(
        id=9,
        site=SITE,
        product_key="unknown:Gleamer",
        reason=AlertReason.DECLARED_MISMATCH,
        state=AlertState.OPEN,
        severity="high",
        title="Gleamer seen otherwise than declared",
        summary={"category": "imaging_ai", "entry_refs": ["CHW-9"]},
        first_raised=NOW,
        last_seen=NOW,
        occurrences=1,
        delivered={},
    )
    assert alert_out(alert, catalog).scope == ["ai"]
    assert alert_out(alert, catalog, {(SITE, "CHW-9"): (True, True)}).scope == ["ai", "dmn"]


async def test_deliveries_and_replay(client: httpx.AsyncClient, data: Fixture, store: Store) -> None:
    with store.write() as session:
        for key, status in (
            ("alert:1:open", DeliveryStatus.DEAD),
            ("alert:2:open", DeliveryStatus.DELIVERED),
        ):
            session.add(
                AlertDelivery(
                    channel="siem",
                    key=key,
                    kind="alert",
                    items=[[data.chatgpt_alert, "open"]],
                    body={},
                    status=status,
                    attempts=12,
                    created_at=NOW,
                    next_attempt_at=NOW,
                )
            )
        alert = session.get(Alert, data.chatgpt_alert)
        assert alert is not None
        alert.delivered = {"siem": {"state": "open", "key": "alert:1:open", "status": "dead"}}
    admin = bearer(data.tokens.admin)
    dead = (await client.get("/api/v1/deliveries", params={"status": "dead"}, headers=admin)).json()
    assert [item["key"] for item in dead["items"]] == ["alert:1:open"]
    assert (
        await client.post("/api/v1/deliveries/replay", json={}, headers=bearer(data.tokens.reviewer))
    ).status_code == 403
    replayed = await client.post("/api/v1/deliveries/replay", json={"channel": "siem"}, headers=admin)
    assert replayed.json() == {"replayed": 1}
    assert (await client.post("/api/v1/deliveries/replay", json={"ids": [1]}, headers=admin)).json() == {
        "replayed": 0
    }
    shown = (await client.get(f"/api/v1/alerts/{data.chatgpt_alert}", headers=admin)).json()["alert"]
    assert shown["delivered"]["siem"]["status"] == "queued"
    csrf = await sign_in(client, data.tokens.viewer)
    assert csrf
    page = await client.get(f"/alerts/{data.chatgpt_alert}")
    assert "siem: queued (open)" in page.text
