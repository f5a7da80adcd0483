"""Blends of screened models by kernel combination (issue 17; docs/design.md section 4.2).

Cox & Pinto (FG 2011) blend the top screened models: each member's features become a
linear kernel, the kernels are summed, and one readout is fitted on the sum. Entry point
:func:`blend`, called by the worker daemon for a trial of source ``blend``::

    blend(protocol, members, ds, weights="uniform", ...) -> BlendResult(value, test_value, metrics)

How one member enters (per *split*, a ridge problem of fit rows then scored rows, see
:class:`BlendSplit`): its features of the split's images are extracted; per column chunk
they are standardised with the fit rows' mean / std (population, std 0 -> 1, as
:mod:`workers.readout`) and centred by the mean of the standardised fit rows, and the
chunk's products are accumulated in float64 into the kernel blocks fit x fit and scored x
fit (and the same for the seeded inner split of the fit rows, with the inner fit rows'
statistics, when an l2 is to be chosen). Each block set is then divided by ``c``, the
trace of its fit x fit block over the number of fit rows (for standardised features, the
number of non-constant features), so every member's kernel has mean diagonal 1 and
uniform weights give every member the same say. The member's features are freed before
the next member: the features are never concatenated, only ``n x n`` kernels are held.

The readout is ridge in the dual form on ``S = sum_m w_m K_m / c_m`` (``sum w = 1``): the
same targets, l2 grid, inner split and tie rule as a member's own screen
(:func:`workers.readout.select_and_fit`). A member alone has the l2 grid of its own scale
(its Gram has mean diagonal ``c``); dividing its kernel by ``c`` is undone by dividing
the l2 by ``D = sum_m w_m c_m``, so that a one-member blend makes exactly the member's own
predictions, and ``l2`` in the metrics is on the members' scale. A member's fixed
``readout.l2`` is used when every weighted member has the same one; otherwise l2 is chosen.
Only ridge is blended: ``logistic`` / ``svm`` raise ``ValueError`` (fitting them on an
``n x n`` kernel factor would be a different model from the members' primal fits, and
their grid search would cost a full L-BFGS fit per weight candidate).

Weights: ``uniform`` (``1 / k`` each), or ``validation``: the candidates of
:func:`weight_candidates` (uniform, every pair at 1/2 - 1/2, every member alone) are scored
on the validation split and the best is kept (ties: the earlier candidate), so the value is
at least the best member's. The test score refits with the chosen weights.

Protocols: ``screen`` scores the search split (validation, fit on search-train) for the
value and the non-test / test split for ``test_value``; ``pairs`` scores View 1
(``sqrtabsdiff`` comparison features, fit on dev_train, scored on dev_test) for the value
and the View 2 folds (the four View 2 kinds, each fold fitted on the others) for
``test_value`` (mean; ``folds`` and ``stderr`` in the metrics). Comparison features are
made per member and column chunk (:func:`workers.pair_kernels.comparison_chunk`).

Memory: :func:`blend_memory` estimates the peak (the kernels of every split, the running
sums, one member's features, the largest of extraction / chunk / solve) before any work;
with ``memory_budget`` (host bytes on a CPU) or on a GPU (its free memory) a blend that
does not fit is ``InfeasibleArchitecture`` naming the estimate. Out of memory during the
work is ``InfeasibleArchitecture`` too (:func:`workers.evaluation_control._oom_is_infeasible`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from protocol.options import DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE, DEFAULT_MAX_GFLOPS_PER_IMAGE
from search_space.arch import Architecture, InfeasibleArchitecture, ShapeReport, validate
from search_space.model import build_model

from . import pair_kernels as pk
from . import readout as ro
from .evaluation_control import _Control, _json_safe, _oom_is_infeasible, _sync
from .memory import MemoryEstimate, MiB, extraction_bytes
from .pairs import PAIR_FEATURES_FINAL, PAIR_FEATURES_SEARCH, pair_sets
from .stages import _check_data, _extract_timed, _splits, default_batch_size

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = [
    "BLEND_PROTOCOLS",
    "WEIGHT_MODES",
    "BlendResult",
    "BlendSplit",
    "SplitKernels",
    "blend",
    "blend_memory",
    "blend_splits",
    "combine",
    "kernel_decision",
    "split_kernels",
    "weight_candidates",
]

BLEND_PROTOCOLS: tuple[str, ...] = ("screen", "pairs")
WEIGHT_MODES: tuple[str, ...] = ("uniform", "validation")
# A chunk of one member's rows is gathered in float32 and standardised in a float64 copy:
# half of pair_kernels' chunk budget keeps the same ~64 MiB per chunk.
CHUNK_BYTES = pk.CHUNK_BYTES // 2


@dataclass(frozen=True)
class BlendResult:
    """``value``: validation accuracy (screen: the search split's validation part, fit on
    its train part; pairs: View 1 dev_test, fit on dev_train). ``test_value``: test
    accuracy (screen: fit on all non-test images, scored on the test split; pairs: the
    View 2 fold mean). ``metrics``: JSON-safe; ``weights``, ``member_values`` (each member
    alone on the validation split, same readout), ``members``, ``memory_estimate_mb``,
    ``seconds``, ``l2`` / ``test_l2``; pairs also ``folds`` and ``stderr``."""

    value: float
    test_value: float
    metrics: dict[str, Any]


# -- splits ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BlendSplit:
    """One ridge problem: ``rows`` are the fit rows then the scored rows, as image indices
    ``(N,)`` (screen) or image index pairs ``(N, 2)`` (pairs, with ``kinds`` the comparison
    features); ``y`` ``(N,)`` their labels; ``inner``: ``(fit, held)`` positions among the
    fit rows (:func:`workers.readout.stratified_inner_split` of the fit labels, as
    ``select_and_fit`` draws it), ``None`` when no row can be held out."""

    name: str
    rows: np.ndarray
    n_fit: int
    y: np.ndarray
    kinds: tuple[str, ...] = ()
    inner: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def images(self) -> np.ndarray:
        """The sorted distinct images the rows use."""
        return np.unique(self.rows.ravel())

    @property
    def n_held(self) -> int:
        return len(self.rows) - self.n_fit


def _split(
    name: str,
    fit: np.ndarray,
    held: np.ndarray,
    y: np.ndarray,
    n_fit: int,
    seed: int,
    kinds: tuple[str, ...] = (),
) -> BlendSplit:
    _, y_inv = np.unique(y[:n_fit], return_inverse=True)
    fit_pos, held_pos = ro.stratified_inner_split(y_inv, ro.INNER_FRACTION, seed)
    inner = None
    if held_pos.size and len(np.unique(y_inv[fit_pos])) >= 2:
        inner = (fit_pos, held_pos)
    rows = np.concatenate([fit, held])
    return BlendSplit(name, rows, n_fit, np.asarray(y, dtype=np.int64), kinds, inner)


def blend_splits(
    protocol: str,
    ds: Dataset,
    validation_fraction: float,
    seed: int,
    train_per_class: int | None = None,
) -> tuple[BlendSplit, list[BlendSplit]]:
    """``(validation split, test splits)`` of a blend: screen's search split and its
    non-test / test split; pairs' View 1 and one split per View 2 fold (the other folds in
    fold order, then the fold), the rows the members' own evaluations fit and score.
    ``train_per_class`` (screen: a schedule's ``max``, what the members' top rung and
    finals fit on) caps the fit rows per class as :func:`workers.stages._splits` does.
    Raises ``ValueError`` for an unknown protocol, no test images or no pairs."""
    if protocol == "screen":
        fit, held, _ = _splits(ds, False, validation_fraction, seed, train_per_class)
        y = np.asarray(ds.y)
        search = _split("validation", fit, held, y[np.concatenate([fit, held])], len(fit), seed)
        fit, held, _ = _splits(ds, True, validation_fraction, seed, train_per_class)
        test = _split("test", fit, held, y[np.concatenate([fit, held])], len(fit), seed)
        return search, [test]
    if protocol != "pairs":
        raise ValueError(f"unknown blend protocol {protocol!r}; known: {BLEND_PROTOCOLS}")
    if train_per_class is not None:
        raise ValueError("train_per_class is a screen resource; a pairs blend has none")
    view1 = pair_sets(ds, False)
    pairs = ds.pairs
    assert pairs is not None  # pair_sets raised otherwise
    y1 = np.concatenate([pairs.dev_train_same, pairs.dev_test_same]).astype(np.int64)
    search = _split("view1", view1[0], view1[1], y1, len(view1[0]), seed, PAIR_FEATURES_SEARCH)
    folds = pair_sets(ds, True)
    same = [np.asarray(s, dtype=bool).astype(np.int64) for _, s in pairs.folds]
    tests = []
    for k in range(len(folds)):
        others = [i for i in range(len(folds)) if i != k]
        fit = np.concatenate([folds[i] for i in others])
        y = np.concatenate([same[i] for i in [*others, k]])
        tests.append(_split(f"fold{k + 1}", fit, folds[k], y, len(fit), seed, PAIR_FEATURES_FINAL))
    return search, tests


# -- kernels --------------------------------------------------------------------------
@dataclass
class SplitKernels:
    """Float64 kernel blocks of one split on the device, each divided by its trace scale.

    ``fit`` ``(n, n)`` and ``held_fit`` ``(m, n)``; ``inner_fit`` / ``inner_held_fit`` the
    same for the inner split (``None`` when not built). ``scale`` / ``inner_scale``: for
    one member ``c`` (trace of its raw fit block / n), for a combination ``sum w_m c_m``:
    the factor by which the l2 grid is divided."""

    fit: torch.Tensor
    held_fit: torch.Tensor
    inner_fit: torch.Tensor | None
    inner_held_fit: torch.Tensor | None
    scale: float
    inner_scale: float

    def add_(self, w: float, other: SplitKernels) -> None:
        """``self += w * other`` (blocks and scales). Raises ``ValueError`` when one has
        inner blocks and the other not."""
        if (self.inner_fit is None) != (other.inner_fit is None):
            raise ValueError("cannot add kernels with and without the inner split")
        self.fit.add_(other.fit, alpha=w)
        self.held_fit.add_(other.held_fit, alpha=w)
        if self.inner_fit is not None and other.inner_fit is not None:
            assert self.inner_held_fit is not None and other.inner_held_fit is not None
            self.inner_fit.add_(other.inner_fit, alpha=w)
            self.inner_held_fit.add_(other.inner_held_fit, alpha=w)
        self.scale += w * other.scale
        self.inner_scale += w * other.inner_scale

    def scaled(self, w: float) -> SplitKernels:
        """A new ``w * self``."""
        return SplitKernels(
            self.fit * w,
            self.held_fit * w,
            None if self.inner_fit is None else self.inner_fit * w,
            None if self.inner_held_fit is None else self.inner_held_fit * w,
            self.scale * w,
            self.inner_scale * w,
        )


def _standardize_(Z: torch.Tensor, n_stats: int) -> None:
    """Standardise the rows of float64 ``Z`` in place with the mean / std of its first
    ``n_stats`` rows (std 0 -> 1), then centre by the mean of those standardised rows."""
    mean, std = ro.standardizer(Z[:n_stats])
    Z.sub_(mean).div_(std)
    Z.sub_(Z[:n_stats].mean(dim=0))


def _trace_scale(K: torch.Tensor) -> float:
    """``trace(K) / n``; 1 for a zero kernel (every feature constant), left as it is."""
    c = float(K.diagonal().sum().item()) / max(1, K.shape[0])
    return c if c > 0 else 1.0


def split_kernels(
    feats: torch.Tensor,
    images: np.ndarray,
    split: BlendSplit,
    *,
    with_inner: bool,
    chunk_bytes: int = CHUNK_BYTES,
    tick: Callable[[], None] | None = None,
) -> SplitKernels:
    """One member's normalised kernels of ``split`` from its features.

    ``feats`` ``(len(images), d)`` float32 on the device, row ``i`` the features of image
    ``images[i]`` (sorted); every image of ``split`` must be there. The split's rows
    (images, or comparison features of pairs) are taken ``c`` columns at a time (``N x c``
    float32 within ``chunk_bytes``), converted to float64, standardised and centred with
    the fit rows' statistics (and, with ``with_inner`` and an inner split, a copy with the
    inner fit rows' statistics) and their products accumulated into the blocks; then each
    block set is divided by its trace scale (trace of its fit block / fit rows). ``tick()``
    runs before every chunk. Raises ``ValueError`` when an image is missing.
    """
    device = feats.device
    pos = np.searchsorted(images, split.rows)
    if np.any(pos >= len(images)) or np.any(images[np.minimum(pos, len(images) - 1)] != split.rows):
        raise ValueError(f"the features lack images of the {split.name} split")
    idx = torch.from_numpy(pos).to(device)
    kinds = split.kinds
    d = int(feats.shape[1]) * max(1, len(kinds))
    N, n = len(split.rows), split.n_fit
    opts: dict[str, Any] = {"dtype": torch.float64, "device": device}
    K = torch.zeros((n, n), **opts)
    Kh = torch.zeros((N - n, n), **opts)
    inner = split.inner if with_inner else None
    Ki = Kih = inner_rows = None
    nf = 0
    if inner is not None:
        nf = len(inner[0])
        inner_rows = torch.from_numpy(np.concatenate(inner)).to(device)
        Ki = torch.zeros((nf, nf), **opts)
        Kih = torch.zeros((len(inner[1]), nf), **opts)
    cols = pk.chunk_columns(N, d, chunk_bytes)
    for j0 in range(0, d, cols):
        if tick is not None:
            tick()
        j1 = min(d, j0 + cols)
        if kinds:
            Z = pk.comparison_chunk(feats, idx[:, 0], idx[:, 1], kinds, j0, j1).double()
        else:
            Z = feats[idx, j0:j1].double()
        if Ki is not None and Kih is not None and inner_rows is not None:
            # The inner split first, from the raw chunk: its own statistics, as
            # select_and_fit's grid search standardises the inner fit rows.
            Zi = Z[inner_rows]
            _standardize_(Zi, nf)
            Ki.addmm_(Zi[:nf], Zi[:nf].T)
            Kih.addmm_(Zi[nf:], Zi[:nf].T)
            del Zi
        _standardize_(Z, n)
        K.addmm_(Z[:n], Z[:n].T)
        Kh.addmm_(Z[n:], Z[:n].T)
        del Z
    c = _trace_scale(K)
    K /= c
    Kh /= c
    ci = 1.0
    if Ki is not None and Kih is not None:
        ci = _trace_scale(Ki)
        Ki /= ci
        Kih /= ci
    return SplitKernels(K, Kh, Ki, Kih, c, ci)


def combine(weights: Sequence[float], kernels: Sequence[SplitKernels]) -> SplitKernels:
    """A new ``sum_m w_m kernels_m`` over the members with ``w_m > 0`` (at least one)."""
    out: SplitKernels | None = None
    for w, k in zip(weights, kernels, strict=True):
        if w <= 0:
            continue
        if out is None:
            out = k.scaled(w)
        else:
            out.add_(w, k)
    if out is None:
        raise ValueError("a blend needs a positive weight")
    return out


def _added(total: SplitKernels | None, w: float, part: SplitKernels) -> SplitKernels:
    """``total + w * part`` (in place when there is a total already)."""
    if total is None:
        return part.scaled(w)
    total.add_(w, part)
    return total


def kernel_decision(
    kern: SplitKernels,
    y_fit: torch.Tensor,
    n_classes: int,
    l2: float,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Ridge decisions ``(m, C)`` float64 of the scored rows: the dual solution on
    ``kern.fit`` with ``l2 / kern.scale`` (``l2`` on the members' scale), intercept from
    the centred targets (:func:`workers.readout.ridge_kernel_decision`). ``y_fit``: class
    indices ``[0, n_classes)`` on the device. ``kern.fit`` is overwritten (its diagonal
    grows by the l2). Raises ``ValueError`` for a negative l2."""
    return ro.ridge_kernel_decision(
        kern.fit, kern.held_fit, y_fit, n_classes, l2 / kern.scale, check
    )


