"""Observations keyed by endpoint first; their last-seen index goes.

The primary key was (agent, endpoint_id, kind, value): every query by endpoint (an endpoint's
page, a merge moving its rows, reconciliation reading the rows behind a detection, retention
looking for endpoints with nothing left) could not use it and read the whole table, which holds
millions of rows after months. Keyed (endpoint_id, agent, kind, value), those queries read the
endpoint's rows only; the key is the same set of columns, so no row changes.

The index on ``last_seen`` served retention's daily delete only, and cost every upsert of every
window (a row seen again moves in it): retention now reads the table once a day instead.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 23:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KEY = ["agent", "endpoint_id", "kind", "value"]
_NEW_KEY = ["endpoint_id", "agent", "kind", "value"]


def _rekey(columns: list[str]) -> None:
    # SQLite cannot alter a primary key: batch mode copies the table (rows, foreign key and all).
    with op.batch_alter_table("observations", recreate="auto") as batch:
        batch.drop_constraint("pk_observations", type_="primary")
        batch.create_primary_key("pk_observations", columns)


def upgrade() -> None:
    """Upgrade the schema."""
    op.drop_index(op.f("ix_observations_last_seen"), table_name="observations")
    _rekey(_NEW_KEY)


def downgrade() -> None:
    """Downgrade the schema."""
    _rekey(_OLD_KEY)
    op.create_index(op.f("ix_observations_last_seen"), "observations", ["last_seen"], unique=False)
