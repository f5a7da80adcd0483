"""The four operations of the model family (docs/design.md section 2) as batched torch modules.

Layout is ``(N, C, H, W)`` everywhere; every op works in "valid" mode (a ``k x k`` window
shrinks a side by ``k - 1``; a strided pool keeps every ``stride``-th window). No op loops
over pixels, filters or channels in Python, and all of them run unchanged on CPU and CUDA.

Precision contract: in float32 every op matches a float64 NumPy evaluation of its formula
to ~1e-6 relative error (tests/search_space/test_ops.py checks <= 1e-5), which is what
"reproduces sthor/cnnrandom to float32 precision" needs. Two things make that hold:

* ``FBCorr`` turns TF32 off for its convolution on CUDA (cuDNN would otherwise round the
  operands to a 10-bit mantissa, ~1e-3 relative error). The opt-in fast path is to build
  the model in bfloat16/float16, not to let float32 silently lose precision.
* ``LPool`` and ``LNorm`` always reduce in (at least) float32: a bf16/fp16 input is upcast,
  reduced, and cast back, so ``x**10`` and sums of squares cannot overflow a 16-bit type.
  The centred ``LNorm`` computes its local statistics in float64 (see there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Added to the divisor of ``LNorm`` (sthor ``lnorm.py`` EPSILON).
LNORM_EPSILON = 1e-4


def valid_size(side: int, window: int, stride: int = 1) -> int:
    """Output side of a "valid" window op: ``(side - window) // stride + 1``, 0 if it does
    not fit."""
    return (side - window) // stride + 1 if side >= window else 0


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a reduction runs in: float64 stays float64, anything narrower -> float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- filters -----------------------------------------------------------------------------
def make_filters(n_filters: int, size: int, depth: int, seed: int) -> np.ndarray:
    """Random filter bank exactly as sthor / cnnrandom generate it.

    ``RandomState(seed).uniform(-1, 1, size=(n_filters, size, size, depth))`` in float64,
    then every filter minus its mean and divided by its L2 norm, then cast to float32.
    Returns a C-contiguous float32 array of shape ``(n_filters, size, size, depth)``. Always
    computed on the CPU with NumPy, so a seed gives the same filters on every device.
    """
    if n_filters < 1 or size < 1 or depth < 1:
        shape = (n_filters, size, size, depth)
        raise ValueError(f"filter bank shape must be positive, got {shape}")
    fb = np.random.RandomState(seed).uniform(-1.0, 1.0, size=(n_filters, size, size, depth))
    fb = fb - fb.mean(axis=(1, 2, 3), keepdims=True)
    norms = np.sqrt((fb**2).sum(axis=(1, 2, 3), keepdims=True))
    # A 1x1x1 filter is zero after removing its mean: its norm is 0. sthor asserts on this;
    # we leave such a filter at zero rather than fill it with NaN.
    fb = fb / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(fb.astype(np.float32))


# -- fbcorr ------------------------------------------------------------------------------
@contextmanager
def ieee_fp32_convolutions() -> Iterator[None]:
    """Within the block, cuDNN float32 convolutions use full float32 (no TF32).

    Only the TF32 setting for convolutions is touched and it is restored on exit (not
    ``torch.backends.cudnn.flags``, which would also reset ``benchmark`` and
    ``deterministic``). torch >= 2.9 has a per-op precision API; older versions have the
    single ``allow_tf32`` flag. The setting is process-global: do not run float32 models
    from several threads that rely on different TF32 settings.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None:
        previous = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
    else:  # pragma: no cover - torch < 2.9
        previous_flag = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous_flag