def _score(
    kern: SplitKernels,
    split: BlendSplit,
    l2: float | None,
    device: torch.device,
    check: Callable[[], None] | None,
) -> tuple[float, float]:
    """``(accuracy on the scored rows, l2 used)`` of ridge on ``kern`` (consumed): l2 given,
    or chosen on the inner split from :data:`workers.readout.RIDGE_GRID` divided by the
    inner scale (ties: the largest, as ``select_and_fit``), or 1.0 without an inner split."""
    y = torch.from_numpy(split.y).to(device)
    classes, y_fit = torch.unique(y[: split.n_fit], sorted=True, return_inverse=True)
    n_classes = int(classes.numel())
    if n_classes < 2:
        raise ValueError(f"need at least 2 distinct labels to fit a readout, got {n_classes}")
    with _oom_is_infeasible(device, f"solving the blend's ridge readout on {split.n_fit} rows"):
        if l2 is None:
            if split.inner is None or kern.inner_fit is None or kern.inner_held_fit is None:
                l2 = 1.0  # select_and_fit's neutral default when no row can be held out
            else:
                fi, hi = (torch.from_numpy(p).to(device) for p in split.inner)
                grid = [g / kern.inner_scale for g in ro.RIDGE_GRID]
                scores = ro.ridge_kernel_grid_scores(
                    kern.inner_fit, kern.inner_held_fit, y_fit[fi], y_fit[hi], n_classes, grid,
                    check,
                )  # fmt: skip
                l2 = ro.best_l2(list(zip(ro.RIDGE_GRID, scores, strict=True)))
        kern.inner_fit = kern.inner_held_fit = None  # freed before the solve
        decision = kernel_decision(kern, y_fit, n_classes, float(l2), check)
        pred = classes[decision.argmax(dim=1)]
        acc = float((pred == y[split.n_fit :]).double().mean().item())
    return acc, float(l2)


