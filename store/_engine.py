"""Engines and sessions: SQLite (WAL) as the embedded default, PostgreSQL (psycopg 3) as the central store.

``open_store(url)`` normalises the URL, creates the engine with the pragmas or pool settings of
its dialect, runs the Alembic migrations to head and returns a ``Store``: the engine, a session
factory and ``write()``, the one way to open a transaction that writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from store._models import Base

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
#: How long a writer waits for another one (another agent, the daemon beside a scan) before failing.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
#: SQLite page cache per connection, in KiB: twice SQLite's default (large upserts measured no
#: faster with more, and a daemon holds several connections under a memory cap).
SQLITE_CACHE_KIB: Final = 4096
#: WAL pages after which a commit checkpoints by itself (SQLite's default is 1,000): a safety net
#: only, since ``Store.write`` has the WAL checkpointed beside, after each write (``_Checkpointer``).
SQLITE_AUTOCHECKPOINT_PAGES: Final = 16384
#: Any constant shared by every Lanterne process: PostgreSQL serialises migrations on it.
_MIGRATION_LOCK: Final = 0x4C414E54  # "LANT"
_SQLITE_BEGIN: Final = "lanterne_sqlite_begin"


_json_fallback: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(value: Any) -> str:
    """The text of every JSON column: compact, UTF-8 kept as is.

    orjson takes a fifth of the json module's time (a scan writes tens of thousands of attribute
    sets, beside SQLite storing them). Integers beyond 64 bits, which it refuses, and anything
    else it cannot write go through the json module: the same JSON, or the json module's error.
    A plain function: psycopg caches its JSON dumpers per function.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return _json_fallback(value)


class StoreError(Exception):
    """The database cannot be used: a bad URL, an unreachable server, a failed migration."""


def normalise_url(url: str | os.PathLike[str] | URL) -> URL:
    """Return the SQLAlchemy URL for ``url``: a path means SQLite; PostgreSQL always uses psycopg 3."""
    if isinstance(url, os.PathLike) or (isinstance(url, str) and "://" not in url):
        url = f"sqlite:///{Path(url).expanduser()}"
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!s}") from exc
    backend = parsed.get_backend_name()
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.get_driver_name() not in {"pysqlite", ""}:
            raise StoreError(f"unsupported SQLite driver {parsed.drivername!r}: use sqlite:///path.db")
        return parsed.set(drivername="sqlite")
    raise StoreError(f"unsupported database {backend!r}: use sqlite:///path.db or postgresql://user@host/db")


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in {None, "", ":memory:"}


