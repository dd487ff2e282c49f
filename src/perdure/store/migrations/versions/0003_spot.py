"""Spot protection: the spot_events table, and an index for preempted work.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spot_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("workunit_id", sa.String(length=220), nullable=False),
        sa.Column("time", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("client_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("node_id", sa.String(length=64), server_default="", nullable=False),
        sa.Column("duration_s", sa.Double(), server_default="0", nullable=False),
        sa.Column("saved_s", sa.Double(), server_default="0", nullable=False),
        sa.Column("size", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("written", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("detail", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_spot_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spot_events")),
    )
    op.create_index(op.f("ix_spot_events_job_id_id"), "spot_events", ["job_id", "id"], unique=False)
    op.create_index(
        "ix_workunits_preempted",
        "workunits",
        [sa.text("priority DESC"), "submittime", "id"],
        unique=False,
        sqlite_where=sa.text("state = 'preempted'"),
        postgresql_where=sa.text("state = 'preempted'"),
    )


def downgrade() -> None:
    op.drop_index("ix_workunits_preempted", table_name="workunits")
    op.drop_index(op.f("ix_spot_events_job_id_id"), table_name="spot_events")
    op.drop_table("spot_events")
