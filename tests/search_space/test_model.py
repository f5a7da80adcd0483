"""build_model / FeatureExtractor / preprocess: shapes, whole-model references, dtypes, grads.

Whole-model tolerance: the per-op tests (test_ops.py) check every element to 1e-5 relative
to its own magnitude. Through a stack of ops an element near 0 (a cancelling correlation,
then ReLU and pooling) carries the absolute rounding error of its inputs' scale, so
elementwise relative error is meaningless there. A whole model is therefore checked
max-norm relative: ``max|a - e| <= 1e-5 * max|e|``, and in float64 to 1e-12 (which checks
the formula itself with no float32 noise at all).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search_space import model as model_mod
from search_space import ops
from search_space.arch import (
    Activation,
    Architecture,
    FBCorr,
    InfeasibleArchitecture,
    Layer,
    LNorm,
    LPool,
)
from search_space.model import FeatureExtractor, build_model, preprocess
from search_space.presets import FG11_HT_L3_1ST, get_preset
from tests.search_space import np_reference as ref

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]

# 24 -> lnorm0 3: 22 -> fbcorr 3: 20 -> pool 3 s2: 9 -> lnorm 3: 7 -> fbcorr 3: 5
#    -> pool 2 s1: 4 -> lnorm 3: 2; features 2 x 2 x 6 = 24
SMALL = Architecture(
    input_size=24,
    input_channels=3,
    lnorm0=LNorm(size=3, remove_mean=True, stretch=10.0, threshold=1.0),
    layers=(
        Layer(
            FBCorr(4, 3),
            Activation(0.0, math.inf),
            LPool(3, 2.0, 2),
            LNorm(3, remove_mean=False, stretch=1.0, threshold=0.1),
        ),
        Layer(
            FBCorr(6, 3),
            Activation(-math.inf, 1.0),
            LPool(2, 10.0, 1),
            LNorm(3, remove_mean=True, stretch=0.1, threshold=0.01),
        ),
    ),
    seed=42,
)
# No lnorm0, p = 1 (signed box sum) and a fractional p, odd non-square-friendly sizes.
SMALL_B = Architecture(
    input_size=23,
    input_channels=1,
    lnorm0=None,
    layers=(
        Layer(
            FBCorr(5, 4),
            Activation(-math.inf, math.inf),
            LPool(3, 1.0, 3),
            LNorm(2, remove_mean=True, stretch=10.0, threshold=10.0),
        ),
        Layer(
            FBCorr(3, 2),
            Activation(0.0, 1.0),
            LPool(2, 0.5, 1),
            LNorm(1, remove_mean=False, stretch=1.0, threshold=0.1),
        ),
    ),
    seed=7,
)


def filters_of(arch: Architecture) -> list[np.ndarray]:
    """The filters docs/design.md prescribes: make_filters(n, fs, depth_in, arch.seed) per layer."""
    out, depth = [], arch.input_channels
    for layer in arch.layers:
        out.append(ops.make_filters(layer.fbcorr.n_filters, layer.fbcorr.size, depth, arch.seed))
        depth = layer.fbcorr.n_filters
    return out


def random_images(arch: Architecture, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    shape = (n, arch.input_channels, arch.input_size, arch.input_size)
    return preprocess(rng.integers(0, 256, size=shape).astype(np.uint8), arch)


def assert_maxnorm_close(actual: torch.Tensor, expected: np.ndarray, rtol: float) -> None:
    a = actual.detach().cpu().double().numpy()
    assert a.shape == expected.shape
    assert np.isfinite(a).all()
    scale = np.abs(expected).max()
    assert scale > 0
    err = np.abs(a - expected).max() / scale
    assert err <= rtol, f"max-norm relative error {err:.3g} > {rtol:g}"


# -- FG11 HT-L3-1st ----------------------------------------------------------------------
def test_fg11_shapes_by_hand() -> None:
    model = build_model(FG11_HT_L3_1ST)
    # 200 -> lnorm9 192 -> fbcorr3 190 -> pool7 s2 (190-7)//2+1 = 92 -> norm5 88
    #     -> fbcorr5 84 -> pool5 s2 (84-5)//2+1 = 40 -> norm7 34
    #     -> fbcorr5 30 -> pool7 s2 (30-7)//2+1 = 12 -> norm3 10;  10 * 10 * 256 = 25,600
    sides = [200, 192, 190, 92, 88, 84, 40, 34, 30, 12, 10]
    depths = [1, 1, 64, 64, 64, 128, 128, 128, 256, 256, 256]
    assert [s[1] for s in model.report.shapes] == sides
    assert [s[2] for s in model.report.shapes] == sides
    assert [s[3] for s in model.report.shapes] == depths
    assert model.feature_shape == (10, 10, 256)
    assert model.n_features == 25_600
    weights = [layer.fbcorr.weight.shape for layer in model.layers]
    assert weights == [(64, 1, 3, 3), (128, 64, 5, 5), (256, 128, 5, 5)]


def test_fg11_forward_at_200() -> None:
    model = build_model(FG11_HT_L3_1ST)
    x = random_images(FG11_HT_L3_1ST, 2, seed=0)
    with torch.no_grad():
        feats = model(x)
    assert feats.shape == (2, 25_600)
    assert feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert feats.abs().max() > 0
    assert not torch.equal(feats[0], feats[1])


def test_fg11_whole_model_matches_float64_reference() -> None:
    """FG11 at 121x121, its smallest input (1 x 1 x 256 features): every op of the real
    model, float32 against the float64 NumPy reference."""
    arch = get_preset("fg11-ht-l3-1st", input_size=121)
    x = random_images(arch, 1, seed=1)
    trace = ref.model_forward(x.double().numpy(), arch, filters_of(arch))
    assert trace.min_threshold_margin > 1e-3  # no element sits on a threshold
    with torch.no_grad():
        assert_maxnorm_close(build_model(arch)(x), trace.features, 1e-5)
        assert_maxnorm_close(build_model(arch, torch.float64)(x.double()), trace.features, 1e-12)


# -- small models against the reference -------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", [SMALL, SMALL_B], ids=["small", "small_b"])
def test_small_model_matches_float64_reference(device: str, arch: Architecture) -> None:
    x = random_images(arch, 3, seed=2)
    trace = ref.model_forward(x.double().numpy(), arch, filters_of(arch))
    assert trace.min_threshold_margin > 1e-3
    model32, model64 = build_model(arch, device=device), build_model(arch, torch.float64)
    with torch.no_grad():
        assert_maxnorm_close(model32(x.to(device)), trace.features, 1e-5)
        assert_maxnorm_close(model64(x.double()), trace.features, 1e-12)
    assert model32.n_features == trace.features.shape[1]


@pytest.mark.parametrize("arch", [SMALL, SMALL_B], ids=["small", "small_b"])
def test_differentiable_path_matches_float64_reference(arch: Architecture) -> None:
    """With learned filters and grad on, every op runs its differentiable (unfused)
    formula: the same features as the fused inference path, to the same tolerance."""
    x = random_images(arch, 3, seed=2)
    trace = ref.model_forward(x.double().numpy(), arch, filters_of(arch))
    model = build_model(arch, learn_filters=True)
    feats = model(x)
    assert feats.grad_fn is not None
    assert_maxnorm_close(feats, trace.features, 1e-5)
    with torch.no_grad():
        fused = model(x)
    assert_maxnorm_close(fused, feats.detach().double().numpy(), 1e-5)


@pytest.mark.parametrize("arch", [SMALL, SMALL_B], ids=["small", "small_b"])
def test_cpu_chunking_gives_the_same_features(arch: Architecture) -> None:
    """CPU inference runs a batch a few images at a time (FeatureExtractor.chunk_images).
    One image per chunk is bit for bit the features of each image alone; other chunkings
    agree to float32 rounding (oneDNN's convolution may sum in another order for another
    batch size, as it did before chunking). The input is left as it was."""
    model = build_model(arch)
    x = random_images(arch, 5, seed=9)
    before = x.clone()
    with torch.inference_mode():
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
        model.chunk_images = 1
        assert torch.equal(model(x), one_by_one)
        for chunk in (2, 3, 64):
            model.chunk_images = chunk
            assert_maxnorm_close(model(x), one_by_one.double().numpy(), 1e-6)
    assert torch.equal(x, before)


def test_chunk_size_keeps_maps_small() -> None:
    """FG11 at 200 px: the 190x190x64 map is 9.2 MB per image, so two images per chunk
    (one allocation stays below glibc's 32 MiB mmap threshold); a 32 px model takes whole
    batches of up to ~hundreds of images."""
    assert model_mod.CPU_CHUNK_BYTES < 32 << 20
    fg11 = build_model(FG11_HT_L3_1ST)
    assert fg11.report.activation_bytes == 4 * 190 * 190 * 64
    assert fg11.chunk_images == 2
    small = build_model(get_preset("fg11-ht-l3-1st", input_size=121))
    assert small.chunk_images == model_mod.CPU_CHUNK_BYTES // small.report.activation_bytes
    assert build_model(SMALL).chunk_images >= 64


def test_same_seed_at_every_layer() -> None:
    """FG11 convention: layer l's filters are make_filters(n_l, fs_l, depth_l, arch.seed)."""
    model = build_model(SMALL)
    for layer, filters in zip(model.layers, filters_of(SMALL), strict=True):
        np.testing.assert_array_equal(
            layer.fbcorr.weight.detach().numpy(), filters.transpose(0, 3, 1, 2)
        )


def test_features_are_flattened_hwc() -> None:
    model = build_model(SMALL)
    x = random_images(SMALL, 2, seed=3)
    with torch.no_grad():
        feats = model(x)
        fmap = model.lnorm0(x)
        for layer in model.layers:
            fmap = layer(fmap)
    _, c, h, w = fmap.shape
    assert (h, w, c) == model.feature_shape
    for b, i, j, k in [(0, 0, 0, 1), (1, 1, 0, 0), (1, 0, 1, 5), (0, 1, 1, 3)]:
        assert feats[b, (i * w + j) * c + k] == fmap[b, k, i, j]


# -- feasibility -------------------------------------------------------------------------
def _no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("filters were generated for an infeasible architecture")

    monkeypatch.setattr(model_mod.ops, "make_filters", boom)


def test_vanishing_map_is_infeasible_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_allocation(monkeypatch)
    with pytest.raises(InfeasibleArchitecture, match="does not fit"):
        build_model(get_preset("fg11-ht-l3-1st", input_size=64))


def test_caps_are_infeasible_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_allocation(monkeypatch)
    with pytest.raises(InfeasibleArchitecture, match="features"):
        build_model(FG11_HT_L3_1ST, max_features=25_599)
    with pytest.raises(InfeasibleArchitecture, match="parameters"):
        build_model(FG11_HT_L3_1ST, max_params=1_000)
    # A billion-weight model is refused, not allocated.
    huge = Architecture(
        input_size=400,
        input_channels=3,
        lnorm0=None,
        layers=(
            Layer(FBCorr(4096, 9), Activation(), LPool(2, 1.0, 2), LNorm(3)),
            Layer(FBCorr(4096, 9), Activation(), LPool(2, 1.0, 2), LNorm(3)),
        ),
    )
    with pytest.raises(InfeasibleArchitecture):
        build_model(huge)


def test_bad_values_and_dtypes_raise_value_error() -> None:
    with pytest.raises(ValueError):
        build_model(SMALL, dtype=torch.int32)
    bad = Architecture(
        24, 3, None, (Layer(FBCorr(4, 3), Activation(1.0, 0.0), LPool(2), LNorm(3)),)
    )
    with pytest.raises(ValueError):
        build_model(bad)


def test_forward_rejects_wrong_input_shape() -> None:
    model = build_model(SMALL)
    with pytest.raises(ValueError, match="preprocess"):
        model(torch.zeros(1, 3, 25, 25))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, 24, 24))


