"""The four ops against float64 NumPy references of docs/design.md section 2's formulas.

Tolerance: float32 result within 1e-5 of the float64 reference, measured element by element
relative to the element's *magnitude* (see ``np_reference``): ``|a - e| <= 1e-5 * mag``,
where mag = |e| for sums of non-negative terms (plain relative error) and mag = sum of
|terms| where terms of both signs can cancel (float32 cannot promise more than eps * that;
an elementwise |e| would demand the impossible near a cancellation, a norm-wise criterion
would hide a wrong small element). Elements with mag == 0 must be exactly 0.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from search_space import ops
from tests.search_space import np_reference as ref

RTOL = 1e-5
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def assert_close_to_reference(
    actual: torch.Tensor,
    expected: np.ndarray,
    magnitude: np.ndarray,
    rtol: float = RTOL,
    keep: np.ndarray | None = None,
) -> None:
    """Elementwise ``|actual - expected| <= rtol * magnitude`` (exact where magnitude == 0).

    ``keep``: optional boolean mask of the elements to check (others are ignored).
    """
    a = actual.detach().cpu().double().numpy()
    assert a.shape == expected.shape, (a.shape, expected.shape)
    assert np.isfinite(a).all()
    err = np.abs(a - expected)
    if keep is None:
        keep = np.ones(a.shape, dtype=bool)
    zero = (magnitude == 0) & keep
    assert np.all(err[zero] == 0), "elements with a zero reference must be exactly zero"
    nz = (magnitude > 0) & keep
    rel = err[nz] / magnitude[nz]
    worst = float(rel.max()) if rel.size else 0.0
    assert worst <= rtol, f"max relative error {worst:.3g} > {rtol:g}"


def rng_for(*key: object) -> np.random.Generator:
    """Deterministic per-case random inputs (hash of the case parameters)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def to_torch(x: np.ndarray, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(x).to(device=device, dtype=dtype)


def as_f32(x: np.ndarray) -> np.ndarray:
    """Round the input to float32 first, so that both sides see the same numbers."""
    return x.astype(np.float32).astype(np.float64)


# Every pooling/normalisation output is checked along three code paths (ops.py): "fused"
# (no gradient recorded: the screening path, under no_grad), "fused-inplace" (the same,
# allowed to overwrite its input, as the model calls lpool) and "autograd" (the input
# requires grad: the differentiable formula the ``train`` protocol backpropagates
# through); in both memory formats and in float32 and float64.
PATHS = ["fused", "fused-inplace", "autograd"]
FORMATS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}
RTOL_F64 = 1e-10  # float64 ops against the float64 reference: the formula itself


def op_outputs(
    op: torch.nn.Module, x: np.ndarray, device: str, inplace_ok: bool = True
) -> Iterator[tuple[str, torch.Tensor, float]]:
    """``(label, output, rtol)`` of ``op`` on ``x`` for every path, memory format and dtype.

    Also checks that only the in-place path may change its input, and that the autograd
    path really recorded a graph."""
    for dtype, rtol in ((torch.float32, RTOL), (torch.float64, RTOL_F64)):
        for fmt_name, fmt in FORMATS.items():
            for path in PATHS:
                if path == "fused-inplace" and not inplace_ok:
                    continue
                # clone: a float64 CPU tensor would share the NumPy array's memory
                xt = to_torch(x, device, dtype).clone(memory_format=fmt)
                before = xt.clone()
                label = f"{path}/{fmt_name}/{str(dtype).removeprefix('torch.')}"
                if path == "autograd":
                    out = op(xt.requires_grad_(True))
                    assert out.grad_fn is not None, label
                    assert torch.equal(xt.detach(), before), f"{label}: input modified"
                else:
                    with torch.no_grad():
                        out = op(xt, inplace=True) if path == "fused-inplace" else op(xt)
                    if path == "fused":
                        assert torch.equal(xt, before), f"{label}: input modified"
                assert out.dtype == dtype, label
                yield label, out, rtol


# -- filters -----------------------------------------------------------------------------
def sthor_recipe(n: int, fs: int, depth: int, seed: int) -> np.ndarray:
    """The explicit cnnrandom/sthor recipe, one filter at a time."""
    fb = np.random.RandomState(seed).uniform(low=-1.0, high=1.0, size=(n, fs, fs, depth))
    for i in range(n):
        f = fb[i]
        f -= f.mean()
        f /= np.linalg.norm(f)
        fb[i] = f
    return fb.astype(np.float32)


