"""Screening throughput of the evaluator's feature extraction, next to a conv2d ceiling.

Two models, run through :func:`workers.evaluators.extract_features` (the code path of the
``screen`` and ``pairs`` protocols: uint8 batch -> device -> preprocess -> model, features
kept on the device):

* ``fg11-ht-l3-1st`` at 200x200 gray (docs/design.md section 2; 4.57 GFLOP and 25,600 features
  per image);
* a 1-layer Pinto & Cox model at 32x32 RGB (CIFAR-sized): lnorm0 3 | 64 x 5x5 filters,
  ReLU, lpool 5 p=2 stride 2, lnorm 3 -> 9 x 9 x 64 = 5,184 features.

Reported per (model, device, dtype, batch size): images/s, achieved GFLOP/s (FLOPs per
image from ``search_space.arch.walk``, a multiply-add = 2), and the ratio to the ceiling: a
large dense 3x3 conv2d (torch's best case) measured in the same run, with the same thread
count and dtype (float32 on CUDA with TF32 off, as the model's fbcorr runs): the best of
two dense conv2d shapes as large as the FG11 model's layers (:data:`CEILING_SHAPES`). Images are
random uint8 at the model's input size: throughput does not depend on the pixels.

CPU: batch sizes 8 and 32, float32. CUDA (when available): 64 .. 512, float32 and bfloat16.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench import report
from search_space import ops
from search_space.arch import Activation, Architecture, FBCorr, Layer, LNorm, LPool, walk
from search_space.model import build_model
from search_space.presets import FG11_HT_L3_1ST
from workers.evaluators import extract_features

PINTO_COX_32 = Architecture(
    input_size=32,
    input_channels=3,
    lnorm0=LNorm(3, remove_mean=False, stretch=10.0, threshold=1.0),
    layers=(
        Layer(
            FBCorr(64, 5),
            Activation(0.0, math.inf),
            LPool(5, 2.0, 2),
            LNorm(3, remove_mean=False, stretch=1.0, threshold=1.0),
        ),
    ),
    seed=42,
)
MODELS: dict[str, Architecture] = {
    "fg11-ht-l3-1st 200px": FG11_HT_L3_1ST,
    "pinto-cox 1-layer 32px": PINTO_COX_32,
}


@dataclass
class Row:
    model: str
    device: str
    dtype: str
    batch: int
    images: int
    images_per_s: float
    gflops_per_s: float
    ceiling_gflops_per_s: float

    @property
    def ratio(self) -> float:
        return self.gflops_per_s / self.ceiling_gflops_per_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Seconds per call of ``fn`` (one warm-up call, then repeated for ``min_seconds``)."""
    fn()
    _sync(device)
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


# (batch, in channels, out channels, side, kernel): dense convolutions as large as the
# model's biggest layers; the ceiling is the best of them (torch's algorithm choice, hence
# its efficiency, differs by shape: on the 2-core CPU a 3x3 64->128 conv ran at ~1/4 of a
# 5x5 128->128 one).
CEILING_SHAPES = {
    "cpu": [(8, 64, 128, 64, 3), (8, 128, 128, 48, 5)],
    "cuda": [(64, 256, 256, 64, 3), (64, 128, 256, 64, 5)],
}


