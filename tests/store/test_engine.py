"""Engines: URL normalisation, SQLite pragmas, write transactions, clear errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.dialects import sqlite

import store._models
from store import Agent, Store, StoreError, make_engine, normalise_url, open_store
from store._models import UtcDateTime, sqlite_time_text

REPO = Path(__file__).resolve().parents[2]


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


#: 1970 to 2100, in epoch seconds, with whatever fraction.
_INSTANTS = st.floats(min_value=0.0, max_value=4_102_444_800.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=500, deadline=None)
@given(st.lists(_INSTANTS, min_size=1, max_size=40))
def test_epoch_seconds_are_stored_as_the_text_of_their_datetime(instants: list[float]) -> None:
    """Bulk writers bind epoch floats: SQLite must get the very text a datetime gets (min/max compare text).

    Each instant is bound twice, as the first and last seen of one row are: the second time
    comes from the memo of recent instants.
    """
    process = UtcDateTime().bind_processor(sqlite.dialect())
    assert process is not None
    for ts in instants:
        expected = process(datetime.fromtimestamp(ts, UTC))
        assert process(ts) == expected
        assert process(ts) == expected
        assert process(int(ts)) == process(datetime.fromtimestamp(int(ts), UTC))


def test_the_memo_of_recent_instants_stays_bounded() -> None:
    process = sqlite_time_text  # the Python path (the C one keeps no memo)
    start = 1_700_000_000.25
    texts = [process(start + step) for step in range(store._models._RECENT_MAX * 2 + 7)]
    assert len(store._models._RECENT_TEXT) <= store._models._RECENT_MAX
    assert texts[0] == "2023-11-14 22:13:20.250000"
    assert texts[-1] == process(datetime.fromtimestamp(start + len(texts) - 1, UTC))
    assert process(start) == texts[0]  # written again after the memo was cleared


_needs_c = pytest.mark.skipif(
    store._models._timetext is None,
    reason="store._timetext (optional C) is not built here: Python alone writes",
)
#: 1970 to 9999 (the C range) and a little beyond, on the microsecond grid and off it.
_ANY_INSTANT = st.one_of(
    st.floats(min_value=0.0, max_value=253_402_400_000.0),
    st.builds(lambda s, us: s + us * 1e-6, st.integers(0, 253_402_300_799), st.integers(0, 999_999)),
    st.builds(lambda s, us: s + (us + 0.5) * 1e-6, st.integers(0, 4_102_444_800), st.integers(0, 999_999)),
    st.builds(lambda s: s - 5e-7, st.integers(1, 4_102_444_800)),
    st.floats(min_value=-1e10, max_value=0.0),
)


@_needs_c
@settings(max_examples=3000, deadline=None)
@given(st.lists(_ANY_INSTANT, min_size=1, max_size=50))
def test_the_c_formatter_writes_what_python_writes(instants: list[float]) -> None:
    process = store._models._timetext.Processor(sqlite_time_text)
    for ts in instants:
        assert process(ts) == store._models._epoch_text(ts)


@_needs_c
@pytest.mark.parametrize(
    "ts",
    [
        0.0,
        0.0000005,
        0.9999995,
        0.9999999,
        59.9999996,
        951_782_399.9999996,  # 2000-02-28 23:59:59: the leap day next
        951_868_799.5,  # 2000-02-29
        4_107_542_399.0,  # 2100-02-28 23:59:59 (no leap day in 2100)
        4_107_542_400.0,
        1_700_000_000.25,
        1_700_000_000.0000015,
        253_402_300_798.9999,
        253_402_300_799.0,  # from here on, Python decides
        253_402_300_799.99999,
    ],
)
def test_the_c_formatter_at_the_edges(ts: float) -> None:
    process = store._models._timetext.Processor(sqlite_time_text)
    assert process(ts) == sqlite_time_text(ts) == store._models._epoch_text(ts)
    if ts < 253_402_300_799.0:  # the year 10000 has no datetime
        assert process(ts) == sqlite_time_text(datetime.fromtimestamp(ts, UTC))


@_needs_c
def test_the_c_formatter_hands_everything_else_to_python() -> None:
    process = store._models._timetext.Processor(sqlite_time_text)
    paris = timezone(timedelta(hours=2))
    for value in (
        None,
        1_700_000_000,
        datetime(2025, 6, 1, 12, 0, tzinfo=paris),
        datetime(2025, 6, 1, 10, 0, 0, 5),
    ):
        assert process(value) == sqlite_time_text(value)
    assert process(-1.5) == sqlite_time_text(-1.5) == "1969-12-31 23:59:58.500000"
    for bad in (float("nan"), float("inf")):
        with pytest.raises((ValueError, OverflowError)) as from_c:
            process(bad)
        with pytest.raises(type(from_c.value)):
            sqlite_time_text(bad)
    with pytest.raises(TypeError):
        process()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        store._models._timetext.Processor("not callable")  # type: ignore[arg-type]


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


def test_a_sqlite_store_never_loads_the_postgresql_dialect(tmp_path: Path) -> None:
    """60 ms of a SQLite scan's start-up went to importing it for JSONB and ``insert``: no longer."""
    script = f"""
import sys
from store import open_store, upsert_observations
from store._among import among
from store._upsert import ENDPOINTS
from tests.store.helpers import make_endpoints
store = open_store({str(tmp_path / "x.db")!r})
with store.write() as session:
    (endpoint,) = make_endpoints(session, "00:00:00:00:00:01")
    upsert_observations(session, [dict(agent="a", endpoint_id=endpoint, kind="dns.query", value="x.org",
        first_seen=1.0, last_seen=2.0, count=1, attrs={{"qtype": "A"}}, peer=None)])
    assert list(among(session, ENDPOINTS.c.id, [endpoint]))
store.dispose()
print(sorted(name for name in sys.modules if name.startswith("sqlalchemy.dialects.postgresql")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
