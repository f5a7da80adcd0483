"""Trial and study states, and the trial source: each enum owns its rules.

Every module that asks "is this trial finished?", "may a worker claim in this study?" or
"is this trial a final (test split) evaluation?" asks these enums; nothing spells the
answer out again. The state diagrams are in docs/design.md section 5.
"""

from __future__ import annotations

import enum


class TrialState(enum.StrEnum):
    """WAITING: queued, nobody runs it yet. RUNNING: claimed by one worker under a lease.

    COMPLETE, PRUNED, FAILED and INFEASIBLE are finished: no transition leaves them.
    """

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"
    INFEASIBLE = "INFEASIBLE"

    @classmethod
    def pending(cls) -> tuple[TrialState, ...]:
        """States of a trial that still has to run (queued or running)."""
        return (cls.WAITING, cls.RUNNING)

    @classmethod
    def finished(cls) -> tuple[TrialState, ...]:
        """States no transition leaves."""
        return (cls.COMPLETE, cls.PRUNED, cls.FAILED, cls.INFEASIBLE)

    @classmethod
    def scored(cls) -> tuple[TrialState, ...]:
        """States whose trial has a score the search may rank (COMPLETE; PRUNED keeps the
        last intermediate value)."""
        return (cls.COMPLETE, cls.PRUNED)

    def is_pending(self) -> bool:
        return self in self.pending()

    def is_finished(self) -> bool:
        return self in self.finished()


class TrialSource(enum.StrEnum):
    """Where a trial came from. FINAL trials re-score a search trial on the test split;
    a BLEND trial combines the kernels of a study's best models (its ``params`` list the
    member trials). Both belong to the study's end (:meth:`finals`): they run after the
    search (also in a stopped study) and never enter the history the suggester sees."""

    SUGGESTED = "suggested"
    USER = "user"
    FINAL = "final"
    BLEND = "blend"

    @classmethod
    def finals(cls) -> tuple[TrialSource, ...]:
        """Sources of the study's end phase: test-split re-scores and blends."""
        return (cls.FINAL, cls.BLEND)

    @classmethod
    def search(cls) -> tuple[TrialSource, ...]:
        """Sources of search trials (the suggester's history)."""
        return (cls.SUGGESTED, cls.USER)

    def is_final(self) -> bool:
        return self in self.finals()


class StudyState(enum.StrEnum):
    """A study's life (docs/design.md section 5):

    ``running`` (search) -> ``finishing`` (the top-k are re-scored on the test split) ->
    ``finished``. The user may pause a running study (no claims; running trials finish)
    and resume it, or stop it at any time before it finished: a stopped study's top-k are
    re-scored too, and it stays ``stopped``. Only ``service.lifecycle`` changes a study's
    state.
    """

    RUNNING = "running"
    PAUSED = "paused"
    FINISHING = "finishing"
    STOPPED = "stopped"
    FINISHED = "finished"

    def claims_search(self) -> bool:
        """Workers may claim the study's search trials."""
        return self is StudyState.RUNNING

    def claims_finals(self) -> bool:
        """Workers may claim the study's final (test split) evaluations."""
        return self in (StudyState.RUNNING, StudyState.FINISHING, StudyState.STOPPED)

    def is_over(self) -> bool:
        """No search trial will be added or run any more."""
        return self in (StudyState.FINISHING, StudyState.STOPPED, StudyState.FINISHED)

    def user_targets(self) -> tuple[StudyState, ...]:
        """States a user's PATCH may move this study to (besides staying where it is)."""
        return {
            StudyState.RUNNING: (StudyState.PAUSED, StudyState.STOPPED),
            StudyState.PAUSED: (StudyState.RUNNING, StudyState.STOPPED),
            StudyState.FINISHING: (StudyState.STOPPED,),
        }.get(self, ())
