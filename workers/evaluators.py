"""The three evaluation protocols of DESIGN.md section 4: ``screen``, ``train``, ``pairs``.

One entry point, :func:`evaluate`, used by the worker daemon::

    evaluate(protocol, arch, ds, *, final=False, ...) -> EvalResult(value, metrics)

Contract:

* ``search_space.arch.validate(arch, max_features=...)`` runs first: an infeasible
  architecture raises :class:`~search_space.arch.InfeasibleArchitecture` before any data
  are touched (the daemon reports INFEASIBLE).
* Everything numeric runs on ``device`` (features, readout, training); only index
  bookkeeping (splits, permutations) is NumPy. Features are float32.
* Out of memory (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` saying "out of
  memory" / "can't allocate memory") during a batched stage is retried with half the batch
  size, down to 1; then, or in a stage that has no batch (the readout), it becomes
  ``InfeasibleArchitecture("out of memory at batch size B on DEVICE ...")``.
* ``tick()`` (progress heartbeat, no value) is called before every batch of feature
  extraction / every optimiser step, so it must be cheap (the daemon's returns its last
  heartbeat answer). ``report(step, value)`` hands an intermediate value to the daemon:
  screen and View 1 pairs call it once, with the score (step 0); train once per epoch
  (step = epoch, 1-based; validation accuracy, or with ``final=True`` the epoch's training
  accuracy, since the test split is scored once, at the end); View 2 pairs once per fold
  (step = fold number, value = the running mean). Either returning ``"prune"`` raises
  :class:`Pruned` (with the last value), ``"stop"`` raises :class:`Stopped`; ``"continue"``
  or ``None`` go on.
* ``deadline`` is a ``time.monotonic()`` value; past it the evaluation raises
  :class:`~workers.outcomes.TimedOut` at its next check (every batch / step).
* ``final=False`` scores the search split (validation, or View 1 for pairs); ``final=True``
  fits on all non-test images and scores the test split (``ds.is_test``), or View 2 folds.
* Metrics are JSON-safe (str, int, finite float or None, lists and dicts of those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_space.arch import (
    Architecture,
    InfeasibleArchitecture,
    ShapeReport,
    TrainSettings,
    validate,
)
from search_space.model import FeatureExtractor, build_model, preprocess

from . import readout as ro
from .outcomes import Pruned, Stopped, TimedOut

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = [
    "EvalResult",
    "Pruned",
    "Report",
    "Stopped",
    "Tick",
    "TimedOut",
    "default_batch_size",
    "evaluate",
    "extract_features",
    "is_oom",
]

Protocol = Literal["screen", "train", "pairs"]
PROTOCOLS: tuple[str, ...] = ("screen", "train", "pairs")
Report = Callable[[int, float], str]
Tick = Callable[[], str]
PAIR_FEATURES_SEARCH = ("sqrtabsdiff",)
PAIR_FEATURES_FINAL = ("mult", "absdiff", "sqdiff", "sqrtabsdiff")


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
        self._check_deadline()
        if self._tick is not None:
            self._obey(self._tick(), "during the evaluation")

    def report(self, step: int, value: float) -> None:
        self._check_deadline()
        self.last_value = float(value)
        self.reports.append([int(step), _num(value)])
        if self._report is not None:
            self._obey(self._report(int(step), float(value)), f"at step {step}")


# -- out of memory ----------------------------------------------------------------------
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- batching ---------------------------------------------------------------------------
def default_batch_size(report: ShapeReport, device: torch.device | str) -> int:
    """A batch size whose working set fits: ~6 float32 copies of the largest map per image
    within 30% of the free GPU memory (cap 512), or within 512 MiB on a CPU (cap 64)."""
    device = torch.device(device)
    per_image = max(1, 6 * report.activation_bytes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, cap = int(0.3 * free), 512
    else:
        budget, cap = 512 << 20, 64
    return int(max(1, min(cap, budget // per_image)))


def extract_features(
    model: FeatureExtractor,
    images: np.ndarray,
    index: np.ndarray,
    *,
    device: torch.device | str,
    batch_size: int,
    tick: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, int, int]:
    """Features of ``images[index]`` as ``(len(index), n_features)`` float32 on ``device``.

    ``images``: ``(N, C, H, W)`` uint8 (or any dtype :func:`preprocess` takes), kept where
    it is; each batch is copied to the device, preprocessed and run under
    ``torch.inference_mode``. ``tick()`` is called before every batch. On out of memory
    the batch size is halved and the same batch retried; at batch size 1 it raises
    ``InfeasibleArchitecture``. Returns ``(features, batch size used at the end, number of
    halvings)``.
    """
    device = torch.device(device)
    arch = model.arch
    n = len(index)
    with _oom_is_infeasible(device, f"holding the {n} x {model.n_features} feature matrix"):
        out = torch.empty((n, model.n_features), dtype=torch.float32, device=device)
    bs, halvings, i = max(1, int(batch_size)), 0, 0
    model.eval()
    while i < n:
        if tick is not None:
            tick()
        j = min(n, i + bs)
        try:
            xb = torch.from_numpy(np.ascontiguousarray(images[index[i:j]])).to(device)
            with torch.inference_mode():
                fb = model(preprocess(xb, arch))
            out[i:j] = fb
            del xb, fb
        except Exception as exc:
            if not is_oom(exc):
                raise
            _free(device)
            if bs == 1:
                raise _oom_at_one(device, "feature extraction", exc) from exc
            bs, halvings = max(1, bs // 2), halvings + 1
            continue
        i = j
    return out, bs, halvings


def _extract_timed(
    model: FeatureExtractor,
    ds: Dataset,
    index: np.ndarray,
    device: torch.device,
    batch_size: int,
    control: _Control,
) -> tuple[torch.Tensor, dict[str, Any]]:
    t0 = time.perf_counter()
    feats, bs, halvings = extract_features(
        model, ds.x, index, device=device, batch_size=batch_size, tick=control.tick
    )
    _sync(device)
    seconds = time.perf_counter() - t0
    with _oom_is_infeasible(device, "checking the features"):
        finite = bool(torch.isfinite(feats).all())
    if not finite:
        raise InfeasibleArchitecture(
            "the features are not finite (NaN or inf): the architecture is numerically "
            "unusable on these data"
        )
    n = len(index)
    flops = model.report.flops
    return feats, {
        "n_images": n,
        "batch_size": bs,
        "oom_halvings": halvings,
        "extract_seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else None,
        "flops_per_image": flops,
        "gflops_per_s": flops * n / seconds / 1e9 if seconds > 0 else None,
    }


# -- shared helpers ---------------------------------------------------------------------
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


def _check_data(arch: Architecture, ds: Dataset) -> None:
    if ds.x.ndim != 4:
        raise ValueError(f"dataset images must be (N, C, H, W), got {ds.x.shape}")
    if ds.x.shape[1] != arch.input_channels:
        raise ValueError(
            f"the architecture expects {arch.input_channels} input channel(s) but "
            f"{ds.uri} was loaded with {ds.x.shape[1]}: load it with the study's color"
        )


def _readout_kind(arch: Architecture, override: str | None) -> str:
    kind = override or arch.readout.kind
    if kind not in ro.KINDS:
        raise ValueError(f"unknown readout {kind!r}; known: {ro.KINDS}")
    return kind


def _splits(
    ds: Dataset, final: bool, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(fit_idx, score_idx, split name)``: search train/validation, or non-test/test."""
    if final:
        fit_idx = np.flatnonzero(~np.asarray(ds.is_test, dtype=bool))
        score_idx = np.flatnonzero(np.asarray(ds.is_test, dtype=bool))
        if score_idx.size == 0:
            raise ValueError(f"{ds.uri} has no test images: a final evaluation needs them")
        return fit_idx, score_idx, "test"
    from .datasets import search_split

    train_idx, val_idx = search_split(ds, validation_fraction, seed)
    if len(val_idx) == 0:
        raise ValueError(
            f"the validation split of {ds.uri} is empty (validation_fraction={validation_fraction})"
        )
    return np.asarray(train_idx), np.asarray(val_idx), "validation"


