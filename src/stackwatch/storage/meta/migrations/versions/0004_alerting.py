"""Alerting: silences, maintenance windows, the notification log and delivery results.

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-23

Written out in full rather than imported from models.py, like every migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("alerting",)
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_silences"),
    )
    op.create_index("ix_alert_silences_ends_at", "alert_silences", ["ends_at"])
    op.create_table(
        "alert_maintenance_windows",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("starts_at", TS, nullable=True),
        sa.Column("ends_at", TS, nullable=True),
        sa.Column("recurrence", sa.JSON(), nullable=True),
        sa.Column("pass_severity", sa.String(8), nullable=False),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_maintenance_windows"),
    )
    op.create_table(
        "alert_notification_log",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("receiver", sa.String(200), nullable=False),
        sa.Column("integration", sa.String(64), nullable=False),
        sa.Column("firing", sa.JSON(), nullable=False),
        sa.Column("resolved", sa.JSON(), nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notification_log"),
    )
    op.create_index("ix_alert_notification_log_expires_at", "alert_notification_log", ["expires_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("receiver", sa.String(200), nullable=False),
        sa.Column("integration", sa.String(64), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("notification_status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_deliveries"),
    )
    op.create_index("ix_alert_deliveries_at", "alert_deliveries", ["at"])


def downgrade() -> None:
    op.drop_index("ix_alert_deliveries_at", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alert_notification_log_expires_at", table_name="alert_notification_log")
    op.drop_table("alert_notification_log")
    op.drop_table("alert_maintenance_windows")
    op.drop_index("ix_alert_silences_ends_at", table_name="alert_silences")
    op.drop_table("alert_silences")
