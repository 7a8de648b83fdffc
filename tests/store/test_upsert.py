"""Batched upserts on SQLite and PostgreSQL: merged keys, counts, first/last seen, newest attributes."""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Text, func, select, text
from sqlalchemy.exc import IntegrityError

import store._upsert
from store import (
    BATCH_SIZE,
    OBSERVATION_COLUMNS,
    Agent,
    Detection,
    Endpoint,
    EndpointAlias,
    IdentityKind,
    ObservationAggregate,
    Store,
    merge_observation_rows,
    merge_rows,
    upsert_agent,
    upsert_aliases,
    upsert_detections,
    upsert_endpoints,
    upsert_observations,
)
from tests.store.helpers import at, endpoint_row, make_endpoints


def obs_row(
    endpoint_id: int, value: str, first: datetime, last: datetime, count: int = 1, **extra: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "agent": "a1",
        "endpoint_id": endpoint_id,
        "kind": "tls.sni",
        "value": value,
        "first_seen": first,
        "last_seen": last,
        "count": count,
        "attrs": {"alpn": ["h2"]},
        "peer": "192.0.2.1",
    }
    row.update(extra)
    return row


def _observations(db: Store) -> dict[tuple[int, str], ObservationAggregate]:
    with db.session() as session:
        return {(row.endpoint_id, row.value): row for row in session.scalars(select(ObservationAggregate))}


def test_the_same_key_twice_in_one_flush(db: Store) -> None:
    # PostgreSQL refuses one ON CONFLICT statement that touches a row twice: keys merge first.
    with db.write() as session:
        (ep,) = make_endpoints(session, "00:11:22:33:44:55")
        written = upsert_observations(
            session,
            [
                obs_row(ep, "chatgpt.com", at(5), at(6), 2, attrs={"n": 1}),
                obs_row(ep, "chatgpt.com", at(1), at(9), 3, attrs={"n": 2}, peer="192.0.2.9"),
                obs_row(ep, "chatgpt.com", at(2), at(3), 1, attrs={"n": 3}),
            ],
        )
    assert written == 1
    row = _observations(db)[ep, "chatgpt.com"]
    assert (row.count, row.first_seen, row.last_seen) == (6, at(1), at(9))
    assert (row.attrs, row.peer) == ({"n": 2}, "192.0.2.9")  # from the newest sighting


def test_counts_add_up_across_flushes(db: Store) -> None:
    with db.write() as session:
        (ep,) = make_endpoints(session, "00:11:22:33:44:55")
        upsert_observations(session, [obs_row(ep, "a.example", at(10), at(20), 4, attrs={"v": "new"})])
    with db.write() as session:
        # An older capture scanned later: counts add, times widen, the attributes stay the newest.
        upsert_observations(session, [obs_row(ep, "a.example", at(0), at(5), 3, attrs={"v": "old"})])
    row = _observations(db)[ep, "a.example"]
    assert (row.count, row.first_seen, row.last_seen, row.attrs) == (7, at(0), at(20), {"v": "new"})


def test_json_columns_keep_what_the_json_module_would_give_back(db: Store) -> None:
    """Attributes go in as orjson writes them, and what orjson refuses goes through the json module."""
    attrs: dict[str, Any] = {
        "alpn": ("h2", "http/1.1"),  # a tuple comes back a list, as from JSON anywhere
        "name": "Scanner IRM étage 2 \u2028 «GE»",
        "nested": {"ok": True, "none": None, "ratio": 0.85, "tiny": 1e-05},
        "big": 2**70,  # beyond 64 bits: orjson refuses it, the json module writes it
    }
    with db.write() as session:
        (ep,) = make_endpoints(session, "00:11:22:33:44:55")
        upsert_observations(
            session,
            [
                obs_row(ep, "a.example", at(1), at(2), attrs=attrs),
                obs_row(ep, "b.example", at(1), at(2), attrs={7: "a key that is a number"}),
            ],
        )
        if db.dialect == "sqlite":
            text_of = select(func.cast(ObservationAggregate.attrs, Text))
            stored = session.scalar(text_of.where(ObservationAggregate.value == "b.example"))
            assert stored == '{"7":"a key that is a number"}'  # compact, keys as text
    rows = _observations(db)
    assert rows[ep, "a.example"].attrs == json.loads(json.dumps(attrs))
    assert rows[ep, "b.example"].attrs == {"7": "a key that is a number"}


