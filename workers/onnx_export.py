"""ONNX export of a screen model (``archsearch study export-model --format onnx``).

The graph takes what :meth:`workers.model_file.ExportedModel.predict` takes, uint8 images
``(N, C, H, W)`` of the dataset's size and colour (input ``images``, any N), and returns
the readout's class scores ``(N, n_columns)`` float32 (output ``scores``): preprocessing
(cast, bilinear resize, per-image min-max or /255), lnorm0, every layer's fbcorr ->
activation -> lpool -> lnorm, the (H, W, C) flatten, then the feature standardisation and
the linear layer of the fitted readout. Column ``j`` is the class named in the model's
metadata (``class_names``, one per column); the predicted label is the argmax.

The model's own modules (:mod:`search_space.ops`) cannot be traced as they are: their
fused paths pick a branch from the data (LPool's range check reads a value back) and use
ops ONNX lacks (``frexp`` for LPool's power-of-two scale, ``avg_pool2d`` with a
``divisor_override`` for window sums). :class:`OnnxGraph` is a twin of the model written
with exportable ops only, the same formulas (docs/design.md section 2):

* window sums: a depthwise ``Conv`` with a ones kernel (float32, as the CPU model does) or
  shifted ``Slice`` + ``Add`` (the float64 one-channel sums of a centred lnorm);
* LPool p != 1: each map divided by its largest ``|x|`` (not a power of two: the same
  overflow guard, rounding within an ulp), ``Pow``, the window sum, the root, times the
  scale back;
* LNorm: the statistics in float64 when centred (as the model does), the threshold as a
  ``Where``.

The legacy TorchScript exporter (``torch.onnx.export(dynamo=False)``, opset
:data:`OPSET`) writes it: the torch.export one needs the extra ``onnxscript`` package.
Every op of the family is exportable this way; :class:`OnnxExportError` says which part
was not when the exporter or the check refuses.

:func:`save_onnx` checks the written file with onnxruntime against the torch model (the
exported one, on the CPU, its own fused paths) before it keeps it: scores within
:data:`TOLERANCE` (relative to the largest score, at least 1) and the same predicted
column for every image, on the images given (default: a seeded batch of random pixels).
``onnx`` and ``onnxruntime`` are the optional extra ``archsearch[onnx]``.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_space.ops import LNORM_EPSILON

from .model_file import READOUT_KEYS

if TYPE_CHECKING:
    from search_space.arch import Architecture

    from .model_file import ExportedModel

OPSET = 17
TOLERANCE = 1e-4
# A protobuf file cannot exceed 2 GiB; stay well below (external data is not offered).
MAX_ONNX_BYTES = 1 << 30
CHECK_IMAGES = 8
# Images per onnxruntime call in the check: the graph holds every layer's maps of the
# whole batch at once (hundreds of MB per image for a large model at 200 px).
CHECK_BATCH = 16

__all__ = ["MAX_ONNX_BYTES", "OPSET", "TOLERANCE", "OnnxExportError", "OnnxGraph", "save_onnx"]


class OnnxExportError(ValueError):
    """The model cannot be written as ONNX, or the written graph disagrees with torch."""


def _window_sum(x: torch.Tensor, ones: torch.Tensor, stride: int) -> torch.Tensor:
    """Per-channel sum over every window (every ``stride``-th), "valid": a depthwise Conv
    with the ``(C, 1, size, size)`` kernel ``ones``, as :func:`search_space.ops._box_sum`
    on a CPU. The kernel is a buffer: the exporter needs its shape as a constant."""
    return F.conv2d(x, ones, stride=stride, groups=ones.shape[0])


def _plane_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """Window sums of a one-channel map by shifted slices (any dtype; ONNX Runtime has no
    float64 Conv), as :func:`search_space.ops._plane_box_sum`."""
    oh, ow = x.shape[-2] - size + 1, x.shape[-1] - size + 1
    acc = x[..., :, 0:ow]
    for j in range(1, size):
        acc = acc + x[..., :, j : j + ow]
    out = acc[..., 0:oh, :]
    for i in range(1, size):
        out = out + acc[..., i : i + oh, :]
    return out


class _LPool(nn.Module):
    def __init__(self, channels: int, size: int, order: float, stride: int) -> None:
        super().__init__()
        self.order, self.stride = order, stride
        self.register_buffer("ones", torch.ones((channels, 1, size, size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == 1.0:
            return _window_sum(x, self.ones, self.stride)
        a = x.abs()
        top = a.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(top > 0, top, torch.ones_like(top))
        s = _window_sum((a / scale).pow(self.order), self.ones, self.stride)
        return s.pow(1.0 / self.order) * scale


class _LNorm(nn.Module):
    def __init__(self, size: int, remove_mean: bool, stretch: float, threshold: float) -> None:
        super().__init__()
        self.size, self.remove_mean = size, remove_mean
        self.stretch, self.threshold = stretch, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = self.size, x.shape[1]
        h, w = x.shape[-2] - b + 1, x.shape[-1] - b + 1
        centre = x[:, :, b // 2 : b // 2 + h, b // 2 : b // 2 + w]
        if self.remove_mean:
            # Q - S^2/n cancels in float32 (see search_space.ops.LNorm): float64, as there.
            x64 = x.to(torch.float64)
            s = _plane_sum(x64.sum(dim=1, keepdim=True), b)
            q = _plane_sum((x64 * x64).sum(dim=1, keepdim=True), b)
            var = torch.clamp(q - s * s / float(b * b * c), min=0.0)
        else:
            s = None
            var = _plane_sum((x * x).sum(dim=1, keepdim=True), b)
        div = var.sqrt() + LNORM_EPSILON
        below = div < (self.threshold + LNORM_EPSILON) / self.stretch
        f = torch.where(below, torch.full_like(div, self.stretch), 1.0 / div)
        if s is None:
            return centre * f.to(x.dtype)
        offset = (s * f) * (-1.0 / (b * b * c))
        return centre * f.to(x.dtype) + offset.to(x.dtype)


class OnnxGraph(nn.Module):
    """uint8 images ``(N, C, H, W)`` -> class scores ``(N, n_columns)`` float32: the twin of
    an exported model made of exportable ops (see the module docstring)."""

    def __init__(self, exported: ExportedModel) -> None:
        super().__init__()
        arch: Architecture = exported.arch
        self.arch = arch
        self.lnorm0 = _lnorm(arch.lnorm0) if arch.lnorm0 is not None else None
        weights = [
            layer.fbcorr.weight.detach().to("cpu", torch.float32).clone()
            for layer in exported.model.layers
        ]
        self.layers = nn.ModuleList()
        for spec, weight in zip(arch.layers, weights, strict=True):
            layer = nn.Module()
            layer.register_buffer("weight", weight)
            layer.lpool = _LPool(
                spec.fbcorr.n_filters, spec.lpool.size, spec.lpool.order, spec.lpool.stride
            )
            layer.lnorm = _lnorm(spec.lnorm)
            layer.bounds = (_finite(spec.activation.min_out), _finite(spec.activation.max_out))
            self.layers.append(layer)
        r = exported.readout
        for name in ("W", "b", "mean", "std"):
            self.register_buffer(name, getattr(r, name).detach().to("cpu").clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        size = self.arch.input_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if self.arch.preprocess == "div255":
            x = x / 255.0
        else:
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
            x = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
        if self.lnorm0 is not None:
            x = self.lnorm0(x)
        for layer in self.layers:
            x = F.conv2d(x, layer.weight)
            lo_b, hi_b = layer.bounds
            if lo_b is not None or hi_b is not None:
                x = torch.clamp(x, min=lo_b, max=hi_b)
            x = layer.lnorm(layer.lpool(x))
        feats = x.permute(0, 2, 3, 1).flatten(1)
        # The readout as LinearClassifier.decision computes it: standardise, then W and b.
        z = (feats.to(self.W.dtype) - self.mean) / self.std
        return (z @ self.W + self.b).to(torch.float32)


def _finite(v: float) -> float | None:
    return None if np.isinf(v) else float(v)


def _lnorm(spec: Any) -> _LNorm:
    return _LNorm(spec.size, spec.remove_mean, spec.stretch, spec.threshold)


def _column_names(exported: ExportedModel) -> list[str]:
    return [exported.class_names[int(c)] for c in exported.readout.classes.cpu()]


def _metadata(exported: ExportedModel) -> dict[str, str]:
    h, w = exported.image_size
    keep = ("study_id", "trial_number", "test_value", "export_test_value", "dataset")
    return {
        "format": "archsearch-onnx",
        "class_names": json.dumps(_column_names(exported)),
        "input": json.dumps({"height": h, "width": w, "color": exported.color}),
        "arch": json.dumps(exported.arch.to_dict(), sort_keys=True),
        "provenance": json.dumps({k: exported.meta.get(k) for k in keep}, sort_keys=True),
    }


def to_onnx_bytes(exported: ExportedModel) -> bytes:
    """The ONNX model (serialized protobuf) of ``exported``, with its metadata; raises
    :class:`OnnxExportError` naming what the exporter refused."""
    import onnx

    graph = OnnxGraph(exported).eval()
    h, w = exported.image_size
    example = torch.zeros((2, exported.channels, h, w), dtype=torch.uint8)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The legacy exporter announces its deprecation on every call.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                buf,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["scores"],
                dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}},
            )
    except Exception as exc:  # the exporter raises torch.onnx errors, RuntimeError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(f"torch.onnx.export refused this model: {first}") from None
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in _metadata(exported).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if len(data) > MAX_ONNX_BYTES:
        raise OnnxExportError(
            f"the ONNX graph would be {len(data)} bytes; at most {MAX_ONNX_BYTES} are written"
        )
    return data


def check_onnx(
    data: bytes, exported: ExportedModel, images: np.ndarray
) -> tuple[float, np.ndarray]:
    """``(max relative difference, ONNX scores)`` of the graph ``data`` against the torch
    model run on the CPU on ``images``; raises :class:`OnnxExportError` beyond
    :data:`TOLERANCE` or when a predicted column differs for an image whose top two torch
    scores are further apart than twice the tolerance (closer ones may flip on rounding)."""
    import onnxruntime as ort

    x = exported.check_images(images)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = np.concatenate(
        [
            session.run(["scores"], {"images": np.ascontiguousarray(x[i : i + CHECK_BATCH])})[0]
            for i in range(0, max(1, len(x)), CHECK_BATCH)
        ]
    )
    want = _on_cpu(exported).decision(x).detach().to(torch.float32).numpy()
    if got.shape != want.shape:
        raise OnnxExportError(f"ONNX scores have shape {got.shape}, torch's {want.shape}")
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    diff = float(np.abs(got - want).max(initial=0.0)) / scale
    if not diff <= TOLERANCE:
        raise OnnxExportError(
            f"the ONNX graph's scores differ from torch's by {diff:.3g} (relative to the "
            f"largest score), more than {TOLERANCE:g}: not written"
        )
    # A label may flip only where torch's top two scores are closer than the tolerance.
    top2 = np.sort(want, axis=1)[:, -2:] if want.shape[1] > 1 else np.zeros((len(want), 2))
    clear = (top2[:, 1] - top2[:, 0]) > 2 * TOLERANCE * scale
    if not np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear]):
        raise OnnxExportError("the ONNX graph predicts another label than torch: not written")
    return diff, got


def _on_cpu(exported: ExportedModel) -> ExportedModel:
    """``exported`` itself on the CPU, else a CPU copy: onnxruntime runs on the CPU, and
    a GPU's arithmetic (TF32 convolutions, other summation orders) is not the reference."""
    if exported.readout.W.device.type == "cpu":
        return exported
    readout = copy.copy(exported.readout)
    for key in READOUT_KEYS:
        setattr(readout, key, getattr(readout, key).cpu())
    model = copy.deepcopy(exported.model).cpu()
    return dataclasses.replace(exported, model=model, readout=readout)


def _random_images(exported: ExportedModel) -> np.ndarray:
    h, w = exported.image_size
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(CHECK_IMAGES, exported.channels, h, w), dtype=np.uint8)


def save_onnx(
    exported: ExportedModel, path: str | Path, *, check_images: np.ndarray | None = None
) -> float:
    """Write ``exported`` (a screen model) as ONNX to ``path`` after checking it against
    torch with onnxruntime on ``check_images`` (default: seeded random pixels); returns
    the largest relative score difference. Raises :class:`OnnxExportError` (nothing is
    written) and ``ImportError`` naming the extra when onnx / onnxruntime are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs onnx and onnxruntime: pip install 'archsearch[onnx]' ({exc})"
        ) from None
    if exported.protocol != "screen":
        raise OnnxExportError(
            f"ONNX export supports screen models only, not {exported.protocol} models"
        )
    data = to_onnx_bytes(exported)
    images = _random_images(exported) if check_images is None else check_images
    diff, _ = check_onnx(data, exported, images)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return diff
