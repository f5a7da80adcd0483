"""float64 NumPy references of the model family, written straight from docs/design.md section 2.

Deliberately naive: explicit loops over output windows, one image at a time, in (C, H, W)
float64. They share no code with ``search_space.ops`` (no pooling or conv primitives, no
scaling tricks) so that an error in the torch implementation cannot cancel here.

Each reference returns ``(value, magnitude)``. ``magnitude`` bounds what float32 rounding
can do to that element: for a sum of mixed-sign terms it is the sum of |terms| (a float32
sum is accurate to ~eps * sum|terms|, not to eps * |sum|), so a relative check against it is
as strict as float32 arithmetic allows and no stricter. For non-negative terms it equals
``|value|``: the check is plain relative error there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-4  # docs/design.md: divisor epsilon of lnorm


def fbcorr(x: np.ndarray, filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, C, H, W); filters (k, fs, fs, C) -> (N, k, H-fs+1, W-fs+1), correlation."""
    n, c, h, w = x.shape
    k, fs, _, depth = filters.shape
    assert depth == c
    oh, ow = h - fs + 1, w - fs + 1
    out = np.zeros((n, k, oh, ow))
    mag = np.zeros((n, k, oh, ow))
    f = filters.astype(np.float64)
    for b in range(n):
        xhwc = x[b].transpose(1, 2, 0)
        for i in range(oh):
            for j in range(ow):
                terms = f * xhwc[i : i + fs, j : j + fs, :][None]
                out[b, :, i, j] = terms.sum(axis=(1, 2, 3))
                mag[b, :, i, j] = np.abs(terms).sum(axis=(1, 2, 3))
    return out, mag


def activation(x: np.ndarray, min_out: float, max_out: float) -> np.ndarray:
    return np.clip(x, min_out, max_out)


def lpool(x: np.ndarray, size: int, order: float, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum_window x^p)^(1/p) every stride-th window; p == 1: plain sum, else |x|^p."""
    n, c, h, w = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    out = np.zeros((n, c, oh, ow))
    mag = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * stride : i * stride + size, j * stride : j * stride + size]
            if order == 1:
                out[:, :, i, j] = win.sum(axis=(2, 3))
                mag[:, :, i, j] = np.abs(win).sum(axis=(2, 3))
            else:
                out[:, :, i, j] = (np.abs(win) ** order).sum(axis=(2, 3)) ** (1.0 / order)
                mag[:, :, i, j] = out[:, :, i, j]
    return out, mag


def lnorm(
    x: np.ndarray, size: int, remove_mean: bool, stretch: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Divisive normalisation; returns (out, magnitude, divisor before the threshold test).

    The centred sum of squares is computed as sum((v - mean)^2), the float64-stable form of
    DESIGN's "sum of squares minus the mean term" (equal in exact arithmetic).
    """
    n, c, h, w = x.shape
    oh, ow = h - size + 1, w - size + 1
    off = size // 2
    out = np.zeros((n, c, oh, ow))
    mag = np.zeros((n, c, oh, ow))
    divs = np.zeros((n, 1, oh, ow))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                nb = x[b, :, i : i + size, j : j + size]
                centre = x[b, :, i + off, j + off]
                if remove_mean:
                    mean = nb.mean()
                    num = centre - mean
                    num_mag = np.abs(centre) + np.abs(nb).mean()
                    var = ((nb - mean) ** 2).sum()
                else:
                    num = centre
                    num_mag = np.abs(centre)
                    var = (nb**2).sum()
                div = (math.sqrt(max(var, 0.0)) + EPS) * stretch
                divs[b, 0, i, j] = div
                d = 1.0 if div < threshold + EPS else div
                out[b, :, i, j] = stretch * num / d
                mag[b, :, i, j] = stretch * num_mag / d
    return out, mag, divs


@dataclass
class ForwardTrace:
    """Result of :func:`model_forward`: features and the margins of every threshold test."""

    features: np.ndarray
    magnitude: np.ndarray
    min_threshold_margin: float  # min over lnorms of |div - (thr + eps)| / (thr + eps)


def model_forward(x: np.ndarray, arch, filters_per_layer: list[np.ndarray]) -> ForwardTrace:
    """The whole model in float64: lnorm0, then fbcorr -> clamp -> lpool -> lnorm per layer,
    flattened in (H, W, C) order. ``arch`` is a ``search_space.arch.Architecture``.

    The magnitude is only propagated as |value|: it is used as a floor for elements that
    cancel in the last op, the whole-model tolerance is justified in the test.
    """
    margins: list[float] = []

    def norm(v: np.ndarray, spec) -> np.ndarray:
        out, _, divs = lnorm(v, spec.size, spec.remove_mean, spec.stretch, spec.threshold)
        t = spec.threshold + EPS
        margins.append(float(np.min(np.abs(divs - t) / t)))
        return out

    v = x.astype(np.float64)
    if arch.lnorm0 is not None:
        v = norm(v, arch.lnorm0)
    for layer, filters in zip(arch.layers, filters_per_layer, strict=True):
        v, _ = fbcorr(v, filters)
        v = activation(v, layer.activation.min_out, layer.activation.max_out)
        v, _ = lpool(v, layer.lpool.size, layer.lpool.order, layer.lpool.stride)
        v = norm(v, layer.lnorm)
    feats = v.transpose(0, 2, 3, 1).reshape(v.shape[0], -1)
    return ForwardTrace(feats, np.abs(feats), min(margins) if margins else math.inf)
