"""The protocol between coordinator, workers and client: wire models, state enums with
their rules, dataset URI schemes and study options with their defaults.

Imports nothing but pydantic, so a worker or a client can use it without the server.
Every other package of the project may import it; it imports none of them.
"""

from .datasets import BUILTINS, DEFAULT_COLOR, PATH_SCHEMES, SCHEMES, default_color
from .options import AlgorithmOptions, EvaluatorOptions
from .states import StudyState, TrialSource, TrialState
from .wire import (
    BestOut,
    ClaimOut,
    CompleteIn,
    EnqueueTrial,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    Lease,
    ReleaseIn,
    SpaceList,
    SpaceOut,
    SpaceSummary,
    StudyBrief,
    StudyCreate,
    StudyList,
    StudyOut,
    StudyPatch,
    TrialOut,
    TrialPage,
    WorkerOut,
    WorkerRegister,
)

__all__ = [
    "BUILTINS",
    "DEFAULT_COLOR",
    "PATH_SCHEMES",
    "SCHEMES",
    "AlgorithmOptions",
    "BestOut",
    "ClaimOut",
    "CompleteIn",
    "EnqueueTrial",
    "EvaluatorOptions",
    "FailIn",
    "HeartbeatIn",
    "HeartbeatOut",
    "Lease",
    "ReleaseIn",
    "SpaceList",
    "SpaceOut",
    "SpaceSummary",
    "StudyBrief",
    "StudyCreate",
    "StudyList",
    "StudyOut",
    "StudyPatch",
    "StudyState",
    "TrialOut",
    "TrialPage",
    "TrialSource",
    "TrialState",
    "WorkerOut",
    "WorkerRegister",
    "default_color",
]