def make_engine(url: str | os.PathLike[str] | URL, *, echo: bool = False) -> Engine:
    """Create the engine for ``url`` (no connection yet), with Lanterne's per-dialect settings."""
    parsed = normalise_url(url)
    options: dict[str, Any] = {"echo": echo, "json_serializer": _dumps}
    if parsed.get_backend_name() == "sqlite":
        if _is_memory(parsed):
            # One shared connection, or every session would see its own empty database.
            options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            assert parsed.database is not None
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **options)
        _configure_sqlite(engine, wal=not _is_memory(parsed))
        return engine
    return create_engine(parsed, pool_pre_ping=True, **options)


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    """Pragmas on every connection, and explicit BEGINs so transactions mean what they say."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # pysqlite's own transaction handling begins late and commits DDL behind our back:
        # turn it off and let the "begin" hook below emit BEGIN itself (SQLAlchemy's recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
            cursor.execute("PRAGMA temp_store=MEMORY")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # A writer takes the lock up front (IMMEDIATE): a deferred transaction that reads first
        # and writes later fails at once with SQLITE_BUSY if another writer slipped in between.
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "")
        connection.exec_driver_sql(f"BEGIN {mode}".rstrip())


if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only to migrate: a database already at the packaged head is recognised by
# reading its alembic_version row (Alembic's import costs a third of a second at every start).


def alembic_config(engine: Engine | None = None) -> Config:
    """The Alembic configuration of the embedded migrations (no ``alembic.ini`` needed)."""
    from alembic.config import Config  # noqa: PLC0415 - deferred (see above)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def head_revision() -> str:
    """The newest migration shipped with this version of Lanterne."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - deferred (see above)

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def packaged_head() -> str:
    """The head revision without Alembic: revisions are numbered files, one linear history.

    A test checks that it equals ``head_revision()``.
    """
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def _revision_of(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with engine.connect() as connection:
        return _revision_of(connection)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: head) in one transaction.

    An empty database is brought to head in one step: the models' tables, then the head stamped
    (Alembic's recipe for a new database, without Alembic's import and its replay of every
    migration: a first scan started 0.1 s later). ``tests/store/test_migrations.py`` checks
    that both ways give the same schema, and that the migrations go up and down from it.
    """
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two agents starting at once against the central store must not both migrate.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            if revision == "head":
                current = _revision_of(connection)
                if current == packaged_head():
                    return
                if current is None and _holds_none_of_the_tables(connection):
                    create_at_head(connection)
                    return
            from alembic import command  # noqa: PLC0415 - deferred (see above)

            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except DBAPIError as exc:
        raise StoreError(f"cannot migrate {_shown(engine.url)}: {exc.orig}") from exc


def _holds_none_of_the_tables(connection: Connection) -> bool:
    present = set(inspect(connection).get_table_names())
    return present.isdisjoint(Base.metadata.tables)


def create_at_head(connection: Connection) -> None:
    """Create the models' tables in an empty database and stamp it at the packaged head.

    The version table is the one Alembic creates (same name, column and primary key name), so
    that Alembic reads and moves it like one it made.
    """
    Base.metadata.create_all(connection)
    version = Table(
        "alembic_version",
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
    )
    version.create(connection, checkfirst=True)  # left empty by a downgrade to base
    connection.execute(version.insert().values(version_num=packaged_head()))


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class Store:
    """An open database: its engine, a session factory, and the way to write."""

    engine: Engine
    sessions: sessionmaker[Session]
    checkpointer: _Checkpointer | None = None
    """SQLite in a file: the thread that copies the WAL into the database after each write."""

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The URL, password hidden (for messages)."""
        return _shown(self.engine.url)

    def session(self) -> Session:
        """A new session (the caller commits or rolls back and closes it)."""
        return self.sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self.sessions() as session:
            if self.dialect == "sqlite":
                session.connection(execution_options={_SQLITE_BEGIN: "IMMEDIATE"})
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            session.commit()
        if self.checkpointer is not None:
            self.checkpointer.request()

    def dispose(self) -> None:
        """Stop the checkpoints and close every pooled connection."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.dispose()


def open_store(url: str | os.PathLike[str] | URL, *, upgrade: bool = True, echo: bool = False) -> Store:
    """Open the database at ``url`` and migrate it to head; raise StoreError if it cannot be used."""
    engine = make_engine(url, echo=echo)
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        raise StoreError(f"cannot connect to {_shown(engine.url)}: {exc.orig}") from exc
    if upgrade:
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
    checkpointer = None
    if engine.dialect.name == "sqlite" and not _is_memory(engine.url):
        assert engine.url.database is not None
        checkpointer = _Checkpointer(Path(engine.url.database).expanduser())
    return Store(engine, sessionmaker(engine, expire_on_commit=False), checkpointer)


class _Checkpointer:
    """Checkpoints a SQLite WAL in a thread of its own, so that no commit waits for it.

    At a commit that leaves the WAL longer than ``wal_autocheckpoint`` pages, SQLite copies the
    WAL into the database file then and there, with its two syncs: 40 ms after the write of a
    500,000-packet capture, longer on a slow disk. Here the commit only asks; a thread with its
    own connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` (it waits for no reader and blocks no
    writer; sqlite3 lets go of the interpreter meanwhile) while the caller goes on, reconciling
    for instance. Requests that arrive while it works are served by one more checkpoint.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wake = threading.Condition()
        self._asked = 0
        self._done = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a checkpoint (starts the thread the first time)."""
        with self._wake:
            if self._stopped:
                return
            self._asked += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite checkpoint", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every checkpoint asked so far has run; False if ``timeout`` came first."""
        with self._wake:
            return self._wake.wait_for(lambda: self._done >= self._asked or self._stopped, timeout)

    def stop(self) -> None:
        """Let the running checkpoint finish, then end the thread (idempotent)."""
        with self._wake:
            self._stopped = True
            thread, self._thread = self._thread, None
            self._wake.notify_all()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            while True:
                with self._wake:
                    self._wake.wait_for(lambda: self._asked > self._done or self._stopped)
                    if self._stopped:
                        return
                    asked = self._asked
                # A checkpoint that fails (the file gone, a full disk) is left to the next one,
                # or to SQLite's own at the next commit past the safety net.
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                with self._wake:
                    self._done = asked
                    self._wake.notify_all()
        finally:
            connection.close()