def _labels(ds: Dataset, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(ds.y)[idx].astype(np.int64)).to(device)


def _fit_readout(
    X: torch.Tensor, y: torch.Tensor, kind: str, l2: float | None, seed: int, device: torch.device
) -> ro.LinearClassifier:
    with _oom_is_infeasible(device, f"fitting the {kind} readout on {tuple(X.shape)} features"):
        return ro.select_and_fit(X, y, kind, l2, seed)


# -- screen -----------------------------------------------------------------------------
def _screen(
    arch: Architecture,
    ds: Dataset,
    rep: ShapeReport,
    *,
    final: bool,
    validation_fraction: float,
    seed: int,
    device: torch.device,
    kind: str,
    batch_size: int,
    max_features: int,
    control: _Control,
) -> EvalResult:
    t0 = time.perf_counter()
    fit_idx, score_idx, split = _splits(ds, final, validation_fraction, seed)
    with _oom_is_infeasible(device, "building the model"):
        model = build_model(arch, device=device, max_features=max_features)
    index = np.concatenate([fit_idx, score_idx])
    feats, ext = _extract_timed(model, ds, index, device, batch_size, control)
    control.tick()
    nf = len(fit_idx)
    y = _labels(ds, index, device)
    t1 = time.perf_counter()
    clf = _fit_readout(feats[:nf], y[:nf], kind, arch.readout.l2, seed, device)
    with _oom_is_infeasible(device, "scoring the readout"):
        acc = clf.accuracy(feats[nf:], y[nf:])
        train_acc = clf.accuracy(feats[:nf], y[:nf])
    _sync(device)
    readout_s = time.perf_counter() - t1
    control.report(0, acc)
    metrics = {
        "protocol": "screen",
        "split": split,
        "readout": kind,
        "l2": clf.l2,
        "l2_chosen": arch.readout.l2 is None,
        "l2_curve": [[a, b] for a, b in clf.l2_curve],
        "n_features": model.n_features,
        "n_fit": nf,
        "n_scored": len(score_idx),
        "train_accuracy": train_acc,
        **ext,
        "readout_seconds": readout_s,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    return EvalResult(float(acc), _json_safe(metrics))


# -- train ------------------------------------------------------------------------------
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
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        with _oom_is_infeasible(device, "building the model"):
            features = build_model(
                arch, learn_filters=True, device=device, max_features=max_features
            )
            head = nn.Sequential(
                nn.Dropout(ts.dropout), nn.Linear(features.n_features, n_classes)
            ).to(device)
        net = nn.Sequential(features, head)
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
                            rows = batch[i : i + micro]
                            xb = torch.from_numpy(np.ascontiguousarray(x_all[rows])).to(device)
                            yb = torch.from_numpy(y_np[rows]).to(device)
                            logits = net(preprocess(xb, arch))
                            loss = F.cross_entropy(logits, yb, reduction="sum") / len(batch)
                            loss.backward()
                            hits += int((logits.detach().argmax(1) == yb).sum())
                        break
                    except Exception as exc:
                        if not is_oom(exc):
                            raise
                        opt.zero_grad(set_to_none=True)
                        _free(device)
                        if micro == 1:
                            raise _oom_at_one(device, "training", exc) from exc
                        micro, halvings = max(1, micro // 2), halvings + 1
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
            if not is_oom(exc):
                raise
            _free(device)
            if bs == 1:
                raise _oom_at_one(device, "evaluation", exc) from exc
            bs = max(1, bs // 2)
            continue
        i += len(rows)
    return correct / max(1, len(idx)), bs


# -- pairs ------------------------------------------------------------------------------
def pair_features(f1: torch.Tensor, f2: torch.Tensor, kinds: tuple[str, ...]) -> torch.Tensor:
    """Comparison features of two feature rows, concatenated in ``kinds`` order:
    ``mult`` f1*f2, ``absdiff`` |f1-f2|, ``sqdiff`` (f1-f2)^2, ``sqrtabsdiff`` sqrt|f1-f2|."""
    parts = []
    diff = f1 - f2
    for k in kinds:
        if k == "mult":
            parts.append(f1 * f2)
        elif k == "absdiff":
            parts.append(diff.abs())
        elif k == "sqdiff":
            parts.append(diff * diff)
        elif k == "sqrtabsdiff":
            parts.append(diff.abs().sqrt())
        else:
            raise ValueError(f"unknown pair feature {k!r}")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _pairs(
    arch: Architecture,
    ds: Dataset,
    rep: ShapeReport,
    *,
    final: bool,
    seed: int,
    device: torch.device,
    kind: str,
    batch_size: int,
    max_features: int,
    control: _Control,
) -> EvalResult:
    t0 = time.perf_counter()
    pairs = getattr(ds, "pairs", None)
    if pairs is None:
        raise ValueError(f"{ds.uri} has no pairs: the pairs protocol needs an lfw: dataset")
    if final:
        if not pairs.folds:
            raise ValueError(f"{ds.uri} has no View 2 folds (pairs.txt)")
        sets = [np.asarray(p, dtype=np.int64).reshape(-1, 2) for p, _ in pairs.folds]
    else:
        sets = [
            np.asarray(pairs.dev_train, dtype=np.int64).reshape(-1, 2),
            np.asarray(pairs.dev_test, dtype=np.int64).reshape(-1, 2),
        ]
    images = np.unique(np.concatenate([s.ravel() for s in sets]))
    with _oom_is_infeasible(device, "building the model"):
        model = build_model(arch, device=device, max_features=max_features)
    feats, ext = _extract_timed(model, ds, images, device, batch_size, control)
    kinds = PAIR_FEATURES_FINAL if final else PAIR_FEATURES_SEARCH

    def comparison(p: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.searchsorted(images, p)).to(device)
        return pair_features(feats[rows[:, 0]], feats[rows[:, 1]], kinds)

    def labels(same: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(same, dtype=bool).astype(np.int64)).to(device)

    t1 = time.perf_counter()
    metrics: dict[str, Any] = {
        "protocol": "pairs",
        "readout": kind,
        "pair_features": list(kinds),
        "n_features": model.n_features,
        "n_pair_features": model.n_features * len(kinds),
    }
    if not final:
        with _oom_is_infeasible(device, "building the pair features"):
            Xtr, Xte = comparison(sets[0]), comparison(sets[1])
        ytr, yte = labels(pairs.dev_train_same), labels(pairs.dev_test_same)
        control.tick()
        clf = _fit_readout(Xtr, ytr, kind, arch.readout.l2, seed, device)
        with _oom_is_infeasible(device, "scoring the readout"):
            value = clf.accuracy(Xte, yte)
        control.report(0, value)
        metrics.update(
            split="view1",
            l2=clf.l2,
            l2_curve=[list(c) for c in clf.l2_curve],
            n_fit=len(sets[0]),
            n_scored=len(sets[1]),
        )
    else:
        with _oom_is_infeasible(device, "building the pair features"):
            Xs = [comparison(s) for s in sets]
        ys = [labels(same) for _, same in pairs.folds]
        fold_acc: list[float] = []
        l2s: list[float] = []
        for k in range(len(sets)):
            control.tick()
            others = [i for i in range(len(sets)) if i != k]
            with _oom_is_infeasible(device, "stacking the training folds"):
                Xtr = torch.cat([Xs[i] for i in others])
                ytr = torch.cat([ys[i] for i in others])
            clf = _fit_readout(Xtr, ytr, kind, arch.readout.l2, seed, device)
            del Xtr
            with _oom_is_infeasible(device, "scoring the readout"):
                fold_acc.append(clf.accuracy(Xs[k], ys[k]))
            l2s.append(clf.l2)
            control.report(k + 1, float(np.mean(fold_acc)))
        value = float(np.mean(fold_acc))
        K = len(fold_acc)
        stderr = float(np.std(fold_acc, ddof=1) / math.sqrt(K)) if K > 1 else 0.0
        metrics.update(
            split="view2", folds=fold_acc, stderr=stderr, l2=l2s, n_scored=sum(len(s) for s in sets)
        )
    _sync(device)
    metrics.update(
        ext,
        readout_seconds=time.perf_counter() - t1,
        seconds=time.perf_counter() - t0,
        device=str(device),
    )
    return EvalResult(float(value), _json_safe(metrics))


# -- entry point ------------------------------------------------------------------------
def evaluate(
    protocol: Protocol,
    arch: Architecture,
    ds: Dataset,
    *,
    final: bool = False,
    validation_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    readout: str | None = None,
    epochs: int | None = None,
    report: Report | None = None,
    tick: Tick | None = None,
    batch_size: int | None = None,
    max_features: int = 100_000,
    deadline: float | None = None,
) -> EvalResult:
    """Score ``arch`` on ``ds`` with ``protocol`` (see the module docstring for the contract).

    * ``screen``: fixed random filters (``arch.seed``), features of the fit and scored
      images, then a linear readout (``readout`` overrides ``arch.readout.kind``; ``l2``
      from ``arch.readout.l2`` or chosen on an inner split of the fit rows). Value: accuracy
      on the validation split (``final=False``, split by ``search_split(ds,
      validation_fraction, seed)``) or on the test split (``final=True``, fitted on all
      non-test images).
    * ``train``: the same network with learned filters, dropout ``arch.train.dropout`` and a
      linear head, AdamW (``arch.train`` settings, defaults :class:`TrainSettings`), cross
      entropy, ``epochs`` epochs (``None``: ``arch.train.epochs``, else 2), seeded by
      ``seed``. ``batch_size`` here caps the micro-batch (gradients are accumulated up to
      ``arch.train.batch_size``, so memory halvings do not change the optimiser's batch).
    * ``pairs``: features of every image the pairs reference, comparison features, linear
      same/different readout. View 1 (``final=False``): ``sqrtabsdiff``, fit on
      ``dev_train``, accuracy on ``dev_test``. View 2 (``final=True``): the concat of
      ``mult, absdiff, sqdiff, sqrtabsdiff``; each fold scored by a readout fitted on the
      other folds; value = mean, metrics ``folds`` and ``stderr`` (std, ddof=1, / sqrt K).

    ``batch_size`` ``None`` picks :func:`default_batch_size`. Raises
    ``InfeasibleArchitecture`` (infeasible or out of memory), :class:`Pruned`,
    :class:`Stopped`, :class:`TimedOut`, and ``ValueError`` for a bad request
    (unknown protocol / readout, channel mismatch, no test split, no pairs).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    rep = validate(arch, max_features=max_features)
    device = torch.device(device)
    _check_data(arch, ds)
    control = _Control(report, tick, deadline)
    kind = _readout_kind(arch, readout)
    bs = int(batch_size) if batch_size else default_batch_size(rep, device)
    if protocol == "screen":
        return _screen(
            arch,
            ds,
            rep,
            final=final,
            validation_fraction=validation_fraction,
            seed=seed,
            device=device,
            kind=kind,
            batch_size=bs,
            max_features=max_features,
            control=control,
        )
    if protocol == "pairs":
        return _pairs(
            arch,
            ds,
            rep,
            final=final,
            seed=seed,
            device=device,
            kind=kind,
            batch_size=bs,
            max_features=max_features,
            control=control,
        )
    if epochs is None:
        epochs = arch.train.epochs if arch.train is not None else 2
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return _train(
        arch,
        ds,
        rep,
        final=final,
        validation_fraction=validation_fraction,
        seed=seed,
        device=device,
        epochs=int(epochs),
        batch_size=batch_size,
        eval_batch_size=bs,
        max_features=max_features,
        control=control,
    )
