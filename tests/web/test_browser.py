"""End to end in a real browser: Playwright drives Debian's Chromium against uvicorn on loopback.

No browser is downloaded: the system's ``/usr/bin/chromium`` is launched (``apt-get install
chromium``; ``scripts/setup`` installs it). The tests are skipped when it is missing.
"""

from __future__ import annotations

import csv
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from tests.web.conftest import DHCP_HOSTNAME, MDNS_NAME, SITE, SNI, SYSDESCR, Fixture
from tests.web.test_pages import ADMIN_PAGES, PAGES, page_path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
    ),
]

playwright_api = pytest.importorskip("playwright.sync_api")

#: What a page may say about itself in the console without failing the test (nothing, so far).
_ALLOWED_CONSOLE: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One Chromium for the module (launching it is the slow part)."""
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test")
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()


class Watch:
    """What a page did that it should not: dialogs, CSP violations, console errors."""

    def __init__(self, page: object) -> None:
        self.dialogs: list[str] = []
        self.console: list[str] = []
        page.on("dialog", self._dialog)  # type: ignore[attr-defined]
        page.on("console", self._console)  # type: ignore[attr-defined]
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))  # type: ignore[attr-defined]

    def _dialog(self, dialog: object) -> None:
        self.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()  # type: ignore[attr-defined]

    def _console(self, message: object) -> None:
        if message.type in ("error", "warning"):  # type: ignore[attr-defined]
            text = message.text  # type: ignore[attr-defined]
            if not any(allowed in text for allowed in _ALLOWED_CONSOLE):
                self.console.append(text)


def _sign_in(page: object, base_url: str, token: str, path: str = "/alerts") -> None:
    page.goto(base_url + path)  # type: ignore[attr-defined]
    assert "/login" in page.url  # type: ignore[attr-defined]
    page.fill("input[name=token]", token)  # type: ignore[attr-defined]
    page.click("form[action='/login'] button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]
    assert page.url == base_url + path, page.url  # type: ignore[attr-defined]


def _no_script_ran(page: object) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined"  # type: ignore[attr-defined]
    # No element carries an event handler, and no script, image or SVG element exists.
    live = page.evaluate(  # type: ignore[attr-defined]
        """() => [...document.querySelectorAll('*')].flatMap(el =>
            [...el.attributes].filter(a => a.name.startsWith('on')).map(a => el.tagName + '[' + a.name + ']')
        ).concat([...document.querySelectorAll('script, img, svg, iframe, object, embed')]
            .map(el => el.tagName))"""
    )
    assert live == []


def test_review_an_undeclared_tool_end_to_end(
    browser: object, base_url: str, data: Fixture, tmp_path: Path
) -> None:
    context = browser.new_context(accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    watch = Watch(page)
    try:
        _sign_in(page, base_url, data.tokens.reviewer)
        # The queue, filtered to AI tools: the undeclared ChatGPT is there.
        page.select_option("select[name=scope]", "ai")
        page.click("form.filters button[type=submit]")
        page.wait_for_load_state()
        assert "scope=ai" in page.url
        page.click("text=Undeclared ChatGPT (OpenAI) seen on 1 endpoint")
        page.wait_for_load_state()
        assert page.url.endswith(f"/alerts/{data.chatgpt_alert}")
        # The evidence: signals, the endpoint (its hostile DHCP name shown as text), service, VLAN.
        evidence = page.inner_text("section.evidence")
        assert DHCP_HOSTNAME in evidence
        assert SNI in evidence
        assert "openai-chatgpt:r0" in evidence
        assert "Radiologie / 20" in evidence
        facts = page.inner_text("section.facts")
        assert "undeclared_observed" in facts
        assert "pending_review" in facts
        assert "28/11/2026" in facts  # first/last seen, in Europe/Paris
        # The decision.
        page.select_option("select[name=decision]", "approved_with_conditions")
        page.fill("textarea[name=reason]", "Pilote encadré par la DSI")
        page.fill("textarea[name=conditions]", "Comptes entreprise, aucune donnée patient")
        page.fill("input[name=expires]", "2027-06-30")
        page.click("form.decision button[type=submit]")
        page.wait_for_load_state()
        assert "Decision #" in page.inner_text("p.ok")
        history = page.inner_text("table.reviews")
        assert "rita-reviewer" in history
        assert "approved_with_conditions" in history
        assert "Pilote encadré par la DSI" in history
        assert "30/06/2027" in history
        assert "closed" in page.inner_text("dl.alert-facts")
        # The export carries the decision.
        page.click("nav a[href='/exports']")
        page.wait_for_load_state()
        with page.expect_download() as download_info:
            page.click(f"a[href='/exports/download?site={SITE}&format=csv']")
        target = tmp_path / "export.csv"
        download_info.value.save_as(target)
        rows = list(csv.DictReader(io.StringIO(_csv_body(target)), delimiter=";"))
        row = next(row for row in rows if row["product_key"] == "openai-chatgpt")
        assert row["review_decision"] == "approved_with_conditions"
        assert row["decided_by"] == "rita-reviewer"
        assert row["rationale"] == "Pilote encadré par la DSI"
        assert row["conditions_expire"].startswith("30/06/2027")
        _no_script_ran(page)
        assert watch.dialogs == []
        assert watch.console == []
    finally:
        context.close()


def _csv_body(path: Path) -> str:
    # The CSV starts with a '#' header block (export time, site, versions) before the column row.
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#"))


def test_hostile_network_strings_stay_inert_in_every_page(
    browser: object, base_url: str, data: Fixture
) -> None:
    # The CSP is bypassed here: escaping alone must keep every payload inert.
    context = browser.new_context(bypass_csp=True)  # type: ignore[attr-defined]
    page = context.new_page()
    watch = Watch(page)
    try:
        _sign_in(page, base_url, data.tokens.admin)
        for template in PAGES + ADMIN_PAGES:
            page.goto(base_url + page_path(template, data))
            page.wait_for_load_state()
            page.mouse.move(5, 5)
            page.mouse.move(600, 400)  # an onmouseover would fire if an attribute had been broken out of
            _no_script_ran(page)
        page.goto(base_url + f"/endpoints/{data.monitor}")
        text = page.inner_text("main")
        assert MDNS_NAME in text
        assert SYSDESCR in text
        assert watch.dialogs == []
        assert watch.console == []
    finally:
        context.close()


def test_the_csp_stops_markup_that_got_in_anyway(browser: object, base_url: str, data: Fixture) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    watch = Watch(page)
    try:
        _sign_in(page, base_url, data.tokens.viewer)
        # Defence in depth: even markup injected into the live page cannot run a handler or a script.
        page.evaluate(
            """() => {
                document.body.insertAdjacentHTML('beforeend', '<img src=x onerror="window.__xss=1">');
                const s = document.createElement('script'); s.textContent = 'window.__xss = 2';
                document.body.appendChild(s);
            }"""
        )
        page.wait_for_timeout(200)
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert any("Content Security Policy" in message for message in watch.console)
        # And the pages themselves need nothing the policy refuses: the stylesheet applies.
        watch.console.clear()
        page.goto(base_url + "/alerts")
        assert page.evaluate("getComputedStyle(document.querySelector('header.top')).display") == "flex"
        assert watch.console == []
        assert watch.dialogs == []
    finally:
        context.close()