# -- weights --------------------------------------------------------------------------
def weight_candidates(k: int) -> list[tuple[float, ...]]:
    """The weight vectors ``weights="validation"`` tries, in tie-breaking order: uniform,
    then every pair at 1/2 - 1/2 (lowest indices first), then every member alone (a
    vertex of the simplex), without repeats: 1 + k (k - 1) / 2 + k vectors for ``k >= 3``
    (16 for 5 members). Raises ``ValueError`` for ``k < 1``."""
    if k < 1:
        raise ValueError(f"a blend needs at least one member, got {k}")
    out: list[tuple[float, ...]] = [tuple([1.0 / k] * k)]
    for i, j in itertools.combinations(range(k), 2):
        out.append(tuple(0.5 if m in (i, j) else 0.0 for m in range(k)))
    out += [tuple(1.0 if m == i else 0.0 for m in range(k)) for i in range(k)]
    seen: list[tuple[float, ...]] = []
    for w in out:
        if w not in seen:
            seen.append(w)
    return seen


def _fixed_l2(members: Sequence[Architecture], weights: Sequence[float]) -> float | None:
    """The weighted members' common fixed ``readout.l2``, else None (chosen)."""
    values = {a.readout.l2 for a, w in zip(members, weights, strict=True) if w > 0}
    if len(values) == 1:
        (only,) = values
        return only
    return None


