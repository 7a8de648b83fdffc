"""Throw-away databases for tests: a SQLite file, or a fresh schema in the test PostgreSQL.

PostgreSQL is the one CI starts at 127.0.0.1:5432 (trust auth, database ``test``;
``LANTERNE_TEST_PG_URL`` overrides). Each test gets its own schema, dropped afterwards, so
parallel runs never collide. Where no PostgreSQL answers, its tests skip with the reason, unless
``LANTERNE_REQUIRE_PG`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Final

import psycopg
import pytest
from sqlalchemy.engine import make_url

PG_URL: Final = os.environ.get("LANTERNE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS: Final = ("sqlite", "postgresql")


def _conninfo() -> str:
    url = make_url(PG_URL)
    parts = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "dbname": url.database or "test",
    }
    if url.password:
        parts["password"] = url.password
    return " ".join(f"{key}={value}" for key, value in parts.items())


@cache
def pg_unreachable() -> str | None:
    """Why the test PostgreSQL cannot be used, or None when it can."""
    try:
        with psycopg.connect(_conninfo(), connect_timeout=3, autocommit=True) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL at {make_url(PG_URL).render_as_string(hide_password=True)} ({exc})"
    return None


def require_pg() -> None:
    """Skip (or fail, when LANTERNE_REQUIRE_PG is set) the calling test if PostgreSQL is unreachable."""
    reason = pg_unreachable()
    if reason is None:
        return
    if os.environ.get("LANTERNE_REQUIRE_PG"):
        pytest.fail(f"{reason}; LANTERNE_REQUIRE_PG is set, so PostgreSQL tests must run")
    pytest.skip(f"{reason}; set LANTERNE_TEST_PG_URL or start one (CI sets LANTERNE_REQUIRE_PG)")


@contextmanager
def temporary_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of an empty database of ``backend``; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'lanterne.db'}"
        return
    require_pg()
    schema = f"lt_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_conninfo(), autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(PG_URL).set(drivername="postgresql+psycopg")
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(_conninfo(), autocommit=True) as connection:
            # A test that leaked a connection must not hang the run: fail the drop after a while.
            connection.execute("SET lock_timeout = '20s'")
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
