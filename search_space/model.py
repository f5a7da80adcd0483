"""An :class:`~search_space.arch.Architecture` as a torch module (docs/design.md section 2).

Read top to bottom:

1. ``preprocess``   images -> the model's input: bilinear resize, then per-image min-max
                    to [0, 1] (or x / 255).
2. ``Layer``        one layer l >= 1: fbcorr -> activation -> lpool -> lnorm.
3. ``FeatureExtractor``  lnorm0, then the layers, then the (H, W, C) flatten.
4. ``build_model``  validate the architecture, then build the extractor.

Filters of every layer come from ``make_filters(n, fs, depth_in, arch.seed)``: the same seed
at every layer, as cnnrandom's FG11 models do, generated with NumPy on the CPU so that a
stored seed reproduces the model on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .arch import (
    DEFAULT_MAX_FEATURES,
    DEFAULT_MAX_PARAMS,
    Architecture,
    ShapeReport,
    validate,
)
from .arch import Layer as LayerSpec
from .arch import LNorm as LNormSpec

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# CPU inference runs the batch in chunks of images whose largest map (float32) is at most
# this many bytes in all (at least one image per chunk); see FeatureExtractor.forward.
# Below glibc's largest mmap threshold (32 MiB). Measured on FG11 at 200 px (9.2 MB per
# image), ratio to the conv ceiling: 1 image 0.81, 2 images 0.87, 4 (37 MB) 0.67; small
# models gain from large chunks (pinto-cox 32 px at batch 64: chunks of 8 0.24, 64 0.42).
CPU_CHUNK_BYTES = 24 << 20


def _grad_flows(model: nn.Module, x: torch.Tensor) -> bool:
    """True when autograd records the forward pass (learned filters or an input that
    requires grad, with grad mode on)."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in model.parameters())


# -- 1. preprocessing --------------------------------------------------------------------
def preprocess(images: torch.Tensor | np.ndarray, arch: Architecture) -> torch.Tensor:
    """Turn a batch of images into the input of ``build_model(arch)``.

    ``images``: ``(N, C, H, W)`` or grayscale ``(N, H, W)``, uint8/integer or floating, a
    torch tensor or a NumPy array. Steps, in this order (sthor's preprocessing):

    1. bilinear resize to ``arch.input_size x arch.input_size`` (``align_corners=False``,
       no antialiasing), skipped when the images already have that size;
    2. ``arch.preprocess == "minmax"``: each image rescaled to [0, 1] by its own min and max
       over all its channels and pixels (a constant image becomes zeros);
       ``"div255"``: ``x / 255``.

    Returns ``(N, arch.input_channels, input_size, input_size)``, float32 (float64 if the
    input was float64), on the input's device. Raises ``ValueError`` for a wrong rank or
    a channel count that is not ``arch.input_channels``.
    """
    x = torch.from_numpy(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.shape[1] != arch.input_channels:
        raise ValueError(
            f"images have {x.shape[1]} channels, the architecture expects {arch.input_channels}"
        )
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    owned = x.dtype != dtype  # the cast (or the resize below) is a copy: work in place
    x = x.to(dtype)
    size = arch.input_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )
        owned = True
    if arch.preprocess == "div255":
        return x.div_(255.0) if owned else x / 255.0
    if arch.preprocess != "minmax":
        raise ValueError(f"unknown preprocess {arch.preprocess!r}")
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True).sub_(lo)
    # A constant image has span 0: divide by 1 instead, which maps it to zeros.
    span = torch.where(span > 0, span, 1.0)
    return x.sub_(lo).div_(span) if owned else (x - lo) / span


# -- 2. one layer ------------------------------------------------------------------------
def _lnorm(spec: LNormSpec) -> ops.LNorm:
    return ops.LNorm(spec.size, spec.remove_mean, spec.stretch, spec.threshold)


class Layer(nn.Module):
    """Layer l >= 1: ``fbcorr -> activation -> lpool -> lnorm`` on ``depth_in`` channels."""

    def __init__(
        self,
        spec: LayerSpec,
        depth_in: int,
        seed: int,
        dtype: torch.dtype = torch.float32,
        learn_filters: bool = False,
    ) -> None:
        super().__init__()
        filters = ops.make_filters(spec.fbcorr.n_filters, spec.fbcorr.size, depth_in, seed)
        self.fbcorr = ops.FBCorr(filters, learn=learn_filters, dtype=dtype)
        self.activation = ops.Activation(spec.activation.min_out, spec.activation.max_out)
        self.lpool = ops.LPool(spec.lpool.size, spec.lpool.order, spec.lpool.stride)
        self.lnorm = _lnorm(spec.lnorm)
        # The clamp leaves no negative values: the pooling can skip its minimum checks.
        self._nonnegative = self.activation.min_out is not None and self.activation.min_out >= 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fbcorr output and the activation output are this layer's own tensors: without
        # grad the activation clamps in place and the pooling reuses the map for its powers
        # (no temporaries the size of the largest map). The modules are still called as
        # modules, so forward hooks (the workers' checks between modules) see every op.
        x = self.activation(self.fbcorr(x), inplace=True)
        return self.lnorm(self.lpool(x, inplace=True, nonnegative=self._nonnegative))


