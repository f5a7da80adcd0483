"""Several ``screen`` candidates of one study screened together on one device (issue 13).

A worker that claims a batch of small candidates of one study can screen them as a group
instead of one after the other, so that a GPU is not idle between tiny models: every
image batch is copied to the device once (uint8) and every live candidate's
``preprocess`` + forward runs on it before the next batch; each candidate's features go
into its own preallocated matrix; then each candidate's readout is fitted and scored
exactly as :func:`workers.screen._screen` does.

Entry point, for the worker daemon (``workers/daemon.py`` runs a trial alone with
:func:`workers.evaluators.evaluate`, and consecutive screen trials of one study in a batch
with this, by default on a GPU: ``--group``)::

    screen_group([GroupCandidate(arch, readout, tick, report, deadline), ...], ds, *,
                 final=..., validation_fraction=..., seed=..., device=..., ...)
        -> [EvalResult | Exception, ...]    # one per candidate, in order

Contract (that of :mod:`workers.evaluators`, per candidate):

* All candidates share the data ``ds``, the split (``final``, ``validation_fraction``,
  ``seed``), the device and the study's cost caps; each has its own architecture, readout
  override, ``tick`` / ``report`` callbacks and ``deadline``.
* ``validate`` and the request checks (channel count, readout kind) run per candidate
  first: a candidate above the caps comes back as ``InfeasibleArchitecture`` (a bad
  request as ``ValueError``) without entering the group, and without any model built.
* A candidate's ``tick()`` runs before each of its batches and its deadline / tick
  checks between its model's modules (``_Control.check``), its ``report(0, value)`` once
  with its score. What they raise (:class:`~workers.outcomes.Pruned`,
  :class:`~workers.outcomes.Stopped`, :class:`~workers.outcomes.TimedOut`, or anything
  the callback raises) becomes *that candidate's* result; it is dropped from the remaining
  batches and the others go on. Out of memory halves the group's batch (all candidates
  redo the batch); at batch size 1 the candidate that ran out becomes
  ``InfeasibleArchitecture``. Non-finite features: ``InfeasibleArchitecture``.
* Errors that concern every candidate (the split cannot be made: no test split, an empty
  validation split) come back as every remaining candidate's result; ``BaseException``
  that is not an ``Exception`` (KeyboardInterrupt, the daemon's ``WorkerStopping``)
  propagates.
* Results equal ``evaluate("screen", arch, ds, ...)`` of each candidate alone: the same
  split, model, labels and readout code. On the CPU the features are bitwise equal when
  the group runs the same batch sizes as the candidate alone (the default when
  ``batch_size`` is given and the models are small: the FLOP budget of the first batch
  and the time-driven sizing then both stay at ``batch_size``); at other batch sizes they
  differ by float32 rounding (oneDNN's summation order depends on the number of images:
  <= 1.1e-7 measured on 16 px digits), and so may the score if an image sits on a
  decision boundary or the readout's l2 choice is a near tie. On CUDA the kernels are the
  same with or without streams, but the convolution algorithm may change with the batch
  size: features agree within float32 rounding, the score the same way.

Metrics per candidate: ``_screen``'s, where ``extract_seconds`` / ``images_per_s`` /
``gflops_per_s`` are the candidate's own model time (CUDA: events on its stream, which
may overlap the others' kernels) and ``seconds`` the wall time from the group's start to
its result; plus ``group_size``, ``group_extract_seconds`` (the group's extraction, wall),
``group_images_per_s`` (images through a model per second of it, all candidates together)
and ``group_streams``.

Memory: the candidates' feature matrices are held at once, so candidates are split into
consecutive sub-groups whose feature matrices fit :func:`feature_budget_bytes` (a
candidate too large for it forms its own sub-group); the batch size of a sub-group is
:func:`workers.stages.default_batch_size` for the *sum* of its candidates' working sets
(:func:`group_batch_size`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from protocol.options import DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE, DEFAULT_MAX_GFLOPS_PER_IMAGE
from search_space.arch import Architecture, ShapeReport, validate
from search_space.model import FeatureExtractor, build_model, preprocess

from .evaluation_control import (
    EvalResult,
    Report,
    Tick,
    _checkpoints,
    _Control,
    _free,
    _halved_on_oom,
    _json_safe,
    _oom_at_one,
    _oom_is_infeasible,
    _sync,
    is_oom,
)
from .evaluators import _check_data, _readout_kind
from .feature_cache import FeatureCache, FeatureKey
from .screen import _screen, fit_and_score
from .stages import (
    BATCH_SECONDS,
    FIRST_BATCH_FLOPS,
    _labels,
    _splits,
    check_finite,
    default_batch_size,
)

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = [
    "GroupCandidate",
    "GroupExtraction",
    "extract_features_group",
    "feature_budget_bytes",
    "group_batch_size",
    "screen_group",
]


@dataclass(frozen=True)
class GroupCandidate:
    """One candidate of a group: what ``evaluate`` takes per trial.

    ``readout`` overrides ``arch.readout.kind`` (the study's ``EvaluatorOptions.readout``);
    ``tick`` / ``report`` / ``deadline`` are the trial's own, with ``evaluate``'s meaning.
    """

    arch: Architecture
    readout: str | None = None
    tick: Tick | None = None
    report: Report | None = None
    deadline: float | None = None


# -- memory ----------------------------------------------------------------------------
def group_batch_size(reports: Sequence[ShapeReport], device: torch.device | str) -> int:
    """The group's batch size, from :func:`~workers.stages.default_batch_size`.

    CUDA: for the *sum* of the candidates' working sets: with one stream per candidate
    every candidate's maps of one batch may be alive at once, and each stream keeps its
    own cached blocks (the largest report with ``activation_bytes`` replaced by the sum,
    so whatever else ``default_batch_size`` looks at is kept). CPU: the smallest of the
    candidates' own batch sizes: on the CPU the candidates run one after the other and
    each frees its maps before the next starts, so the peak is one candidate's working
    set (plus the shared uint8 batch), and every candidate's must fit.
    """
    if not reports:
        return 1
    device = torch.device(device)
    if device.type != "cuda":
        return min(default_batch_size(r, device) for r in reports)
    largest = max(reports, key=lambda r: r.activation_bytes)
    total = sum(r.activation_bytes for r in reports)
    return default_batch_size(dataclasses.replace(largest, activation_bytes=total), device)


def feature_budget_bytes(device: torch.device | str) -> int:
    """Bytes the group's feature matrices may take together: half the free memory of the
    GPU, or half of the host's ``MemAvailable`` (4 GiB when it cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30


def _partition(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive runs of positions whose ``sizes`` sum to at most ``budget`` (a size
    above the budget alone in its run)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for pos, size in enumerate(sizes):
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(pos)
        used += size
    if current:
        groups.append(current)
    return groups


# -- interleaved feature extraction ------------------------------------------------------
@dataclass
class GroupExtraction:
    """What :func:`extract_features_group` returns.

    ``features[i]``: model i's ``(len(index), n_features)`` float32 features on the device,
    or the exception that ended model i. ``batch_size``: the group's batch size at the
    end; ``oom_halvings``: how often it was halved; ``seconds``: the extraction's wall
    time; ``model_seconds[i]``: model i's own time (CPU: its forward passes; CUDA: events
    around its work on its stream, which may overlap other streams' work)."""

    features: list[torch.Tensor | Exception]
    batch_size: int
    oom_halvings: int
    seconds: float
    model_seconds: list[float] = field(default_factory=list)
    streams: bool = False


def extract_features_group(
    models: Sequence[FeatureExtractor],
    images: np.ndarray,
    index: np.ndarray,
    *,
    device: torch.device | str,
    batch_size: int,
    ticks: Sequence[Callable[[], None] | None] | None = None,
    checks: Sequence[Callable[[], None] | None] | None = None,
    batch_seconds: float | None = BATCH_SECONDS,
    streams: bool | None = None,
) -> GroupExtraction:
    """Features of ``images[index]`` for every model of ``models``, interleaved.

    The group counterpart of :func:`workers.stages.extract_features` (same arguments, one
    ``tick`` / ``check`` per model): each batch of uint8 images is copied to the device
    once, then every live model runs ``preprocess`` + forward on it (``ticks[i]()``
    before model i's batch, ``checks[i]()`` between its modules) and writes its rows of
    its own preallocated output. ``batch_size`` is the group's largest batch; with
    ``batch_seconds`` the first batch is capped by :data:`FIRST_BATCH_FLOPS` over the
    *summed* FLOPs and each next one sized so that the whole group's batch takes about
    ``batch_seconds`` (so each model's ticks come as often as alone). Out of memory halves
    the group's batch and redoes it for every live model; at batch size 1 the model that
    ran out gets ``InfeasibleArchitecture``. An exception from model i (its tick, its
    check, its forward) ends model i only: it becomes ``features[i]``. Out of memory
    copying a batch at batch size 1 ends every live model. Never raises an ``Exception``
    (``BaseException`` propagates).

    ``streams`` (CUDA only; ``None``: on for CUDA): each model's work is queued on its own
    CUDA stream, so that one model's tail kernels (its pooling, normalisation and output
    copy after the pooling's host read of the map's maximum) overlap the next model's
    first kernels instead of queueing behind them; off, the models' kernels run back to
    back on the current stream. Either way the host waits for the device once per group
    batch (with ``batch_seconds``, to size the next batch), not between models.
    """
    device = torch.device(device)
    k, n = len(models), len(index)
    tick_of = list(ticks) if ticks is not None else [None] * k
    check_of = list(checks) if checks is not None else [None] * k
    if len(tick_of) != k or len(check_of) != k:
        raise ValueError(f"need one tick and one check per model ({k})")
    use_streams = device.type == "cuda" and (streams is None or streams)
    outs: list[torch.Tensor | None] = [None] * k
    errors: list[Exception | None] = [None] * k
    for c, model in enumerate(models):
        try:
            with _oom_is_infeasible(device, f"holding the {n} x {model.n_features} features"):
                outs[c] = torch.empty((n, model.n_features), dtype=torch.float32, device=device)
        except Exception as exc:
            errors[c] = exc
    made = [torch.cuda.Stream(device) for _ in range(k)] if use_streams else []
    side: list[torch.cuda.Stream | None] = list(made) if use_streams else [None] * k
    for out, stream in zip(outs, made, strict=False):
        if out is not None:
            # Written on its stream: its memory must not be reused on the current stream
            # (if the model fails and its output is dropped) before that stream is done.
            out.record_stream(stream)
    live = [c for c in range(k) if errors[c] is None]
    top = max(1, int(batch_size))
    cap, halvings, i = top, 0, 0
    bs = cap
    if batch_seconds is not None:
        budget = FIRST_BATCH_FLOPS.get(device.type, FIRST_BATCH_FLOPS["cuda"])
        flops = sum(models[c].report.flops for c in live)
        bs = max(1, min(cap, int(budget // max(1, flops))))
    timer = _Timer(k)
    t_start = time.perf_counter()
    for model in models:
        model.eval()
    with ExitStack() as hooks:
        for model, check in zip(models, check_of, strict=True):
            hooks.enter_context(_checkpoints(model, check))
        while i < n and live:
            j = min(n, i + bs)
            t0 = time.perf_counter()
            try:
                xb = torch.from_numpy(np.ascontiguousarray(images[index[i:j]])).to(device)
            except Exception as exc:
                try:
                    bs = _halved_on_oom(exc, device, bs, "copying a batch of images")
                except Exception as final:
                    for c in live:
                        errors[c] = final
                    live = []
                    break
                cap, halvings = bs, halvings + 1
                continue
            oom: tuple[int, Exception] | None = None
            for c in list(live):
                try:
                    _forward_into(
                        c, models[c], xb, outs[c], slice(i, j), tick_of[c], side[c], device, timer
                    )
                except Exception as exc:
                    if is_oom(exc):
                        oom = (c, exc)
                        break
                    errors[c], outs[c] = exc, None
                    live.remove(c)
            del xb
            if oom is not None:
                c, exc = oom
                _free(device)
                if bs == 1:
                    # Alone this model might fit; in the group it does not even at batch
                    # size 1. The others redo this batch (idempotent) without it, and
                    # their batch may grow back (the halvings were for it): from 1, x4 a
                    # batch by time, or at once without time-driven sizing.
                    errors[c] = _oom_at_one(
                        device, f"feature extraction, group of {len(live)}", exc
                    )
                    outs[c] = None
                    live.remove(c)
                    cap = top
                    if batch_seconds is None:
                        bs = cap
                else:
                    bs, halvings = max(1, bs // 2), halvings + 1
                    cap = bs
                continue
            if batch_seconds is not None:
                _sync(device)
                timer.read()
                per_image = (time.perf_counter() - t0) / (j - i)
                want = int(batch_seconds / per_image) if per_image > 0 else cap
                bs = max(1, min(cap, 4 * bs, want))
            i = j
    for stream in made:  # the caller's stream reads the features after every model's work
        torch.cuda.current_stream(device).wait_stream(stream)
    _sync(device)
    timer.read()
    seconds = time.perf_counter() - t_start
    features: list[torch.Tensor | Exception] = []
    for c in range(k):
        out, err = outs[c], errors[c]
        features.append(out if err is None and out is not None else _nonnull(err))
    return GroupExtraction(features, bs, halvings, seconds, timer.seconds, use_streams)


def _nonnull(err: Exception | None) -> Exception:
    return err if err is not None else RuntimeError("no features and no error (a bug)")


class _Timer:
    """Each model's own time: host seconds on the CPU; on CUDA a pair of events around its
    work on its stream, read after the next synchronisation (reading them earlier would
    wait for the device between models)."""

    def __init__(self, k: int) -> None:
        self.seconds = [0.0] * k
        self._pending: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []

    def add(self, c: int, seconds: float) -> None:
        self.seconds[c] += seconds

    def queue(self, c: int, start: torch.cuda.Event, end: torch.cuda.Event) -> None:
        self._pending.append((c, start, end))

    def read(self) -> None:
        """Call after a synchronisation: adds the queued events' times."""
        for c, start, end in self._pending:
            self.seconds[c] += start.elapsed_time(end) / 1e3
        self._pending.clear()


def _forward_into(
    c: int,
    model: FeatureExtractor,
    xb: torch.Tensor,
    out: torch.Tensor | None,
    rows: slice,
    tick: Callable[[], None] | None,
    stream: torch.cuda.Stream | None,
    device: torch.device,
    timer: _Timer,
) -> None:
    """Model ``c``'s batch: ``tick()``, then ``out[rows] = model(preprocess(xb))`` (queued
    on ``stream`` when given, else on the current stream)."""
    if out is None:
        raise RuntimeError(f"model {c} has no output (a bug)")
    if tick is not None:
        tick()
    if device.type != "cuda":
        t0 = time.perf_counter()
        with torch.inference_mode():
            fb = model(preprocess(xb, model.arch))
        out[rows] = fb
        timer.add(c, time.perf_counter() - t0)
        return
    current = torch.cuda.current_stream(device)
    s = stream if stream is not None else current
    if stream is not None:
        # The batch was copied on the current stream: stream c starts after the copy, and
        # the batch's memory is not reused before stream c has read it.
        stream.wait_stream(current)
        xb.record_stream(stream)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(s):
        start.record(s)
        with torch.inference_mode():
            fb = model(preprocess(xb, model.arch))
        out[rows] = fb
        end.record(s)
    timer.queue(c, start, end)


# -- the screen protocol for a group -----------------------------------------------------
@dataclass
class _Member:
    pos: int
    arch: Architecture
    rep: ShapeReport
    kind: str
    control: _Control
    model: FeatureExtractor | None = None


def screen_group(
    candidates: Sequence[GroupCandidate],
    ds: Dataset,
    *,
    final: bool = False,
    validation_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    max_features: int = 100_000,
    max_gflops_per_image: float = DEFAULT_MAX_GFLOPS_PER_IMAGE,
    max_activation_mb_per_image: float = DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE,
    streams: bool | None = None,
    feature_budget: int | None = None,
    train_per_class: int | None = None,
    feature_cache: FeatureCache | None = None,
) -> list[EvalResult | Exception]:
    """Screen ``candidates`` on ``ds`` together; one result per candidate, in order.

    Each result is the candidate's :class:`EvalResult` (as ``evaluate("screen", ...)``
    gives it alone) or the ``Exception`` that ended it (``InfeasibleArchitecture``,
    ``Pruned``, ``Stopped``, ``TimedOut``, ``ValueError``, ...); see the module docstring.
    Raises nothing but non-``Exception`` ``BaseException`` (and, before anything else,
    ``torch.device``'s error for a malformed ``device``).

    ``batch_size``: the group's largest batch (``None``: :func:`group_batch_size` of each
    sub-group). ``streams``: see :func:`extract_features_group`. ``feature_budget``: bytes
    the feature matrices of one sub-group may take (``None``:
    :func:`feature_budget_bytes`). ``feature_cache``: a candidate whose images it holds
    in part (a promoted rung, a final) is screened alone with it (``_screen``: only the
    missing images are extracted); the group's features are stored in it. The other
    arguments are ``evaluate``'s, shared by all.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    results: list[EvalResult | Exception | None] = [None] * len(candidates)
    members: list[_Member] = []
    for pos, cand in enumerate(candidates):
        try:
            rep = validate(
                cand.arch,
                max_features=max_features,
                max_gflops_per_image=max_gflops_per_image,
                max_activation_mb_per_image=max_activation_mb_per_image,
            )
            _check_data(cand.arch, ds)
            kind = _readout_kind(cand.arch, cand.readout)
            control = _Control(cand.report, cand.tick, cand.deadline)
        except Exception as exc:
            results[pos] = exc
            continue
        members.append(_Member(pos, cand.arch, rep, kind, control))
    if members:
        try:
            fit_idx, score_idx, split = _splits(
                ds, final, validation_fraction, seed, train_per_class
            )
        except Exception as exc:
            for m in members:
                results[m.pos] = exc
            members = []
    try:
        if members:
            index = np.concatenate([fit_idx, score_idx])
            if feature_cache is not None:
                members = _screen_cached(
                    members, ds, results, index, feature_cache,
                    final=final, validation_fraction=validation_fraction, seed=seed,
                    device=device, batch_size=batch_size, max_features=max_features,
                    train_per_class=train_per_class,
                )  # fmt: skip
            budget = feature_budget if feature_budget is not None else feature_budget_bytes(device)
            sizes = [4 * len(index) * m.rep.n_features for m in members]
            for part in _partition(sizes, budget):
                _screen_members(
                    [members[p] for p in part],
                    ds,
                    results,
                    index=index,
                    nf=len(fit_idx),
                    split=split,
                    seed=seed,
                    device=device,
                    batch_size=batch_size,
                    max_features=max_features,
                    streams=streams,
                    t0=t0,
                    cache=feature_cache,
                )
    except Exception as exc:
        # Something no single candidate owns (the device, the batch size, the streams):
        # it is the result of every candidate that has none yet, as it would be alone.
        for m in members:
            if results[m.pos] is None:
                results[m.pos] = exc
    return [r if r is not None else RuntimeError("no result (a bug)") for r in results]


def _screen_members(
    members: list[_Member],
    ds: Dataset,
    results: list[EvalResult | Exception | None],
    *,
    index: np.ndarray,
    nf: int,
    split: str,
    seed: int,
    device: torch.device,
    batch_size: int | None,
    max_features: int,
    streams: bool | None,
    t0: float,
    cache: FeatureCache | None = None,
) -> None:
    """One sub-group: build, extract interleaved, then fit and score one by one; each
    member's result (or exception) into ``results[member.pos]``; the features of each
    member scored (so checked finite) into ``cache``."""
    built: list[_Member] = []
    for m in members:
        try:
            with _oom_is_infeasible(device, "building the model"):
                m.model = build_model(m.arch, device=device, max_features=max_features)
        except Exception as exc:
            results[m.pos] = exc
            continue
        built.append(m)
    if not built:
        return
    bs = int(batch_size) if batch_size else group_batch_size([m.rep for m in built], device)
    ext = extract_features_group(
        [m.model for m in built if m.model is not None],
        ds.x,
        index,
        device=device,
        batch_size=bs,
        ticks=[m.control.tick for m in built],
        checks=[m.control.check for m in built],
        streams=streams,
    )
    n = len(index)
    done = sum(1 for f in ext.features if not isinstance(f, Exception))
    group_metrics = {
        "group_size": len(built),
        "group_extract_seconds": ext.seconds,
        # Images through a model per second of the group's extraction (all candidates
        # that finished it together): the figure to compare with one model's images_per_s.
        "group_images_per_s": done * n / ext.seconds if ext.seconds > 0 else None,
        "group_streams": ext.streams,
    }
    y: torch.Tensor | None = None
    for c, m in enumerate(built):
        feats = ext.features[c]
        ext.features[c] = RuntimeError("released")  # dropped after this member: frees memory
        m.model = None
        if isinstance(feats, Exception):
            results[m.pos] = feats
            continue
        try:
            if y is None:
                y = _labels(ds, index, device)
            results[m.pos] = _score(m, feats, y, nf, split, seed, device, ext, c, group_metrics, t0)
        except Exception as exc:
            results[m.pos] = exc
        else:
            if cache is not None:
                key = FeatureKey.of(m.arch, ds.fingerprint, max_features, device)
                cache.store(key, index, feats)
        del feats


def _screen_cached(
    members: list[_Member],
    ds: Dataset,
    results: list[EvalResult | Exception | None],
    index: np.ndarray,
    cache: FeatureCache,
    *,
    final: bool,
    validation_fraction: float,
    seed: int,
    device: torch.device,
    batch_size: int | None,
    max_features: int,
    train_per_class: int | None,
) -> list[_Member]:
    """Screen alone, with ``cache``, each member whose images it holds in part (a shared
    batch would extract them all again); the others, to be screened together, returned."""
    rest: list[_Member] = []
    for m in members:
        if not cache.holds(FeatureKey.of(m.arch, ds.fingerprint, max_features, device), index):
            rest.append(m)
            continue
        try:
            results[m.pos] = _screen(
                m.arch, ds, m.rep, final=final, validation_fraction=validation_fraction,
                seed=seed, device=device, kind=m.kind,
                batch_size=int(batch_size) if batch_size else default_batch_size(m.rep, device),
                max_features=max_features, control=m.control,
                train_per_class=train_per_class, feature_cache=cache,
            )  # fmt: skip
        except Exception as exc:
            results[m.pos] = exc
    return rest


def _score(
    m: _Member,
    feats: torch.Tensor,
    y: torch.Tensor,
    nf: int,
    split: str,
    seed: int,
    device: torch.device,
    ext: GroupExtraction,
    c: int,
    group_metrics: dict[str, Any],
    t0: float,
) -> EvalResult:
    """``_screen``'s steps after the extraction, for one member of the group."""
    check_finite(feats, device)
    m.control.tick()
    clf, acc, train_acc, readout_s = fit_and_score(
        feats, y, nf, m.kind, m.arch.readout.l2, seed, device, m.control.check
    )
    m.control.report(0, acc)
    n = feats.shape[0]
    own = ext.model_seconds[c]
    flops = m.rep.flops
    metrics = {
        "protocol": "screen",
        "split": split,
        "readout": m.kind,
        "l2": clf.l2,
        "l2_chosen": m.arch.readout.l2 is None,
        "l2_curve": [[a, b] for a, b in clf.l2_curve],
        "n_features": m.rep.n_features,
        "n_fit": nf,
        "n_scored": n - nf,
        "train_accuracy": train_acc,
        "n_images": n,
        "cached_images": 0,
        "batch_size": ext.batch_size,
        "oom_halvings": ext.oom_halvings,
        "extract_seconds": own,
        "images_per_s": n / own if own > 0 else None,
        "seconds_per_image": own / n if n else None,
        "flops_per_image": flops,
        "gflops_per_s": flops * n / own / 1e9 if own > 0 else None,
        **group_metrics,
        "readout_seconds": readout_s,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    return EvalResult(float(acc), _json_safe(metrics))