def test_many_batches_with_duplicates_across_them(db: Store) -> None:
    n = BATCH_SIZE * 2 + 17
    with db.write() as session:
        eps = make_endpoints(session, "00:00:00:00:00:01", "00:00:00:00:00:02")
        rows = [obs_row(eps[i % 2], f"h{i % (n // 2)}.example", at(i), at(i)) for i in range(n)]
        written = upsert_observations(session, rows)
    stored = _observations(db)
    assert written == len(stored) == len({(r["endpoint_id"], r["value"]) for r in rows})
    assert sum(row.count for row in stored.values()) == n


def test_endpoint_ids_and_columns_that_a_sighting_does_not_know(db: Store) -> None:
    with db.write() as session:
        first = upsert_endpoints(
            session, [endpoint_row("aa:aa:aa:aa:aa:01", seen=at(0), hostname="pump-1", ip="10.0.0.5")]
        )
        again = upsert_endpoints(session, [endpoint_row("aa:aa:aa:aa:aa:01", seen=at(9), ip="10.0.0.6")])
        older = upsert_endpoints(
            session, [endpoint_row("aa:aa:aa:aa:aa:01", seen=at(-5), ip="10.0.0.4", vendor="Acme")]
        )
    key = (IdentityKind.MAC, "aa:aa:aa:aa:aa:01")
    assert first[key] == again[key] == older[key]
    with db.session() as session:
        row = session.get_one(Endpoint, first[key])
    # The newest sighting sets the address; a None never erases; an older one only fills gaps.
    assert (row.ip, row.hostname, row.vendor) == ("10.0.0.6", "pump-1", "Acme")
    assert (row.first_seen, row.last_seen) == (at(-5), at(9))