# -- memory ---------------------------------------------------------------------------
def _kernel_bytes(split: BlendSplit, with_inner: bool) -> int:
    n, m = split.n_fit, split.n_held
    b = n * n + m * n
    if with_inner and split.inner is not None:
        nf, nh = len(split.inner[0]), len(split.inner[1])
        b += nf * nf + nh * nf
    return 8 * b


def _solve_bytes(split: BlendSplit) -> int:
    """The ridge solve's workspace: ``eigh`` of the inner kernel (V, workspace, ``Khf V``;
    as :func:`workers.pair_kernels.kernel_bytes`) or the Cholesky factor with the
    fallback's jittered copy and identity."""
    n = split.n_fit
    nf = len(split.inner[0]) if split.inner is not None else 0
    nh = len(split.inner[1]) if split.inner is not None else 0
    return int(max(8 * (3.5 * nf * nf + 2 * nh * nf), 8 * 3 * n * n))


def _chunk_bytes(split: BlendSplit, n_features: int, chunk_bytes: int) -> int:
    """One chunk of :func:`split_kernels`: ``N x c`` float32 within ``chunk_bytes`` (the
    gather, and a kind boundary's parts: 2 copies), its float64 copy and the inner rows'
    float64 copy."""
    N = len(split.rows)
    d = n_features * max(1, len(split.kinds))
    c = pk.chunk_columns(N, d, chunk_bytes)
    nfh = sum(len(p) for p in split.inner) if split.inner is not None else 0
    return int(c * (4 * 2 * N + 8 * N + 8 * nfh))