@pytest.mark.parametrize(
    ("n", "fs", "depth", "seed"), [(64, 3, 1, 42), (16, 5, 64, 42), (7, 4, 3, 0), (1, 9, 2, 123)]
)
def test_make_filters_follows_the_sthor_recipe(n: int, fs: int, depth: int, seed: int) -> None:
    fb = ops.make_filters(n, fs, depth, seed)
    assert fb.shape == (n, fs, fs, depth)
    assert fb.dtype == np.float32
    assert fb.flags["C_CONTIGUOUS"]
    f64 = fb.astype(np.float64).reshape(n, -1)
    np.testing.assert_allclose(f64.mean(axis=1), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(f64, axis=1), 1.0, rtol=1e-6)
    # Identical up to the last float32 bit to the recipe (float64 ops, one cast at the end).
    np.testing.assert_array_max_ulp(fb, sthor_recipe(n, fs, depth, seed), maxulp=1)


def test_make_filters_is_deterministic_per_seed() -> None:
    a = ops.make_filters(8, 3, 4, 42)
    np.testing.assert_array_equal(a, ops.make_filters(8, 3, 4, 42))
    assert not np.allclose(a, ops.make_filters(8, 3, 4, 43))
    # A filter bank is a prefix of a bigger one with the same seed and filter shape.
    np.testing.assert_array_equal(a[:5], ops.make_filters(5, 3, 4, 42))


def test_make_filters_rejects_empty_banks() -> None:
    with pytest.raises(ValueError):
        ops.make_filters(0, 3, 1, 42)


# -- output sizes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("side", "window", "stride", "expected"),
    [
        (200, 9, 1, 192),
        (190, 7, 2, 92),
        (84, 5, 2, 40),
        (30, 7, 2, 12),
        (10, 3, 3, 3),
        (11, 3, 3, 3),
        (12, 3, 3, 4),
        (5, 5, 1, 1),
        (5, 5, 3, 1),
        (4, 5, 1, 0),
    ],
)
def test_valid_size(side: int, window: int, stride: int, expected: int) -> None:
    assert ops.valid_size(side, window, stride) == expected


@pytest.mark.parametrize(
    ("h", "w", "size", "stride"), [(190, 31, 7, 2), (12, 13, 3, 3), (9, 8, 2, 1), (5, 7, 5, 3)]
)
def test_op_output_shapes_are_valid_mode(h: int, w: int, size: int, stride: int) -> None:
    x = torch.randn(2, 3, h, w)
    assert ops.LPool(size, 2.0, stride)(x).shape == (
        2,
        3,
        ops.valid_size(h, size, stride),
        ops.valid_size(w, size, stride),
    )
    assert ops.LNorm(size)(x).shape == (2, 3, h - size + 1, w - size + 1)
    assert ops.FBCorr(ops.make_filters(5, size, 3, 1))(x).shape == (
        2,
        5,
        h - size + 1,
        w - size + 1,
    )


# -- fbcorr ------------------------------------------------------------------------------
FBCORR_CASES = [
    # (input shape N, C, H, W), n_filters, filter size
    ((2, 1, 9, 9), 4, 3),
    ((1, 3, 11, 8), 16, 5),
    ((2, 8, 7, 13), 3, 1),
    ((1, 5, 10, 12), 7, 4),
    ((3, 2, 6, 5), 2, 5),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("shape", "k", "fs"), FBCORR_CASES)
def test_fbcorr_matches_reference(device: str, shape: tuple[int, ...], k: int, fs: int) -> None:
    x = as_f32(rng_for("fb", shape, k, fs).standard_normal(shape))
    filters = ops.make_filters(k, fs, shape[1], seed=7)
    expected, mag = ref.fbcorr(x, filters)
    actual = ops.FBCorr(filters).to(device)(to_torch(x, device))
    assert_close_to_reference(actual, expected, mag)


def test_fbcorr_is_correlation_not_convolution() -> None:
    """A flipped kernel (true convolution) must fail the same check: it can discriminate."""
    x = as_f32(rng_for("flip").standard_normal((1, 2, 8, 8)))
    filters = ops.make_filters(4, 3, 2, seed=1)
    expected, mag = ref.fbcorr(x, filters)
    flipped = np.ascontiguousarray(filters[:, ::-1, ::-1, :])
    with pytest.raises(AssertionError):
        assert_close_to_reference(ops.FBCorr(flipped)(to_torch(x, "cpu")), expected, mag)