# -- preprocess --------------------------------------------------------------------------
def _arch(size: int, channels: int = 1, kind: str = "minmax") -> Architecture:
    return Architecture(size, channels, LNorm(3), (), preprocess=kind)  # type: ignore[arg-type]


def test_preprocess_minmax_is_per_image() -> None:
    imgs = torch.tensor([[[0.0, 10.0], [5.0, 2.5]], [[-4.0, -2.0], [0.0, 4.0]]])
    out = preprocess(imgs, _arch(2))
    assert out.shape == (2, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 1.0], [0.5, 0.25]]))
    torch.testing.assert_close(out[1, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))


def test_preprocess_minmax_spans_all_channels() -> None:
    img = torch.zeros(1, 3, 2, 2)
    img[0, 0] = 10.0  # the red channel is the max, blue stays at the min
    img[0, 1] = 5.0
    out = preprocess(img, _arch(2, channels=3))
    assert out[0, 0].eq(1.0).all() and out[0, 1].eq(0.5).all() and out[0, 2].eq(0.0).all()


def test_preprocess_constant_image_gives_zeros() -> None:
    out = preprocess(np.full((2, 5, 5), 77, dtype=np.uint8), _arch(5))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(2, 1, 5, 5))


def test_preprocess_div255() -> None:
    imgs = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = preprocess(imgs, _arch(2, kind="div255"))
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))


