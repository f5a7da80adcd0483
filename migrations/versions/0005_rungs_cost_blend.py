"""ASHA rungs, model cost and blends: studies.schedule / blend_k / blend_weights;
trials.rung / rung_of_id and the cost columns gflops_per_image / n_params / n_features

Revision ID: 0005_rungs_cost_blend
Revises: 0004_trials_claim_order
Create Date: 2026-11-30 16:00:00

A promoted trial (rung > 0) is a row of its own pointing at its configuration's rung-0
trial; exactly-once promotion rests on the existing unique (study_id, config_hash). The
trial source "blend" needs no change: ``source`` is a plain VARCHAR(16).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_rungs_cost_blend"
down_revision: str | None = "0004_trials_claim_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("schedule", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("blend_k", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column(
                "blend_weights", sa.String(length=16), server_default="uniform", nullable=False
            )
        )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rung", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("rung_of_id", ID, nullable=True))
        batch_op.add_column(sa.Column("gflops_per_image", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("n_params", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("n_features", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_trials_rung_of_id"), ["rung_of_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_trials_rung_of_id_trials"),
            "trials",
            ["rung_of_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_trials_rung_of_id_trials"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_trials_rung_of_id"))
        for column in ("n_features", "n_params", "gflops_per_image", "rung_of_id", "rung"):
            batch_op.drop_column(column)
    with op.batch_alter_table("studies", schema=None) as batch_op:
        for column in ("blend_weights", "blend_k", "schedule"):
            batch_op.drop_column(column)
