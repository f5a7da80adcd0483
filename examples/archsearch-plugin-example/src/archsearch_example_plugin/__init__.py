"""An archsearch evaluator plugin: a linear probe on the candidate's frozen features.

Registered in the entry-point group ``archsearch.evaluators`` as ``example.linear_probe``
(see pyproject.toml). Called by the worker with one ``workers.plugins.PluginCall``; returns
``(score, metrics)``.

Its own options come from the study's ``evaluator_options.plugin_options`` (the worker
passes them as ``call.options["plugin"]``): ``lr`` (Adam's learning rate, default 0.01)
and ``steps_per_epoch`` (default 25). Anything else there is refused, so a typo is an
error, not a silent default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

STEPS_PER_EPOCH = 25
LR = 1e-2
BATCH = 256
OPTIONS = ("lr", "steps_per_epoch")


def _options(call: Any) -> tuple[float, int]:
    """``(lr, steps_per_epoch)`` from the study's plugin options; ``ValueError`` naming
    the option for an unknown key or a bad value (the trial ends FAILED with it)."""
    own = dict(call.options.get("plugin") or {})
    unknown = sorted(set(own) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown plugin_options {unknown}; this plugin reads {list(OPTIONS)}")
    lr, steps = own.get("lr", LR), own.get("steps_per_epoch", STEPS_PER_EPOCH)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 10:
        raise ValueError(f"plugin_options.lr must be a number in (0, 10], got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
        raise ValueError(
            f"plugin_options.steps_per_epoch must be an integer in 1..10000, got {steps!r}"
        )
    return float(lr), steps


def _features(call: Any, index: np.ndarray) -> torch.Tensor:
    """The model's features of ``data.x[index]``, in batches, without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(index), BATCH):
            call.tick()  # the worker's deadline and stop checks
            x = torch.from_numpy(np.ascontiguousarray(call.data.x[index[i : i + BATCH]]))
            out.append(call.model(call.preprocess(x.to(call.device))))
    return torch.cat(out)


def linear_probe(call: Any) -> tuple[float, dict[str, Any]]:
    """Validation (or test) accuracy of a linear head trained with Adam on the features."""
    lr, steps_per_epoch = _options(call)
    call.model.eval()
    fit, score = _features(call, call.fit_idx), _features(call, call.score_idx)
    mean, std = fit.mean(0), fit.std(0).clamp_min(1e-6)
    fit, score = (fit - mean) / std, (score - mean) / std
    labels = torch.tensor(call.data.y, device=call.device)  # a copy: data are read-only
    y_fit, y_score = labels[call.fit_idx], labels[call.score_idx]
    head = torch.nn.Linear(fit.shape[1], len(call.data.classes)).to(call.device)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    epochs = int(call.options.get("epochs") or 2)
    acc = 0.0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(fit), y_fit).backward()
            opt.step()
        with torch.no_grad():
            acc = float((head(score).argmax(1) == y_score).float().mean())
        call.report(epoch, acc)  # raises when the coordinator says prune or stop
    return acc, {
        "epochs": epochs,
        "n_features": int(fit.shape[1]),
        "lr": lr,
        "steps_per_epoch": steps_per_epoch,
    }