def test_preprocess_bilinear_upsampling_known_answer() -> None:
    """Half-pixel bilinear (align_corners=False): 2 -> 4 samples at -0.25 (clamped), 0.25,
    0.75, 1.25 (clamped)."""
    img = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]) * 255.0
    out = preprocess(img, _arch(4, kind="div255"))[0, 0]
    r = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(out, 2.0 * r[:, None] + r[None, :])


def test_preprocess_downsampling_has_no_antialias() -> None:
    """4 -> 2 samples the centres 0.5 and 2.5: [0, 0, 8, 0] -> [0, 4] (an antialiased
    filter would spread the 8 into both outputs)."""
    img = torch.tensor([0.0, 0.0, 8.0, 0.0]).repeat(4, 1)[None] * 255.0 / 8.0
    out = preprocess(img, _arch(2, kind="div255"))[0, 0]
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5], [0.0, 0.5]]))


def test_preprocess_resizes_and_accepts_grayscale_3d() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, 50, 70)).astype(np.uint8)
    out = preprocess(gray, _arch(32))
    assert out.shape == (3, 1, 32, 32)
    assert out.dtype == torch.float32
    for img in out:
        assert img.min() == 0.0 and img.max() == 1.0
    expected = F.interpolate(
        torch.from_numpy(gray).float()[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )
    lo = expected.amin(dim=(1, 2, 3), keepdim=True)
    hi = expected.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (expected - lo) / (hi - lo))


