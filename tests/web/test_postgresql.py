"""The web UI and API on the central store (PostgreSQL): the routes that read and write, once each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from agent._users import add_user
from fingerprints import Catalog
from store import Store, open_store
from tests.agent.store_backends import database_url
from tests.web.conftest import NOW, SITE, bearer, populate, sign_in

pytestmark = pytest.mark.anyio


@pytest.fixture
def pg_store(
    tmp_path_factory: pytest.TempPathFactory, catalog: Catalog
) -> Iterator[tuple[Store, dict[str, int], str]]:
    """A populated PostgreSQL schema and a reviewer's token."""
    with database_url("postgresql", tmp_path_factory) as url:
        store = open_store(url)
        try:
            ids = populate(store, catalog)
            with store.write() as session:
                token = add_user(session, "rita-reviewer", "reviewer", NOW)[1]
            yield store, ids, token
        finally:
            store.dispose()


@pytest.fixture
async def pg_client(
    shared_app: FastAPI, pg_store: tuple[Store, dict[str, int], str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The shared app pointed at the PostgreSQL store."""
    previous = shared_app.state.store
    shared_app.state.store = pg_store[0]
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=shared_app), base_url="http://testserver"
        ) as client:
            yield client
    finally:
        shared_app.state.store = previous


async def test_read_decide_export_on_postgresql(
    pg_client: httpx.AsyncClient, pg_store: tuple[Store, dict[str, int], str]
) -> None:
    _store, ids, token = pg_store
    headers = bearer(token)
    for path in (
        "/api/v1/alerts?scope=dmn&q=braun",
        f"/api/v1/alerts/{ids['evil']}",
        f"/api/v1/products?site={SITE}",
        "/api/v1/endpoints?q=PC-",
        f"/api/v1/endpoints/{ids['monitor']}",
        "/api/v1/inventory?active=true",
        "/api/v1/detections?site=ch-web",
        "/api/v1/probes",
        "/api/v1/changes?action=alert",
        "/api/v1/sites",
    ):
        response = await pg_client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text)
    decided = await pg_client.post(
        "/api/v1/decisions",
        json={"alert_id": ids["chatgpt"], "decision": "rejected_to_block", "reason": "Données patients"},
        headers=headers,
    )
    assert decided.status_code == 201, decided.text
    exported = await pg_client.get(f"/api/v1/exports/csv?site={SITE}", headers=headers)
    assert "rejected_to_block" in exported.content.decode("utf-8-sig")
    await sign_in(pg_client, token)
    page = await pg_client.get(f"/alerts/{ids['chatgpt']}")
    assert page.status_code == 200
    assert "rita-reviewer" in page.text