def test_fbcorr_weight_layout_and_learn_flag() -> None:
    filters = ops.make_filters(6, 3, 4, seed=3)
    frozen, learned = ops.FBCorr(filters), ops.FBCorr(filters, learn=True)
    np.testing.assert_array_equal(frozen.weight.detach().numpy(), filters.transpose(0, 3, 1, 2))
    assert frozen.weight.shape == (6, 4, 3, 3)
    assert not frozen.weight.requires_grad
    assert learned.weight.requires_grad
    assert (frozen.n_filters, frozen.size) == (6, 3)


def test_ieee_fp32_convolutions_turns_tf32_off_and_restores() -> None:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:
        pytest.skip("torch < 2.9: legacy allow_tf32 flag only")
    previous = conv.fp32_precision
    try:
        for setting in ("tf32", "ieee"):
            conv.fp32_precision = setting
            with ops.ieee_fp32_convolutions():
                assert conv.fp32_precision == "ieee"
            assert conv.fp32_precision == setting
        benchmark = torch.backends.cudnn.benchmark
        with ops.ieee_fp32_convolutions():
            assert torch.backends.cudnn.benchmark == benchmark  # nothing else is reset
    finally:
        conv.fp32_precision = previous


# -- activation --------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("lo", "hi"), [(-math.inf, math.inf), (0.0, math.inf), (-math.inf, 1.0), (0.0, 1.0)]
)
def test_activation_clamps(device: str, lo: float, hi: float) -> None:
    x = as_f32(rng_for("act", lo, hi).standard_normal((2, 3, 5, 7)) * 3)
    actual = ops.Activation(lo, hi).to(device)(to_torch(x, device))
    np.testing.assert_array_equal(actual.cpu().double().numpy(), ref.activation(x, lo, hi))


def test_activation_rejects_empty_range() -> None:
    with pytest.raises(ValueError):
        ops.Activation(1.0, 0.0)


# -- lpool -------------------------------------------------------------------------------
# Odd and even windows, strides below and above the window, batches of 1 and more.
LPOOL_SHAPES = [((2, 3, 11, 8), 3), ((1, 1, 9, 13), 5), ((3, 2, 7, 7), 2), ((1, 4, 6, 5), 1)]
# p = 1 (box sum), 2 (no power at all), 10 (repeated squaring, scaled), 3 (odd: needs
# |x|), 0.5 and 2.7 (pow; unscaled below 2, scaled above).
LPOOL_ORDERS = [1.0, 2.0, 10.0, 3.0, 0.5, 2.7]