def test_preprocess_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        preprocess(torch.zeros(2, 3, 8, 8), _arch(8, channels=1))
    with pytest.raises(ValueError):
        preprocess(torch.zeros(8, 8), _arch(8))


# -- dtypes and devices ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_path_is_close_to_float32(dtype: torch.dtype) -> None:
    x = random_images(SMALL, 4, seed=4)
    with torch.no_grad():
        ref32 = build_model(SMALL)(x)
        model = build_model(SMALL, dtype=dtype)
        low = model(x)
    assert model.dtype == dtype
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    rel = (low.float() - ref32).norm() / ref32.norm()
    assert rel < 5e-2, f"relative L2 error {rel:.3g}"  # bf16 has an 8-bit mantissa


def test_dtype_follows_to() -> None:
    model = build_model(SMALL).to(torch.float64)
    assert model.dtype == torch.float64
    assert model(random_images(SMALL, 1, seed=5)).dtype == torch.float64


# -- gradients ---------------------------------------------------------------------------
def test_filters_are_frozen_by_default() -> None:
    model = build_model(SMALL)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", [SMALL, SMALL_B], ids=["small", "small_b"])
def test_gradient_flows_to_learned_filters(arch: Architecture) -> None:
    model = build_model(arch, learn_filters=True)
    assert isinstance(model, FeatureExtractor)
    x = random_images(arch, 2, seed=6)
    model(x).square().sum().backward()
    for layer in model.layers:
        grad = layer.fbcorr.weight.grad
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().max() > 0


def test_gradient_is_correct_in_float64() -> None:
    """Finite differences agree with autograd through every op (pool p=10, p=2, clamps,
    both lnorm branches), i.e. the NaN-avoiding `where`s do not change the gradient."""
    model = build_model(SMALL, dtype=torch.float64, learn_filters=True)
    x = random_images(SMALL, 1, seed=8).double()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["layers.0.fbcorr.weight", "layers.1.fbcorr.weight"]

    def features(*weights: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, weights, strict=True)), (x,))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(features, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
