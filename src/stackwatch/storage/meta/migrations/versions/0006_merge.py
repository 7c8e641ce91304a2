"""Join the branches of errors, rules, alerting and incidents into one history again.

Revision ID: 0006
Revises: 0002, 0003, 0004, 0005
Create Date: 2026-11-23

The four features were added side by side, each branching from 0001 with tables of its own
(none touches another's), so the order they apply in does not matter. From here on there is
one head again and new migrations revise this one.
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0006"
down_revision: str | Sequence[str] | None = ("0002", "0003", "0004", "0005")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to change: the merge only records that every branch is applied."""


def downgrade() -> None:
    """Nothing to change: downgrading past this point undoes each branch on its own."""
