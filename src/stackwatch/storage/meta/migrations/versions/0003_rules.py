"""Rules: rule groups kept in the database, the evaluator's alert state, last evaluation times.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-23

Written out in full rather than imported from models.py, like every migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("rules",)
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rule_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rule_groups"),
        sa.UniqueConstraint("project", "name", name="uq_rule_groups_project"),
    )
    op.create_table(
        "rule_alert_states",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_key", sa.String(600), nullable=False),
        sa.Column("rule_index", sa.Integer(), nullable=False),
        sa.Column("rule_name", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("active_at", TS, nullable=False),
        sa.Column("fired_at", TS, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("last_sent_at", TS, nullable=True),
        sa.Column("keep_firing_since", TS, nullable=True),
        sa.Column("sent_labels", sa.JSON(), nullable=True),
        sa.Column("hold_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rule_alert_states"),
        sa.UniqueConstraint("group_key", "rule_index", "fingerprint", name="uq_rule_alert_states_group_key"),
    )
    op.create_index("ix_rule_alert_states_group_key", "rule_alert_states", ["group_key"])
    op.create_table(
        "rule_group_evals",
        sa.Column("group_key", sa.String(600), nullable=False),
        sa.Column("last_eval_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("group_key", name="pk_rule_group_evals"),
    )


def downgrade() -> None:
    op.drop_table("rule_group_evals")
    op.drop_index("ix_rule_alert_states_group_key", table_name="rule_alert_states")
    op.drop_table("rule_alert_states")
    op.drop_table("rule_groups")
