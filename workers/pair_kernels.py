"""Ridge kernels of LFW comparison features, built in column chunks (bounded memory).

The View 2 final (:mod:`workers.pairs`) scores each fold with a ridge readout fitted on the
other folds, on ``len(kinds) x n_features`` comparison columns per pair (102,400 for the
FG11 preset): materialising those matrices costs ~2.5 GB per copy at LFW's size. The dual
ridge only needs Gram matrices of the standardised rows, and standardisation is per column,
so this module builds them column chunk by column chunk, from the per-image feature matrix
``feats`` and the pair index, and never holds more than one chunk of comparison features:

* :func:`comparison_chunk`: columns ``[j0, j1)`` of
  :func:`workers.pairs.pair_features` (same elementwise operations: the same bits);
* :func:`fold_kernels`: one pass over the chunks of one fold; per chunk it standardises
  exactly as :mod:`workers.readout` does (column mean / population std of the rows that
  matter, std 0 -> 1, then centring by the mean of the standardised rows) and adds the
  chunk's share of each Gram matrix: inner fit x inner fit and inner held-out x inner fit
  (statistics of the inner fit rows, for the l2 grid) and train x train and test x train
  (statistics of all training rows, for the refit).

Precision: each chunk's product runs in the work dtype (float32, as ``fit_ridge``'s Gram)
and is accumulated into float64 kernels. ``fit_ridge`` forms the whole float32 product
and then converts it to float64, so this accumulation is at least as accurate; the
results agree up to rounding.

Memory (``N`` = training + test rows, ``n`` training rows, ``nf`` / ``nh`` inner fit /
held-out rows, ``m`` test rows, ``c`` chunk columns): the float64 kernels
``8 (nf^2 + nh nf + n^2 + m n)`` bytes, plus per chunk at most ``4 c (3 N + nf + nh)``
bytes of comparison features and a block of products (:data:`BLOCK_BYTES`);
:func:`kernel_bytes` adds these up, with the solve's workspace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .readout import standardizer

__all__ = [
    "BLOCK_BYTES",
    "CHUNK_BYTES",
    "FoldKernels",
    "chunk_columns",
    "comparison_chunk",
    "fold_kernels",
    "kernel_bytes",
]

# Bytes of one chunk of comparison features (all rows of a fold x c columns, float32).
# 64 MiB keeps the transient small next to the kernels (~0.45 GB at LFW's size) while each
# chunk's product is still a large matmul (5,400 x ~2,800 x 5,400 at LFW's size: ~1/3 s at
# ~450 GFLOP/s on 2 cores), so chunking costs little speed; it also bounds how long a
# deadline / stop waits (one chunk).
CHUNK_BYTES = 64 << 20
# Each chunk's products are formed a block of kernel rows at a time: a float32 product of
# the whole n x n kernel (117 MB at LFW's size) and the float64 copy that an in-place add
# of float32 into float64 makes (233 MB, measured) would outweigh the chunk itself.
BLOCK_BYTES = 16 << 20

Tick = Callable[[], None]


@dataclass
class FoldKernels:
    """The float64 Gram matrices of one fold (see the module docstring).

    ``train`` ``(n, n)`` and ``test_train`` ``(m, n)``: training rows standardised with their
    own statistics and centred, test rows under the same transform. ``fit`` ``(nf, nf)``
    and ``held_fit`` ``(nh, nf)``: the same for the inner split (inner fit statistics);
    ``None`` when no inner split was asked for. ``chunk_columns``: columns per chunk used.
    """

    train: torch.Tensor
    test_train: torch.Tensor
    fit: torch.Tensor | None
    held_fit: torch.Tensor | None
    chunk_columns: int


def chunk_columns(n_rows: int, n_columns: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Columns per chunk so that ``n_rows x c`` float32 is at most ``chunk_bytes`` (at least
    1, at most ``n_columns``)."""
    return int(max(1, min(n_columns, chunk_bytes // max(1, 4 * n_rows))))


def _one_kind(f1: torch.Tensor, f2: torch.Tensor, kind: str) -> torch.Tensor:
    """``pair_features`` of one kind, computed in place in ``f1`` (a fresh gather): the same
    elementwise operations in the same order, so the same bits."""
    if kind == "mult":
        return f1.mul_(f2)
    if kind == "absdiff":
        return f1.sub_(f2).abs_()
    if kind == "sqdiff":
        d = f1.sub_(f2)
        return d.mul_(d)
    if kind == "sqrtabsdiff":
        return f1.sub_(f2).abs_().sqrt_()
    raise ValueError(f"unknown pair feature {kind!r}")


def comparison_chunk(
    feats: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    kinds: Sequence[str],
    j0: int,
    j1: int,
) -> torch.Tensor:
    """Columns ``[j0, j1)`` of ``pair_features(feats[left], feats[right], kinds)``.

    ``feats`` ``(n_images, D)``; ``left`` / ``right`` ``(N,)`` int64 row indices on its
    device. Column ``j`` of the comparison features is kind ``kinds[j // D]`` of feature
    ``j % D``. Returns a new ``(N, j1 - j0)`` tensor in ``feats``' dtype, equal bit for bit
    to the same columns of :func:`workers.pairs.pair_features`. Raises ``ValueError`` for a
    bad range or an unknown kind.
    """
    D = feats.shape[1]
    if not 0 <= j0 < j1 <= D * len(kinds):
        raise ValueError(f"bad column range [{j0}, {j1}) for {len(kinds)} x {D} columns")
    parts: list[tuple[int, torch.Tensor]] = []
    for q, kind in enumerate(kinds):
        a, b = max(j0, q * D), min(j1, (q + 1) * D)
        if a >= b:
            continue
        cols = slice(a - q * D, b - q * D)
        part = _one_kind(feats[left, cols], feats[right, cols], kind)
        parts.append((a - j0, part))
    if len(parts) == 1:
        return parts[0][1]
    out = torch.empty((left.shape[0], j1 - j0), dtype=feats.dtype, device=feats.device)
    for offset, part in parts:
        out[:, offset : offset + part.shape[1]] = part
    return out


def _accumulate(K: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> None:
    """``K += A @ B.T`` (float64 ``K``, float32 ``A`` / ``B``), a block of rows at a time so
    that the product and its float64 copy stay within about :data:`BLOCK_BYTES`."""
    step = max(1, BLOCK_BYTES // (12 * max(1, B.shape[0])))
    for i in range(0, A.shape[0], step):
        K[i : i + step].add_(A[i : i + step] @ B.T)


def _standardize_(Z: torch.Tensor, n_stats: int) -> None:
    """Standardise all rows of ``Z`` in place with the column mean / std of its first
    ``n_stats`` rows, then centre them by the mean of those standardised rows: what
    ``fit_ridge`` does to its training rows and (through ``b``) to the rows it scores, in
    the same operations (readout's ``standardizer``, subtract, divide, subtract)."""
    mean, std = standardizer(Z[:n_stats])
    Z.sub_(mean).div_(std)
    Z.sub_(Z[:n_stats].mean(dim=0))


def fold_kernels(
    feats: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    n_train: int,
    kinds: Sequence[str],
    *,
    inner: tuple[torch.Tensor, torch.Tensor] | None,
    chunk_cols: int,
    tick: Tick | None = None,
) -> FoldKernels:
    """The ridge kernels of one fold, in one pass over column chunks.

    Row ``i`` of the fold is the pair ``(left[i], right[i])`` (indices into ``feats``); the
    first ``n_train`` rows are the training rows, the rest the test rows. ``inner``:
    ``(fit, held)`` int64 positions among the training rows (the inner split of
    :func:`workers.readout.select_and_fit`), or ``None`` to skip the grid kernels.
    ``chunk_cols``: columns per chunk (:func:`chunk_columns`). ``tick()`` runs before every
    chunk (it may raise to abandon the fold). The result equals, up to rounding, the Gram
    matrices ``select_and_fit(kind="ridge")`` forms from the materialised comparison matrix.
    """
    N = int(left.shape[0])
    d = feats.shape[1] * len(kinds)
    m = N - n_train
    if not 0 < n_train <= N or chunk_cols < 1:
        raise ValueError(f"need 0 < n_train <= {N} rows and chunk_cols >= 1")
    opts = {"dtype": torch.float64, "device": feats.device}
    K = torch.zeros((n_train, n_train), **opts)
    Kte = torch.zeros((m, n_train), **opts)
    Kf = Khf = inner_rows = None
    nf = 0
    if inner is not None:
        fit, held = inner
        nf = len(fit)
        inner_rows = torch.cat([fit, held])  # one gather per chunk: fit rows, then held out
        Kf = torch.zeros((nf, nf), **opts)
        Khf = torch.zeros((len(held), nf), **opts)
    for j0 in range(0, d, chunk_cols):
        if tick is not None:
            tick()
        Z = comparison_chunk(feats, left, right, kinds, j0, min(d, j0 + chunk_cols))
        if Kf is not None and Khf is not None and inner_rows is not None:
            # Inner split first (Z is still raw): its own statistics, as _ridge_grid_scores.
            Zi = Z[inner_rows]
            _standardize_(Zi, nf)
            Xc = Zi[:nf]
            _accumulate(Kf, Xc, Xc)  # float32 products, accumulated in float64
            _accumulate(Khf, Zi[nf:], Xc)
            del Zi, Xc
        _standardize_(Z, n_train)
        Xc = Z[:n_train]
        _accumulate(K, Xc, Xc)
        _accumulate(Kte, Z[n_train:], Xc)
        del Z, Xc
    return FoldKernels(K, Kte, Kf, Khf, chunk_cols)


def kernel_bytes(n_train: int, n_test: int, n_fit: int, n_held: int, chunk_cols: int) -> int:
    """Upper estimate of :func:`fold_kernels`' peak bytes beyond ``feats``, and of the
    ridge solve that follows (:func:`workers.readout.ridge_kernel_grid_scores`: ``eigh`` of
    the inner kernel, measured at 3.2 more copies of it with the LAPACK workspace; then
    :func:`~workers.readout.ridge_kernel_decision`: a Cholesky factor of ``n_train^2``, and
    the fallback's jittered copy and identity if the factorisation fails)."""
    n, m, nf, nh = n_train, n_test, n_fit, n_held
    N = n + m
    kernels = 8 * (n * n + m * n + nf * nf + nh * nf)
    # Chunk pass: Z and the gather of the second index (2 N c), the inner copy
    # (nf + nh) c, a kind boundary's parts (N c more), one block of products.
    chunk = 4 * chunk_cols * (3 * N + nf + nh) + 2 * BLOCK_BYTES
    grid = int(8 * (3.5 * nf * nf + 2 * nh * nf))  # eigh: V + workspace; A = Khf V
    solve = 8 * 3 * n * n  # Cholesky factor; on failure a jittered copy and an identity
    return int(kernels + max(chunk, grid, solve))
