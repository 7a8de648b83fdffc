"""The outage spool: flushed windows wait in a bounded local file while the database is unreachable.

Every window the daemon flushes gets a batch id (a UUID) before its first write attempt. A write
records the id in the same transaction as the upserts (``mark_applied``), so a batch is applied at
most once whatever happens: a commit whose acknowledgement was lost, a replay interrupted by
SIGKILL, a spool replayed twice. When a write fails because the database cannot be reached, the
window (already merged per key by the aggregator) is appended to the spool as one JSON line and
``fsync``-ed; when the database answers again, the spool is replayed in order, oldest first, before
any newer window, and the applied lines are removed.

The file is append-only while the database is down, bounded by ``max_bytes``: a window that does
not fit is shed whole and counted (``shed_batches``, ``shed_observations``), never half-written.
A line cut by a crash (the last one) is skipped and counted as corrupt. A batch the database
refuses for another reason than being unreachable (a bug, a constraint) would block the spool
forever: it is moved to ``<spool>.rejected`` for a person to look at, and the replay goes on.

Applied batch ids live in ``ingested_files`` (the table that already makes scans idempotent) as
``batch:<uuid>`` rows, and are purged with the evidence they carried (``purge_markers``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from agent._aggregate import StoreWriter
from agent._window import Window
from collectors import Kind
from store import IngestedFile

#: Prefix of the ``ingested_files`` key of an applied batch.
MARKER_PREFIX: Final = "batch:"
#: The window format written by this version (a newer, unknown one is refused, not guessed at).
FORMAT: Final = 1
_DHCP_KINDS: Final = frozenset({Kind.DHCP_CLIENT_ID, Kind.DHCP_HOSTNAME, Kind.DHCP_LEASE})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def new_batch_id() -> str:
    """A fresh batch id."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class SpoolStats:
    """What the spool holds and what it had to drop (the daemon exports these)."""

    batches: int = 0
    """Batches waiting in the file."""
    bytes: int = 0
    spooled: int = 0
    replayed: int = 0
    skipped_duplicates: int = 0
    """Batches found already applied when replayed (a lost commit acknowledgement, a crash)."""
    shed_batches: int = 0
    shed_observations: int = 0
    corrupt_lines: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """One spooled window."""

    id: str
    created: float
    agent: str
    observed: int
    window: dict[str, Any]


# -- windows as JSON --------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def window_to_json(window: Window) -> dict[str, Any]:
    """A window as plain JSON data (evidence by rule id, rebuilt from the catalogue on replay)."""
    return {
        "observations": [
            [ip, mac, str(kind), value, count, first, last, {k: _plain(v) for k, v in attrs.items()}, peer]
            for (ip, mac, kind, value), (count, first, last, attrs, peer) in window.observations.items()
        ],
        "evidence": [
            [ip, mac, rule, item.to_dict(), first, last, count]
            for (ip, mac, rule), (item, first, last, count) in window.evidence.items()
        ],
        "peers": sorted([ip, mac] for ip, mac in window.peers),
        "observed": window.observed,
    }


def window_from_json(data: dict[str, Any], writer: StoreWriter) -> Window:
    """Rebuild a window; evidence whose rule left the catalogue since is dropped, like stored evidence."""
    observations: dict[Any, list[Any]] = {}
    dhcp_keys: list[Any] = []
    for ip, mac, kind_text, value, count, first, last, attrs, peer in data["observations"]:
        kind = Kind(kind_text)
        key = (ip, mac, kind, value)
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
        observations[key] = [int(count), float(first), float(last), clean, peer]
        if kind in _DHCP_KINDS:
            dhcp_keys.append(key)
    evidence: dict[Any, list[Any]] = {}
    for ip, mac, rule, entry, first, last, count in data["evidence"]:
        # The writer rebuilds stored evidence the same way (current rule, or None once it is gone).
        item = writer._evidence_of(entry)  # no public constructor from the JSON form
        if item is not None:
            evidence[ip, mac, rule] = [item, float(first), float(last), int(count)]
    peers = {(ip, mac) for ip, mac in data["peers"]}
    return Window(
        observations, evidence, peers, dhcp_keys, int(data["observed"]), Window.spans_of(observations)
    )


# -- applied batch ids ---------------------------------------------------------------------------