def lpool_input(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal(shape)
    if kind == "mixed":  # both signs: p == 1 must keep the sign, p != 1 uses |x|
        return as_f32(z)
    if kind == "relu":  # non-negative with exact zeros, as after min_out = 0
        return as_f32(np.maximum(z, 0.0))
    if kind == "huge":  # |x|^10 overflows float32 above ~7e3 without rescaling
        return as_f32(z * 1e5)
    if kind == "tiny":  # |x|^10 underflows float32 below ~1e-4 without rescaling
        return as_f32(z * 1e-6)
    if kind == "vast":  # |x|^2 overflows float32 too: order <= 2 must take the scaled path
        return as_f32(z * 1e25)
    if kind == "minuscule":  # |x|^2 is subnormal: order <= 2 must take the scaled path
        return as_f32(z * 1e-25)
    raise AssertionError(kind)


LPOOL_KINDS = ["mixed", "relu", "huge", "tiny", "vast", "minuscule"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("order", "stride", "kind"), list(itertools.product(LPOOL_ORDERS, [1, 2, 3], LPOOL_KINDS))
)
def test_lpool_matches_reference(device: str, order: float, stride: int, kind: str) -> None:
    for shape, size in LPOOL_SHAPES:
        x = lpool_input(kind, shape, rng_for("lpool", order, stride, kind, shape))
        expected, mag = ref.lpool(x, size, order, stride)
        op = ops.LPool(size, order, stride).to(device)
        for label, actual, rtol in op_outputs(op, x, device):
            try:
                assert_close_to_reference(actual, expected, mag, rtol=rtol)
            except AssertionError as exc:
                raise AssertionError(f"{label}, shape {shape}, size {size}: {exc}") from exc


def test_lpool_nonnegative_hint_gives_the_same_result() -> None:
    """The model tells lpool when a clamp left no negative values (it then skips the
    minimum in its range checks): same output as without the hint."""
    for order in LPOOL_ORDERS:
        x = lpool_input("relu", (2, 3, 12, 12), rng_for("hint", order))
        xt = to_torch(x, "cpu")
        with torch.no_grad():
            plain = ops.LPool(3, order, 2)(xt)
            hinted = ops.LPool(3, order, 2)(xt.clone(), inplace=True, nonnegative=True)
        assert torch.equal(plain, hinted), order


@pytest.mark.parametrize("order", [1, 2, 3, 5, 10, 17, 64])
def test_int_power_by_repeated_squaring(order: int) -> None:
    y = torch.from_numpy(rng_for("ipow", order).uniform(0.5, 1.0, 1000))
    for owned in (False, True):
        base = y.clone()
        got = ops._int_power(base, order, owned)
        np.testing.assert_allclose(got.numpy(), y.numpy() ** order, rtol=order * 2.3e-16)
        if not owned:
            assert torch.equal(base, y)


def test_lpool_order_one_keeps_the_sign() -> None:
    x = torch.full((1, 1, 3, 3), -1.0)
    assert ops.LPool(3, 1.0, 1)(x).item() == -9.0
    assert ops.LPool(3, 2.0, 1)(x).item() == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("order", [10.0, 0.5, 2.0, 3.0])
def test_lpool_zero_windows_are_exact_and_backward_is_finite(order: float) -> None:
    x = torch.zeros(1, 2, 6, 6)
    x[0, 0, :2, :2] = torch.tensor([[0.5, 0.0], [2.0, 0.0]])
    x[0, 1, 3:, 3:] = 1e-3
    x.requires_grad_(True)
    out = ops.LPool(3, order, 1)(x)
    assert out[0, 0, 3, 3].item() == 0.0  # an all-zero window
    assert out[0, 1, 0, 0].item() == 0.0
    out.sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 0, 1, 0] > 0  # a non-zero input gets a gradient
    with torch.no_grad():  # the fused path gives the same exact zeros
        fused = ops.LPool(3, order, 1)(x.detach())
    assert fused[0, 0, 3, 3].item() == 0.0 and fused[0, 1, 0, 0].item() == 0.0
    torch.testing.assert_close(fused, out.detach(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("order", "stride"), [(1.0, 2), (2.0, 1), (2.0, 2), (10.0, 2), (3.0, 1), (0.5, 2), (2.7, 1)]
)
def test_lpool_gradient_matches_finite_differences(order: float, stride: int) -> None:
    """float64 gradcheck of the differentiable path (inputs away from 0, where |x|^p has
    its kink); the scale is detached, its derivative is analytically 0."""
    rng = rng_for("lpool-grad", order, stride)
    signs = np.where(rng.random((2, 2, 7, 8)) < 0.3, -1.0, 1.0)
    x = torch.from_numpy(signs * rng.uniform(0.2, 2.0, (2, 2, 7, 8))).requires_grad_(True)
    assert torch.autograd.gradcheck(ops.LPool(3, order, stride), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("order", [1.0, 2.0, 10.0, 0.5])
def test_lpool_float32_gradient_matches_float64(order: float) -> None:
    """On the CPU the float32 box sum is a depthwise convolution (float64: avg_pool2d):
    its backward gives the float64 gradient to float32 precision."""
    rng = rng_for("lpool-grad32", order)
    x = as_f32(rng.uniform(0.2, 2.0, (2, 4, 9, 10)))
    w = torch.from_numpy(rng.standard_normal((2, 4, 4, 4)))
    grads = []
    for dtype in (torch.float32, torch.float64):
        xt = torch.from_numpy(x).to(dtype).contiguous(memory_format=torch.channels_last)
        xt.requires_grad_(True)
        (ops.LPool(3, order, 2)(xt) * w.to(dtype)).sum().backward()
        assert xt.grad is not None
        grads.append(xt.grad.double())
    err = (grads[0] - grads[1]).abs().max() / grads[1].abs().max()
    assert err < 1e-5, float(err)


# -- lnorm -------------------------------------------------------------------------------
# Odd and even windows, 1 to 16 channels, batches of 1 and more; the last shape is large
# enough for the separable one-channel box sums (small maps take avg_pool2d).
LNORM_SHAPES = [
    ((2, 1, 9, 9), 3),
    ((1, 3, 11, 8), 5),
    ((2, 5, 7, 13), 4),
    ((1, 2, 6, 6), 1),
    ((1, 4, 12, 10), 9),
    ((3, 16, 8, 9), 3),
    ((2, 3, 40, 44), 7),
]
THRESHOLD_BAND = 1e-4  # relative distance to the threshold inside which rounding may flip


def lnorm_input(
    kind: str,
    shape: tuple[int, ...],
    size: int,
    remove_mean: bool,
    stretch: float,
    threshold: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Inputs whose divisors straddle the threshold, so that both branches are tested.

    A unit-variance neighbourhood has sqrt(sum of squares) ~ sqrt(n); the global scale puts
    the typical stretched divisor at the threshold, and a log-normal gain, constant over
    blocks of ``size x size`` pixels (so that a large window does not average it out),
    spreads divisors over orders of magnitude around it.
    """
    n = size * size * shape[1]
    scale = threshold / (stretch * math.sqrt(n))
    n_img, _, h, w = shape
    blocks = rng.standard_normal((n_img, 1, -(-h // size), -(-w // size)))
    gain = np.exp(1.5 * blocks).repeat(size, axis=2).repeat(size, axis=3)[:, :, :h, :w]
    z = rng.standard_normal(shape)
    if kind == "offset":  # far from zero, like [0, 1] pixels: stresses Q - S^2/n
        z = z + 4.0
        if not remove_mean:  # the offset then dominates the divisor: scale it back down
            scale /= 4.0
    z = gain * z
    return as_f32(scale * z)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("remove_mean", "stretch", "threshold", "kind"),
    list(
        itertools.product([False, True], [0.1, 1.0, 10.0], [0.1, 1.0, 10.0], ["centred", "offset"])
    ),
)
def test_lnorm_matches_reference(
    device: str, remove_mean: bool, stretch: float, threshold: float, kind: str
) -> None:
    below = total = excluded = 0
    for shape, size in LNORM_SHAPES:
        rng = rng_for("lnorm", remove_mean, stretch, threshold, kind, shape)
        x = lnorm_input(kind, shape, size, remove_mean, stretch, threshold, rng)
        expected, mag, divs = ref.lnorm(x, size, remove_mean, stretch, threshold)
        t = threshold + ref.EPS
        # Where the float64 divisor is within 1e-4 (relative) of the threshold, float32
        # rounding may legitimately take the other branch: skip those elements only.
        near = np.abs(divs - t) / t < THRESHOLD_BAND
        keep = np.broadcast_to(~near, expected.shape)
        op = ops.LNorm(size, remove_mean, stretch, threshold).to(device)
        for label, actual, rtol in op_outputs(op, x, device, inplace_ok=False):
            try:
                assert_close_to_reference(actual, expected, mag, rtol=rtol, keep=keep)
            except AssertionError as exc:
                raise AssertionError(f"{label}, shape {shape}, size {size}: {exc}") from exc
        below += int((divs < t).sum())
        total += divs.size
        excluded += int(near.sum())
    assert excluded <= 0.005 * total, f"{excluded}/{total} elements too close to the threshold"
    # The data exercise both sides of the threshold test.
    assert 0.05 * total < below < 0.95 * total, f"{below}/{total} divisors below threshold"


def test_lnorm_centred_is_accurate_on_flat_bright_regions() -> None:
    """[0, 1]-like pixels at ~0.5 with 1e-3 texture: Q - S^2/n cancels ~5 digits, which a
    float32 evaluation of the formula cannot survive (relative error ~1e-2)."""
    rng = rng_for("flat")
    x = as_f32(0.5 + 1e-3 * rng.standard_normal((2, 3, 12, 11)))
    expected, mag, divs = ref.lnorm(x, 5, True, 10.0, 0.01)
    assert (divs > 2 * (0.01 + ref.EPS)).all()  # every divisor is used, none replaced by 1
    for label, out, rtol in op_outputs(ops.LNorm(5, True, 10.0, 0.01), x, "cpu", False):
        # float64 keeps ~1e-16 * 2.5e5 (the cancellation) of relative precision here
        assert_close_to_reference(out, expected, mag, rtol=max(rtol, 1e-9)), label


def test_lnorm_threshold_is_applied_after_stretch() -> None:
    """DESIGN: multiply num and divisor by stretch, *then* compare with the threshold."""
    x = torch.zeros(1, 1, 1, 1)
    x[0, 0, 0, 0] = 0.5  # divisor sqrt(0.25) + 1e-4 = 0.5001
    # stretch 10: divisor 5.001 >= 1 + 1e-4 -> out = 10 * 0.5 / 5.001
    assert ops.LNorm(1, stretch=10.0, threshold=1.0)(x).item() == pytest.approx(5 / 5.001, 1e-6)
    # stretch 1: divisor 0.5001 < 1.0001 -> divisor 1 -> out = 0.5
    assert ops.LNorm(1, stretch=1.0, threshold=1.0)(x).item() == pytest.approx(0.5, 1e-7)
    # stretch 0.1: divisor 0.05001 < 1 -> out = 0.1 * 0.5 (the numerator keeps its stretch)
    assert ops.LNorm(1, stretch=0.1, threshold=1.0)(x).item() == pytest.approx(0.05, 1e-6)


def test_lnorm_even_size_centre_offset() -> None:
    """For an even window the centre is at offset size // 2 (sthor)."""
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    out = ops.LNorm(4, remove_mean=False, stretch=1.0, threshold=1e9)(x)  # divisor always 1
    assert out.shape == (1, 1, 3, 3)
    torch.testing.assert_close(out[0, 0], x[0, 0, 2:5, 2:5], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("remove_mean", "stretch", "threshold"),
    [(False, 1.0, 0.0), (True, 10.0, 0.0), (True, 0.1, 1e9)],
)
def test_lnorm_gradient_matches_finite_differences(
    remove_mean: bool, stretch: float, threshold: float
) -> None:
    """float64 gradcheck of the differentiable path; threshold 0 always divides (the
    divisor's gradient counts), 1e9 never does (out = stretch * num)."""
    rng = rng_for("lnorm-grad", remove_mean, stretch, threshold)
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 7)) + 0.5).requires_grad_(True)
    op = ops.LNorm(3, remove_mean, stretch, threshold)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-8)


