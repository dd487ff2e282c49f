"""Shock-compatible nodes for task outputs (issue 19).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 13:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shock_nodes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("filename", sa.String(length=1024), nullable=False),
        sa.Column("parts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("indexes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("attributes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("created", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_shock_nodes_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_shock_nodes_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shock_nodes")),
    )
    op.create_index(op.f("ix_shock_nodes_task_id_filename"), "shock_nodes", ["task_id", "filename"])
    op.create_index(op.f("ix_shock_nodes_job_id"), "shock_nodes", ["job_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_shock_nodes_job_id"), table_name="shock_nodes")
    op.drop_index(op.f("ix_shock_nodes_task_id_filename"), table_name="shock_nodes")
    op.drop_table("shock_nodes")
