"""Batched upserts: ``INSERT … ON CONFLICT DO UPDATE`` through the dialect's own ``insert()``.

Rows are merged by key in memory first: PostgreSQL refuses a statement that touches the same
key twice (``ON CONFLICT DO UPDATE command cannot affect row a second time``) and SQLite would
silently apply both, so a bug that only one database shows can never reach either. Then they go
out in batches of ``BATCH_SIZE`` through one prepared statement each. On SQLite, a batch is one
statement of many ``VALUES`` rows (``_MultiRow``); on PostgreSQL, many rows are copied into a
temporary table and upserted by one statement (``_CopyUpsert``).

How each column merges with the stored row is declared per call: ``add`` (counts), ``least``
and ``greatest`` (first and last seen), ``replace`` (the new value wins), ``newer`` (the new value
wins only when its ``stamp`` column is not older: scanning an old capture after a new one does
not roll the last attributes back). Other columns are written on insert only.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import ColumnElement, Table, and_, case, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from store._among import among
from store._models import Agent, Base, Detection, Endpoint, EndpointAlias, IdentityKind, ObservationAggregate

#: Rows per executed batch: big enough to amortise the round trip, small enough to stay in cache.
BATCH_SIZE: Final = 1000
#: Rows per multi-row statement on SQLite (fewer when the row is wide: SQLite bounds the
#: parameters of a statement). Measured on 40,000 observations: 250 to 1,000 are alike.
SQLITE_STATEMENT_ROWS: Final = 500
#: Rows from which PostgreSQL gets them through COPY rather than ``executemany`` (``_CopyUpsert``):
#: a few hundred rows already gain, a handful would pay the temporary table for nothing.
PG_COPY_MIN_ROWS: Final = 100

_TABLES: Final = Base.metadata.tables
OBSERVATIONS: Final = _TABLES[ObservationAggregate.__tablename__]
ENDPOINTS: Final = _TABLES[Endpoint.__tablename__]
ALIASES: Final = _TABLES[EndpointAlias.__tablename__]
DETECTIONS: Final = _TABLES[Detection.__tablename__]
AGENTS: Final = _TABLES[Agent.__tablename__]


def _connection(target: Connection | Session) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _insert(connection: Connection, table: Table) -> Any:
    """The dialect's ``insert()`` (the only ones with ``on_conflict_do_update``)."""
    name = connection.dialect.name
    if name == "postgresql":
        # The PostgreSQL dialect loads where it is used (60 ms of a SQLite scan's start-up).
        from sqlalchemy.dialects.postgresql import insert  # noqa: PLC0415

        return insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts are written for SQLite and PostgreSQL, not {name}")


def _least(connection: Connection, a: Any, b: Any) -> ColumnElement[Any]:
    # SQLite's two-argument min()/max() are scalar functions; PostgreSQL spells them least/greatest.
    return func.least(a, b) if connection.dialect.name == "postgresql" else func.min(a, b)


def _greatest(connection: Connection, a: Any, b: Any) -> ColumnElement[Any]:
    return func.greatest(a, b) if connection.dialect.name == "postgresql" else func.max(a, b)


def merge_rows(
    rows: Iterable[Mapping[str, Any]],
    key: Sequence[str],
    *,
    add: Sequence[str] = (),
    least: Sequence[str] = (),
    greatest: Sequence[str] = (),
    replace: Sequence[str] = (),
    newer: Sequence[str] = (),
    stamp: str | None = None,
) -> list[Mapping[str, Any]]:
    """Merge rows that share a key the way the database would merge them with the stored row."""
    ident_of = itemgetter(*key) if len(key) > 1 else (lambda row: (row[key[0]],))
    merged: dict[Any, Mapping[str, Any]] = {}
    copied: set[Any] = set()
    for row in rows:
        ident = ident_of(row)
        current = merged.get(ident)
        if current is None:
            merged[ident] = row  # copied only if another row shares the key (rare)
            continue
        if ident not in copied:
            copied.add(ident)
            current = merged[ident] = dict(current)
        assert isinstance(current, dict)
        is_newer = stamp is None or row[stamp] >= current[stamp]
        for name in add:
            current[name] += row[name]
        for name in least:
            current[name] = min(current[name], row[name])
        for name in replace:
            current[name] = row[name]
        if is_newer:
            for name in newer:
                current[name] = row[name]
        for name in greatest:  # after ``newer``: it may read the stamp before it moves
            current[name] = max(current[name], row[name])
    return list(merged.values())