class FBCorr(nn.Module):
    """Correlation ("valid", stride 1) with a bank of ``k`` filters of ``fs x fs x depth``.

    ``filters`` is in sthor's layout ``(k, fs, fs, depth)``; it is stored as the conv2d
    weight ``(k, depth, fs, fs)``. torch's conv2d is a cross-correlation, which is what
    sthor's fbcorr computes (no kernel flip). ``learn=True`` makes the weight trainable
    (the ``train`` protocol); otherwise it is a frozen Parameter, so ``.to(device)`` and
    ``state_dict`` treat both cases alike.
    """

    def __init__(
        self,
        filters: np.ndarray | torch.Tensor,
        learn: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        fb = filters.detach() if torch.is_tensor(filters) else torch.from_numpy(np.asarray(filters))
        if fb.ndim != 4 or fb.shape[1] != fb.shape[2]:
            raise ValueError(f"filters must be (k, fs, fs, depth), got {tuple(fb.shape)}")
        weight = fb.permute(0, 3, 1, 2).contiguous().to(dtype)
        self.weight = nn.Parameter(weight, requires_grad=learn)

    @property
    def n_filters(self) -> int:
        return int(self.weight.shape[0])

    @property
    def size(self) -> int:
        return int(self.weight.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype == torch.float32:
            # cuDNN allows TF32 for float32 convolutions by default: ~1e-3 relative error,
            # which would break the float32-faithfulness contract of the model family.
            with ieee_fp32_convolutions():
                return F.conv2d(x, self.weight)
        return F.conv2d(x, self.weight)

    def extra_repr(self) -> str:
        k, depth, fs, _ = self.weight.shape
        return f"{k} x {fs}x{fs}x{depth}, learn={self.weight.requires_grad}"


# -- activation --------------------------------------------------------------------------
class Activation(nn.Module):
    """Clamp to ``[min_out, max_out]``; an infinite bound is no bound (``min_out=0,
    max_out=inf`` is ReLU, ``-inf, inf`` the identity)."""

    def __init__(self, min_out: float = 0.0, max_out: float = math.inf) -> None:
        super().__init__()
        if not min_out < max_out:
            raise ValueError(f"min_out < max_out must hold, got {min_out} >= {max_out}")
        self.min_out = None if math.isinf(min_out) else float(min_out)
        self.max_out = None if math.isinf(max_out) else float(max_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.min_out is None and self.max_out is None:
            return x  # torch.clamp refuses two None bounds
        return torch.clamp(x, min=self.min_out, max=self.max_out)

    def extra_repr(self) -> str:
        lo = "-inf" if self.min_out is None else f"{self.min_out:g}"
        hi = "inf" if self.max_out is None else f"{self.max_out:g}"
        return f"[{lo}, {hi}]"


# -- lpool -------------------------------------------------------------------------------
class LPool(nn.Module):
    """``(sum_{size x size window} x^order)^(1/order)``, every ``stride``-th window, per
    channel. Output side ``(in - size) // stride + 1``.

    ``order == 1`` is a plain box sum: negative inputs stay negative (as in sthor). For any
    other order the power is taken of ``|x|`` (equal to sthor for even orders and for
    non-negative inputs, and defined for fractional orders).

    Numerics: before the power each (sample, channel) map is divided by a power of two
    ``2^e >= max |x|`` and the result multiplied back. Scaling by a power of two is exact,
    and it keeps ``|x|^order`` in ``[0, 1]`` so ``order=10`` cannot overflow float32 (it would
    for ``|x| > 7e3``). Zeros get an exactly zero output and a finite (zero) gradient.
    The scale is per map, not per window: for a large order, a window whose values all lie
    below ~3e-4 of its map's largest ``|x|`` has ``(x / 2^e)^order`` in float32's subnormal
    range and loses relative (not absolute) precision. Its output is then below 3e-4 of the
    map's largest output; sthor's unscaled float32 ``x**order`` loses such values as well.
    """

    def __init__(self, size: int, order: float = 1.0, stride: int = 2) -> None:
        super().__init__()
        if size < 1 or stride < 1 or not order > 0:
            raise ValueError(
                f"need size >= 1, stride >= 1, order > 0; got {size}, {stride}, {order}"
            )
        self.size = int(size)
        self.order = float(order)
        self.stride = int(stride)

    def _box_sum(self, x: torch.Tensor) -> torch.Tensor:
        # avg_pool2d is a batched box filter; times the window area it is the window sum.
        return F.avg_pool2d(x, self.size, self.stride) * float(self.size * self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        x = x.to(_reduce_dtype(x.dtype))
        if self.order == 1.0:
            return self._box_sum(x).to(out_dtype)
        a = x.abs()
        # The scale does not change the value, only the rounding; detaching it keeps the
        # gradient the gradient of the formula (d out / d scale is 0 analytically).
        m = a.detach().amax(dim=(2, 3), keepdim=True)
        scale = torch.where(m > 0, torch.exp2(torch.ceil(torch.log2(m))), torch.ones_like(m))
        y = a / scale
        # "double where": pow(0, p) has an infinite derivative for p < 1; evaluating the pow
        # on 1 where y == 0 keeps the backward finite, and the outer where gives exact zeros.
        pos = y > 0
        yp = torch.where(pos, torch.where(pos, y, 1.0) ** self.order, 0.0)
        s = self._box_sum(yp)
        # Same trick for the root: s^(1/p) has an infinite derivative at s == 0 for p > 1.
        spos = s > 0
        root = torch.where(spos, torch.where(spos, s, 1.0) ** (1.0 / self.order), 0.0)
        return (root * scale).to(out_dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, order={self.order:g}, stride={self.stride}"


# -- lnorm -------------------------------------------------------------------------------
class LNorm(nn.Module):
    """Divisive normalisation over ``size x size x C`` neighbourhoods (sthor ``lcdnorm3``).

    With ``n = size * size * C``, ``S`` the local sum and ``Q`` the local sum of squares
    over the neighbourhood of each "valid" position, and ``x_c`` the input at its centre
    (offset ``size // 2``)::

        num = x_c - S / n                      if remove_mean else x_c
        div = sqrt(max(Q - S^2 / n, 0)) + 1e-4  if remove_mean else sqrt(Q) + 1e-4
        num, div = stretch * num, stretch * div
        div = 1 where div < threshold + 1e-4
        out = num / div

    Output side ``in - size + 1``. Reductions run in float32 (or float64 for a float64
    input): a bf16/fp16 input is upcast and the result cast back. With ``remove_mean`` the
    local sums run in float64, because ``Q - S^2/n`` is ill-conditioned in float32.
    """

    def __init__(
        self,
        size: int,
        remove_mean: bool = False,
        stretch: float = 1.0,
        threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if size < 1 or not stretch > 0 or threshold < 0:
            raise ValueError(
                f"need size >= 1, stretch > 0, threshold >= 0; got {size}, {stretch}, {threshold}"
            )
        self.size = int(size)
        self.remove_mean = bool(remove_mean)
        self.stretch = float(stretch)
        self.threshold = float(threshold)

    def _box_sum(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.size, 1) * float(self.size * self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        x = x.to(_reduce_dtype(x.dtype))
        b = self.size
        n = float(b * b * x.shape[1])
        h, w = x.shape[-2] - b + 1, x.shape[-1] - b + 1
        num = x[:, :, b // 2 : b // 2 + h, b // 2 : b // 2 + w]
        # Sum over channels first, then a 2-D box filter: the b x b x C neighbourhood sums.
        if self.remove_mean:
            # Q - S^2/n cancels catastrophically where the local mean is large against the
            # local spread (e.g. [0, 1] pixels in a flat region): in float32 the divisor
            # would lose most of its digits there. The statistics therefore run in float64.
            # They are per-pixel channel sums plus single-channel box sums, so this costs
            # one float64 copy of x and few FLOPs; the result is cast back.
            x64 = x.to(torch.float64)
            s = self._box_sum(x64.sum(dim=1, keepdim=True))
            ssq = self._box_sum((x64 * x64).sum(dim=1, keepdim=True))
            var = (ssq - s * s / n).clamp_min(0.0).to(x.dtype)
            num = num - (s / n).to(x.dtype)
        else:
            # A sum of squares has no cancellation: float32 keeps its relative precision.
            var = self._box_sum((x * x).sum(dim=1, keepdim=True))
        # sqrt'(0) is infinite: evaluate sqrt on 1 where var == 0 so the backward stays
        # finite (the forward is exactly sqrt(var) either way).
        vpos = var > 0
        div = torch.where(vpos, torch.sqrt(torch.where(vpos, var, 1.0)), 0.0) + LNORM_EPSILON
        if self.stretch != 1.0:
            num = num * self.stretch
            div = div * self.stretch
        div = torch.where(div < self.threshold + LNORM_EPSILON, torch.ones_like(div), div)
        return (num / div).to(out_dtype)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, remove_mean={self.remove_mean}, "
            f"stretch={self.stretch:g}, threshold={self.threshold:g}"
        )
