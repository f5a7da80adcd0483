"""trials: an index in claim order, so that a claim reads only the rows it takes

Revision ID: 0004_trials_claim_order
Revises: 0003_study_error_worker_token
Create Date: 2026-11-30 10:00:00

A claim takes the first WAITING trials by (priority, id). With this index that is a range
scan of as many index entries as it claims; without it, every WAITING row of every study
is read and sorted on each claim (up to 1,024 queued trials a study).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_trials_claim_order"
down_revision: str | None = "0003_study_error_worker_token"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.create_index(
            "ix_trials_state_priority_id", ["state", "priority", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_index("ix_trials_state_priority_id")
