"""Fixtures of the web tests: a store with hostile network strings in it, users of every role, clients.

The data is built once per session into an SQLite file (``template_db``); each test gets its own
copy, so decisions made by one test never leak into another. The app runs in process through
``httpx.ASGITransport`` (no server, no port), as Datasette's tests do.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agent._reconcile import reconcile
from agent._users import add_user
from agent.web import WebSettings, create_app
from fingerprints import Catalog
from store import Store, open_store
from store._models import Endpoint, ObservationAggregate, ProbeLogEntry
from tests.agent.store_backends import add_detection, add_endpoint, add_entry

SITE = "ch-web"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

#: What a device owner can put in the strings the network carries.
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = "<img src=x onerror=window.__xss=1>"
XSS_SVG = '"><svg onload=window.__xss=1>'
XSS_ATTR = "' onmouseover='window.__xss=1' x='"
#: An mDNS instance name, an SNI, a DHCP host name and an SNMP sysDescr, each carrying a payload.
MDNS_NAME = f"Salle 3 {XSS_IMG}._ipp._tcp.local"
SNI = f"{XSS_SCRIPT}.chatgpt.com"
DHCP_HOSTNAME = f"pc-{XSS_SVG}"
SYSDESCR = f"Infusomat {XSS_ATTR} {XSS_SCRIPT} fw 1.2"
EVIL_VENDOR = f"Evil{XSS_IMG}"
PAYLOADS = (XSS_SCRIPT, XSS_IMG, XSS_SVG, XSS_ATTR)


@dataclass(frozen=True)
class Tokens:
    """One token per role."""

    admin: str
    reviewer: str
    viewer: str


@dataclass(frozen=True)
class Fixture:
    """What the populated store holds (ids the tests navigate to)."""

    url: str
    tokens: Tokens
    chatgpt_alert: int
    device_alert: int
    evil_alert: int
    workstation: int
    monitor: int


def _observe(store: Store, endpoint: Endpoint, kind: str, value: str, attrs: dict[str, object]) -> None:
    with store.write() as session:
        session.merge(
            ObservationAggregate(
                agent="sensor-1",
                endpoint_id=endpoint.id,
                kind=kind,
                value=value,
                first_seen=NOW - timedelta(hours=2),
                last_seen=NOW - timedelta(hours=1),
                count=4,
                attrs=attrs,
                peer=None,
            )
        )


def populate(store: Store, catalog: Catalog) -> dict[str, int]:
    """Write the test site: an undeclared ChatGPT, a hostile unknown device, hostile strings everywhere."""
    seen = (NOW - timedelta(hours=3), NOW - timedelta(hours=1))
    ids: dict[str, int] = {}
    with store.write() as session:
        workstation = add_endpoint(
            session, SITE, "10.1.0.10", mac="00:16:3e:00:00:10", service="Radiologie", vlan=20
        )
        workstation.hostname = DHCP_HOSTNAME
        workstation.vendor = "Dell Inc."
        monitor = add_endpoint(
            session, SITE, "10.2.0.20", mac="00:16:3e:00:00:20", service="Réanimation", vlan=30
        )
        monitor.hostname = MDNS_NAME
        add_detection(
            session,
            SITE,
            "openai-chatgpt",
            workstation,
            seen=seen,
            hosts=["chatgpt.com"],
            signals=[("tls.sni", SNI)],
        )
        add_detection(
            session,
            SITE,
            "unknown",
            monitor,
            seen=seen,
            vendor=EVIL_VENDOR,
            category="medical_device",
            signals=[("snmp.sysdescr", SYSDESCR), ("mdns.service", MDNS_NAME)],
            confidence=0.5,
        )
        add_detection(
            session,
            SITE,
            "unknown",
            monitor,
            seen=seen,
            vendor="B. Braun",
            category="medical_device",
            signals=[("snmp.sysdescr", "Infusomat Space")],
            confidence=0.5,
        )
        add_entry(session, SITE, "CHW-1", f"Dictée {XSS_SCRIPT}", owner=XSS_IMG, catalog_id="nuance-dmo")
        session.add(
            ProbeLogEntry(
                ts=NOW - timedelta(minutes=5),
                agent="sensor-1",
                target="10.2.0.20",
                protocol="snmp",
                port=161,
                outcome="ok",
                detail=SYSDESCR,
            )
        )
        session.flush()
        ids["workstation"], ids["monitor"] = workstation.id, monitor.id
    _observe(store, workstation, "dhcp.hostname", DHCP_HOSTNAME, {"vendor_class": XSS_IMG})
    _observe(store, workstation, "tls.sni", SNI, {"alpn": ("h2",)})
    _observe(store, monitor, "snmp.sysdescr", SYSDESCR, {})
    _observe(store, monitor, "mdns.service", MDNS_NAME, {"txt": (XSS_SCRIPT,)})
    with store.write() as session:
        result = reconcile(session, SITE, NOW, catalog=catalog)
        for alert in result.raised:
            if alert.product_key == "openai-chatgpt":
                ids["chatgpt"] = alert.id
            elif alert.product_key == f"unknown:{EVIL_VENDOR}":
                ids["evil"] = alert.id
            elif alert.product_key == "unknown:B. Braun":
                ids["device"] = alert.id
    assert {"chatgpt", "evil", "device"} <= ids.keys(), ids
    return ids


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> tuple[Path, Fixture]:
    """The populated database, built once; tests copy it."""
    path = tmp_path_factory.mktemp("web") / "template.db"
    store = open_store(f"sqlite:///{path}")
    try:
        ids = populate(store, catalog)
        with store.write() as session:
            tokens = Tokens(
                admin=add_user(session, "alice-admin", "admin", NOW)[1],
                reviewer=add_user(session, "rita-reviewer", "reviewer", NOW)[1],
                viewer=add_user(session, "victor-viewer", "viewer", NOW)[1],
            )
        with store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.dispose()
    fixture = Fixture(
        url="",
        tokens=tokens,
        chatgpt_alert=ids["chatgpt"],
        device_alert=ids["device"],
        evil_alert=ids["evil"],
        workstation=ids["workstation"],
        monitor=ids["monitor"],
    )
    return path, fixture


@pytest.fixture
def data(template_db: tuple[Path, Fixture], tmp_path: Path) -> Fixture:
    """A private copy of the populated database."""
    source, fixture = template_db
    target = tmp_path / "lanterne.db"
    shutil.copyfile(source, target)
    return Fixture(**{**fixture.__dict__, "url": f"sqlite:///{target}"})


@pytest.fixture
def store(data: Fixture) -> Iterator[Store]:
    """The store of the test's copy."""
    opened = open_store(data.url)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def settings() -> WebSettings:
    """Settings with the tests' fixed clock."""
    return WebSettings(clock=lambda: NOW)