def test_endpoint_ids_of_many_rows_new_and_known_are_those_stored(db: Store) -> None:
    """Thousands of identities over several statements (RETURNING on SQLite, a query elsewhere)."""
    macs = [f"aa:aa:aa:aa:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(2500)]
    with db.write() as session:
        known = upsert_endpoints(session, [endpoint_row(mac, seen=at(0)) for mac in macs[::3]])
        ids = upsert_endpoints(session, [endpoint_row(mac, seen=at(5)) for mac in macs])
    with db.session() as session:
        stored = {
            (IdentityKind(kind), identity): row_id
            for row_id, kind, identity in session.execute(
                select(Endpoint.id, Endpoint.identity_kind, Endpoint.identity)
            )
        }
    assert ids == stored
    assert len(ids) == len(macs)
    assert all(ids[key] == row_id for key, row_id in known.items())
    assert all(isinstance(kind, IdentityKind) for kind, _ in ids)


def test_returned_rows_come_back_whatever_the_path(db: Store) -> None:
    """RETURNING through ``execute_many``: SQLite's multi-row statements, SQLAlchemy's path elsewhere."""
    table = store._upsert.ENDPOINTS
    rows = [endpoint_row(f"bb:bb:bb:bb:{i >> 8:02x}:{i & 0xFF:02x}", seen=at(i)) for i in range(1200)]
    with db.write() as session:
        connection = session.connection()
        statement = store._upsert._insert(connection, table).returning(table.c.id, table.c.identity)
        returned: list[Any] = []
        store._upsert.execute_many(connection, table, statement, rows, returned=returned)
    with db.session() as session:
        stored = {row.identity: row.id for row in session.execute(select(Endpoint.identity, Endpoint.id))}
    assert sorted((identity, row_id) for row_id, identity in returned) == sorted(stored.items())
    assert len(stored) == len(rows)


def test_a_lease_moves_to_its_new_holder(db: Store) -> None:
    with db.write() as session:
        old, new = make_endpoints(session, "00:00:00:00:00:0a", "00:00:00:00:00:0b")
        lease = {"site": "s", "alias": "lease:10.0.0.7"}
        upsert_aliases(
            session,
            [{**lease, "endpoint_id": old, "first_seen": at(0), "last_seen": at(10), "valid_until": at(60)}],
        )
        upsert_aliases(
            session,
            [{**lease, "endpoint_id": old, "first_seen": at(20), "last_seen": at(30), "valid_until": at(90)}],
        )
    with db.session() as session:
        alias = session.get_one(EndpointAlias, ("s", "lease:10.0.0.7"))
        assert (alias.endpoint_id, alias.first_seen, alias.last_seen, alias.valid_until) == (
            old,
            at(0),
            at(30),
            at(90),
        )
    with db.write() as session:
        upsert_aliases(
            session,
            [
                {
                    **lease,
                    "endpoint_id": new,
                    "first_seen": at(100),
                    "last_seen": at(101),
                    "valid_until": at(200),
                }
            ],
        )
        # A stale sighting of the old binding, scanned late, does not take the address back.
        upsert_aliases(
            session,
            [{**lease, "endpoint_id": old, "first_seen": at(40), "last_seen": at(50), "valid_until": at(95)}],
        )
    with db.session() as session:
        alias = session.get_one(EndpointAlias, ("s", "lease:10.0.0.7"))
        assert (alias.endpoint_id, alias.first_seen, alias.last_seen, alias.valid_until) == (
            new,
            at(100),
            at(101),
            at(200),
        )


def test_detections_are_replaced_by_the_new_assessment(db: Store) -> None:
    def detection(
        confidence: float, evidence: list[dict[str, Any]], first: datetime, last: datetime
    ) -> dict[str, Any]:
        return {
            "site": "s",
            "product_key": "openai-chatgpt",
            "product_id": "openai-chatgpt",
            "vendor": "OpenAI",
            "category": "llm_chat",
            "endpoint_id": ep,
            "confidence": confidence,
            "evidence": evidence,
            "roles": [],
            "catalog_version": "v1",
            "first_seen": first,
            "last_seen": last,
        }

    with db.write() as session:
        (ep,) = make_endpoints(session, "00:00:00:00:00:0c")
        upsert_detections(session, [detection(0.9, [{"rule": "a"}], at(5), at(6))])
        upsert_detections(session, [detection(0.99, [{"rule": "a"}, {"rule": "b"}], at(1), at(3))])
    with db.session() as session:
        row = session.scalars(select(Detection)).one()
    assert (row.confidence, len(row.evidence), row.first_seen, row.last_seen) == (0.99, 2, at(1), at(6))


def test_agent_heartbeat(db: Store) -> None:
    with db.write() as session:
        upsert_agent(
            session,
            {
                "name": "probe-1",
                "site": "s",
                "first_seen": at(5),
                "last_heartbeat": at(5),
                "version": "0.1",
                "catalog_version": "x",
            },
        )
        upsert_agent(
            session,
            {
                "name": "probe-1",
                "site": "s2",
                "first_seen": at(9),
                "last_heartbeat": at(9),
                "version": "0.2",
                "catalog_version": "y",
            },
        )
    with db.session() as session:
        agent = session.get_one(Agent, "probe-1")
    assert (agent.site, agent.first_seen, agent.last_heartbeat, agent.version) == ("s2", at(5), at(9), "0.2")


def test_merge_rows_without_a_database() -> None:
    rows = [
        {"k": 1, "n": 1, "first": 5, "last": 5, "v": "a"},
        {"k": 2, "n": 1, "first": 1, "last": 1, "v": "b"},
        {"k": 1, "n": 2, "first": 3, "last": 4, "v": "c"},
    ]
    merged = merge_rows(
        rows, ("k",), add=("n",), least=("first",), greatest=("last",), newer=("v",), stamp="last"
    )
    assert merged == [
        {"k": 1, "n": 3, "first": 3, "last": 5, "v": "a"},
        {"k": 2, "n": 1, "first": 1, "last": 1, "v": "b"},
    ]
    assert rows[0] == {"k": 1, "n": 1, "first": 5, "last": 5, "v": "a"}  # the caller's rows are not changed


# -- SQLite: many rows per statement, the next statement prepared by a thread ----------------------


def _fold(rounds: list[list[dict[str, Any]]]) -> dict[tuple[int, str], tuple[Any, ...]]:
    """What the observations table must hold after ``rounds`` of upserts (computed in Python)."""
    expected: dict[tuple[int, str], tuple[Any, ...]] = {}
    for rows in rounds:
        for row in rows:
            key = (row["endpoint_id"], row["value"])
            old = expected.get(key)
            new = (row["count"], row["first_seen"], row["last_seen"], row["attrs"], row["peer"])
            if old is None:
                expected[key] = new
                continue
            newest = new if row["last_seen"] >= old[2] else old
            expected[key] = (old[0] + new[0], min(old[1], new[1]), max(old[2], new[2]), newest[3], newest[4])
    return expected


def _rounds(eps: list[int], size: int, *, names: int, shifts: tuple[int, ...]) -> list[list[dict[str, Any]]]:
    """Rounds of ``size`` rows over ``names`` values: keys repeat within and across rounds."""
    return [
        [
            obs_row(
                eps[(i * 7 + shift) % len(eps)],
                f"h{i % names}.example",
                at(i % 97 + shift),
                at(i % 89 + 100 + shift),
                i % 5 + 1,
                attrs={"n": i, "round": shift},
                peer=f"192.0.2.{i % 250}",
            )
            for i in range(size)
        ]
        for shift in shifts
    ]


def _folded(db: Store) -> dict[tuple[int, str], tuple[Any, ...]]:
    """The observations table in ``_fold``'s form."""
    return {
        key: (row.count, row.first_seen, row.last_seen, row.attrs, row.peer)
        for key, row in _observations(db).items()
    }


def test_many_statements_of_many_rows_give_what_one_row_at_a_time_gives(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of rows in statements of 7 rows (hundreds of multi-row statements)."""
    monkeypatch.setattr(store._upsert, "SQLITE_STATEMENT_ROWS", 7)
    statements: list[int] = []
    real_sql = store._upsert._MultiRow.sql

    def sql(self: store._upsert._MultiRow, rows: int) -> str:
        statements.append(rows)
        return real_sql(self, rows)

    monkeypatch.setattr(store._upsert._MultiRow, "sql", sql)
    with db.write() as session:
        eps = make_endpoints(session, *(f"00:00:00:00:01:{i:02x}" for i in range(30)))
    statements.clear()
    rounds = _rounds(eps, 2500, names=400, shifts=(0, 3))
    for rows in rounds:
        with db.write() as session:
            upsert_observations(session, rows)
    assert _folded(db) == _fold(rounds)
    # SQLite went through the multi-row statements, each key once per round (PostgreSQL: COPY
    # and one INSERT … SELECT).
    if db.dialect == "sqlite":
        keys = [
            {(row["endpoint_id"], row["agent"], row["kind"], row["value"]) for row in rows} for rows in rounds
        ]
        assert max(statements) == 7
        assert sum(statements) == sum(map(len, keys))
    else:
        assert statements == []


def test_a_failed_statement_rolls_back_every_statement_before_it(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store._upsert, "SQLITE_STATEMENT_ROWS", 5)
    with db.write() as session:
        (ep,) = make_endpoints(session, "00:11:22:33:44:55")
    # The last rows name an endpoint that does not exist (a foreign key on both databases).
    rows = [obs_row(ep if i < 180 else 999_999, f"h{i}.example", at(i), at(i)) for i in range(200)]
    with pytest.raises(IntegrityError), db.write() as session:
        upsert_observations(session, rows)
    assert _observations(db) == {}


def test_a_value_that_cannot_be_bound_is_raised_where_the_upsert_was_called(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store._upsert, "SQLITE_STATEMENT_ROWS", 5)
    with db.write() as session:
        (ep,) = make_endpoints(session, "00:11:22:33:44:55")
    rows = [obs_row(ep, f"h{i}.example", at(i), at(i)) for i in range(100)]
    rows[77]["attrs"] = {"not json": object()}
    with pytest.raises(Exception, match="not JSON serializable"), db.write() as session:
        upsert_observations(session, rows)
    assert _observations(db) == {}


def test_the_multi_row_statement_is_the_single_row_one_repeated() -> None:
    single = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
    multi = store._upsert._MultiRow.of(single, 2)
    assert multi is not None
    assert multi.sql(3) == (
        "INSERT INTO t (a, b) VALUES (?, ?),(?, ?),(?, ?) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
    )
    # Anything else (another parameter after the values, a different width) keeps executemany.
    assert store._upsert._MultiRow.of(single.replace("excluded.b", "?"), 2) is None
    assert store._upsert._MultiRow.of(single, 3) is None
    assert store._upsert._MultiRow.of("UPDATE t SET a = ?", 1) is None


def test_postgresql_copies_many_rows_and_gives_what_executemany_gives(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round through COPY, one through executemany, one as a role without temporary tables.

    On PostgreSQL the first round goes through COPY and a staged INSERT … SELECT, the others
    through executemany, all upserting the same keys; on SQLite every round takes the multi-row
    statements and COPY is never tried. The table must hold the Python fold of all three.
    """
    copies: list[int] = []
    real_run = store._upsert._CopyUpsert.run

    def run(self: Any, connection: Any, rows: Any, processors: Any) -> None:
        rows = list(rows)
        copies.append(len(rows))
        real_run(self, connection, rows, processors)

    monkeypatch.setattr(store._upsert._CopyUpsert, "run", run)
    with db.write() as session:
        eps = make_endpoints(session, *(f"00:00:00:00:02:{i:02x}" for i in range(20)))
    rounds = _rounds(eps, 900, names=300, shifts=(0, 5, 9))
    for rows in rounds:  # what COPY's text format must escape, and NULLs
        for i, row in enumerate(rows):
            row["attrs"]["text"] = "tab\there, «quote» \\ and \\N"
            if i % 7 == 0:
                row["peer"] = None
    settings = [(1, True), (10**9, True), (1, False)]  # (PG_COPY_MIN_ROWS, temporary tables allowed)
    for rows, (threshold, allowed) in zip(rounds, settings, strict=True):
        monkeypatch.setattr(store._upsert, "PG_COPY_MIN_ROWS", threshold)
        monkeypatch.setattr(store._upsert._CopyUpsert, "allowed", staticmethod(lambda _c, a=allowed: a))
        with db.write() as session:
            upsert_observations(session, rows)
    assert _folded(db) == _fold(rounds)
    if db.dialect == "postgresql":
        assert copies == [len({(r["endpoint_id"], r["value"]) for r in rounds[0]})]
        with db.session() as session:  # the staging table went with its transaction
            staged = session.execute(
                text("SELECT count(*) FROM pg_class WHERE relname LIKE 'lanterne_stage%'")
            )
            assert staged.scalar() == 0
    else:
        assert copies == []


def test_the_copy_form_is_the_single_row_statement_with_its_values_staged() -> None:
    single = (
        "INSERT INTO t (a, b, c) VALUES (%(a)s::VARCHAR, %(b)s::TIMESTAMP WITH TIME ZONE, "
        "%(c)s::NUMERIC(10, 2)) ON CONFLICT (a) DO UPDATE SET b = greatest(t.b, excluded.b)"
    )
    of, table = store._upsert._CopyUpsert.of, store._upsert.ENDPOINTS
    copy = of(single, table, ["a"])
    assert copy is not None
    assert (copy._target, copy._columns, copy._order) == ("t", "a, b, c", " ORDER BY a")
    assert copy._stage.startswith("lanterne_stage_endpoints_")
    assert copy._tail == " ON CONFLICT (a) DO UPDATE SET b = greatest(t.b, excluded.b)"
    # A parameter (or a literal %) after the values, or no VALUES group: executemany.
    assert of(single.replace("excluded.b", "%(d)s"), table, []) is None
    assert of("INSERT INTO t (a) SELECT 1", table, []) is None
    assert of("INSERT INTO t (a) VALUES (%(a)s", table, []) is None


def test_observation_tuples_merge_as_merge_rows_merges_mappings() -> None:
    """``merge_observation_rows`` (the scan's path) against ``merge_rows`` on the same random rows."""
    generator = random.Random(7)
    rows = [
        obs_row(
            generator.randrange(3),
            f"h{generator.randrange(40)}.example",
            at(generator.randrange(50)),
            at(generator.randrange(50, 100)),
            generator.randrange(1, 9),
            attrs={"n": i},
            peer=f"192.0.2.{generator.randrange(4)}",
            kind=generator.choice(["tls.sni", "dns.query"]),
        )
        for i in range(600)
    ]
    expected = merge_rows(
        rows,
        ("agent", "endpoint_id", "kind", "value"),
        add=("count",),
        least=("first_seen",),
        greatest=("last_seen",),
        newer=("attrs", "peer"),
        stamp="last_seen",
    )
    merged = merge_observation_rows([tuple(row[name] for name in OBSERVATION_COLUMNS) for row in rows])
    assert len(merged) < len(rows)  # keys met several times
    assert sorted(merged, key=repr) == sorted(
        (tuple(row[name] for name in OBSERVATION_COLUMNS) for row in expected), key=repr
    )
