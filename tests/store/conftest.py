"""Fixtures of the store tests: every test taking ``db_url`` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store import Store, open_store
from tests.store.dburl import BACKENDS, temporary_database


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    with temporary_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Store]:
    """An open, migrated store on ``db_url``."""
    store = open_store(db_url)
    try:
        yield store
    finally:
        store.dispose()
