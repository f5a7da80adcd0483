"""study state 'finishing': the top-k are being re-scored on the test split

Revision ID: 0002_study_finishing
Revises: 0001_initial
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_study_finishing"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("running", "paused", "stopped", "finished")
NEW = ("running", "paused", "finishing", "stopped", "finished")


def _swap(new: Sequence[str]) -> None:
    # Batch mode copies the table on SQLite (which cannot ALTER a CHECK constraint) and
    # runs plain ALTERs on PostgreSQL; the named constraint is dropped and written anew.
    allowed = ", ".join(f"'{v}'" for v in new)
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_studies_study_state"), type_="check")
        batch_op.create_check_constraint(op.f("ck_studies_study_state"), f"state IN ({allowed})")


def upgrade() -> None:
    _swap(NEW)


def downgrade() -> None:
    # A finishing study becomes running again: the lifecycle's reconcile pass moves it
    # on as soon as it sees that its finals were already queued.
    op.execute("UPDATE studies SET state = 'running' WHERE state = 'finishing'")
    _swap(OLD)
