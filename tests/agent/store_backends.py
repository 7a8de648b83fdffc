"""Sessions on both real backends for the declared-side tests: SQLite, and PostgreSQL in a fresh schema.

PostgreSQL is ``$LANTERNE_TEST_PG`` (default: trust auth on 127.0.0.1, database ``test``). Each test
gets its own schema, dropped afterwards, so parallel test runs never see each other's rows. When
the server is unreachable the PostgreSQL case is skipped, unless ``LANTERNE_REQUIRE_PG`` is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from store._models import Base

BACKENDS = ("sqlite", "postgresql")
PG_URL = os.environ.get("LANTERNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _open_store():  # type: ignore[no-untyped-def]
    try:
        from store._engine import open_store
    except ImportError:  # the engine is not there yet: plain create_all on the models
        return None
    return open_store


def pg_available() -> bool:
    """Whether the test PostgreSQL server answers."""
    engine = create_engine(PG_URL)
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


def require_pg() -> None:
    """Skip (or fail, with LANTERNE_REQUIRE_PG) when PostgreSQL is unreachable."""
    if pg_available():
        return
    if os.environ.get("LANTERNE_REQUIRE_PG"):
        pytest.fail(f"LANTERNE_REQUIRE_PG is set but PostgreSQL at {PG_URL} is unreachable")
    pytest.skip(f"PostgreSQL at {PG_URL} is unreachable (set LANTERNE_TEST_PG, or LANTERNE_REQUIRE_PG to fail)")


@contextmanager
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of an empty database of the backend, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'lanterne.db'}"
        return
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def session_on(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A session on a migrated (or create_all'd) empty database of the backend."""
    with database_url(backend, tmp_path_factory) as url:
        open_store = _open_store()
        if open_store is not None:
            store = open_store(url)
            engine = store.engine
        else:
            engine = create_engine(url)
            Base.metadata.create_all(engine)
        factory = sessionmaker(engine, expire_on_commit=False)
        try:
            with factory() as session:
                yield session
        finally:
            engine.dispose()


