"""SQLite's WAL is copied into the database file by a thread beside the writer, never by the commit."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

import store._engine
from store import Store, open_store, upsert_observations
from tests.store.helpers import at, make_endpoints

ROWS = 5000


def _write(db: Store) -> None:
    with db.write() as session:
        (ep,) = make_endpoints(session, "00:11:22:33:44:55")
        upsert_observations(
            session,
            [
                {
                    "agent": "a1",
                    "endpoint_id": ep,
                    "kind": "dns.query",
                    "value": f"host-{i}.example",
                    "first_seen": at(i),
                    "last_seen": at(i),
                    "count": 1,
                    "attrs": {"qtype": "A"},
                    "peer": None,
                }
                for i in range(ROWS)
            ],
        )


def _rows_in_the_database_file_alone(path: Path, tmp_path: Path) -> int:
    """The observations the main file holds by itself (its WAL left behind): what was checkpointed."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(path, alone)
    connection = sqlite3.connect(alone)
    try:
        return int(connection.execute("SELECT count(*) FROM observations").fetchone()[0])
    except sqlite3.OperationalError:  # not even the tables: nothing was checkpointed
        return 0
    finally:
        connection.close()


def _checkpoint_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sqlite checkpoint"]


def test_a_write_is_checkpointed_by_the_thread_beside(tmp_path: Path) -> None:
    path = tmp_path / "db" / "lanterne.db"
    db = open_store(f"sqlite:///{path}")
    try:
        assert db.checkpointer is not None
        _write(db)
        assert db.checkpointer.wait(timeout=30)
        assert _rows_in_the_database_file_alone(path, tmp_path) == ROWS
        with db.session() as session:  # and the store reads it all, of course
            assert session.execute(text("SELECT count(*) FROM observations")).scalar() == ROWS
    finally:
        db.dispose()
    assert not _checkpoint_threads()
    db.checkpointer.request()  # after dispose: nothing starts again
    assert not _checkpoint_threads()


def test_the_commit_itself_does_not_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the thread, the rows stay in the WAL: no commit stalled on the copy and its syncs."""
    monkeypatch.setattr(store._engine._Checkpointer, "request", lambda self: None)
    path = tmp_path / "db" / "lanterne.db"
    db = open_store(f"sqlite:///{path}")
    try:
        _write(db)
        assert _rows_in_the_database_file_alone(path, tmp_path) == 0
    finally:
        db.dispose()
    # The last connection closed checkpoints the rest (SQLite's own rule): nothing is lost.
    assert _rows_in_the_database_file_alone(path, tmp_path) == ROWS


def test_only_a_sqlite_file_has_a_checkpointer() -> None:
    db = open_store("sqlite:///:memory:")
    try:
        assert db.checkpointer is None
        _write(db)
    finally:
        db.dispose()
