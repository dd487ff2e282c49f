"""Metrics: the event log and the rollup table behind /api/v1/metric*, the summary and /metrics.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=300), nullable=False),
        sa.Column("at", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_events")),
    )
    op.create_index(
        op.f("ix_metric_events_metric_object_id_at"),
        "metric_events",
        ["metric", "object_id", "at"],
        unique=False,
    )
    op.create_table(
        "metric_rollups",
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False),
        sa.Column("object_id", sa.String(length=300), nullable=False),
        sa.Column("total", sa.Double(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("minimum", sa.Double(), nullable=False),
        sa.Column("maximum", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(
            "metric", "interval_s", "bucket_start", "object_id", name=op.f("pk_metric_rollups")
        ),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_metric_rollups_series",
        "metric_rollups",
        ["object_id", "metric", "interval_s", "bucket_start", "total", "samples", "minimum", "maximum"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_metric_rollups_series", table_name="metric_rollups")
    op.drop_table("metric_rollups")
    op.drop_index(op.f("ix_metric_events_metric_object_id_at"), table_name="metric_events")
    op.drop_table("metric_events")