def blend_memory(
    reports: Sequence[ShapeReport],
    search: BlendSplit,
    tests: Sequence[BlendSplit],
    *,
    weights: str,
    with_inner: bool,
    batch_sizes: Sequence[int],
    device: torch.device | str,
    chunk_bytes: int = CHUNK_BYTES,
) -> MemoryEstimate:
    """Upper estimate of the bytes a :func:`blend` adds (on its device), by part.

    Held: the kernels (``uniform``: the running sums of every split plus one member's
    blocks of the largest split; ``validation``: the larger of every member's validation
    blocks plus one combination, and the test sums plus one member's test blocks) and the
    largest member's features (``uniform``: of every image either split uses). Stages, one
    at a time: a member's extraction batch (``batch_sizes``, one per member;
    :func:`workers.memory.extraction_bytes`), one kernel chunk, the ridge solve's
    workspace. Not counted: the images, torch itself."""
    k = len(reports)
    kb_search = _kernel_bytes(search, with_inner)
    kb_tests = [_kernel_bytes(s, with_inner) for s in tests]
    if weights == "uniform":
        kernels = kb_search + sum(kb_tests) + max([kb_search, *kb_tests])
        n_images = len(np.unique(np.concatenate([s.images for s in (search, *tests)])))
    else:
        kernels = max((k + 1) * kb_search, sum(kb_tests) + max(kb_tests))
        n_images = max(len(s.images) for s in (search, *tests))
    feats = max(4 * n_images * r.n_features for r in reports)
    extraction = max(
        extraction_bytes(r, bs, device) for r, bs in zip(reports, batch_sizes, strict=True)
    )
    splits = (search, *tests)
    return MemoryEstimate(
        held={"kernels": kernels, "features": feats},
        stages={
            "extraction": extraction,
            "kernel chunks": max(
                _chunk_bytes(s, r.n_features, chunk_bytes) for s in splits for r in reports
            ),
            "solve": max(_solve_bytes(s) for s in splits),
        },
    )