def upsert(
    target: Connection | Session,
    table: Table,
    rows: Iterable[Mapping[str, Any]],
    *,
    key: Sequence[str],
    add: Sequence[str] = (),
    least: Sequence[str] = (),
    greatest: Sequence[str] = (),
    replace: Sequence[str] = (),
    newer: Sequence[str] = (),
    stamp: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Insert or merge ``rows`` into ``table`` by ``key``; return how many distinct keys were written."""
    merged = merge_rows(
        rows, key, add=add, least=least, greatest=greatest, replace=replace, newer=newer, stamp=stamp
    )
    if not merged:
        return 0
    connection = _connection(target)
    statement = _upsert_statement(
        connection,
        table,
        key,
        add=add,
        least=least,
        greatest=greatest,
        replace=replace,
        newer=newer,
        stamp=stamp,
    )
    execute_many(connection, table, statement, merged, batch_size, order_by=key)
    return len(merged)


def _upsert_statement(
    connection: Connection,
    table: Table,
    key: Sequence[str],
    *,
    add: Sequence[str] = (),
    least: Sequence[str] = (),
    greatest: Sequence[str] = (),
    replace: Sequence[str] = (),
    newer: Sequence[str] = (),
    stamp: str | None = None,
) -> Any:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` merging each column the way ``merge_rows`` does."""
    insert = _insert(connection, table)
    excluded = insert.excluded
    columns = table.c
    updates: dict[str, Any] = {}
    for name in add:
        updates[name] = columns[name] + excluded[name]
    for name in least:
        updates[name] = _least(connection, columns[name], excluded[name])
    for name in greatest:
        updates[name] = _greatest(connection, columns[name], excluded[name])
    for name in replace:
        updates[name] = excluded[name]
    if newer:
        assert stamp is not None, "newer columns need a stamp column to compare"
        is_newer = excluded[stamp] >= columns[stamp]
        for name in newer:
            updates[name] = case((is_newer, excluded[name]), else_=columns[name])
    return (
        insert.on_conflict_do_update(index_elements=list(key), set_=updates)
        if updates
        else insert.on_conflict_do_nothing(index_elements=list(key))
    )


def execute_many(
    connection: Connection,
    table: Table,
    statement: Any,
    rows: Sequence[Mapping[str, Any]],
    batch_size: int = BATCH_SIZE,
    *,
    order_by: Sequence[str] = (),
    returned: list[Any] | None = None,
) -> None:
    """Execute a statement for many rows of ``table`` (mappings), through ``execute_rows``.

    Rows that do not all carry exactly the same columns, all of ``table``, take SQLAlchemy's path.
    ``returned``: the statement has a RETURNING clause; its rows are added to this list.
    """
    if not rows:
        return
    # The VALUES clause names the rows' columns only, as SQLAlchemy's own executemany compiles it
    # (from the first row's keys): compiled bare, an INSERT names every column (``id``,
    # ``merged_into``...), no row matched, and endpoints and detections went row by row.
    columns = list(rows[0].keys())
    wanted = rows[0].keys()
    if not set(columns) <= set(table.c.keys()) or any(row.keys() != wanted for row in rows):
        for start in range(0, len(rows), batch_size):
            result = connection.execute(statement, list(rows[start : start + batch_size]))
            if returned is not None:
                returned += result.all()
        return
    getter = itemgetter(*columns) if len(columns) > 1 else (lambda row: (row[columns[0]],))
    execute_rows(
        connection,
        table,
        statement,
        columns,
        list(map(getter, rows)),
        batch_size,
        order_by=[columns.index(name) for name in order_by],
        returned=returned,
    )


def execute_rows(
    connection: Connection,
    table: Table,
    statement: Any,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    batch_size: int = BATCH_SIZE,
    *,
    order_by: Sequence[int] = (),
    returned: list[Any] | None = None,
) -> None:
    """Execute a statement for many rows of ``table``, tuples of ``columns``.

    SQLAlchemy's own executemany builds each row's parameters one by one, which costs more than
    SQLite spends storing them. Here the statement is compiled once and every column's bind
    processor (the same ones SQLAlchemy would use) runs over the whole batch column by column.
    ``order_by``: the positions of the key, by which PostgreSQL gets the rows. ``returned``: the
    statement has a RETURNING clause; its rows are added to this list (as the driver gives them,
    or typed where SQLAlchemy runs the statement).
    """
    if not rows:
        return
    dialect = connection.dialect
    if order_by and dialect.name == "postgresql":
        # Concurrent writers (several agents on the central store) lock rows in one global order:
        # two upserts of overlapping keys then wait for each other instead of deadlocking.
        rows = sorted(rows, key=itemgetter(*order_by))
    compiled = statement.compile(dialect=dialect, column_keys=list(columns))
    positional = compiled.positiontup is not None
    names: list[str] = list(compiled.positiontup) if positional else list(compiled.binds)
    sql = compiled.string
    multi = _MultiRow.of(sql, len(names)) if positional and dialect.name == "sqlite" else None
    if sorted(names) != sorted(columns) or (returned is not None and multi is None):
        # It binds more than the rows' columns, or returns rows (a driver's executemany returns
        # none) without the multi-row form: SQLAlchemy's path.
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            result = connection.execute(statement, [dict(zip(columns, row, strict=True)) for row in batch])
            if returned is not None:
                returned += result.all()
        return
    positions = [columns.index(name) for name in names]
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
    if multi is not None:
        multi.run(connection, rows, positions, processors, returned)
        return
    reorder = positions != list(range(len(columns)))
    getter = itemgetter(*positions) if len(positions) > 1 else (lambda row: (row[positions[0]],))
    if dialect.name == "postgresql" and len(rows) >= PG_COPY_MIN_ROWS:
        quote = dialect.identifier_preparer.quote
        copy = _CopyUpsert.of(sql, table, [quote(columns[i]) for i in order_by])
        if copy is not None and copy.allowed(connection):
            copy.run(connection, map(getter, rows) if reorder else rows, processors)
            return
    processed = [(i, process) for i, process in enumerate(processors) if process is not None]
    for start in range(0, len(rows), batch_size):
        # Rows in the statement's order, transposed to columns, processed, transposed back: C loops.
        params: list[Any] = list(rows[start : start + batch_size])
        if reorder:
            params = list(map(getter, params))
        if processed:
            transposed: list[Any] = list(zip(*params, strict=True))
            for i, process in processed:
                transposed[i] = list(map(process, transposed[i]))
            params = list(zip(*transposed, strict=True))
        if not positional:
            params = [dict(zip(names, values, strict=True)) for values in params]
        connection.exec_driver_sql(sql, params)


def _group_end(text: str) -> int | None:
    """Where the parenthesised group that ``text`` starts with ends (just after its ``)``)."""
    if not text.startswith("("):
        return None
    depth = 0
    for position, character in enumerate(text):  # the VALUES group: its casts hold parentheses too
        if character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
            if depth == 0:
                return position + 1
    return None


class _CopyUpsert:
    """Many rows upserted on PostgreSQL: ``COPY`` into a temporary table, then one ``INSERT … SELECT``.

    psycopg's ``executemany`` pipelines the rows, but spends tens of microseconds of Python per
    row doing it (``bench/bench_scan.py``'s upserts: 14,000 rows a second, 5.0 s of the client's
    CPU for 100,000 rows; through COPY: 20,700 rows a second, 2.3 s).
    ``COPY`` writes them in its C loop; the ``INSERT … SELECT … ON CONFLICT`` is the single-row
    statement with its ``VALUES`` replaced by the staged rows, in the key's order (the order in
    which concurrent writers lock them). The temporary table holds the copied columns only and
    lives until the commit (``ON COMMIT DROP``), so a rolled-back transaction leaves nothing
    behind either. A role that may not create temporary tables keeps ``executemany``.
    """

    def __init__(self, target: str, columns: str, tail: str, stage: str, order: str) -> None:
        self._target, self._columns, self._tail = target, columns, tail
        self._stage, self._order = stage, order

    @classmethod
    def of(cls, sql: str, table: Table, key: Sequence[str]) -> _CopyUpsert | None:
        """The COPY form of a compiled single-row ``INSERT INTO t (…) VALUES (…) …`` (else None).

        ``key``: the key's columns, quoted, by which the staged rows are upserted.
        """
        head, values, rest = sql.partition(" VALUES ")
        prefix = "INSERT INTO "
        if not values or not head.startswith(prefix) or not head.endswith(")") or " (" not in head:
            return None
        target, _, columns = head[len(prefix) :].partition(" (")
        end = _group_end(rest)
        if end is None:
            return None
        tail = rest[end:]
        if "%" in tail:  # a parameter outside VALUES, or a literal % the driver would read
            return None
        order = f" ORDER BY {', '.join(key)}" if key else ""
        columns = columns[:-1]
        # One staging table per table and column list (rows of one table may name other columns).
        stage = f"lanterne_stage_{table.name}_{zlib.crc32(columns.encode()):08x}"
        return cls(target, columns, tail, stage, order)

    @staticmethod
    def allowed(connection: Connection) -> bool:
        """Whether this role may create temporary tables here (asked once per connection)."""
        info = connection.connection.info
        if "lanterne_temp_allowed" not in info:
            info["lanterne_temp_allowed"] = bool(
                connection.exec_driver_sql(
                    "SELECT has_database_privilege(current_database(), 'TEMPORARY')"
                ).scalar()
            )
        return bool(info["lanterne_temp_allowed"])

    def run(
        self,
        connection: Connection,
        rows: Iterable[Sequence[Any]],
        processors: Sequence[Callable[[Any], Any] | None],
    ) -> None:
        """Stage ``rows`` (in the statement's column order) and upsert them in one statement."""
        # The copied columns only, with their types: no default (a sequence would be drawn from),
        # no constraint (the target checks every row anyway).
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self._stage} ON COMMIT DROP "  # noqa: S608 - names only
            f"AS SELECT {self._columns} FROM {self._target} WITH NO DATA"
        )
        connection.exec_driver_sql(f"TRUNCATE {self._stage}")
        processed = [(i, process) for i, process in enumerate(processors) if process is not None]
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {self._stage} ({self._columns}) FROM STDIN") as copy:
                write = copy.write_row
                for row in rows:
                    if processed:
                        values = list(row)
                        for i, process in processed:
                            values[i] = process(values[i])
                        write(values)
                    else:
                        write(row)
        finally:
            cursor.close()
        connection.exec_driver_sql(
            # Names and clauses from the compiled statement and the table's own name: no value.
            f"INSERT INTO {self._target} ({self._columns}) SELECT {self._columns} "  # noqa: S608
            f"FROM {self._stage}{self._order}{self._tail}"
        )