@pytest.fixture(scope="session")
def shared_app(catalog: Catalog) -> Iterator[FastAPI]:
    """One application for the session: FastAPI prepares its routes on first use (~0.2 s an app)."""
    placeholder = open_store("sqlite://")
    try:
        yield create_app(placeholder, WebSettings(clock=lambda: NOW), catalog=catalog)
    finally:
        placeholder.dispose()


@pytest.fixture
def app(shared_app: FastAPI, store: Store, settings: WebSettings) -> Iterator[FastAPI]:
    """The application over the test's own store (the shared app, pointed at it for the test)."""
    previous = shared_app.state.store, shared_app.state.settings
    shared_app.state.store, shared_app.state.settings = store, settings
    try:
        yield shared_app
    finally:
        shared_app.state.store, shared_app.state.settings = previous


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only (the daemon's loop)."""
    return "asyncio"


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


async def sign_in(client: httpx.AsyncClient, token: str) -> str:
    """Sign in through the form; return the session's CSRF token (read from a page's form)."""
    form = await client.get("/login")
    nonce = _hidden(form.text, "nonce")
    response = await client.post("/login", data={"token": token, "nonce": nonce, "next": "/alerts"})
    assert response.status_code == 303, response.text
    page = await client.get("/alerts")
    assert page.status_code == 200
    return _hidden(page.text, "csrf_token")


def _hidden(html: str, name: str) -> str:
    marker = f'name="{name}" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]