def _available_bytes() -> int | None:
    """The host's ``MemAvailable`` (``/proc/meminfo``); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory(est: MemoryEstimate, k: int, device: torch.device, budget: int | None) -> None:
    """``InfeasibleArchitecture`` naming the estimate when it exceeds ``budget`` (host bytes,
    on a CPU), the host's available memory (a CPU worker without ``--max-memory``: the
    ``n x n`` kernels of a large dataset would otherwise get the worker killed) or the
    device's free memory (a GPU)."""
    room: str | None = None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if est.total > free:
            room = f"{free / MiB:.0f} MiB free on {device}"
    elif budget is not None:
        if est.total > budget:
            room = f"{max(0, budget) / MiB:.0f} MiB this worker's --max-memory leaves for a trial"
    elif (available := _available_bytes()) is not None and est.total > available:
        room = f"{available / MiB:.0f} MiB available on this host"
    if room is not None:
        raise InfeasibleArchitecture(
            f"needs about {est.describe()} of memory for the blend of {k} member(s), more "
            f"than the {room}"
        )


# -- the blend ------------------------------------------------------------------------
def _blend_kind(members: Sequence[Architecture], readout: str | None) -> str:
    for arch in members:
        kind = readout or arch.readout.kind
        if kind not in ro.KINDS:
            raise ValueError(f"unknown readout {kind!r}; known: {ro.KINDS}")
        if kind != "ridge":
            raise ValueError(
                f"readout {kind!r} cannot be blended: a blend fits ridge on the combined "
                "kernel (logistic and svm are fitted on features, not kernels)"
            )
    return "ridge"


