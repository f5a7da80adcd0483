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
large dense conv2d (torch's best case) measured in the same run, with the same thread
count and dtype (float32 on CUDA with TF32 off, as the model's fbcorr runs): the best of
two dense conv2d shapes as large as the FG11 model's layers (:data:`CEILING_SHAPES`), each
in both memory formats (NCHW and channels-last; the model runs channels-last on the CPU).
Images are random uint8 at the model's input size: throughput does not depend on the pixels.

The element-wise part (every leaf module but fbcorr: lnorm0, activation, lpool, lnorm) is
also timed on its own (forward hooks around each call, synchronised) and reported as
GB/s of its compulsory traffic (each call's input read once and output written once,
in the compute dtype), next to the memory bandwidth of a plain large copy and add
(``dst.copy_(src)``, ``torch.add(a, b, out=c)``, 64 MiB float32 tensors, all bytes read
and written counted) measured in the same run.

Shared machines are noisy: every figure is the fastest call (a batch through
``extract_features``, one conv2d, one copy) of its measurement, the call least disturbed by
other processes, and every row is measured in 5 interleaved rounds (the ceiling, the
model, the element-wise part, the bandwidth), the best of each over the rounds reported;
the ratio is best model / best ceiling. ``images`` is the number of distinct images the
batches cycle through.

CPU: batch sizes 8, 32 and 64 (``--quick``: 8 and 32), float32. CUDA (when available):
64 .. 512, float32 and bfloat16.

Group screening (:func:`run_group`, issue 13; also run at the end of :func:`run`): K
small Pinto & Cox candidates (1 layer, 32x32 RGB, 8 or 16 random 5x5 filters, different
seeds and poolings; :func:`group_candidates`) screened in full (features, ridge readout
with l2 chosen, score) one by one with ``evaluate("screen", ...)`` and together with
:func:`workers.screen_group.screen_group` (on CUDA also with ``streams=False``), on random
uint8 images with random labels (throughput does not depend on them), in interleaved
rounds, the best round of each way reported: candidates/s both ways and their ratio,
and the extraction alone (sum of the candidates' ``extract_seconds`` alone against the
group's extraction wall time).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench import report
from search_space import ops
from search_space.arch import Activation, Architecture, FBCorr, Layer, LNorm, LPool, walk
from search_space.model import FeatureExtractor, build_model
from search_space.presets import FG11_HT_L3_1ST
from workers.datasets import Dataset
from workers.evaluators import EvalResult, evaluate, extract_features
from workers.screen_group import GroupCandidate, screen_group

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
    images_per_s: float = 0.0
    gflops_per_s: float = 0.0
    ceiling_gflops_per_s: float = 0.0
    elementwise_gb_per_s: float = 0.0
    bandwidth_gb_per_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.gflops_per_s / self.ceiling_gflops_per_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """The fastest call of ``fn`` in seconds: one warm-up call, then calls for
    ``min_seconds`` (at least 3). The minimum is the call least disturbed by other
    processes; the ceiling, the model and the bandwidth are all timed this way."""
    fn()
    _sync(device)
    best, calls, t_end = math.inf, 0, time.perf_counter() + min_seconds
    while calls < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


# (batch, in channels, out channels, side, kernel): dense convolutions as large as the
# model's biggest layers; the ceiling is the best of them (torch's algorithm choice, hence
# its efficiency, differs by shape: on the 2-core CPU a 3x3 64->128 conv ran at ~1/4 of a
# 5x5 128->128 one).
CEILING_SHAPES = {
    "cpu": [(8, 64, 128, 64, 3), (8, 128, 128, 48, 5)],
    "cuda": [(64, 256, 256, 64, 3), (64, 128, 256, 64, 5)],
}


def conv_ceiling(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """GFLOP/s of the fastest of :data:`CEILING_SHAPES` (dense "valid" conv2d, no bias), each
    in the NCHW and in the channels-last memory format."""
    best = 0.0
    g = torch.Generator(device=device).manual_seed(0)
    for b, cin, cout, side, k in CEILING_SHAPES["cuda" if device.type == "cuda" else "cpu"]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(b, cin, side, side, device=device, dtype=dtype, generator=g)
            x = x.contiguous(memory_format=fmt)
            w = torch.randn(cout, cin, k, k, device=device, dtype=dtype, generator=g)

            def conv(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
                if device.type == "cuda" and dtype == torch.float32:
                    with ops.ieee_fp32_convolutions():
                        return F.conv2d(x, w)
                return F.conv2d(x, w)

            flops = 2 * b * (side - k + 1) ** 2 * cout * cin * k * k
            with torch.inference_mode():
                seconds = _timed(conv, device, 0.15 if quick else 0.5)
            best = max(best, flops / seconds / 1e9)
            del x, w
    return best


def bandwidth(device: torch.device, quick: bool) -> float:
    """GB/s of the better of a plain copy and add of 64 MiB float32 tensors (bytes read
    plus bytes written), into preallocated outputs."""
    n = 16 << 20
    a = torch.rand(n, device=device)
    b = torch.rand(n, device=device)
    c = torch.empty(n, device=device)
    copy = _timed(lambda: c.copy_(a), device, 0.1 if quick else 0.3)
    add = _timed(lambda: torch.add(a, b, out=c), device, 0.1 if quick else 0.3)
    return max(2 * 4 * n / copy, 3 * 4 * n / add) / 1e9


def _make_images(arch: Architecture, n_images: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (n_images, arch.input_channels, arch.input_size, arch.input_size)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _batches(n_images: int, batch: int) -> Iterator[np.ndarray]:
    """Index arrays of ``batch`` images, cycling through ``n_images`` distinct images."""
    start = 0
    while True:
        yield np.arange(start, start + batch) % n_images
        start = (start + batch) % n_images


def model_throughput(
    model: FeatureExtractor,
    images: np.ndarray,
    device: torch.device,
    batch: int,
    min_seconds: float,
) -> tuple[float, float]:
    """``(images/s, GFLOP/s)`` of ``extract_features`` on one batch of ``batch`` images
    (random uint8 at the model's input size): the fastest of its calls over
    ``min_seconds`` (:func:`_timed`), each call on the next batch of ``images``."""
    batches = _batches(len(images), batch)

    def one_batch() -> None:
        # A fixed batch size (batch_seconds=None): the time-driven sizing of the workers
        # would otherwise pick its own batch and make the rows incomparable.
        _, used, halvings = extract_features(
            model, images, next(batches), device=device, batch_size=batch, batch_seconds=None
        )
        if halvings:
            raise RuntimeError(f"out of memory at batch {batch}: extraction fell back to {used}")

    ips = batch / _timed(one_batch, device, min_seconds)
    return ips, ips * model.report.flops / 1e9


def elementwise_throughput(
    model: FeatureExtractor,
    images: np.ndarray,
    device: torch.device,
    batch: int,
    min_seconds: float,
) -> float:
    """GB/s of the element-wise modules (all leaf modules but fbcorr) in one batch: the
    sum over their calls of input bytes + output bytes, over the sum of their synchronised
    times; the best batch over ``min_seconds`` (at least 3 batches)."""
    totals = {"seconds": 0.0, "bytes": 0}
    starts: dict[int, float] = {}

    def pre(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        _sync(device)
        starts[id(module)] = time.perf_counter()

    def post(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        _sync(device)
        totals["seconds"] += time.perf_counter() - starts.pop(id(module))
        x = args[0]
        totals["bytes"] += x.numel() * x.element_size() + out.numel() * out.element_size()

    handles = []
    for module in model.modules():
        leaf = next(module.children(), None) is None
        if leaf and not isinstance(module, (ops.FBCorr, torch.nn.Identity)):
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
    best, calls, t_end = 0.0, 0, time.perf_counter() + min_seconds
    try:
        for index in _batches(len(images), batch):
            totals["seconds"], totals["bytes"] = 0.0, 0
            extract_features(
                model, images, index, device=device, batch_size=batch, batch_seconds=None
            )
            if calls and totals["seconds"] > 0:  # the first batch is a warm-up
                best = max(best, totals["bytes"] / totals["seconds"] / 1e9)
            calls += 1
            if calls > 3 and time.perf_counter() >= t_end:
                break
    finally:
        for h in handles:
            h.remove()
    return best


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
        # 64: what a screening worker runs on a CPU (workers.stages.default_batch_size caps
        # CPU batches at 64; the 32 px model fits it), 8 and 32 as before.
        batches = [8, 32] if quick else [8, 32, 64]
        n_fg11, n_small = (16, 1024) if quick else (64, 4096)
        images = {
            "fg11-ht-l3-1st 200px": lambda b: max(b, n_fg11),
            "pinto-cox 1-layer 32px": lambda b: max(b, n_small),
        }
    return [(name, dt, b, images[name](b)) for name in MODELS for dt in dtypes for b in batches]


def run(quick: bool = False, record: bool = True, group: bool = True) -> list[Row]:
    """Measure on the CPU (and on CUDA when available); print and optionally record.
    ``group``: then :func:`run_group` on the same devices (its own section)."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rounds = 5
    load_start = os.getloadavg()[0]
    rows: list[Row] = []
    for device in devices:
        for name, dtype, batch, n in plan(device, quick):
            arch = MODELS[name]
            model = build_model(arch, dtype=dtype, device=device)
            images = _make_images(arch, n)
            best = Row(name, str(device), str(dtype).removeprefix("torch."), batch, n)
            seconds = 0.3 if quick else 1.0
            for _ in range(rounds):
                ceiling = conv_ceiling(device, dtype, quick)
                ips, gflops = model_throughput(model, images, device, batch, seconds)
                ew = elementwise_throughput(model, images, device, batch, seconds / 2)
                bw = bandwidth(device, quick)
                best.ceiling_gflops_per_s = max(best.ceiling_gflops_per_s, ceiling)
                if ips > best.images_per_s:
                    best.images_per_s, best.gflops_per_s = ips, gflops
                best.elementwise_gb_per_s = max(best.elementwise_gb_per_s, ew)
                best.bandwidth_gb_per_s = max(best.bandwidth_gb_per_s, bw)
            rows.append(best)
            del model
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
            "element-wise GB/s",
            "copy/add GB/s",
            "ew / bw",
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
                r.elementwise_gb_per_s,
                r.bandwidth_gb_per_s,
                f"{r.elementwise_gb_per_s / r.bandwidth_gb_per_s:.2f}",
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
        "normalisation, a multiply-add = 2). Images/s: batch size / fastest batch through "
        "extract_features, host-to-device copy and preprocessing (min-max per image) "
        "included. Ceiling: the fastest of two dense conv2d shapes "
        f"{CEILING_SHAPES['cuda' if torch.cuda.is_available() else 'cpu']} (batch, in, "
        "out, side, kernel), NCHW and channels-last, measured in the same run with the "
        "same threads and dtype (CUDA float32 with TF32 off, as fbcorr). Element-wise: "
        "lnorm0, activation, lpool and lnorm calls timed alone, GB/s of their inputs read "
        "plus outputs written; copy/add: a 64 MiB float32 copy and add, bytes read plus "
        f"written. Best of {rounds} interleaved rounds per row; 1-minute load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other "
        f"processes on {os.cpu_count()} cores make every figure noisier). "
        "Random uint8 images." + (" Quick run: few images, noisy." if quick else "")
    )
    report.record("evaluator: screening feature-extraction throughput", body, enabled=record)
    if group:
        run_group(quick=quick, record=record, devices=[str(d) for d in devices])
    return rows


# -- group screening -------------------------------------------------------------------
def group_candidates(k: int) -> list[Architecture]:
    """``k`` small pinto-cox candidates at 32x32 RGB: 8 or 16 random 5x5 filters, pool 5
    or 3 (stride 2), each its own seed; 648 to 1,600 features (small, so that the ridge
    readout, which a group does not speed up, does not hide the extraction)."""
    archs = []
    for i in range(k):
        n_filters = (8, 16)[i % 2]
        pool = (5, 3)[(i // 2) % 2]
        archs.append(
            Architecture(
                input_size=32,
                input_channels=3,
                lnorm0=LNorm(3, remove_mean=False, stretch=10.0, threshold=1.0),
                layers=(
                    Layer(
                        FBCorr(n_filters, 5),
                        Activation(0.0, math.inf),
                        LPool(pool, 2.0, 2),
                        LNorm(3, remove_mean=False, stretch=1.0, threshold=1.0),
                    ),
                ),
                seed=100 + i,
            )
        )
    return archs


def _random_dataset(n: int, side: int = 32, classes: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        uri="bench:random",
        x=rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8),
        y=rng.integers(0, classes, size=n).astype(np.int64),
        is_test=np.zeros(n, dtype=bool),
        classes=tuple(str(c) for c in range(classes)),
        fingerprint="bench-random",
    )


@dataclass
class GroupRow:
    device: str
    k: int
    images: int
    one_by_one_s: float = math.inf
    group_s: float = math.inf
    group_no_streams_s: float = math.inf
    extract_alone_s: float = math.inf
    extract_group_s: float = math.inf
    max_value_diff: float = 0.0


def _one_by_one(
    archs: list[Architecture], ds: Dataset, device: str
) -> tuple[float, list[float], float]:
    """Wall seconds, values and summed ``extract_seconds`` of evaluating one by one."""
    t0 = time.perf_counter()
    results = [evaluate("screen", a, ds, device=device) for a in archs]
    seconds = time.perf_counter() - t0
    return seconds, [r.value for r in results], sum(r.metrics["extract_seconds"] for r in results)


def _grouped(
    archs: list[Architecture], ds: Dataset, device: str, streams: bool | None
) -> tuple[float, list[float], float]:
    """Wall seconds, values and the group's extraction seconds of one group."""
    t0 = time.perf_counter()
    results = screen_group([GroupCandidate(a) for a in archs], ds, device=device, streams=streams)
    seconds = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, EvalResult)]
    if len(ok) != len(results):
        bad = next(r for r in results if not isinstance(r, EvalResult))
        raise RuntimeError(f"a group candidate failed: {bad!r}")
    extract = max(r.metrics["group_extract_seconds"] for r in ok)  # one sub-group: all equal
    return seconds, [r.value for r in ok], extract


def run_group(
    quick: bool = False,
    record: bool = True,
    devices: list[str] | None = None,
    k: int = 8,
    rounds: int = 3,
) -> list[GroupRow]:
    """Screen :func:`group_candidates` ``(k)`` one by one and as a group on each device
    (default: the CPU, and CUDA when available), ``rounds`` interleaved rounds after one
    warm-up round; print and optionally record."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    archs = group_candidates(k)
    rows: list[GroupRow] = []
    load_start = os.getloadavg()[0]
    for device in devices:
        cuda = device.startswith("cuda")
        n = (4096 if quick else 16384) if cuda else (512 if quick else 1024)
        ds = _random_dataset(n)
        row = GroupRow(device, k, n)
        ways = [None, False] if cuda else [None]
        _one_by_one(archs, ds, device)  # warm-up: allocator, kernels, oneDNN / cuDNN plans
        for streams in ways:
            _grouped(archs, ds, device, streams)
        for _ in range(rounds):
            seconds, alone_values, extract = _one_by_one(archs, ds, device)
            row.one_by_one_s = min(row.one_by_one_s, seconds)
            row.extract_alone_s = min(row.extract_alone_s, extract)
            for streams in ways:
                seconds, values, extract = _grouped(archs, ds, device, streams)
                diff = max(abs(a - b) for a, b in zip(alone_values, values, strict=True))
                row.max_value_diff = max(row.max_value_diff, diff)
                if streams is None:
                    row.group_s = min(row.group_s, seconds)
                    row.extract_group_s = min(row.extract_group_s, extract)
                else:
                    row.group_no_streams_s = min(row.group_no_streams_s, seconds)
        rows.append(row)
    body = report.table(
        [
            "device",
            "K",
            "images",
            "one by one cand/s",
            "group cand/s",
            "ratio",
            "group no-streams cand/s",
            "extract alone img/s",
            "extract group img/s",
            "extract ratio",
            "max |value diff|",
        ],
        [
            [
                r.device,
                r.k,
                r.images,
                r.k / r.one_by_one_s,
                r.k / r.group_s,
                f"{r.one_by_one_s / r.group_s:.2f}",
                r.k / r.group_no_streams_s if math.isfinite(r.group_no_streams_s) else "-",
                r.k * r.images / r.extract_alone_s,
                r.k * r.images / r.extract_group_s,
                f"{r.extract_alone_s / r.extract_group_s:.2f}",
                f"{r.max_value_diff:.2g}",
            ]
            for r in rows
        ],
    )
    feats = ", ".join(str(walk(a).n_features) for a in archs)
    gpu = f"; GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    body += (
        f"\n\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}. "
        f"{k} pinto-cox candidates, 1 layer, 32x32 RGB, 8/16 5x5 filters, pool 5/3 "
        f"stride 2 ({feats} features), ridge readout with l2 chosen, search split 80/20 "
        "of random uint8 images with random labels. One by one: evaluate('screen') per "
        "candidate; group: screen_group of all K (CUDA: one stream per candidate, and "
        "streams=False: back to back on one stream); both with their default batch "
        "sizes (group on CUDA: default_batch_size of the summed working sets; on a CPU, where "
        "the models run one after another, the smallest candidate's). cand/s: K / wall "
        "seconds of the whole screening (build, features, readout, score), best of "
        f"{rounds} interleaved rounds after a warm-up; extract img/s: K x images / (sum of "
        "the candidates' extract_seconds alone | the group's extraction wall time). "
        "max |value diff|: largest difference of a candidate's score between the two ways. "
        f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        "the end." + (" Quick run." if quick else "")
    )
    report.record("evaluator: group screening of small candidates", body, enabled=record)
    return rows
