"""The ``npz:PATH`` loader: ``x_train, y_train, x_test, y_test`` (+ optional ``classes``).

The file is untrusted: it is read with ``allow_pickle=False`` (an object array is refused),
and every layout, dtype, value range and label problem is a
:class:`~workers.datasets.core.DatasetError` naming the file and the array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_space.dataset_uri import NPZ_KEYS

from .core import DatasetError, _digit_classes, _Raw


def _load_npz(uri: str, path: Path) -> _Raw:
    """``x_train, y_train, x_test, y_test`` (+ optional ``classes``, a string array).

    Read with ``allow_pickle=False`` (an object array is refused). x: (N, H, W),
    (N, H, W, C) or (N, C, H, W) with C in {1, 3}; uint8, another integer type within
    0..255, or float (all values <= 1.0 -> scaled by 255, else taken as 0..255, rounded).
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DatasetError(f"{uri}: {path} is a single .npy array, not an .npz")
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DatasetError(
                    f"{uri}: {path} lacks the array(s) {missing}; it holds {sorted(npz.files)}"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
            names = npz["classes"] if "classes" in npz.files else None
    except DatasetError:
        raise
    except Exception as exc:  # ValueError (object arrays), BadZipFile, OSError, ...
        raise DatasetError(f"{uri}: cannot read {path}: {exc}") from exc
    xs = [_npz_images(uri, path, arrays[k], k) for k in ("x_train", "x_test")]
    ys = [_npz_labels(uri, path, arrays[k], k) for k in ("y_train", "y_test")]
    for xk, yk, x, y in zip(("x_train", "x_test"), ("y_train", "y_test"), xs, ys, strict=True):
        if len(x) != len(y):
            raise DatasetError(f"{uri}: {path}: {xk} has {len(x)} images but {yk} {len(y)} labels")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(
            f"{uri}: {path}: x_train images are {xs[0].shape[1:]} (C, H, W) but x_test "
            f"images are {xs[1].shape[1:]}"
        )
    floats = [x for x in xs if x.dtype.kind == "f"]
    scale = 255.0 if floats and max(float(x.max(initial=0.0)) for x in floats) <= 1.0 else 1.0
    xs = [
        _npz_to_uint8(f"{uri}: {path}: {k}", x, scale)
        for k, x in zip(("x_train", "x_test"), xs, strict=True)
    ]
    y = np.concatenate(ys)
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DatasetError(f"{uri}: {path}: 'classes' must be a 1-D string array")
        classes = tuple(str(n) for n in names.tolist())
    else:
        classes = _digit_classes(int(y.max(initial=0)) + 1)
    if y.size and y.max() >= len(classes):
        raise DatasetError(f"{uri}: {path}: label {int(y.max())} but only {len(classes)} classes")
    is_test = np.concatenate([np.zeros(len(ys[0]), bool), np.ones(len(ys[1]), bool)])
    return _Raw(x=np.concatenate(xs), y=y, is_test=is_test, classes=classes)


def _npz_images(uri: str, path: Path, x: np.ndarray, key: str) -> np.ndarray:
    """Any accepted layout -> (N, C, H, W), dtype unchanged."""
    if x.dtype.kind not in "uif":
        raise DatasetError(f"{uri}: {path}: {key} has dtype {x.dtype}; need uint8 or float")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if first and not last:
            return x
        if last and not first:
            return x.transpose(0, 3, 1, 2)
        raise DatasetError(
            f"{uri}: {path}: {key} has shape {x.shape}: cannot tell the channel axis "
            "(need (N,H,W), (N,H,W,C) or (N,C,H,W) with exactly one axis of 1 or 3 channels)"
        )
    raise DatasetError(f"{uri}: {path}: {key} has shape {x.shape}; need 3 or 4 dimensions")


def _npz_to_uint8(what: str, x: np.ndarray, scale: float) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"{what} contains NaN or infinite values")
        x = np.rint(x * scale)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DatasetError(
            f"{what} has values in {x.min()}..{x.max()}; need 0..255 (or floats in 0..1)"
        )
    return x.astype(np.uint8)


def _npz_labels(uri: str, path: Path, y: np.ndarray, key: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise DatasetError(
            f"{uri}: {path}: {key} must be a 1-D integer array, got {y.dtype} {y.shape}"
        )
    if y.size and y.min() < 0:
        raise DatasetError(f"{uri}: {path}: {key} has negative labels")
    return y.astype(np.int64)
