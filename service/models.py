"""SQLAlchemy 2 typed models: studies, trials, workers, API tokens.

Ownership: only ``service.trial_store`` writes ``trials`` rows; studies, workers and tokens
have their own modules. Times that decide correctness (leases, heartbeats) are set from
the database clock (``func.now()``), never from a coordinator process's clock.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from protocol.states import StudyState, TrialSource, TrialState

__all__ = [
    "ApiToken",
    "Base",
    "Role",
    "Study",
    "StudyState",
    "Trial",
    "TrialSource",
    "TrialState",
    "Worker",
]

# Named constraints so that Alembic batch mode (SQLite ALTER) can find them again.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An id type that is BIGINT on PostgreSQL and INTEGER (rowid alias) on SQLite.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Role(enum.StrEnum):
    ADMIN = "admin"
    WORKER = "worker"
    READER = "reader"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as VARCHAR with a CHECK constraint: portable, and readable in psql.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[StudyState] = mapped_column(
        _enum(StudyState, "study_state"), default=StudyState.RUNNING
    )
    space_name: Mapped[str | None] = mapped_column(String(100))
    space: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset: Mapped[str] = mapped_column(Text)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # Why the coordinator paused the study on its own (a suggester error), else None.
    error: Mapped[str | None] = mapped_column(Text)
    evaluator: Mapped[str] = mapped_column(String(32))
    evaluator_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    algorithm: Mapped[str] = mapped_column(String(32))
    algorithm_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    max_trials: Mapped[int] = mapped_column(Integer)
    max_parallel: Mapped[int] = mapped_column(Integer)
    top_k: Mapped[int] = mapped_column(Integer, default=5)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    # protocol.options.ScheduleOptions as given (None: every trial at the full budget).
    schedule: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    blend_k: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    blend_weights: Mapped[str] = mapped_column(
        String(16), default="uniform", server_default="uniform"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    trials: Mapped[list[Trial]] = relationship(back_populates="study", passive_deletes=True)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(100))
    # The worker token that registered this worker: only that token may act for it.
    token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="SET NULL"), index=True
    )
    registered_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("study_id", "number", name="uq_trials_study_number"),
        UniqueConstraint("study_id", "config_hash", name="uq_trials_study_config_hash"),
        # A study's trials by state in queue order (refills, a claim limited to studies).
        Index("ix_trials_study_state_priority", "study_id", "state", "priority", "number"),
        # The claim takes the first WAITING trials by (priority, id): a range scan of as
        # many entries as it claims (migration 0004).
        Index("ix_trials_state_priority_id", "state", "priority", "id"),
        Index("ix_trials_state_lease", "state", "lease_expires_at"),
        Index("ix_trials_worker_state", "worker_id", "state"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[TrialState] = mapped_column(
        _enum(TrialState, "trial_state"), default=TrialState.WAITING
    )
    # Lower runs first: user-enqueued configs (0) before suggested ones (1).
    priority: Mapped[int] = mapped_column(Integer, default=1)
    # A TrialSource value; plain VARCHAR (a StrEnum compares equal to its string).
    source: Mapped[str] = mapped_column(String(16), default=TrialSource.SUGGESTED.value)
    # A final (test split) evaluation points at the search trial it re-scores.
    final_of_id: Mapped[int | None] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    arch: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer, default=42)
    value: Mapped[float | None] = mapped_column(Float)
    test_value: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    intermediate: Mapped[list[Any]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # ASHA (migration 0005): the rung this trial runs at; a promoted trial (rung > 0)
    # points at its configuration's rung-0 trial. 0 / None without a schedule.
    rung: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rung_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), index=True
    )
    # The candidate's cost per image, from search_space.arch.walk at insertion.
    gflops_per_image: Mapped[float | None] = mapped_column(Float)
    n_params: Mapped[int | None] = mapped_column(BigInteger)
    n_features: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="trials")

    @property
    def is_final(self) -> bool:
        """A trial of the study's end phase (a final re-score or a blend)."""
        return TrialSource(self.source).is_final()


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role, "token_role"))
    # sha256 of the token: a leaked database does not leak usable tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
