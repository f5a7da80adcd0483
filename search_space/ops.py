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

Speed (screening runs these under ``inference_mode``): ``LPool`` and ``LNorm`` have a fused
path, taken whenever autograd does not record their input, with as few passes over a map
as torch's primitives allow: one box-sum pass each (a depthwise convolution with a ones
kernel on the CPU, separable sums for the normalisation's one-channel statistics), powers
without ``pow`` where the order is an integer, all per-pixel factors computed on
one-channel maps, in-place work on the tensors the op owns, and channels-last maps on the
CPU. When autograd records the input (the ``train`` protocol with learned filters), the
formulas run as written, with the guards that keep their backward finite. The tests check
both paths against the same references.
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
        if x.device.type == "cpu" and x.shape[1] > 1:
            # oneDNN computes in a blocked channels-last layout: a channels-last input (as
            # the lnorm writes it) and output save its reorders, ~1.3-2x on fbcorr layers.
            x = x.contiguous(memory_format=torch.channels_last)
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
    max_out=inf`` is ReLU, ``-inf, inf`` the identity).

    ``forward(x, inplace=True)`` clamps ``x`` itself when no gradient flows through it (the
    model passes it for the fbcorr output it owns); otherwise a new tensor is returned.
    """

    def __init__(self, min_out: float = 0.0, max_out: float = math.inf) -> None:
        super().__init__()
        if not min_out < max_out:
            raise ValueError(f"min_out < max_out must hold, got {min_out} >= {max_out}")
        self.min_out = None if math.isinf(min_out) else float(min_out)
        self.max_out = None if math.isinf(max_out) else float(max_out)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if self.min_out is None and self.max_out is None:
            return x  # torch.clamp refuses two None bounds
        if inplace and not _needs_grad(x):
            return x.clamp_(min=self.min_out, max=self.max_out)
        return torch.clamp(x, min=self.min_out, max=self.max_out)

    def extra_repr(self) -> str:
        lo = "-inf" if self.min_out is None else f"{self.min_out:g}"
        hi = "inf" if self.max_out is None else f"{self.max_out:g}"
        return f"[{lo}, {hi}]"


# -- shared helpers of lpool and lnorm ---------------------------------------------------
def _needs_grad(x: torch.Tensor) -> bool:
    """True when autograd records ops on ``x``: the differentiable (unfused) formulas run
    then; otherwise (``torch.no_grad`` / ``inference_mode``, or nothing requires a
    gradient) the fused paths, which work in place on the tensors they own."""
    return torch.is_grad_enabled() and x.requires_grad


def _box_sum(x: torch.Tensor, size: int, stride: int = 1) -> torch.Tensor:
    """Sum over every ``size x size`` window (every ``stride``-th one), per channel, "valid".

    One pass, differentiable, in the input's dtype and memory format:

    * float32 on the CPU: a depthwise convolution with a ones kernel (oneDNN's depthwise
      kernels; ~5x faster than ``avg_pool2d`` on ``(N, C, H, W)`` maps, and fastest on
      channels-last ones);
    * otherwise (float64, CUDA): ``avg_pool2d`` with ``divisor_override=1``, a window sum.

    Both add the ``size**2`` terms of a window in float32 (float64): the error is at most
    ``size**2 * eps * sum |terms|``, and an all-zero window gives exactly 0.
    """
    if x.dtype == torch.float32 and x.device.type == "cpu":
        c = x.shape[1]
        ones = torch.ones((c, 1, size, size), dtype=x.dtype, device=x.device)
        return F.conv2d(x, ones, stride=stride, groups=c)
    return F.avg_pool2d(x, size, stride, divisor_override=1)


def _plane_box_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """``_box_sum(x, size, 1)`` of a one-channel ``(N, 1, H, W)`` map (any dtype), as
    separable sums: ``size - 1`` shifted adds along each axis instead of ``size**2``
    terms per output. Small outputs take ``avg_pool2d`` (one call instead of ``2 * size``
    costs less there; ``avg_pool2d`` is ~0.3 ns per term, a call ~1.5 us)."""
    if size == 1:
        return x
    oh, ow = x.shape[-2] - size + 1, x.shape[-1] - size + 1
    if x.shape[0] * oh * ow * size <= 1 << 14:
        return F.avg_pool2d(x, size, 1, divisor_override=1)
    acc = x[..., :, 0:ow] + x[..., :, 1 : 1 + ow]
    for j in range(2, size):
        acc += x[..., :, j : j + ow]
    out = acc[..., 0:oh, :] + acc[..., 1 : 1 + oh, :]
    for i in range(2, size):
        out += acc[..., i : i + oh, :]
    return out


def _channels_last_helps(x: torch.Tensor) -> bool:
    """Channels-last output on the CPU for maps of 2+ channels: oneDNN's convolutions
    (fbcorr, the pooling box sums) run fastest on it, channel reductions read contiguous
    rows, and the final (H, W, C) flatten is a view."""
    return x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > 1


def _is_integer_power(order: float) -> bool:
    return order == int(order) and 2 <= order <= 64


def _int_power(y: torch.Tensor, order: int, owned: bool) -> torch.Tensor:
    """``y ** order`` by repeated squaring (square-and-multiply: for order 10, three
    squarings and one multiply, ~4x faster than ``pow``), in place in ``y`` if ``owned``.
    The relative error is below ``order * eps``; after the ``1/order`` root, below ``eps``."""
    result: torch.Tensor | None = None
    while True:
        if order & 1:
            if order == 1:
                if result is None:
                    return y if owned else y.clone()
                return result.mul_(y)
            result = y.clone() if result is None else result.mul_(y)
        order >>= 1
        y = y.square_() if owned else y.square()
        owned = True


def _map_absmax(x: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
    """``max |x|`` per (sample, channel) map, shape ``(N, C, 1, 1)``: ``max(amax, -amin)``,
    reading passes but no ``|x|`` copy (``aminmax`` over a dim is ~20x slower)."""
    x = x.detach()
    top = x.amax(dim=(2, 3), keepdim=True)
    if nonnegative:
        return top
    return torch.maximum(top, x.amin(dim=(2, 3), keepdim=True).neg_())


def _pow2_above(m: torch.Tensor) -> torch.Tensor:
    """A power of two ``2^e > m`` (``m`` finite, >= 0): ``frexp``'s exponent; 1 where
    ``m`` is 0. Dividing by it is exact and puts ``m`` in [0.5, 1)."""
    return torch.exp2(torch.frexp(m).exponent.to(m.dtype))


# Without a per-map scale, |x|^order of a float32 term below 2^-126 is subnormal (relative
# precision lost; for order 2, |x| < 2^-63 ~ 1e-19) and a window sum overflows above
# 2^128: the fused lpool of order <= 2 skips the scaling when the batch's largest term
# max|x|^order is 0 or in [lo, hi / size^2]; otherwise it scales as for order > 2.
_UNSCALED_RANGE = (2.0**-60, 2.0**100)


# -- lpool -------------------------------------------------------------------------------
class LPool(nn.Module):
    """``(sum_{size x size window} x^order)^(1/order)``, every ``stride``-th window, per
    channel. Output side ``(in - size) // stride + 1``.

    ``order == 1`` is a plain box sum: negative inputs stay negative (as in sthor). For any
    other order the power is taken of ``|x|`` (equal to sthor for even orders and for
    non-negative inputs, and defined for fractional orders).

    Numerics: for ``order > 2`` each (sample, channel) map is divided by a power of two
    ``2^e > max |x|`` before the power and the result multiplied back. Scaling by a power
    of two is exact, and it keeps ``|x|^order`` in ``[0, 1]`` so ``order=10`` cannot
    overflow float32 (it would for ``|x| > 7e3``). The scale is per map, not per window: for
    a large order, a window whose values all lie below ~3e-4 of its map's largest ``|x|``
    has ``(x / 2^e)^order`` in float32's subnormal range and loses relative (not absolute)
    precision. Its output is then below 3e-4 of the map's largest output; sthor's unscaled
    float32 ``x**order`` loses such values as well. For ``order <= 2`` the power cannot
    overflow for ordinary values: without ``grad`` the scaling is skipped when the whole
    batch's ``max |x|^order`` is in range (:data:`_UNSCALED_RANGE`); then only terms
    ``|x|^order < 2^-126`` (order 2: ``|x| < 1e-19``), below ``2^-66`` of the batch's
    largest, lose relative precision. Zeros get an exactly zero output and a finite (zero)
    gradient.

    Two implementations of the same formula (tests/search_space/test_ops.py checks both):

    * fused (no gradient needed: ``torch.no_grad``/``inference_mode`` or an input that
      does not require grad): one box-sum pass (:func:`_box_sum`), integer orders by
      repeated squaring, ``order = 2`` without a power at all, the root on the (smaller)
      pooled map, in place; ``forward(x, inplace=True)`` also overwrites ``x`` (the model
      passes it for the activation output it owns) instead of allocating a map, and
      ``nonnegative=True`` (the caller guarantees ``x >= 0``: a clamp with ``min_out >=
      0`` before it) skips the minimum in the range checks;
    * differentiable (autograd records ``x``): the formula with ``where`` guards so that
      the backward stays finite at zeros.
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

    def forward(
        self, x: torch.Tensor, inplace: bool = False, nonnegative: bool = False
    ) -> torch.Tensor:
        out_dtype = x.dtype
        rdtype = _reduce_dtype(x.dtype)
        if self.order == 1.0:
            return _box_sum(x.to(rdtype), self.size, self.stride).to(out_dtype)
        if _needs_grad(x):
            return self._differentiable(x.to(rdtype)).to(out_dtype)
        owned = inplace or x.dtype != rdtype  # an upcast is a copy this op owns
        x = x.to(rdtype)
        # Deciding whether the unscaled pass is safe reads the map's range on the host:
        # free on a CPU, but a device synchronisation per layer on a GPU, which leaves the
        # GPU idle between the kernels of small models. There the scale is always applied
        # (computed on the device; a power of two, so only the pow's rounding differs).
        if self.order <= 2.0 and x.device.type == "cpu":
            if nonnegative:
                top = float(x.amax())
            else:
                lo, hi = torch.aminmax(x)
                top = max(float(hi), -float(lo))
            lo, hi = _UNSCALED_RANGE
            if top == 0.0 or lo <= top**self.order <= hi / self.size**2:
                return self._fused(x, None, owned).to(out_dtype)
        scale = _pow2_above(_map_absmax(x, nonnegative))
        return self._fused(x, scale, owned).to(out_dtype)

    def _fused(self, x: torch.Tensor, scale: torch.Tensor | None, owned: bool) -> torch.Tensor:
        """The fused forward, unscaled when ``scale`` is None; overwrites ``x`` if ``owned``."""
        p = self.order
        integer = _is_integer_power(p)
        y = x
        if scale is not None:
            y = y.div_(scale) if owned else y / scale
            owned = True
        if not (integer and int(p) % 2 == 0):  # |x|; an even power does not need it
            y = y.abs_() if owned else y.abs()
            owned = True
        y = _int_power(y, int(p), owned) if integer else (y.pow_(p) if owned else y.pow(p))
        s = _box_sum(y, self.size, self.stride)
        del y
        s = s.sqrt_() if p == 2.0 else s.pow_(1.0 / p)
        return s if scale is None else s.mul_(scale)

    def _differentiable(self, x: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        # The scale does not change the value, only the rounding; detaching it keeps the
        # gradient the gradient of the formula (d out / d scale is 0 analytically).
        scale = _pow2_above(_map_absmax(x))
        y = a / scale
        # "double where": pow(0, p) has an infinite derivative for p < 1; evaluating the pow
        # on 1 where y == 0 keeps the backward finite, and the outer where gives exact zeros.
        pos = y > 0
        yp = torch.where(pos, torch.where(pos, y, 1.0) ** self.order, 0.0)
        s = _box_sum(yp, self.size, self.stride)
        # Same trick for the root: s^(1/p) has an infinite derivative at s == 0 for p > 1.
        spos = s > 0
        root = torch.where(spos, torch.where(spos, s, 1.0) ** (1.0 / self.order), 0.0)
        return root * scale

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

    The statistics are per-pixel channel sums followed by one-channel box sums
    (``O(C + size)`` work per pixel, not ``size**2 * C``). Without ``grad`` (fused path)
    everything after them is one-channel too: the factor ``f`` with ``out = x_c * f``
    (``stretch / 1`` below the threshold, ``1 / div`` above it) and, centred, the offset
    ``-S/n * f``, and one pass over the map writes the output (``x_c * f`` or
    ``x_c * f - S/n * f``: rounding within ``eps * (|x_c| + |S/n|) * f``, as the magnitude
    the reference tests allow). On the CPU a map of 2+ channels is written channels-last.
    With ``grad`` the formula above runs as written (``where`` guards keep the backward
    finite where the variance is 0).
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

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(S, Q - S^2/n)`` (float64) with ``remove_mean``, else ``(None, Q)`` (x's dtype):
        the b x b x C window sums, ``(N, 1, h, w)``."""
        b, c = self.size, x.shape[1]
        if self.remove_mean:
            # Q - S^2/n cancels catastrophically where the local mean is large against the
            # local spread (e.g. [0, 1] pixels in a flat region): in float32 the divisor
            # would lose most of its digits there. Float64 per-pixel sums (exact squares of
            # the float32 inputs), then one-channel float64 box sums; the result is cast back.
            x64 = x.to(torch.float64)
            if c == 1:
                s1, q1 = x64, x64 * x64
            else:
                s1 = x64.sum(dim=1, keepdim=True)
                sq = x64.square_() if x64 is not x else x64 * x64
                q1 = sq.sum(dim=1, keepdim=True)
                del sq
            s = _plane_box_sum(s1, b)
            q = _plane_box_sum(q1, b)
            return s, (q - s * s / float(b * b * c)).clamp_min_(0.0)
        # A sum of squares has no cancellation: float32 keeps its relative precision.
        if c == 1:
            q1 = x * x
        elif x.is_contiguous(memory_format=torch.channels_last):
            # A norm over contiguous channel rows: one reading pass, no squared copy.
            q1 = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_()
        else:
            q1 = (x * x).sum(dim=1, keepdim=True)
        return None, _plane_box_sum(q1, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        x = x.to(_reduce_dtype(x.dtype))
        if _needs_grad(x):
            return self._differentiable(x).to(out_dtype)
        b = self.size
        h, w = x.shape[-2] - b + 1, x.shape[-1] - b + 1
        centre = x[:, :, b // 2 : b // 2 + h, b // 2 : b // 2 + w]
        s, var = self._statistics(x)
        div = var.sqrt_().add_(LNORM_EPSILON)
        # out = stretch * num / d with d = stretch * div, or d = 1 below the threshold:
        # out = num * f, f = stretch there, else 1 / div.
        below = div < (self.threshold + LNORM_EPSILON) / self.stretch
        f = div.reciprocal_().masked_fill_(below, self.stretch).to(x.dtype)
        fmt = torch.channels_last if _channels_last_helps(x) else torch.contiguous_format
        out = torch.empty(centre.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        if s is None:
            torch.mul(centre, f, out=out)
        else:
            offset = (s * f).mul_(-1.0 / (b * b * x.shape[1])).to(x.dtype)
            torch.addcmul(offset, centre, f, out=out)
        return out.to(out_dtype)

    def _differentiable(self, x: torch.Tensor) -> torch.Tensor:
        b = self.size
        n = float(b * b * x.shape[1])
        h, w = x.shape[-2] - b + 1, x.shape[-1] - b + 1
        num = x[:, :, b // 2 : b // 2 + h, b // 2 : b // 2 + w]
        # Sum over channels first, then a 2-D box filter: the b x b x C neighbourhood sums.
        if self.remove_mean:
            x64 = x.to(torch.float64)
            s = _plane_box_sum(x64.sum(dim=1, keepdim=True), b)
            ssq = _plane_box_sum((x64 * x64).sum(dim=1, keepdim=True), b)
            var = (ssq - s * s / n).clamp_min(0.0).to(x.dtype)
            num = num - (s / n).to(x.dtype)
        else:
            var = _plane_box_sum((x * x).sum(dim=1, keepdim=True), b)
        # sqrt'(0) is infinite: evaluate sqrt on 1 where var == 0 so the backward stays
        # finite (the forward is exactly sqrt(var) either way).
        vpos = var > 0
        div = torch.where(vpos, torch.sqrt(torch.where(vpos, var, 1.0)), 0.0) + LNORM_EPSILON
        if self.stretch != 1.0:
            num = num * self.stretch
            div = div * self.stretch
        div = torch.where(div < self.threshold + LNORM_EPSILON, torch.ones_like(div), div)
        return num / div

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, remove_mean={self.remove_mean}, "
            f"stretch={self.stretch:g}, threshold={self.threshold:g}"
        )
