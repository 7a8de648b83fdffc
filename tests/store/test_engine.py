"""Engines: URL normalisation, SQLite pragmas, write transactions, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from store import Agent, Store, StoreError, make_engine, normalise_url, open_store


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h:5433/db", "postgresql+psycopg://u@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x/y.db", "sqlite:///x/y.db"),
        ("sqlite+pysqlite:///x/y.db", "sqlite:///x/y.db"),
        ("/var/lib/lanterne/l.db", "sqlite:////var/lib/lanterne/l.db"),
    ],
)
def test_normalise_url(given: str, expected: str) -> None:
    assert normalise_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite+aiosqlite:///x.db", "oracle://u@h/db"])
def test_unsupported_urls_are_store_errors(url: str) -> None:
    with pytest.raises(StoreError):
        normalise_url(url)


def test_sqlite_pragmas_and_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "lanterne.db"
    with open_store(f"sqlite:///{path}") as store:
        assert path.is_file()
        with store.engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 30000}


def test_in_memory_sqlite_is_one_database() -> None:
    with open_store("sqlite://") as store:
        now = datetime.now(UTC)
        with store.write() as session:
            session.add(Agent(name="a", site="s", first_seen=now, last_heartbeat=now))
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(Agent)) == 1


def test_write_commits_or_rolls_back(db: Store) -> None:
    now = datetime.now(UTC)
    with db.write() as session:
        session.add(Agent(name="kept", site="s", first_seen=now, last_heartbeat=now))

    def fail_half_way() -> None:
        with db.write() as session:
            session.add(Agent(name="lost", site="s", first_seen=now, last_heartbeat=now))
            session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_half_way()
    with db.session() as session:
        assert session.scalars(select(Agent.name)).all() == ["kept"]


def test_times_come_back_aware_utc(db: Store) -> None:
    paris = timezone(timedelta(hours=2))
    with db.write() as session:
        session.add(
            Agent(
                name="a",
                site="s",
                first_seen=datetime(2025, 6, 1, 12, 0, tzinfo=paris),
                last_heartbeat=datetime(2025, 6, 1, 10, 0, 0, 5),  # naive: taken as UTC
            )
        )
    with db.session() as session:
        agent = session.scalars(select(Agent)).one()
    assert agent.first_seen == datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    assert agent.first_seen.tzinfo == UTC
    assert agent.last_heartbeat == datetime(2025, 6, 1, 10, 0, 0, 5, tzinfo=UTC)


def test_opening_twice_does_not_migrate_again(db_url: str) -> None:
    with open_store(db_url), open_store(db_url) as second, second.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_unreachable_postgresql_is_a_store_error() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(StoreError, match="cannot connect to postgresql"):
        open_store("postgresql://nobody:secret@127.0.0.1:9/nothing")


def test_the_password_never_appears_in_errors() -> None:
    with pytest.raises(StoreError) as caught:
        open_store("postgresql://nobody:s3cr3t@127.0.0.1:9/nothing")
    assert "s3cr3t" not in str(caught.value)


def test_make_engine_does_not_connect(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "never.db")
    assert engine.dialect.name == "sqlite"
    assert not (tmp_path / "never.db").exists()
    engine.dispose()
