"""Job pages: project and user indexes that also hold the state, and one on the owner (issue 22).

A field query's ``total_count`` (``?query&info.project=p&state=queued``) counted its matches by
visiting every matching row for its state; with ``state`` in the index it is an index-only count.
A non-admin's pages (security on) filter on ``owner``, which had no index: each page counted the
whole table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 20:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_jobs_project_state"), "jobs", ["project", "state"])
    op.create_index(op.f("ix_jobs_username_state"), "jobs", ["username", "state"])
    op.create_index(op.f("ix_jobs_owner_state"), "jobs", ["owner", "state"])
    # The new indexes lead with the same columns, so they serve every look-up the old ones did.
    op.drop_index(op.f("ix_jobs_project"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_username"), table_name="jobs")


def downgrade() -> None:
    op.create_index(op.f("ix_jobs_username"), "jobs", ["username"])
    op.create_index(op.f("ix_jobs_project"), "jobs", ["project"])
    op.drop_index(op.f("ix_jobs_owner_state"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_username_state"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_project_state"), table_name="jobs")