def conv_ceiling(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """GFLOP/s of the fastest of :data:`CEILING_SHAPES` (dense "valid" conv2d, no bias)."""
    best = 0.0
    g = torch.Generator(device=device).manual_seed(0)
    for b, cin, cout, side, k in CEILING_SHAPES["cuda" if device.type == "cuda" else "cpu"]:
        x = torch.randn(b, cin, side, side, device=device, dtype=dtype, generator=g)
        w = torch.randn(cout, cin, k, k, device=device, dtype=dtype, generator=g)

        def conv(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
            if device.type == "cuda" and dtype == torch.float32:
                with ops.ieee_fp32_convolutions():
                    return F.conv2d(x, w)
            return F.conv2d(x, w)

        flops = 2 * b * (side - k + 1) ** 2 * cout * cin * k * k
        with torch.inference_mode():
            seconds = _timed(conv, device, 0.3 if quick else 1.5)
        best = max(best, flops / seconds / 1e9)
        del x, w
    return best


def model_throughput(
    arch: Architecture, device: torch.device, dtype: torch.dtype, batch: int, n_images: int
) -> tuple[float, float]:
    """``(images/s, GFLOP/s)`` of ``extract_features`` over ``n_images`` random images."""
    model = build_model(arch, dtype=dtype, device=device)
    rng = np.random.default_rng(0)
    images = rng.integers(
        0,
        256,
        size=(n_images, arch.input_channels, arch.input_size, arch.input_size),
        dtype=np.uint8,
    )
    index = np.arange(n_images)
    extract_features(model, images, index[:batch], device=device, batch_size=batch)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    feats, used, _ = extract_features(model, images, index, device=device, batch_size=batch)
    _sync(device)
    seconds = time.perf_counter() - t0
    if used != batch:
        raise RuntimeError(f"out of memory at batch {batch}: extraction fell back to {used}")
    del feats
    ips = n_images / seconds
    return ips, ips * walk(arch).flops / 1e9


def plan(device: torch.device, quick: bool) -> list[tuple[str, torch.dtype, int, int]]:
    """``(model, dtype, batch size, images)`` to measure on ``device``."""
    if device.type == "cuda":
        dtypes = [torch.float32, torch.bfloat16]
        batches = [64, 256] if quick else [64, 128, 256, 512]
        images = {
            "fg11-ht-l3-1st 200px": lambda b: 4 * b,
            "pinto-cox 1-layer 32px": lambda b: 32 * b,
        }
    else:
        dtypes = [torch.float32]
        batches = [8] if quick else [8, 32]
        n_fg11, n_small = (16, 512) if quick else (64, 4096)
        images = {
            "fg11-ht-l3-1st 200px": lambda b: max(b, n_fg11),
            "pinto-cox 1-layer 32px": lambda b: max(b, n_small),
        }
    return [(name, dt, b, images[name](b)) for name in MODELS for dt in dtypes for b in batches]


def run(quick: bool = False, record: bool = True) -> list[Row]:
    """Measure on the CPU (and on CUDA when available); print and optionally record."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows: list[Row] = []
    for device in devices:
        ceilings: dict[torch.dtype, float] = {}
        for name, dtype, batch, n in plan(device, quick):
            if dtype not in ceilings:
                ceilings[dtype] = conv_ceiling(device, dtype, quick)
            ips, gflops = model_throughput(MODELS[name], device, dtype, batch, n)
            rows.append(
                Row(
                    name,
                    str(device),
                    str(dtype).removeprefix("torch."),
                    batch,
                    n,
                    ips,
                    gflops,
                    ceilings[dtype],
                )
            )
    body = report.table(
        [
            "model",
            "device",
            "dtype",
            "batch",
            "images",
            "images/s",
            "GFLOP/s",
            "conv2d ceiling GFLOP/s",
            "ratio",
        ],
        [
            [
                r.model,
                r.device,
                r.dtype,
                r.batch,
                r.images,
                r.images_per_s,
                r.gflops_per_s,
                r.ceiling_gflops_per_s,
                f"{r.ratio:.2f}",
            ]
            for r in rows
        ],
    )
    gpu = f"; GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    body += (
        f"\n\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}. "
        "FLOPs per image: fg11-ht-l3-1st 200px "
        f"{walk(FG11_HT_L3_1ST).flops / 1e9:.2f} GFLOP, pinto-cox 1-layer 32px "
        f"{walk(PINTO_COX_32).flops / 1e9:.3f} GFLOP (walk(): fbcorr + pooling + "
        "normalisation, a multiply-add = 2). Images/s include the host-to-device copy and "
        "preprocessing (min-max per image). Ceiling: the best of two dense conv2d shapes "
        f"{CEILING_SHAPES['cuda' if torch.cuda.is_available() else 'cpu']} (batch, in, "
        "out, side, kernel) measured in the same run with the same threads and dtype "
        "(CUDA float32 with TF32 off, as fbcorr). "
        "Random uint8 images." + (" Quick run: few images, noisy." if quick else "")
    )
    report.record("evaluator: screening feature-extraction throughput", body, enabled=record)
    return rows
