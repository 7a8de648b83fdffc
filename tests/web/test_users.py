"""People, tokens and sessions (``agent._users``) and the ``lanterne users`` / ``lanterne serve`` commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from agent._users import (
    TOUCH_INTERVAL,
    UnknownUser,
    UserError,
    add_user,
    authenticate,
    close_session,
    digest,
    disable_user,
    find_session,
    get_user,
    issue_token,
    open_session,
    revoke_tokens,
    role_allows,
    set_role,
    touch,
)
from agent.cli import app as cli
from store import Store, open_store
from store._models import ApiToken, UserRole, WebSession
from tests.web.conftest import NOW


@pytest.fixture
def empty_store(tmp_path: Path) -> Iterator[Store]:
    """A fresh store."""
    store = open_store(f"sqlite:///{tmp_path / 'users.db'}")
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture
def session(empty_store: Store) -> Iterator[Session]:
    """One transaction for the unit tests."""
    with empty_store.write() as session:
        yield session


def test_tokens_are_random_and_stored_hashed(session: Session) -> None:
    user, token = add_user(session, "  Dr. Martin  ", "reviewer", NOW)
    assert user.name == "Dr. Martin"
    assert token.startswith("lnt_")
    assert len(token) >= 40
    (stored,) = session.scalars(select(ApiToken)).all()
    assert stored.token_hash == digest(token)
    assert token not in stored.token_hash
    principal = authenticate(session, token, NOW)
    assert principal is not None
    assert (principal.name, principal.role, principal.token_id) == (
        "Dr. Martin",
        UserRole.REVIEWER,
        stored.id,
    )
    assert principal.allows(UserRole.VIEWER)
    assert not principal.allows(UserRole.ADMIN)
    for wrong in ("", token[:-1], token + "x", "lnt_" + "A" * 43, token.upper(), "x" * 5000):
        assert authenticate(session, wrong, NOW) is None
    assert issue_token(session, user, NOW) != token


def test_roles_are_ordered() -> None:
    assert role_allows(UserRole.ADMIN, UserRole.REVIEWER)
    assert role_allows(UserRole.REVIEWER, UserRole.REVIEWER)
    assert not role_allows(UserRole.VIEWER, UserRole.REVIEWER)


def test_user_validation(session: Session) -> None:
    add_user(session, "ana", "viewer", NOW)
    for name, role, message in (
        ("ana", "viewer", "already exists"),
        ("", "viewer", "1 to 128"),
        ("x" * 129, "viewer", "1 to 128"),
        ("a\nb", "viewer", "printable"),
        ("a\u202eb", "viewer", "printable"),
        ("bob", "root", "unknown role"),
    ):
        with pytest.raises(UserError, match=message):
            add_user(session, name, role, NOW)
    with pytest.raises(UnknownUser):
        get_user(session, "nobody")
    user = get_user(session, "ana")
    set_role(session, user, "admin")
    assert user.role is UserRole.ADMIN
    with pytest.raises(UserError):
        set_role(session, user, "god")


def test_revoking_and_disabling(session: Session) -> None:
    user, token = add_user(session, "ana", "viewer", NOW)
    second = issue_token(session, user, NOW)
    principal = authenticate(session, token, NOW)
    assert principal is not None
    cookie, _browser = open_session(session, principal, NOW)
    assert revoke_tokens(session, user, NOW) == 2
    assert authenticate(session, token, NOW) is None
    assert authenticate(session, second, NOW) is None
    assert find_session(session, cookie, NOW) is None
    third = issue_token(session, user, NOW)
    assert authenticate(session, third, NOW) is not None
    disable_user(session, user, NOW)
    assert authenticate(session, third, NOW) is None


def test_sessions(session: Session) -> None:
    _user, token = add_user(session, "ana", "reviewer", NOW)
    principal = authenticate(session, token, NOW)
    assert principal is not None
    cookie, browser = open_session(session, principal, NOW, timedelta(hours=2))
    (stored,) = session.scalars(select(WebSession)).all()
    assert stored.id_hash == digest(cookie)
    assert cookie not in stored.id_hash
    found = find_session(session, cookie, NOW + timedelta(hours=1))
    assert found is not None
    assert (found.principal.name, found.csrf_token) == ("ana", browser.csrf_token)
    assert find_session(session, cookie, NOW + timedelta(hours=2)) is None
    assert find_session(session, "", NOW) is None
    assert find_session(session, cookie + "x", NOW) is None
    # A new sign-in clears the expired sessions.
    open_session(session, principal, NOW + timedelta(hours=3))
    assert len(session.scalars(select(WebSession)).all()) == 1
    other, _ = open_session(session, principal, NOW + timedelta(hours=3))
    close_session(session, other)
    assert find_session(session, other, NOW + timedelta(hours=3)) is None


def test_last_use_is_written_at_most_every_interval(session: Session) -> None:
    _user, token = add_user(session, "ana", "viewer", NOW)
    principal = authenticate(session, token, NOW)
    assert principal is not None
    assert principal.needs_touch
    touch(session, principal, NOW)
    (stored,) = session.scalars(select(ApiToken)).all()
    session.refresh(stored)
    assert stored.last_used_at == NOW
    again = authenticate(session, token, NOW + TOUCH_INTERVAL / 2)
    assert again is not None
    assert not again.needs_touch
    later = authenticate(session, token, NOW + TOUCH_INTERVAL)
    assert later is not None
    assert later.needs_touch


def test_users_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    added = runner.invoke(cli, ["users", "add", "rssi", "--role", "admin", "--db", db])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("lnt_")
    assert "shown once" in added.stderr
    listed = runner.invoke(cli, ["users", "list", "--json", "--db", db])
    assert '"role": "admin"' in listed.stdout
    assert token not in listed.stdout
    assert runner.invoke(cli, ["users", "add", "rssi", "--db", db]).exit_code == 2
    assert runner.invoke(cli, ["users", "add", "x", "--role", "root", "--db", db]).exit_code == 2
    second = runner.invoke(cli, ["users", "token", "rssi", "--db", db])
    assert second.exit_code == 0
    assert second.stdout.strip() != token
    assert runner.invoke(cli, ["users", "token", "nobody", "--db", db]).exit_code == 2
    revoked = runner.invoke(cli, ["users", "revoke", "rssi", "--db", db])
    assert revoked.exit_code == 0
    assert "2 token(s) revoked" in revoked.stderr
    assert runner.invoke(cli, ["users", "disable", "rssi", "--db", db]).exit_code == 0
    assert "rssi" in runner.invoke(cli, ["users", "list", "--db", db]).stdout
    store = open_store(db)
    try:
        with store.session() as session:
            assert authenticate(session, token, NOW) is None
    finally:
        store.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_lanterne_serve_serves(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    port = _free_port()
    env = {**os.environ, "LANTERNE_DB": db, "LANTERNE_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-c", "from agent.cli import main; main()", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "lanterne serve did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert "server" not in response.headers
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=2).status_code == 401
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=10)
    assert "no user yet" in err
    assert f"serving on http://127.0.0.1:{port}/" in err
