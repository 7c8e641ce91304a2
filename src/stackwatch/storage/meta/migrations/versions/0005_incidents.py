"""Incidents and on-call: incidents, timeline, alert occurrences, schedules, overrides,
contact profiles, escalation policies.

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-23

Written out in full rather than imported from models.py, like every migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("incidents",)
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "escalation_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("levels", sa.JSON(), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_escalation_policies"),
        sa.UniqueConstraint("name", name="uq_escalation_policies_name"),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(2), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("service", sa.String(200), nullable=False),
        sa.Column("group_key", sa.String(1000), nullable=True),
        sa.Column("receiver", sa.String(200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.Column("assignee", sa.String(320), nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("opened_by", sa.String(320), nullable=False),
        sa.Column("acked_at", TS, nullable=True),
        sa.Column("acked_by", sa.String(320), nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("resolved_by", sa.String(320), nullable=True),
        sa.Column("escalation_policy_id", sa.Integer(), nullable=True),
        sa.Column("esc_level", sa.Integer(), nullable=False),
        sa.Column("esc_cycle", sa.Integer(), nullable=False),
        sa.Column("esc_next_at", TS, nullable=True),
        sa.Column("postmortem", sa.Text(), nullable=True),
        sa.Column("postmortem_updated_at", TS, nullable=True),
        sa.Column("postmortem_updated_by", sa.String(320), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
        sa.UniqueConstraint("number", name="uq_incidents_number"),
        sa.ForeignKeyConstraint(
            ["escalation_policy_id"],
            ["escalation_policies.id"],
            name="fk_incidents_escalation_policy_id_escalation_policies",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint("severity IN ('P0', 'P1', 'P2', 'P3', 'P4')", name="ck_incidents_severity"),
        sa.CheckConstraint("status IN ('triggered', 'acknowledged', 'resolved')", name="ck_incidents_status"),
    )
    op.create_index("ix_incidents_status", "incidents", ["status"])
    op.create_index("ix_incidents_service", "incidents", ["service"])
    op.create_index("ix_incidents_group_key", "incidents", ["group_key"])
    op.create_index("ix_incidents_opened_at", "incidents", ["opened_at"])
    op.create_index("ix_incidents_esc_next_at", "incidents", ["esc_next_at"])
    op.create_table(
        "incident_timeline",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("who", sa.String(320), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incident_timeline"),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name="fk_incident_timeline_incident_id_incidents", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_incident_timeline_incident_id", "incident_timeline", ["incident_id"])
    op.create_table(
        "alert_occurrences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("alertname", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(2), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("group_key", sa.String(1000), nullable=False),
        sa.Column("receiver", sa.String(200), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=True),
        sa.Column("incident_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alert_occurrences"),
        sa.UniqueConstraint("fingerprint", "starts_at", name="uq_alert_occurrences_fingerprint_starts_at"),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name="fk_alert_occurrences_incident_id_incidents", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_alert_occurrences_alertname", "alert_occurrences", ["alertname"])
    op.create_index("ix_alert_occurrences_starts_at", "alert_occurrences", ["starts_at"])
    op.create_index("ix_alert_occurrences_incident_id", "alert_occurrences", ["incident_id"])
    op.create_table(
        "oncall_schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("layers", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_oncall_schedules"),
        sa.UniqueConstraint("name", name="uq_oncall_schedules_name"),
    )
    op.create_table(
        "oncall_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("layer", sa.String(64), nullable=False),
        sa.Column("user", sa.String(320), nullable=False),
        sa.Column("start_at", TS, nullable=False),
        sa.Column("end_at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_oncall_overrides"),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["oncall_schedules.id"],
            name="fk_oncall_overrides_schedule_id_oncall_schedules",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_oncall_overrides_schedule_id", "oncall_overrides", ["schedule_id"])
    op.create_table(
        "oncall_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("receivers", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_oncall_profiles"),
        sa.UniqueConstraint("user", name="uq_oncall_profiles_user"),
    )


def downgrade() -> None:
    op.drop_table("oncall_profiles")
    op.drop_table("oncall_overrides")
    op.drop_table("oncall_schedules")
    op.drop_table("alert_occurrences")
    op.drop_table("incident_timeline")
    op.drop_table("incidents")
    op.drop_table("escalation_policies")
