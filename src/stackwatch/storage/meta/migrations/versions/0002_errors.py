"""Errors: issues grouped from Sentry-protocol events, their users, activity, releases, and
the WAL blocks already counted.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Written out in full rather than imported from models.py, like every migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("errors",)
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
_STATUS_CHECK = "status IN ('unresolved', 'resolved', 'resolved_in_next_release', 'ignored')"


def upgrade() -> None:
    op.create_table(
        "error_issues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("culprit", sa.String(500), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("assignee", sa.String(320), nullable=True),
        sa.Column("regressed", sa.Boolean(), nullable=False),
        sa.Column("times_regressed", sa.Integer(), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("user_count", sa.Integer(), nullable=False),
        sa.Column("first_release", sa.String(250), nullable=True),
        sa.Column("last_release", sa.String(250), nullable=True),
        sa.Column("environments", sa.JSON(), nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("resolved_in_release", sa.String(250), nullable=True),
        sa.Column("last_event_id", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_error_issues"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_error_issues_project_id_projects", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("project_id", "fingerprint", name="uq_error_issues_project_id"),
        sa.CheckConstraint(_STATUS_CHECK, name="ck_error_issues_status"),
    )
    op.create_index("ix_error_issues_status", "error_issues", ["status"])
    op.create_index("ix_error_issues_last_seen", "error_issues", ["last_seen"])
    op.create_table(
        "error_issue_users",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("issue_id", "user_key", name="pk_error_issue_users"),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["error_issues.id"], name="fk_error_issue_users_issue_id_error_issues", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "error_issue_activity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(320), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_error_issue_activity"),
        sa.ForeignKeyConstraint(
            ["issue_id"],
            ["error_issues.id"],
            name="fk_error_issue_activity_issue_id_error_issues",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_error_issue_activity_issue_id", "error_issue_activity", ["issue_id"])
    op.create_table(
        "error_releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(250), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_error_releases"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_error_releases_project_id_projects", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("project_id", "version", name="uq_error_releases_project_id"),
    )
    op.create_table(
        "error_batches",
        sa.Column("token", sa.String(128), nullable=False),
        sa.Column("processed_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_error_batches"),
    )
    op.create_index("ix_error_batches_processed_at", "error_batches", ["processed_at"])


def downgrade() -> None:
    op.drop_table("error_batches")
    op.drop_table("error_releases")
    op.drop_table("error_issue_activity")
    op.drop_table("error_issue_users")
    op.drop_table("error_issues")