def blend(
    protocol: str,
    members: Sequence[Architecture],
    ds: Dataset,
    *,
    weights: Literal["uniform", "validation"] = "uniform",
    readout: str | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_features: int = 100_000,
    memory_budget: int | None = None,
    tick: Callable[[], object] | None = None,
    deadline: float | None = None,
    max_gflops_per_image: float = DEFAULT_MAX_GFLOPS_PER_IMAGE,
    max_activation_mb_per_image: float = DEFAULT_MAX_ACTIVATION_MB_PER_IMAGE,
    train_per_class: int | None = None,
) -> BlendResult:
    """Blend ``members`` on ``ds`` with ``protocol`` (``screen`` or ``pairs``); see the
    module docstring for what is computed. Called by the worker daemon for a trial of
    source ``blend``; the options are the study's, as for its other trials.

    Checks first, before any data are touched: the protocol, ``weights``, the readout
    (``readout`` overrides the members' own kind; only ridge), every member with
    :func:`search_space.arch.validate` (``max_features`` and the cost caps) and the
    data's channels, then the memory estimate (:func:`blend_memory`) against
    ``memory_budget`` (bytes this job may add, on a CPU) or the GPU's free memory.
    ``train_per_class`` (screen; the daemon passes a scheduled study's ``max``) caps the
    fit rows per class as the members' top-rung and final evaluations did.
    ``tick()`` runs before every extraction batch and kernel chunk; it may raise, or return
    ``"stop"`` / ``"prune"`` (:class:`~workers.outcomes.Stopped` /
    :class:`~workers.outcomes.Pruned`) as the daemon's tick does; past ``deadline`` (a
    ``time.monotonic()`` value) :class:`~workers.outcomes.TimedOut`. Raises
    ``ValueError`` for a bad request (unknown protocol / weights / readout, no members,
    channel mismatch, no test split, no pairs) and ``InfeasibleArchitecture`` for a member
    that is infeasible, a blend over the memory estimate, or out of memory.
    """
    t0 = time.perf_counter()
    if protocol not in BLEND_PROTOCOLS:
        raise ValueError(f"unknown blend protocol {protocol!r}; known: {BLEND_PROTOCOLS}")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"unknown blend weights {weights!r}; known: {WEIGHT_MODES}")
    members = list(members)
    if not members:
        raise ValueError("a blend needs at least one member")
    _blend_kind(members, readout)
    reports = [
        validate(
            a,
            max_features=max_features,
            max_gflops_per_image=max_gflops_per_image,
            max_activation_mb_per_image=max_activation_mb_per_image,
        )
        for a in members
    ]
    for arch in members:
        _check_data(arch, ds)
    device = torch.device(device)
    control = _Control(None, tick, deadline)  # type: ignore[arg-type]
    search, tests = blend_splits(protocol, ds, validation_fraction, seed, train_per_class)
    with_inner = any(a.readout.l2 is None for a in members)
    bss = [default_batch_size(r, device) for r in reports]
    est = blend_memory(
        reports, search, tests, weights=weights, with_inner=with_inner, batch_sizes=bss,
        device=device,
    )  # fmt: skip
    while memory_budget is not None and device.type == "cpu" and max(bss) > 1:
        if est.total <= memory_budget:
            break
        bss = [max(1, b // 2) for b in bss]  # smaller extraction batches first, as evaluate
        est = blend_memory(
            reports, search, tests, weights=weights, with_inner=with_inner, batch_sizes=bss,
            device=device,
        )  # fmt: skip
    _check_memory(est, len(members), device, memory_budget)

    k = len(members)
    extract_s = 0.0

    def features(i: int, images: np.ndarray) -> torch.Tensor:
        nonlocal extract_s
        with _oom_is_infeasible(device, "building the model"):
            model = build_model(members[i], device=device, max_features=max_features)
        feats, ext = _extract_timed(model, ds, images, device, bss[i], control)
        extract_s += float(ext["extract_seconds"])
        return feats

    def kernels(feats: torch.Tensor, images: np.ndarray, split: BlendSplit) -> SplitKernels:
        what = f"building the blend kernels of the {split.name} split ({len(split.rows)} rows)"
        with _oom_is_infeasible(device, what):
            return split_kernels(feats, images, split, with_inner=with_inner, tick=control.tick)

    member_values: list[float] = []
    candidates: list[list[Any]] = []
    sums: list[SplitKernels | None] = [None] * len(tests)
    if weights == "uniform":
        chosen = tuple([1.0 / k] * k)
        value_sum: SplitKernels | None = None
        images = np.unique(np.concatenate([s.images for s in (search, *tests)]))
        for i, arch in enumerate(members):
            feats = features(i, images)
            mk = kernels(feats, images, search)
            value_sum = _added(value_sum, chosen[i], mk)
            member_values.append(_score(mk, search, arch.readout.l2, device, control.check)[0])
            del mk
            for t, split in enumerate(tests):
                sums[t] = _added(sums[t], chosen[i], kernels(feats, images, split))
            del feats
        assert value_sum is not None
        value, l2 = _score(value_sum, search, _fixed_l2(members, chosen), device, control.check)
        del value_sum
    else:
        per: list[SplitKernels] = []
        images = search.images
        for i in range(k):
            feats = features(i, images)
            per.append(kernels(feats, images, search))
            del feats
        scored: list[tuple[float, float]] = []
        for w in weight_candidates(k):
            control.tick()
            acc, used = _score(combine(w, per), search, _fixed_l2(members, w), device,
                               control.check)  # fmt: skip
            scored.append((acc, used))
            candidates.append([list(w), acc])
        del per
        cands = weight_candidates(k)
        best = max(range(len(cands)), key=lambda i: (scored[i][0], -i))
        chosen, (value, l2) = cands[best], scored[best]
        member_values = [scored[cands.index(tuple(float(m == i) for m in range(k)))][0]
                         for i in range(k)]  # fmt: skip
        images = np.unique(np.concatenate([s.images for s in tests]))
        for i in range(k):
            if chosen[i] <= 0:
                continue  # a member the weights dropped is not extracted again
            feats = features(i, images)
            for t, split in enumerate(tests):
                sums[t] = _added(sums[t], chosen[i], kernels(feats, images, split))
            del feats
    test_l2: list[float] = []
    test_acc: list[float] = []
    for t, split in enumerate(tests):
        control.tick()
        kern = sums[t]
        assert kern is not None
        sums[t] = None
        acc, used = _score(kern, split, _fixed_l2(members, chosen), device, control.check)
        del kern
        test_acc.append(acc)
        test_l2.append(used)
    _sync(device)
    test_value = float(np.mean(test_acc))
    metrics: dict[str, Any] = {
        "protocol": protocol,
        "blend": True,
        "readout": "ridge",
        "members": k,
        "weights_mode": weights,
        "weights": list(chosen),
        "member_values": member_values,
        "best_member_value": max(member_values),
        "l2": l2,
        "split": search.name,
        "n_fit": search.n_fit,
        "n_scored": search.n_held,
        "member_n_features": [r.n_features for r in reports],
        "extract_seconds": extract_s,
        "memory_estimate_mb": round(est.total / MiB, 1),
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    if candidates:
        metrics["weight_candidates"] = candidates
    if protocol == "pairs":
        K = len(test_acc)
        stderr = float(np.std(test_acc, ddof=1) / math.sqrt(K)) if K > 1 else 0.0
        metrics.update(folds=test_acc, stderr=stderr, test_l2=test_l2, test_split="view2")
    else:
        metrics.update(test_l2=test_l2[0], test_split="test", n_test=tests[0].n_held)
    return BlendResult(float(value), test_value, _json_safe(metrics))
