"""Plugin evaluators: a study's ``"evaluator": "plugin:NAME"`` runs code an installed
package provides (docs/design.md section 4.1).

A package registers a callable in the entry-point group ``archsearch.evaluators``::

    [project.entry-points."archsearch.evaluators"]
    "mylab.finetune" = "mylab.archsearch_plugin:evaluate"

and the callable takes one :class:`PluginCall` and returns the score: a float, or a
``(score, metrics)`` pair (metrics: a JSON-safe dict). The call carries the candidate's
built torch model (filters trainable, initialised from ``arch.seed``), the architecture,
the dataset with the rows to fit and to score (the search split, or all non-test rows and
the test rows for a final evaluation), the study's evaluator options (the plugin's own,
``evaluator_options.plugin_options``, as ``options["plugin"]``), the device and
``report(step, value)``, which raises :class:`~workers.outcomes.Pruned` or
:class:`~workers.outcomes.Stopped` when the coordinator says so (let them propagate). The
coordinator's median stopping rule answers plugin studies: report a learning curve
(the same step numbers in every trial, higher is better), not unrelated numbers.

:func:`run_plugin` is called by :func:`workers.evaluators.evaluate` after the architecture
and data checks. Outcomes, as the worker reports them:

* the plugin is not installed here (or its module fails to import): :class:`PluginMissing`;
  the daemon gives the trial back and skips the study, as for a dataset fingerprint
  mismatch (it calls :func:`check_plugin` before it loads the study's data);
* the plugin raises: the trial is FAILED with its error (the daemon's report of any
  exception: type, message, traceback tail);
* it returns a non-finite score, or something that is not a score: :class:`PluginError`
  naming the plugin and the value (FAILED with that reason).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from protocol.options import PLUGIN_PREFIX

if TYPE_CHECKING:  # torch and the model stack load on first use: the daemon imports this
    import numpy as np
    import torch

    from search_space.arch import Architecture
    from search_space.model import FeatureExtractor

    from .datasets import Dataset
    from .evaluation_control import EvalResult, _Control

GROUP = "archsearch.evaluators"

__all__ = [
    "GROUP",
    "PluginCall",
    "PluginError",
    "PluginMissing",
    "check_plugin",
    "load_plugin",
    "run_plugin",
]


class PluginMissing(Exception):
    """This worker cannot run the study's plugin (not installed, or it fails to import)."""


class PluginError(ValueError):
    """The plugin answered something that is not a finite score."""


@dataclass
class PluginCall:
    """What a plugin evaluator is called with (one argument, so fields can be added).

    ``data.x`` is uint8 ``(N, C, H, W)``, ``data.y`` int64 labels, ``data.classes`` the
    names; ``fit_idx`` / ``score_idx`` index its rows. ``options`` is the study's evaluator
    options (a dict, defaults filled); ``options["plugin"]`` is the study's
    ``plugin_options`` (a JSON object; ``{}`` when the study set none).
    ``preprocess(images)`` turns uint8 images into the model's input
    (:func:`search_space.model.preprocess`). Call ``tick()`` now and then in
    a long loop without reports (deadline, stop) and ``report(step, value)`` for
    intermediate values.
    """

    model: FeatureExtractor
    arch: Architecture
    data: Dataset
    fit_idx: np.ndarray
    score_idx: np.ndarray
    final: bool
    options: dict[str, Any]
    device: torch.device
    seed: int
    report: Callable[[int, float], None]
    tick: Callable[[], None]
    preprocess: Callable[[Any], torch.Tensor] = field(repr=False, default=lambda x: x)


def load_plugin(evaluator: str) -> Callable[[PluginCall], Any]:
    """The callable registered for ``plugin:NAME``; :class:`PluginMissing` naming the
    group when it is not installed or cannot be imported here."""
    name = evaluator.removeprefix(PLUGIN_PREFIX)
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise PluginMissing(f"the evaluator plugin {name!r} ({GROUP}) is not installed here")
    try:
        plugin = found[0].load()
    except Exception as exc:  # an import error of the plugin's own module
        raise PluginMissing(
            f"the evaluator plugin {name!r} cannot be loaded here: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(plugin):
        raise PluginMissing(f"the evaluator plugin {name!r} is not callable")
    return plugin


def check_plugin(evaluator: str) -> None:
    """Nothing for a built-in protocol; for ``plugin:NAME``, :class:`PluginMissing` when
    this worker cannot load it (the daemon asks before it loads a study's data)."""
    if evaluator.startswith(PLUGIN_PREFIX):
        load_plugin(evaluator)


def _score(name: str, answer: Any) -> tuple[float, dict[str, Any]]:
    """``(value, metrics)`` of a plugin's answer; :class:`PluginError` for anything else."""
    import numpy as np

    metrics: Any = {}
    value = answer
    if isinstance(answer, tuple) and len(answer) == 2:
        value, metrics = answer
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise PluginError(
            f"the evaluator plugin {name!r} must return a number or (number, metrics), "
            f"got {type(answer).__name__}"
        )
    if not math.isfinite(float(value)):
        raise PluginError(f"the evaluator plugin {name!r} returned a non-finite score ({value})")
    if not isinstance(metrics, dict):
        raise PluginError(
            f"the evaluator plugin {name!r} returned metrics of type {type(metrics).__name__}, "
            "not a dict"
        )
    return float(value), metrics


def run_plugin(
    evaluator: str,
    arch: Architecture,
    ds: Dataset,
    *,
    final: bool,
    validation_fraction: float,
    seed: int,
    device: torch.device,
    options: dict[str, Any],
    control: _Control,
    max_features: int,
) -> EvalResult:
    """Run the study's plugin on one candidate (see the module docstring); raises
    :class:`PluginMissing`, :class:`PluginError`, or whatever the plugin raises."""
    import numpy as np
    import torch

    from search_space.model import build_model, preprocess

    from .evaluation_control import EvalResult, _json_safe
    from .stages import _splits

    plugin = load_plugin(evaluator)
    name = evaluator.removeprefix(PLUGIN_PREFIX)
    fit_idx, score_idx, split = _splits(ds, final, validation_fraction, seed)
    model = build_model(arch, learn_filters=True, device=device, max_features=max_features)

    def report(step: int, value: float) -> None:
        if not math.isfinite(float(value)):
            raise PluginError(f"the evaluator plugin {name!r} reported {value} at step {step}")
        control.report(step, value)

    call = PluginCall(
        model=model,
        arch=arch,
        data=ds,
        fit_idx=np.asarray(fit_idx),
        score_idx=np.asarray(score_idx),
        final=final,
        options=dict(options),
        device=device,
        seed=seed,
        report=report,
        tick=control.tick,
        preprocess=lambda images: preprocess(images, arch),
    )
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # a plugin that draws random numbers is repeatable per study
    value, metrics = _score(name, plugin(call))
    base = {
        "protocol": evaluator,
        "split": split,
        "n_fit": len(fit_idx),
        "n_scored": len(score_idx),
        "reports": control.reports,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    return EvalResult(value, _json_safe({**metrics, **base}))
