"""``column IN (values)`` for thousands of values, bound as one parameter.

SQLAlchemy's ``in_()`` binds one parameter per value and renders them at each execution. A
window's identity resolution asks for thousands of aliases and identities: 29,000 instructions
per value (callgrind: the aliases of a scan's 4,000 MACs, looked up in an empty store). One
parameter holds them all instead:

- SQLite: ``column IN (SELECT value FROM json_each(?))``, the values as a JSON array (SQLite's
  JSON functions are built in since 3.38, and in most builds before; where they are missing,
  the values go back to ``in_()`` in chunks of ``CHUNK``);
- PostgreSQL: ``column = ANY(?)``, the values as an array.

The statement's text is the same for any number of values, so SQLAlchemy compiles it once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from sqlalchemy import any_, bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from store._engine import _dumps

#: Values per ``in_()`` where one parameter cannot hold them all: well under SQLite's oldest
#: limit of 999 variables.
CHUNK: Final = 500
_JSON_KEY: Final = "lanterne_json_each"


def among(target: Connection | Session, column: Any, values: Sequence[str] | Sequence[int]) -> Iterator[Any]:
    """Conditions that together select the rows whose ``column`` is one of ``values`` (strings or integers).

    One condition on SQLite with JSON and on PostgreSQL; one per chunk of ``CHUNK`` values
    elsewhere. Nothing for no value.
    """
    if not values:
        return
    connection = target.connection() if isinstance(target, Session) else target
    name = connection.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY  # noqa: PLC0415 - loaded where it is used

        yield column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
        return
    if name == "sqlite" and _has_json(connection):
        array = _dumps(list(values))  # the JSON columns' own writer: compact, orjson
        yield column.in_(select(func.json_each(array).table_valued("value").c.value).scalar_subquery())
        return
    for start in range(0, len(values), CHUNK):
        yield column.in_(values[start : start + CHUNK])


def _has_json(connection: Connection) -> bool:
    """Whether this SQLite has ``json_each`` (asked once per connection)."""
    info = connection.connection.info
    if _JSON_KEY not in info:
        try:  # a statement SQLite cannot prepare leaves the transaction as it was
            connection.exec_driver_sql("SELECT count(*) FROM json_each('[1]')").scalar()
            info[_JSON_KEY] = True
        except DBAPIError:
            info[_JSON_KEY] = False
    return bool(info[_JSON_KEY])
