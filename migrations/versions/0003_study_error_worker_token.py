"""studies.error (why the coordinator paused a study); workers.token_id (who may act for it)

Revision ID: 0003_study_error_worker_token
Revises: 0002_study_finishing
Create Date: 2026-11-30 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_study_error_worker_token"
down_revision: str | None = "0002_study_finishing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", ID, nullable=True))
        batch_op.create_index(batch_op.f("ix_workers_token_id"), ["token_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_workers_token_id_api_tokens"),
            "api_tokens",
            ["token_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_workers_token_id_api_tokens"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_workers_token_id"))
        batch_op.drop_column("token_id")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("error")
