"""Initial schema: every table of DESIGN §5 (generated from store/_models.py, then tidied).

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-28 14:06:39.600912
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

#: Column types spelled once (the models' own types, written without importing the models).
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "agents",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_heartbeat", UTC_TIME, nullable=False),
        sa.Column("version", sa.String(length=32), nullable=True),
        sa.Column("catalog_version", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_agents")),
    )
    op.create_index(op.f("ix_agents_site"), "agents", ["site"], unique=False)

    op.create_table(
        "change_log",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("ts", UTC_TIME, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("changes", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_log")),
    )
    op.create_index("ix_change_log_subject", "change_log", ["site", "subject"], unique=False)
    op.create_index(op.f("ix_change_log_ts"), "change_log", ["ts"], unique=False)

    op.create_table(
        "endpoints",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column(
            "identity_kind",
            sa.Enum(
                "mac",
                "dhcp_client_id",
                "dhcp_hostname",
                "ip_unbound",
                name="identitykind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("identity", sa.String(length=128), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.Column("randomized_mac", sa.Boolean(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("vendor", sa.String(length=128), nullable=True),
        sa.Column("service", sa.String(length=128), nullable=True),
        sa.Column("vlan", sa.Integer(), nullable=True),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.Column("merged_into", ROW_ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["merged_into"],
            ["endpoints.id"],
            name=op.f("fk_endpoints_merged_into_endpoints"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
        sa.UniqueConstraint("site", "identity_kind", "identity", name=op.f("uq_endpoints_site")),
    )
    op.create_index(op.f("ix_endpoints_last_seen"), "endpoints", ["last_seen"], unique=False)
    op.create_index(op.f("ix_endpoints_site"), "endpoints", ["site"], unique=False)

    op.create_table(
        "ingested_files",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("packets", sa.BigInteger(), nullable=False),
        sa.Column("observations", sa.BigInteger(), nullable=False),
        sa.Column("ingested_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_ingested_files")),
    )
    op.create_table(
        "inventory_entries",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("vendor", sa.String(length=255), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("catalog_id", sa.String(length=128), nullable=True),
        sa.Column("service", sa.String(length=255), nullable=True),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("is_dmn", sa.Boolean(), nullable=True),
        sa.Column("is_ai", sa.Boolean(), nullable=True),
        sa.Column("hosts", JSON_DOC, nullable=False),
        sa.Column("ips", JSON_DOC, nullable=False),
        sa.Column("macs", JSON_DOC, nullable=False),
        sa.Column("ae_titles", JSON_DOC, nullable=False),
        sa.Column("deployment", sa.String(length=32), nullable=True),
        sa.Column("declared_on", UTC_TIME, nullable=True),
        sa.Column("details", JSON_DOC, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_entries")),
        sa.UniqueConstraint("site", "ref", name=op.f("uq_inventory_entries_site")),
    )
    op.create_index(
        op.f("ix_inventory_entries_catalog_id"), "inventory_entries", ["catalog_id"], unique=False
    )
    op.create_index(op.f("ix_inventory_entries_site"), "inventory_entries", ["site"], unique=False)

    op.create_table(
        "probe_log",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("ts", UTC_TIME, nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("protocol", sa.String(length=32), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_probe_log")),
    )
    op.create_index(op.f("ix_probe_log_target"), "probe_log", ["target"], unique=False)
    op.create_index(op.f("ix_probe_log_ts"), "probe_log", ["ts"], unique=False)

    op.create_table(
        "reviews",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("product_key", sa.String(length=160), nullable=False),
        sa.Column(
            "decision",
            sa.Enum(
                "pending_review",
                "approved",
                "approved_with_conditions",
                "rejected_to_block",
                "false_positive",
                "retired",
                name="reviewdecision",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=True),
        sa.Column("expires_at", UTC_TIME, nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=False),
        sa.Column("decided_at", UTC_TIME, nullable=False),
        sa.Column("next_review_due", UTC_TIME, nullable=True),
        sa.Column("details", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_site_product", "reviews", ["site", "product_key", "decided_at"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("product_key", sa.String(length=160), nullable=False),
        sa.Column(
            "reason",
            sa.Enum(
                "undeclared_observed",
                "unknown_observed",
                "declared_mismatch",
                "condition_expired",
                "blocked_seen_again",
                name="alertreason",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum("open", "acknowledged", "closed", name="alertstate", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", JSON_DOC, nullable=False),
        sa.Column("first_raised", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("closed_at", UTC_TIME, nullable=True),
        sa.Column("closed_by_review", ROW_ID, nullable=True),
        sa.Column("delivered", JSON_DOC, nullable=False),
        sa.ForeignKeyConstraint(
            ["closed_by_review"],
            ["reviews.id"],
            name=op.f("fk_alerts_closed_by_review_reviews"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_open", "alerts", ["site", "product_key", "reason", "state"], unique=False)

    op.create_table(
        "detections",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("product_key", sa.String(length=160), nullable=False),
        sa.Column("product_id", sa.String(length=128), nullable=False),
        sa.Column("vendor", sa.String(length=128), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("endpoint_id", ROW_ID, nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("evidence", JSON_DOC, nullable=False),
        sa.Column("roles", JSON_DOC, nullable=False),
        sa.Column("catalog_version", sa.String(length=64), nullable=False),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoints.id"],
            name=op.f("fk_detections_endpoint_id_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detections")),
        sa.UniqueConstraint("site", "product_key", "endpoint_id", name=op.f("uq_detections_site")),
    )
    op.create_index(op.f("ix_detections_endpoint_id"), "detections", ["endpoint_id"], unique=False)
    op.create_index(op.f("ix_detections_last_seen"), "detections", ["last_seen"], unique=False)
    op.create_index(op.f("ix_detections_product_key"), "detections", ["product_key"], unique=False)
    op.create_index(op.f("ix_detections_site"), "detections", ["site"], unique=False)

    op.create_table(
        "endpoint_aliases",
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("alias", sa.String(length=160), nullable=False),
        sa.Column("endpoint_id", ROW_ID, nullable=False),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.Column("valid_until", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoints.id"],
            name=op.f("fk_endpoint_aliases_endpoint_id_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("site", "alias", name=op.f("pk_endpoint_aliases")),
    )
    op.create_index(
        op.f("ix_endpoint_aliases_endpoint_id"), "endpoint_aliases", ["endpoint_id"], unique=False
    )

    op.create_table(
        "observations",
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("endpoint_id", ROW_ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=1024), nullable=False),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("attrs", JSON_DOC, nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoints.id"],
            name=op.f("fk_observations_endpoint_id_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent", "endpoint_id", "kind", "value", name=op.f("pk_observations")),
    )
    op.create_index(op.f("ix_observations_last_seen"), "observations", ["last_seen"], unique=False)

    op.create_table(
        "reconciliations",
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("product_key", sa.String(length=160), nullable=False),
        sa.Column("entry_id", ROW_ID, nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "declared_observed",
                "declared_not_observed",
                "undeclared_observed",
                "unknown_observed",
                "declared_mismatch",
                name="reconciliationstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("mismatch", sa.Text(), nullable=True),
        sa.Column("product_id", sa.String(length=128), nullable=True),
        sa.Column("vendor", sa.String(length=255), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("endpoints", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("first_seen", UTC_TIME, nullable=True),
        sa.Column("last_seen", UTC_TIME, nullable=True),
        sa.Column("computed_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["inventory_entries.id"],
            name=op.f("fk_reconciliations_entry_id_inventory_entries"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("site", "product_key", name=op.f("pk_reconciliations")),
    )
    op.create_index(op.f("ix_reconciliations_status"), "reconciliations", ["status"], unique=False)


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_index(op.f("ix_reconciliations_status"), table_name="reconciliations")

    op.drop_table("reconciliations")
    op.drop_index(op.f("ix_observations_last_seen"), table_name="observations")

    op.drop_table("observations")
    op.drop_index(op.f("ix_endpoint_aliases_endpoint_id"), table_name="endpoint_aliases")

    op.drop_table("endpoint_aliases")
    op.drop_index(op.f("ix_detections_site"), table_name="detections")
    op.drop_index(op.f("ix_detections_product_key"), table_name="detections")
    op.drop_index(op.f("ix_detections_last_seen"), table_name="detections")
    op.drop_index(op.f("ix_detections_endpoint_id"), table_name="detections")

    op.drop_table("detections")
    op.drop_index("ix_alerts_open", table_name="alerts")

    op.drop_table("alerts")
    op.drop_index("ix_reviews_site_product", table_name="reviews")

    op.drop_table("reviews")
    op.drop_index(op.f("ix_probe_log_ts"), table_name="probe_log")
    op.drop_index(op.f("ix_probe_log_target"), table_name="probe_log")

    op.drop_table("probe_log")
    op.drop_index(op.f("ix_inventory_entries_site"), table_name="inventory_entries")
    op.drop_index(op.f("ix_inventory_entries_catalog_id"), table_name="inventory_entries")

    op.drop_table("inventory_entries")
    op.drop_table("ingested_files")
    op.drop_index(op.f("ix_endpoints_site"), table_name="endpoints")
    op.drop_index(op.f("ix_endpoints_last_seen"), table_name="endpoints")

    op.drop_table("endpoints")
    op.drop_index(op.f("ix_change_log_ts"), table_name="change_log")
    op.drop_index("ix_change_log_subject", table_name="change_log")

    op.drop_table("change_log")
    op.drop_index(op.f("ix_agents_site"), table_name="agents")

    op.drop_table("agents")
