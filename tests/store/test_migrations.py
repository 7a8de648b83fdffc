"""Migrations: Alembic from the first table on, producing exactly the models' schema on both databases."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from store import (
    Base,
    Endpoint,
    IdentityKind,
    ObservationAggregate,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
)
from tests.store.dburl import temporary_database

REPO = Path(__file__).resolve().parents[2]


def _differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _schema(url: str) -> dict[str, object]:
    """Everything the inspector says of every table: columns, keys, indexes, constraints."""
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: {
                "columns": [
                    (column["name"], str(column["type"]), column["nullable"], str(column.get("default")))
                    for column in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table),
                "foreign keys": sorted(map(repr, inspector.get_foreign_keys(table))),
                "indexes": sorted(map(repr, inspector.get_indexes(table))),
                "unique": sorted(map(repr, inspector.get_unique_constraints(table))),
                "checks": sorted(map(repr, inspector.get_check_constraints(table))),
            }
            for table in sorted(inspector.get_table_names())
        }
    finally:
        engine.dispose()


def _upgrade_with_alembic(url: str) -> None:
    """What ``migrate`` did for every database before it created new ones at head in one step."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def _assert_at_head_with_the_models(url: str) -> None:
    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert _differences(url) == []


def test_migrations_produce_exactly_the_models(db_url: str) -> None:
    _upgrade_with_alembic(db_url)
    _assert_at_head_with_the_models(db_url)


def test_a_new_database_is_created_at_head_as_the_migrations_make_it(db_url: str, tmp_path: Path) -> None:
    """``migrate`` creates an empty database from the models in one step: the same schema, same stamp."""
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        migrate(engine)
    finally:
        engine.dispose()
    _assert_at_head_with_the_models(db_url)
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    with temporary_database(backend, tmp_path / "by-alembic") as migrated:
        _upgrade_with_alembic(migrated)
        assert _schema(migrated) == _schema(db_url)


def test_downgrade_to_base_and_up_again(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert _differences(db_url) == []


def test_observations_keep_their_rows_when_keyed_by_endpoint_first(db_url: str) -> None:
    """0003: the primary key starts with the endpoint (its rows are found by key), no row is lost."""
    engine = make_engine(db_url)
    seen = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [
        {
            "agent": agent,
            "endpoint_id": endpoint_id,
            "kind": "dns.query",
            "value": f"host{n}.example.org",
            "first_seen": seen,
            "last_seen": seen + timedelta(minutes=n),
            "count": n + 1,
            "attrs": {"qtype": "A"},
            "peer": "10.0.0.53",
        }
        for n, (agent, endpoint_id) in enumerate([("a", 1), ("b", 1), ("a", 2), ("a", 2)])
    ]
    try:
        migrate(engine, "0002")
        with engine.begin() as connection:
            connection.execute(
                Endpoint.__table__.insert(),
                [
                    {
                        "id": number,
                        "site": "ch",
                        "identity_kind": IdentityKind.MAC,
                        "identity": f"02:00:00:00:00:0{number}",
                        "randomized_mac": False,
                        "first_seen": seen,
                        "last_seen": seen,
                    }
                    for number in (1, 2)
                ],
            )
            connection.execute(ObservationAggregate.__table__.insert(), rows)
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert inspect(engine).get_pk_constraint("observations")["constrained_columns"] == [
            "endpoint_id",
            "agent",
            "kind",
            "value",
        ]
        columns = ObservationAggregate.__table__.c
        with engine.connect() as connection:
            stored = [row._asdict() for row in connection.execute(select(columns).order_by(columns.count))]
            if engine.dialect.name == "sqlite":
                plan = " ".join(
                    str(row[-1])
                    for row in connection.execute(
                        text("EXPLAIN QUERY PLAN SELECT count FROM observations WHERE endpoint_id = 2")
                    )
                )
                assert "USING INDEX" in plan, plan  # the key's index, not a scan of the table
    finally:
        engine.dispose()
    assert stored == rows
    assert _differences(db_url) == []


def test_the_migrations_ship_in_the_package() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = data["tool"]["setuptools"]["package-data"]["store"]
    shipped = {path for pattern in patterns for path in (REPO / "store").glob(pattern)}
    migrations = REPO / "store" / "migrations"
    needed = {migrations / "env.py", migrations / "script.py.mako", *migrations.glob("versions/*.py")}
    assert needed <= shipped