def already_applied(session: Session, batch_id: str) -> bool:
    """Whether ``batch_id`` was committed before."""
    key = MARKER_PREFIX + batch_id
    return session.scalar(select(IngestedFile.sha256).where(IngestedFile.sha256 == key)) is not None


def mark_applied(session: Session, batch_id: str, *, agent: str, observations: int, rows: int) -> None:
    """Record ``batch_id`` in the caller's transaction (the one that writes the batch)."""
    session.add(
        IngestedFile(
            sha256=MARKER_PREFIX + batch_id,
            path=f"lanterne-batch:{agent}",
            size=rows,
            agent=agent,
            packets=0,
            observations=observations,
            ingested_at=datetime.now(UTC),
        )
    )


def purge_markers(session: Session, cutoff: datetime) -> int:
    """Forget the ids of batches applied before ``cutoff`` (their evidence is purged too)."""
    result = session.execute(
        delete(IngestedFile).where(
            IngestedFile.sha256.startswith(MARKER_PREFIX), IngestedFile.ingested_at < cutoff
        )
    )
    return result.rowcount if isinstance(result, CursorResult) else 0


# -- the file ----------------------------------------------------------------------------------------


class Spool:
    """A bounded append-only file of batches (use it from one thread: the daemon's database thread)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.stats = SpoolStats()
        self._count()

    @property
    def rejected_path(self) -> Path:
        """Where batches the database refused go."""
        return self.path.with_name(self.path.name + ".rejected")

    def __len__(self) -> int:
        return self.stats.batches

    def _count(self) -> None:
        batches = 0
        try:
            with self.path.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        batches += 1
            size = self.path.stat().st_size
        except OSError:  # none yet, or not readable: appending will say why (and count what it sheds)
            batches, size = 0, 0
        self.stats.batches, self.stats.bytes = batches, size

    def append(self, batch_id: str, window: dict[str, Any], *, agent: str) -> bool:
        """Append one batch durably; False when it does not fit under the cap (shed and counted)."""
        observed = int(window.get("observed", 0))
        record = {
            "format": FORMAT,
            "id": batch_id,
            "created": datetime.now(UTC).timestamp(),
            "agent": agent,
            "observed": observed,
            "window": window,
        }
        line = (_dumps(record) + "\n").encode("utf-8")
        if self.stats.bytes + len(line) > self.max_bytes:
            self.stats.shed_batches += 1
            self.stats.shed_observations += observed
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: a crash leaves at worst a cut last line, which reading skips.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats.batches += 1
        self.stats.bytes += len(line)
        self.stats.spooled += 1
        return True

    def __iter__(self) -> Iterator[Batch]:
        """The batches in the order they were spooled (corrupt lines skipped and counted)."""
        try:
            handle = self.path.open("rb")
        except OSError:
            return
        with handle:
            for raw in handle:
                if not raw.strip():
                    continue
                batch = self._parse(raw)
                if batch is not None:
                    yield batch

    def _parse(self, raw: bytes) -> Batch | None:
        try:
            record = json.loads(raw)
            if record.get("format") != FORMAT:
                raise ValueError("unknown spool format")
            return Batch(
                id=str(record["id"]),
                created=float(record["created"]),
                agent=str(record["agent"]),
                observed=int(record["observed"]),
                window=record["window"],
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            self.stats.corrupt_lines += 1
            return None

    def reject(self, batch: Batch) -> None:
        """Keep a batch the database refused aside, for a person (it no longer blocks the replay)."""
        record = {
            "format": FORMAT,
            "id": batch.id,
            "created": batch.created,
            "agent": batch.agent,
            "observed": batch.observed,
            "window": batch.window,
        }
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (_dumps(record) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats.rejected += 1

    def discard(self, done: set[str]) -> None:
        """Remove the batches in ``done`` (applied or rejected): rewrite the rest, then rename over."""
        if not done:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        kept = 0
        with self.path.open("rb") as source, temporary.open("wb") as target:
            for raw in source:
                if not raw.strip():
                    continue
                try:
                    batch_id = json.loads(raw).get("id")
                except (ValueError, AttributeError):
                    continue  # a cut line: drop it now (it was counted when read)
                if batch_id in done:
                    continue
                target.write(raw if raw.endswith(b"\n") else raw + b"\n")
                kept += 1
            target.flush()
            os.fsync(target.fileno())
        if kept:
            os.replace(temporary, self.path)
        else:
            temporary.unlink()
            self.path.unlink(missing_ok=True)
        self._count()