class _MultiRow:
    """One upsert of many rows on SQLite: ``INSERT … VALUES (…), (…), … ON CONFLICT …``.

    ``executemany`` binds and steps row by row; one statement of hundreds of rows is bound in one
    C loop and stepped once. The parameters are prepared column by column (bind processors:
    timestamps as text, JSON), in the calling thread: a helper thread that prepared the next
    statement while SQLite stored the current one gained nothing once the JSON went through
    orjson (38,800 observations of a scan's window: 0.25 s written in turn, 0.28 s with the
    helper, which handed the interpreter's lock back and forth at every statement). The
    statement is the single-row one with its ``VALUES`` group repeated: same columns, same
    conflict clause, and rows never share a key (``merge_rows`` merged them), so the result is
    the same.
    """

    def __init__(self, head: str, group: str, tail: str, width: int) -> None:
        self._head, self._group, self._tail, self.width = head, group, tail, width
        self._sql: dict[int, str] = {}

    @classmethod
    def of(cls, sql: str, width: int) -> _MultiRow | None:
        """The multi-row form of a compiled single-row ``INSERT … VALUES (?, …) …``; None if it is not one."""
        head, values, rest = sql.partition(" VALUES ")
        group = "(" + ", ".join(["?"] * width) + ")"
        if not values or "?" in head or not rest.startswith(group) or "?" in rest[len(group) :]:
            return None
        return cls(head + values, group, rest[len(group) :], width)

    def sql(self, rows: int) -> str:
        """The statement for ``rows`` rows."""
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = self._head + ",".join([self._group] * rows) + self._tail
        return text

    def run(
        self,
        connection: Connection,
        rows: Sequence[Sequence[Any]],
        positions: Sequence[int],
        processors: Sequence[Callable[[Any], Any] | None],
        returned: list[Any] | None = None,
    ) -> None:
        """Execute the statement for every row (tuples; ``positions``: where each parameter is).

        ``returned``: the rows of the statement's RETURNING clause are added to it.
        """
        width = self.width
        getters = [itemgetter(position) for position in positions]

        def parameters(chunk: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
            # Column by column (C loops), interleaved into the statement's order by slices.
            flat: list[Any] = [None] * (len(chunk) * width)
            for i, (get, process) in enumerate(zip(getters, processors, strict=True)):
                column = map(get, chunk)
                flat[i::width] = list(map(process, column) if process is not None else column)
            return tuple(flat)

        getlimit = getattr(connection.connection.dbapi_connection, "getlimit", None)
        limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
        per = max(1, min(SQLITE_STATEMENT_ROWS, limit // width))
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            result = connection.exec_driver_sql(self.sql(len(chunk)), parameters(chunk))
            if returned is not None:
                returned += result.fetchall()


# -- the tables the aggregator writes ------------------------------------------------------------


#: The columns of an observation row, in the order ``upsert_observation_rows`` takes them.
OBSERVATION_COLUMNS: Final = (
    "agent",
    "endpoint_id",
    "kind",
    "value",
    "first_seen",
    "last_seen",
    "count",
    "attrs",
    "peer",
)
_OBSERVATION_ROW: Final = itemgetter(*OBSERVATION_COLUMNS)
_ENDPOINT_ID: Final = itemgetter(OBSERVATION_COLUMNS.index("endpoint_id"))


def upsert_observations(target: Connection | Session, rows: Iterable[Mapping[str, Any]]) -> int:
    """Aggregated observations: counts added, first seen min, last seen max, last attrs and peer."""
    return upsert_observation_rows(target, list(map(_OBSERVATION_ROW, rows)))


def upsert_observation_rows(
    target: Connection | Session, rows: Iterable[Sequence[Any]], *, distinct: bool = False
) -> int:
    """``upsert_observations`` for rows given as tuples of ``OBSERVATION_COLUMNS`` (the scan's window).

    Tens of thousands of rows per window: no mapping is built (``merge_observation_rows``).
    ``distinct``: no two rows share a key (the caller merged them), so they are not merged again.
    """
    merged = list(rows) if distinct else merge_observation_rows(rows)
    if not merged:
        return 0
    connection = _connection(target)
    if connection.dialect.name == "sqlite":
        # The primary key starts with the endpoint: rows in endpoint order go into its B-tree
        # page after page instead of all over it. Measured on a scan's window of 38,800 rows:
        # SQLite's statements took 0.25 s instead of 0.42; sorting on the integer alone takes a
        # few milliseconds. PostgreSQL gets them in the whole key's order (``execute_rows``).
        merged.sort(key=_ENDPOINT_ID)
    statement = _upsert_statement(
        connection,
        OBSERVATIONS,
        OBSERVATION_COLUMNS[:4],
        add=("count",),
        least=("first_seen",),
        greatest=("last_seen",),
        newer=("attrs", "peer"),
        stamp="last_seen",
    )
    execute_rows(connection, OBSERVATIONS, statement, OBSERVATION_COLUMNS, merged, order_by=(1, 0, 2, 3))
    return len(merged)


def merge_observation_rows(rows: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
    """``merge_rows`` for observation tuples: counts added, first and last seen widened, newest attrs.

    A test holds it to ``merge_rows``'s result on the same rows.
    """
    merged: dict[tuple[Any, ...], Sequence[Any]] = {}
    for row in rows:
        key = tuple(row[:4])
        current = merged.get(key)
        if current is None:
            merged[key] = row
            continue
        newest = row if row[5] >= current[5] else current
        merged[key] = (
            *key,
            min(current[4], row[4]),
            max(current[5], row[5]),
            current[6] + row[6],
            newest[7],
            newest[8],
        )
    return list(merged.values())


def upsert_endpoints(
    target: Connection | Session, rows: Sequence[Mapping[str, Any]]
) -> dict[tuple[IdentityKind, str], int]:
    """Endpoints by (site, identity kind, identity); return each identity's row id.

    The last known address, host name, vendor and MAC follow the newest sighting, and a value
    the new sighting does not know (None) never erases one the store knows.
    """
    if not rows:
        return {}
    connection = _connection(target)
    insert = _insert(connection, ENDPOINTS)
    excluded = insert.excluded
    columns = ENDPOINTS.c
    is_newer = excluded.last_seen >= columns.last_seen
    updates: dict[str, Any] = {
        "first_seen": _least(connection, columns.first_seen, excluded.first_seen),
        "last_seen": _greatest(connection, columns.last_seen, excluded.last_seen),
        "randomized_mac": excluded.randomized_mac,
    }
    for name in ("mac", "ip", "hostname", "vendor", "service", "vlan"):
        fresh = func.coalesce(excluded[name], columns[name])
        updates[name] = case((is_newer, fresh), else_=func.coalesce(columns[name], excluded[name]))
    statement = insert.on_conflict_do_update(
        index_elements=["site", "identity_kind", "identity"], set_=updates
    )
    merged = merge_rows(
        rows,
        ("site", "identity_kind", "identity"),
        least=("first_seen",),
        greatest=("last_seen",),
        newer=("mac", "ip", "hostname", "vendor", "service", "vlan", "randomized_mac"),
        stamp="last_seen",
    )
    order = ("site", "identity_kind", "identity")
    if connection.dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 35):
        # The ids come back with the rows (RETURNING, SQLite 3.35 and later): no query after.
        returned: list[Any] = []
        returning = statement.returning(columns.id, columns.identity_kind, columns.identity)
        execute_many(connection, ENDPOINTS, returning, merged, order_by=order, returned=returned)
        return {(IdentityKind(kind), identity): row_id for row_id, kind, identity in returned}
    # Elsewhere, plain executemany, then the ids by identity: RETURNING would send each batch
    # through SQLAlchemy's row-by-row path, several times slower than both statements together.
    execute_many(connection, ENDPOINTS, statement, merged, order_by=order)
    wanted: dict[str, set[tuple[IdentityKind, str]]] = {}
    for row in merged:
        wanted.setdefault(row["site"], set()).add((IdentityKind(row["identity_kind"]), row["identity"]))
    ids: dict[tuple[IdentityKind, str], int] = {}
    for site, identities in wanted.items():
        values = sorted({identity for _, identity in identities})
        for condition in among(connection, columns.identity, values):
            query = select(columns.id, columns.identity_kind, columns.identity).where(
                columns.site == site, condition
            )
            for row_id, kind, identity in connection.execute(query):
                if (kind, identity) in identities:
                    ids[IdentityKind(kind), identity] = row_id
    return ids


def upsert_aliases(target: Connection | Session, rows: Iterable[Mapping[str, Any]]) -> int:
    """Endpoint aliases by (site, alias); the newest sighting decides where an alias points.

    A DHCP lease (``lease:<ip>``) moves to the new holder of the address; when it does, its first
    seen restarts, since the binding is a new one.
    """
    merged = merge_rows(
        rows,
        ("site", "alias"),
        least=("first_seen",),
        greatest=("last_seen",),
        newer=("endpoint_id", "valid_until"),
        stamp="last_seen",
    )
    if not merged:
        return 0
    connection = _connection(target)
    insert = _insert(connection, ALIASES)
    excluded = insert.excluded
    columns = ALIASES.c
    is_newer = excluded.last_seen >= columns.last_seen
    same_holder = excluded.endpoint_id == columns.endpoint_id
    updates: dict[str, Any] = {
        "endpoint_id": case((is_newer, excluded.endpoint_id), else_=columns.endpoint_id),
        "first_seen": case(
            (same_holder, _least(connection, columns.first_seen, excluded.first_seen)),
            (is_newer, excluded.first_seen),
            else_=columns.first_seen,
        ),
        "last_seen": _greatest(connection, columns.last_seen, excluded.last_seen),
        "valid_until": case(
            (and_(is_newer, excluded.valid_until.is_not(None)), excluded.valid_until),
            else_=columns.valid_until,
        ),
    }
    statement = insert.on_conflict_do_update(index_elements=["site", "alias"], set_=updates)
    execute_many(connection, ALIASES, statement, merged, order_by=("site", "alias"))
    return len(merged)


def upsert_detections(target: Connection | Session, rows: Iterable[Mapping[str, Any]]) -> int:
    """Detections by (site, product key, endpoint): the new assessment replaces the stored one."""
    return upsert(
        target,
        DETECTIONS,
        rows,
        key=("site", "product_key", "endpoint_id"),
        least=("first_seen",),
        greatest=("last_seen",),
        replace=("product_id", "vendor", "category", "confidence", "evidence", "roles", "catalog_version"),
    )


def upsert_agent(target: Connection | Session, row: Mapping[str, Any]) -> None:
    """An agent's heartbeat: its site, versions and the time it last reported."""
    upsert(
        target,
        AGENTS,
        [row],
        key=("name",),
        least=("first_seen",),
        greatest=("last_heartbeat",),
        replace=("site", "version", "catalog_version"),
    )
