"""How an evaluation is steered and how its result is shaped, shared by the protocols.

Holds (re-exported by :mod:`workers.evaluators`, whose docstring is the contract;
docs/design.md section 4):

* :class:`EvalResult`, and the callback types :data:`Report` / :data:`Tick`;
* ``_Control``: the deadline (:class:`~workers.outcomes.TimedOut`), the progress heartbeat
  and the ``prune`` / ``stop`` answers (:class:`~workers.outcomes.Pruned`,
  :class:`~workers.outcomes.Stopped`), checked by every protocol before every batch / step
  and at every intermediate report, and *inside* them by ``_Control.check`` (between the
  model's modules, micro-batches, readout iterations and grid points: the deadline every
  time, the tick callback at most every :data:`CHECK_TICK_INTERVAL_S`), so a deadline or a
  stop is obeyed within about one module of one batch whatever the batch size;
  ``_checkpoints`` hooks ``check`` between the leaf modules of a model;
* out-of-memory handling: :func:`is_oom`, ``_oom_is_infeasible`` (a stage with no batch size
  becomes ``InfeasibleArchitecture``), ``_oom_at_one`` (the error when halving reached
  batch size 1), ``_free`` / ``_sync`` (CUDA cache and timing barriers);
* JSON safety of metrics: ``_num`` (NaN/inf -> None) and ``_json_safe``.

Nothing here touches data or models; it imports only torch, NumPy, ``search_space.arch``
and :mod:`workers.outcomes`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from search_space.arch import InfeasibleArchitecture

from .outcomes import Pruned, Stopped, TimedOut

__all__ = ["CHECK_TICK_INTERVAL_S", "EvalResult", "Report", "Tick", "is_oom"]

Report = Callable[[int, float], str]
Tick = Callable[[], str]

# Inside a batch / fit the tick callback (the daemon's last heartbeat answer, refreshed
# every lease / 3 s) is asked at most this often; the deadline is checked at every check.
CHECK_TICK_INTERVAL_S = 0.25


@dataclass(frozen=True)
class EvalResult:
    """``value``: the score (an accuracy in [0, 1]); ``metrics``: JSON-safe details."""

    value: float
    metrics: dict[str, Any]


# -- control: heartbeats, prune / stop, deadline ---------------------------------------
class _Control:
    def __init__(self, report: Report | None, tick: Tick | None, deadline: float | None) -> None:
        self._report = report
        self._tick = tick
        self._deadline = deadline
        self.last_value: float | None = None
        self.reports: list[list[float]] = []
        self._last_tick = time.monotonic()

    def _check_deadline(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise TimedOut("the evaluation ran past its deadline")

    def _obey(self, action: str | None, where: str) -> None:
        if action in (None, "continue"):
            return
        if action == "prune":
            raise Pruned(f"pruned {where}", self.last_value)
        if action == "stop":
            raise Stopped(f"stopped {where}")
        raise ValueError(f"heartbeat action must be continue, prune or stop; got {action!r}")

    def tick(self) -> None:
        """The check before every batch / step: the deadline, then the tick callback."""
        self._check_deadline()
        if self._tick is not None:
            self._last_tick = time.monotonic()
            self._obey(self._tick(), "during the evaluation")

    def check(self) -> None:
        """The check inside a batch or a fit (cheap, called often): the deadline every
        time, the tick callback when :data:`CHECK_TICK_INTERVAL_S` have passed since it
        was last asked. Computes nothing, so results do not depend on it."""
        self._check_deadline()
        if self._tick is not None and time.monotonic() - self._last_tick >= CHECK_TICK_INTERVAL_S:
            self.tick()

    def report(self, step: int, value: float) -> None:
        self._check_deadline()
        self.last_value = float(value)
        self.reports.append([int(step), _num(value)])
        if self._report is not None:
            self._obey(self._report(int(step), float(value)), f"at step {step}")


@contextmanager
def _checkpoints(model: torch.nn.Module, check: Callable[[], None] | None) -> Iterator[None]:
    """Call ``check()`` before every leaf module of ``model`` runs (forward pre-hooks,
    removed on exit). An exception from ``check`` ends the forward pass; outputs of a pass
    that completes are unchanged."""
    if check is None:
        yield
        return

    def hook(_module: torch.nn.Module, _inputs: Any) -> None:
        check()

    with ExitStack() as stack:
        for module in model.modules():
            if next(module.children(), None) is None:
                stack.callback(module.register_forward_pre_hook(hook).remove)
        yield


# -- out of memory ---------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    """True for CUDA OOM and for allocator failures reported as ``RuntimeError``."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg
    )


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _oom_is_infeasible(device: torch.device, what: str) -> Iterator[None]:
    """Turn an out-of-memory error in a stage that has no batch size into INFEASIBLE."""
    try:
        yield
    except Exception as exc:
        if not is_oom(exc):
            raise
        _free(device)
        raise InfeasibleArchitecture(
            f"out of memory {what} on {device}: {_first_line(exc)}"
        ) from exc


def _oom_at_one(device: torch.device, what: str, exc: BaseException) -> InfeasibleArchitecture:
    return InfeasibleArchitecture(
        f"out of memory at batch size 1 on {device} ({what}): {_first_line(exc)}"
    )


def _halved_on_oom(exc: Exception, device: torch.device, bs: int, what: str) -> int:
    """The batch size to retry with after ``exc`` was raised at batch size ``bs``: half of
    it. Call it in an ``except`` block. Re-raises ``exc`` when it is not out of memory, and
    raises ``InfeasibleArchitecture`` when ``bs`` was already 1."""
    if not is_oom(exc):
        raise exc
    _free(device)
    if bs == 1:
        raise _oom_at_one(device, what, exc) from exc
    return max(1, bs // 2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- JSON-safe metrics -----------------------------------------------------------------
def _num(v: float | None) -> float | None:
    """A JSON-safe float: NaN/inf -> None."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool | str) or obj is None:
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _num(float(obj))
    return str(obj)
