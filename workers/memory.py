"""Memory of one evaluation: the peak it reached, and an estimate made before it starts.

``PeakMemory`` measures the process's peak resident memory (and, on CUDA, the peak of the
caching allocator) over a block of code: Linux resets the high-water mark ``VmHWM`` when
``5`` is written to ``/proc/self/clear_refs``, so the peak of each trial is read exactly,
not sampled. Where that file cannot be written (another OS, a hardened kernel), a thread
samples ``VmRSS`` every 20 ms instead, and the metrics say which method was used.

``estimate_bytes`` is the upper estimate of what an evaluation adds to the process's
resident memory (features, the extraction batch, the readout's copies and factorisations),
used by the worker's ``--max-memory`` budget to refuse a candidate before it starts. The
factors below were measured on this project's code paths (docs/design.md section 4,
"Memory"), and ``tests/workers/test_memory.py`` checks that the estimate stays above the
measured peak and within a small factor of it.

``parse_size`` reads sizes such as ``3GiB``, ``2.5G``, ``800MB`` or ``512M`` (the worker's
``--max-memory``).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from search_space.arch import ShapeReport

if TYPE_CHECKING:  # torch is imported only where CUDA is measured: the daemon starts fast
    import torch

MiB = 1 << 20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

# CPU inference runs in chunks whose maps stay within search_space.model.CPU_CHUNK_BYTES;
# a chunk holds at most this many maps of that size alive at once (conv output, pooled,
# normalised, and the local sums of the fused ops), measured on FG11 and pinto-cox models.
_CPU_LIVE_MAPS = 4
# Without chunking (CUDA, or a model with gradients) each image keeps about this many
# float32 copies of its largest map alive (the same rule as stages.default_batch_size).
_DEVICE_LIVE_MAPS = 6
# The linear readouts (workers/readout.py) hold, beside the caller's feature matrix, the
# inner split's two row sets, a standardised copy of each, and a standardised copy of all
# rows for the refit: at most this many feature matrices' worth of float32 at once.
_READOUT_COPIES = 3
# The Gram (or kernel) matrix in float32 and float64, its eigenvectors and the workspace
# of eigh (measured: screen on 3,200 rows, 3,200 features: 4 copies).
_GRAM_COPIES = 4


def _device_type(device: torch.device | str) -> str:
    """``"cuda"`` for ``"cuda:1"`` or ``torch.device("cuda", 1)``, without importing torch."""
    return str(device).split(":", 1)[0]


def _status_kib(field_name: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    found = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def resident_bytes() -> int:
    """This process's resident memory now (``VmRSS``); 0 where ``/proc`` is missing."""
    kib = _status_kib("VmRSS")
    return (kib or 0) * 1024


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


