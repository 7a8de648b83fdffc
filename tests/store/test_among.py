"""``among``: ``column IN (values)`` bound as one parameter, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from store import Endpoint, IdentityKind, Store, among, open_store
from store._among import _JSON_KEY, CHUNK

NOW = datetime(2026, 11, 1, tzinfo=UTC)
#: Identities that quoting, escaping or encoding could get wrong.
AWKWARD = ["o'brien", 'say "hi"', "back\\slash", "é-ward", "ward 3 ☕", "[1]", "null", ""]


def _endpoints(db: Store, identities: list[str]) -> dict[str, int]:
    with db.write() as session:
        session.add_all(
            Endpoint(
                site="s",
                identity_kind=IdentityKind.DHCP_HOSTNAME,
                identity=identity,
                randomized_mac=True,
                first_seen=NOW,
                last_seen=NOW,
            )
            for identity in identities
        )
    with db.session() as session:
        rows = session.execute(select(Endpoint.id, Endpoint.identity))
        return {identity: row_id for row_id, identity in rows}


def _selected(db: Store, column: object, values: list[str] | list[int]) -> tuple[int, set[object]]:
    """How many conditions ``among`` gave, and what the rows they select hold in ``column``."""
    with db.session() as session:
        conditions = list(among(session, column, values))
        found: set[object] = set()
        for condition in conditions:
            found.update(value for (value,) in session.execute(select(column).where(condition)))
    return len(conditions), found


def test_thousands_of_values_go_in_one_condition(db: Store) -> None:
    stored = [f"host-{number:05d}" for number in range(3000)] + AWKWARD
    _endpoints(db, stored)
    # More values than SQLite's oldest limit of variables, some absent, some twice.
    wanted = stored[::2] + [f"absent-{number}" for number in range(1500)] + stored[:10]
    conditions, found = _selected(db, Endpoint.identity, wanted)
    assert conditions == 1
    assert found == set(wanted) & set(stored)
    assert set(AWKWARD[::2]) <= found


def test_integers_are_matched_as_integers(db: Store) -> None:
    ids = _endpoints(db, [f"host-{number}" for number in range(20)])
    wanted = [*sorted(ids.values())[::3], 10**9]
    conditions, found = _selected(db, Endpoint.id, wanted)
    assert (conditions, found) == (1, set(wanted) - {10**9})


def test_no_value_gives_no_condition(db: Store) -> None:
    _endpoints(db, ["a"])
    assert _selected(db, Endpoint.identity, []) == (0, set())


def test_the_statement_is_the_same_whatever_the_number_of_values(db: Store) -> None:
    """One text for any number of values: SQLAlchemy compiles it once, SQLite prepares it once."""
    with db.session() as session:
        bind = session.get_bind()
        texts = {
            str(select(Endpoint.id).where(*among(session, Endpoint.identity, values)).compile(bind))
            for values in (["a"], ["a", "b"], [str(number) for number in range(5000)])
        }
    assert len(texts) == 1


def test_a_sqlite_without_json_gets_chunks_of_in(tmp_path: Path) -> None:
    db = open_store(f"sqlite:///{tmp_path / 'nojson.db'}")
    try:
        stored = [f"host-{number:04d}" for number in range(1200)]
        _endpoints(db, stored)
        with db.session() as session:
            session.connection().connection.info[_JSON_KEY] = False  # as a build without JSON answers
            conditions = list(among(session, Endpoint.identity, [*stored, "absent"]))
            found = {
                value
                for condition in conditions
                for (value,) in session.execute(select(Endpoint.identity).where(condition))
            }
        assert len(conditions) == -(-(len(stored) + 1) // CHUNK)
        assert found == set(stored)
    finally:
        db.dispose()