def test_lnorm_backward_is_finite_on_constant_regions() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[0, :, :3, :3] = 1.0  # var == 0 in the centred case, ssq == 0 elsewhere
    x.requires_grad_(True)
    for remove_mean in (False, True):
        x.grad = None
        ops.LNorm(3, remove_mean, stretch=10.0, threshold=0.0)(x).square().sum().backward()
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()


# -- half precision ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_pool_and_norm_do_not_overflow(dtype: torch.dtype) -> None:
    rng = rng_for("half", str(dtype))
    x = as_f32(np.abs(rng.standard_normal((2, 4, 9, 9))) * 100.0)  # 100^10, 300^2 > fp16 max
    xt = to_torch(x, "cpu", dtype)
    x_in = xt.double().numpy()  # the values the op actually sees
    loose = 2e-2  # ~2 ulp of the 8-bit (bf16) mantissa of the *output* cast
    out = ops.LPool(3, 10.0, 2)(xt)
    assert out.dtype == dtype
    expected, mag = ref.lpool(x_in, 3, 10.0, 2)
    assert_close_to_reference(out, expected, mag, rtol=loose)
    out = ops.LNorm(3, remove_mean=True, stretch=1.0, threshold=1.0)(xt)
    assert out.dtype == dtype
    expected, mag, _ = ref.lnorm(x_in, 3, True, 1.0, 1.0)
    assert_close_to_reference(out, expected, mag, rtol=loose)


@pytest.mark.parametrize("order", [2.0, 0.5, 1.5])
def test_lpool_scaled_pass_equals_the_unscaled_one(order: float) -> None:
    # On a GPU the pooling always takes the scaled pass (no host read of the map's range);
    # on a CPU small orders take the unscaled one. Both must agree.
    x = torch.rand(3, 5, 17, 19, generator=torch.Generator().manual_seed(1)) * 4 - 2
    pool = ops.LPool(3, order, 2)
    scale = ops._pow2_above(ops._map_absmax(x))
    assert bool((scale != 1.0).any())
    unscaled = pool._fused(x, None, False)
    scaled = pool._fused(x, scale, False)
    torch.testing.assert_close(scaled, unscaled, rtol=1e-6, atol=1e-6)
