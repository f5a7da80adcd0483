"""The ``train`` protocol (docs/design.md section 4): the same network, filters learned.

``_train`` builds the model with learned filters plus dropout and a linear head, trains it
with AdamW and cross entropy for ``epochs`` epochs (seeded; gradients accumulated over
micro-batches up to ``arch.train.batch_size``, the micro-batch halved on out of memory, so
halvings do not change the optimiser's batch) and reports once per epoch. The control's
``tick`` runs before every step and every scored batch, its ``check`` (deadline, stop)
between micro-batches and between the network's modules. ``_classify``
scores the network on some rows (eval mode, batched, halving on out of memory). Called by
:func:`workers.evaluators.evaluate`; the contract is in that module's docstring.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_space.arch import Architecture, ShapeReport, TrainSettings
from search_space.model import build_model, preprocess

from .evaluation_control import (
    EvalResult,
    _checkpoints,
    _Control,
    _halved_on_oom,
    _json_safe,
    _oom_is_infeasible,
    _sync,
)
from .stages import _splits

if TYPE_CHECKING:
    from .datasets import Dataset


# -- train -----------------------------------------------------------------------------
def _train(
    arch: Architecture,
    ds: Dataset,
    rep: ShapeReport,
    *,
    final: bool,
    validation_fraction: float,
    seed: int,
    device: torch.device,
    epochs: int,
    batch_size: int | None,
    eval_batch_size: int,
    max_features: int,
    control: _Control,
) -> EvalResult:
    t0 = time.perf_counter()
    ts = arch.train or TrainSettings()
    fit_idx, score_idx, split = _splits(ds, final, validation_fraction, seed)
    n_classes = int(max(len(ds.classes), int(np.max(ds.y)) + 1))
    step_batch = max(1, ts.batch_size)
    micro = max(1, min(step_batch, batch_size or step_batch))
    fork_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=fork_devices), ExitStack() as stack:
        torch.manual_seed(seed)
        with _oom_is_infeasible(device, "building the model"):
            features = build_model(
                arch, learn_filters=True, device=device, max_features=max_features
            )
            head = nn.Sequential(
                nn.Dropout(ts.dropout), nn.Linear(features.n_features, n_classes)
            ).to(device)
        net = nn.Sequential(features, head)
        stack.enter_context(_checkpoints(net, control.check))
        opt = torch.optim.AdamW(net.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        x_all, y_np = ds.x, np.asarray(ds.y).astype(np.int64)
        halvings, n_steps, images_seen = 0, 0, 0
        train_s = 0.0
        value = float("nan")
        for epoch in range(1, epochs + 1):
            net.train()
            order = fit_idx[torch.randperm(len(fit_idx), generator=gen).numpy()]
            correct = 0
            te = time.perf_counter()
            for start in range(0, len(order), step_batch):
                control.tick()
                batch = order[start : start + step_batch]
                while True:
                    try:
                        opt.zero_grad(set_to_none=True)
                        hits = 0
                        for i in range(0, len(batch), micro):
                            if i:
                                control.check()
                            rows = batch[i : i + micro]
                            xb = torch.from_numpy(np.ascontiguousarray(x_all[rows])).to(device)
                            yb = torch.from_numpy(y_np[rows]).to(device)
                            logits = net(preprocess(xb, arch))
                            loss = F.cross_entropy(logits, yb, reduction="sum") / len(batch)
                            loss.backward()
                            hits += int((logits.detach().argmax(1) == yb).sum())
                        break
                    except Exception as exc:
                        opt.zero_grad(set_to_none=True)
                        micro, halvings = (
                            _halved_on_oom(exc, device, micro, "training"),
                            halvings + 1,
                        )
                opt.step()
                correct += hits
                n_steps += 1
                images_seen += len(batch)
            _sync(device)
            train_s += time.perf_counter() - te
            train_acc = correct / max(1, len(order))
            if final:
                value = train_acc  # the test split is scored once, after the last epoch
            else:
                value, eval_batch_size = _classify(
                    net, ds, score_idx, device, eval_batch_size, control
                )
            control.report(epoch, value)
        if final:
            value, eval_batch_size = _classify(net, ds, score_idx, device, eval_batch_size, control)
    flops = rep.flops
    metrics = {
        "protocol": "train",
        "split": split,
        "epochs": epochs,
        "lr": ts.lr,
        "weight_decay": ts.weight_decay,
        "dropout": ts.dropout,
        "batch_size": step_batch,
        "micro_batch_size": micro,
        "oom_halvings": halvings,
        "steps": n_steps,
        "n_features": features.n_features,
        "n_fit": len(fit_idx),
        "n_scored": len(score_idx),
        "train_accuracy": train_acc,
        "intermediate": control.reports,
        "train_seconds": train_s,
        # forward + backward ~ 3x the forward FLOPs
        "images_per_s": images_seen / train_s if train_s > 0 else None,
        # A training step's seconds per image (forward + backward), the model's cost here.
        "seconds_per_image": train_s / images_seen if images_seen else None,
        "flops_per_image": flops,
        "gflops_per_s": 3 * flops * images_seen / train_s / 1e9 if train_s > 0 else None,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    return EvalResult(float(value), _json_safe(metrics))


def _classify(
    net: nn.Module,
    ds: Dataset,
    idx: np.ndarray,
    device: torch.device,
    batch_size: int,
    control: _Control,
) -> tuple[float, int]:
    """Accuracy of ``net`` on ``ds[idx]`` (eval mode, batched, OOM-halving)."""
    net.eval()
    arch = net[0].arch
    y_np = np.asarray(ds.y).astype(np.int64)
    correct, i, bs = 0, 0, max(1, batch_size)
    while i < len(idx):
        control.tick()
        rows = idx[i : i + bs]
        try:
            with torch.inference_mode():
                xb = torch.from_numpy(np.ascontiguousarray(ds.x[rows])).to(device)
                pred = net(preprocess(xb, arch)).argmax(1)
                correct += int((pred == torch.from_numpy(y_np[rows]).to(device)).sum())
        except Exception as exc:
            bs = _halved_on_oom(exc, device, bs, "evaluation")
            continue
        i += len(rows)
    return correct / max(1, len(idx)), bs