# -- 3. the feature extractor ------------------------------------------------------------
class FeatureExtractor(nn.Module):
    """``lnorm0 -> layer 1 -> ... -> layer L -> flatten (H, W, C)``.

    Construction validates the architecture first (:func:`~search_space.arch.validate`), so
    an infeasible one raises :class:`~search_space.arch.InfeasibleArchitecture` before any
    filter or tensor is allocated.

    Attributes: ``arch``, ``report`` (the :class:`ShapeReport`), ``feature_shape`` (the final
    ``(H, W, C)``), ``n_features`` (``H * W * C``), ``dtype`` (the compute dtype).

    ``forward(x)`` takes ``(N, input_channels, input_size, input_size)`` (the output of
    :func:`preprocess`; it is cast to the model dtype) and returns ``(N, n_features)``.
    CPU inference (no gradient recorded) runs ``chunk_images`` images at a time (see
    :data:`CPU_CHUNK_BYTES`), and the ops take their fused paths (``search_space.ops``).
    """

    def __init__(
        self,
        arch: Architecture,
        dtype: torch.dtype = torch.float32,
        learn_filters: bool = False,
        *,
        max_features: int = DEFAULT_MAX_FEATURES,
        max_params: int = DEFAULT_MAX_PARAMS,
    ) -> None:
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
        # The cost caps are a study's policy, checked by the coordinator and by the
        # evaluation before it starts; building a module only needs the shapes to work.
        report: ShapeReport = validate(
            arch,
            max_features=max_features,
            max_params=max_params,
            max_gflops_per_image=math.inf,
            max_activation_mb_per_image=math.inf,
        )
        super().__init__()
        self.arch = arch
        self.report = report
        self._dtype = dtype
        self.lnorm0: nn.Module = _lnorm(arch.lnorm0) if arch.lnorm0 is not None else nn.Identity()
        layers = []
        depth = arch.input_channels
        for spec in arch.layers:
            layers.append(Layer(spec, depth, arch.seed, dtype=dtype, learn_filters=learn_filters))
            depth = spec.fbcorr.n_filters
        self.layers = nn.ModuleList(layers)
        _, h, w, c = report.shapes[-1]
        self.feature_shape: tuple[int, int, int] = (h, w, c)
        self.n_features: int = report.n_features
        self.chunk_images: int = max(1, CPU_CHUNK_BYTES // max(1, report.activation_bytes))

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the filters' dtype (it follows ``.to(dtype)``)."""
        for p in self.parameters():
            return p.dtype
        return self._dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.arch.input_channels, self.arch.input_size, self.arch.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"input must be (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(x.shape)}; use preprocess()"
            )
        x = x.to(self.dtype)
        n, chunk = x.shape[0], self.chunk_images
        if x.device.type != "cpu" or n <= chunk or _grad_flows(self, x):
            return self._features(x)
        # CPU inference: a few images at a time, so that every map of a chunk stays within
        # CPU_CHUNK_BYTES, below glibc's mmap threshold (32 MiB): a freed buffer is reused
        # instead of page-faulting fresh memory on every op (a 74 MB map took ~50 ms to
        # fault in on the 2-core VM, more than its convolution); it also bounds the
        # memory a batch needs to a few maps of one chunk. Images
        # are independent: only the summation order of oneDNN's convolution may differ with
        # the number of images (float32 rounding; one image per chunk is bitwise the same
        # as each image alone, whatever the batch).
        out = torch.empty((n, self.n_features), dtype=x.dtype)
        for i in range(0, n, chunk):
            out[i : i + chunk] = self._features(x[i : i + chunk])
        return out

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lnorm0(x)
        for layer in self.layers:
            x = layer(x)
        # sthor flattens (H, W, C) arrays: channels vary fastest (a view when x is
        # channels-last, as the lnorm writes it on the CPU).
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


# -- 4. entry point ----------------------------------------------------------------------
def build_model(
    arch: Architecture,
    dtype: torch.dtype = torch.float32,
    learn_filters: bool = False,
    *,
    device: torch.device | str | None = None,
    max_features: int = DEFAULT_MAX_FEATURES,
    max_params: int = DEFAULT_MAX_PARAMS,
) -> FeatureExtractor:
    """Validate ``arch`` and build its :class:`FeatureExtractor`.

    Raises :class:`~search_space.arch.InfeasibleArchitecture` (a vanishing map, more than
    ``max_features`` features or ``max_params`` filter weights) before allocating anything,
    and ``ValueError`` for values outside the model family. ``dtype`` float32 (default) is
    the faithful path; bfloat16/float16 are an opt-in fast path for GPUs (pooling and
    normalisation still reduce in float32). ``learn_filters=True`` makes the filters
    trainable (the ``train`` protocol). Filters are generated on the CPU and then moved to
    ``device``.
    """
    model = FeatureExtractor(
        arch, dtype, learn_filters, max_features=max_features, max_params=max_params
    )
    return model.to(device) if device is not None else model