@dataclass
class PeakMemory:
    """Context manager: the peak resident memory of this process inside the block.

    ``peak_rss`` (bytes) is the process's whole resident set at its peak (libraries and
    data already loaded included); ``peak_cuda`` the most bytes torch's allocator held on
    ``device`` (CUDA only, else ``None``). ``method`` is ``"hwm"`` (exact, Linux) or
    ``"sampled"`` (every 20 ms; short peaks can be missed). Not re-entrant: resetting the
    high-water mark inside a measured block would lose the outer block's peak, so one
    worker measures one trial at a time.
    """

    device: torch.device | str = "cpu"
    peak_rss: int = 0
    peak_cuda: int | None = None
    method: str = "hwm"
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _sampler: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> PeakMemory:
        if _device_type(self.device) == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        if _reset_high_water_mark():
            self.method = "hwm"
        else:
            self.method = "sampled"
            self.peak_rss = resident_bytes()
            self._sampler = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_rss = max(self.peak_rss, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak_rss = max(self.peak_rss, resident_bytes())
        else:
            self.peak_rss = (_status_kib("VmHWM") or 0) * 1024
        if _device_type(self.device) == "cuda":
            import torch

            self.peak_cuda = int(torch.cuda.max_memory_allocated(self.device))

    def metrics(self) -> dict[str, float | str]:
        """The trial metrics: ``peak_rss_mb``, ``peak_memory_method`` and, on CUDA,
        ``peak_cuda_mb`` (MiB)."""
        out: dict[str, float | str] = {
            "peak_rss_mb": round(self.peak_rss / MiB, 1),
            "peak_memory_method": self.method,
        }
        if self.peak_cuda is not None:
            out["peak_cuda_mb"] = round(self.peak_cuda / MiB, 1)
        return out


# -- the estimate -------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """An upper estimate of the bytes an evaluation adds: ``held`` parts live through the
    whole evaluation (the feature matrix), ``stages`` one after the other (extraction,
    then the readout), so the peak is all of ``held`` plus the largest stage."""

    held: dict[str, int] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.held.values()) + max(self.stages.values(), default=0)

    def describe(self) -> str:
        """``"1234 MiB (features 800 + the largest of extraction 34, readout 400)"``."""
        held = " + ".join(f"{k} {v / MiB:.0f}" for k, v in self.held.items())
        stages = ", ".join(f"{k} {v / MiB:.0f}" for k, v in self.stages.items())
        inner = " + ".join(x for x in (held, f"the largest of {stages}" if stages else "") if x)
        return f"{self.total / MiB:.0f} MiB ({inner or 'nothing on the host'})"


def extraction_bytes(rep: ShapeReport, batch_size: int, device: torch.device | str) -> int:
    """Working set of one extraction batch of ``batch_size`` images beyond the feature
    matrix: the float32 input batch and, on CPU, a few maps of one inference chunk
    (``search_space.model.CPU_CHUNK_BYTES``); elsewhere :data:`_DEVICE_LIVE_MAPS` maps of
    each image of the batch."""
    from search_space.model import CPU_CHUNK_BYTES

    _, h, w, c = rep.shapes[0]
    batch_in = batch_size * h * w * c * (4 + 1)  # the uint8 batch and its float32 copy
    batch_out = batch_size * rep.n_features * 4
    if _device_type(device) == "cpu":
        chunk = max(CPU_CHUNK_BYTES, rep.activation_bytes)
        return batch_in + batch_out + _CPU_LIVE_MAPS * chunk
    return batch_in + batch_out + _DEVICE_LIVE_MAPS * batch_size * rep.activation_bytes


def readout_bytes(n_rows: int, n_features: int) -> int:
    """Peak of :func:`workers.readout.select_and_fit` on ``(n_rows, n_features)`` float32
    features beyond the matrix itself: :data:`_READOUT_COPIES` standardised copies and the
    float64 Gram or kernel matrix of the smaller side with its factorisation."""
    side = min(n_rows, n_features)
    return _READOUT_COPIES * n_rows * n_features * 4 + _GRAM_COPIES * side * side * 8


def parse_size(text: str) -> int:
    """``"3GiB"`` / ``"3G"`` / ``"3000M"`` / ``"800MB"`` / ``"1.5T"`` / ``"1048576"`` ->
    bytes. K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB powers of
    1000; a bare number is bytes. Raises ``ValueError`` naming the accepted forms."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", text, re.IGNORECASE)
    if not found or (found.group(3) and not found.group(2)):
        raise ValueError(f"{text!r} is not a size: use e.g. 3GiB, 2.5G, 800MB or a number of bytes")
    number, prefix, suffix = float(found.group(1)), found.group(2).upper(), found.group(3)
    power = "KMGT".index(prefix) + 1 if prefix else 0
    base = 1000 if suffix.upper() == "B" else 1024
    value = int(number * base**power)
    if value < 1:
        raise ValueError(f"{text!r}: a size must be at least 1 byte")
    return value


def training_bytes(rep: ShapeReport, micro_batch: int, n_classes: int) -> int:
    """The ``train`` protocol's peak beyond the data: the filters and the linear head with
    their gradients and AdamW's two moments (4 copies), and every map of a micro-batch
    kept for the backward pass with its gradient (2 copies of each stage's map)."""
    params = 4 * 4 * (rep.n_params + rep.n_features * n_classes)
    maps = sum(h * w * c * 4 for _, h, w, c in rep.shapes)
    return params + 2 * micro_batch * maps


def estimate_bytes(
    protocol: str,
    rep: ShapeReport,
    *,
    n_images: int,
    n_fit: int,
    batch_size: int,
    device: torch.device | str,
    n_classes: int = 2,
) -> MemoryEstimate:
    """The host memory a ``screen`` or ``train`` evaluation adds, by part (``pairs`` has
    its own readout estimate: :func:`workers.pairs.pairs_peak_bytes`).

    ``n_images``: images whose features are extracted; ``n_fit``: rows the readout is
    fitted on; ``batch_size``: the extraction batch (train: the micro-batch). On a GPU the features
    and the readout live in device memory, where out of memory halves the batch or makes
    the candidate infeasible: only host parts are counted, so the estimate is empty.
    """
    if _device_type(device) != "cpu":
        return MemoryEstimate()
    if protocol == "train":
        return MemoryEstimate(stages={"training": training_bytes(rep, batch_size, n_classes)})
    held = {"features": n_images * rep.n_features * 4}
    stages = {
        "extraction": extraction_bytes(rep, batch_size, device),
        "readout": readout_bytes(n_fit, rep.n_features),
    }
    return MemoryEstimate(held, stages)
