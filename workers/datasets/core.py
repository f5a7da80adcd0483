"""The in-memory form every loader produces, and the pieces all of them share.

Holds :class:`Dataset` (and :class:`Pairs`, :class:`DatasetError`), the search split
(:func:`search_split`), and the shared steps of loading: ``_Raw`` (what a format loader
returns), ``_finish`` (split, cap, colour, resize, check, fingerprint), the stratified and
capped selections and the fingerprint. Imports no other module of the package.

Contract of a :class:`Dataset`: ``x`` uint8 ``(N, C, H, W)`` (``C`` = 1 for
``color="gray"``, 3 for ``"rgb"``, every image the same ``H, W``), ``y`` int64 class
indices, ``is_test`` (the held-out split: the format's official one where it has one, else
a seeded stratified ``test_fraction``), the class names and a ``fingerprint``: a sha256 over
the shape, the pixels, the labels, the split, the class names (and the LFW pairs) that is
identical on every machine that decodes the same data the same way. The URI or path is not
part of it, so two workers that keep the data at different places agree.

The search sees only the non-test images (:func:`search_split`); ``is_test`` is for the
final evaluation of the top-k trials. Arrays in a :class:`Dataset` are read-only, so a
:class:`~workers.datasets.DatasetCache` can hand the same object to every trial.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

# The splits are pure and shared with the coordinator (search_space.splits); the loaders
# keep their historical private names.
from search_space.splits import cap_indices as _cap_indices
from search_space.splits import search_split_indices
from search_space.splits import stratified_mask as _stratified_mask

Color = Literal["gray", "rgb"]
MaxPerClass = int | Mapping[str, int] | None

_FINGERPRINT_VERSION = b"archsearch-dataset-v1\0"


class DatasetError(ValueError):
    """The data named by a URI cannot be loaded; the message says which, where and why."""


@dataclass(frozen=True, eq=False)
class Pairs:
    """LFW verification pairs, as indices into :attr:`Dataset.x`.

    ``dev_train`` / ``dev_test`` (View 1: pairsDevTrain / pairsDevTest) are ``(M, 2)``
    int64 with ``*_same`` ``(M,)`` bool; ``folds`` (View 2: pairs.txt) holds one
    ``(pairs (K, 2), same (K,))`` tuple per fold, in file order.
    """

    dev_train: np.ndarray
    dev_train_same: np.ndarray
    dev_test: np.ndarray
    dev_test_same: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Loaded images and labels; see the module docstring for the contract of each field.

    Compared by identity (``eq=False``): arrays have no single truth value. Compare
    ``fingerprint`` to know whether two loads hold the same data.
    """

    uri: str
    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)
    is_test: np.ndarray  # bool (N,)
    classes: tuple[str, ...]
    fingerprint: str
    pairs: Pairs | None = None

    @property
    def train_indices(self) -> np.ndarray:
        """Indices of the non-test images (what the search may see)."""
        return np.flatnonzero(~self.is_test)

    @property
    def test_indices(self) -> np.ndarray:
        """Indices of the held-out test images."""
        return np.flatnonzero(self.is_test)


def search_split(
    ds: Dataset, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` index arrays into ``ds.x`` for the search.

    Only non-test images are used: the search never sees ``is_test``. Stratified by ``y``
    (each class split in the same proportion, at least one image on each side for a class
    with two or more), sorted, disjoint, and a pure function of ``(ds.y, ds.is_test,
    validation_fraction, seed)`` — so identical for the same fingerprint on every worker.
    """
    if not (0.0 < validation_fraction < 1.0):
        raise DatasetError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise DatasetError(f"seed must be an integer >= 0, got {seed!r}")
    return search_split_indices(ds.y, ds.is_test, validation_fraction, int(seed))


# ======================================================================================
# Shared pieces: the raw result of a loader, splits, caps, colour, size, fingerprint
# ======================================================================================


@dataclass
class _Raw:
    x: np.ndarray  # uint8 (N, C, H, W), C in {1, 3}
    y: np.ndarray  # int64
    is_test: np.ndarray | None  # None: no official split
    classes: tuple[str, ...]
    converted: bool = False  # colour, size and caps already applied (imagefolder)


def _caps(uri: str, max_per_class: MaxPerClass) -> dict[bool, int] | None:
    """``{is_test: cap}`` from the ``max_per_class`` argument (None: no cap at all)."""
    if max_per_class is None:
        return None
    if isinstance(max_per_class, Mapping):
        unknown = set(max_per_class) - {"train", "test"}
        if unknown:
            raise DatasetError(f"{uri}: max_per_class keys must be 'train'/'test', got {unknown}")
        caps = {split == "test": n for split, n in max_per_class.items()}
    else:
        caps = {False: max_per_class, True: max_per_class}
    for n in caps.values():
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            raise DatasetError(f"{uri}: max_per_class must be integers >= 0, got {max_per_class}")
    return caps


def _to_color(x: np.ndarray, color: Color) -> np.ndarray:
    """(N, C, H, W) uint8 with C in {1, 3} -> C = 1 or 3 as asked.

    RGB -> gray uses Pillow's integer formula for ``convert("L")`` (ITU-R 601-2 luma), so
    an npz / cifar10 image and the same image read from a file give the same pixels.
    """
    c = x.shape[1]
    if color == "gray" and c == 3:
        r, g, b = (x[:, i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]
    if color == "rgb" and c == 1:
        return np.repeat(x, 3, axis=1)
    return x


def _resize_array(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize every image of (N, C, H, W) uint8 to ``size`` = (H, W), bilinear (Pillow)."""
    from PIL import Image

    h, w = size
    out = np.empty((x.shape[0], x.shape[1], h, w), dtype=np.uint8)
    for i in range(x.shape[0]):
        for ch in range(x.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(x[i, ch]), mode="L")
            out[i, ch] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return out


def _fingerprint(
    x: np.ndarray,
    y: np.ndarray,
    is_test: np.ndarray,
    classes: tuple[str, ...],
    pairs: Pairs | None,
) -> str:
    """sha256 hex over a version tag, shape + class names (JSON), x, y (<i8), is_test (u1)
    and, for lfw, every pairs array; the same bytes on every machine for the same data."""
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    h.update(json.dumps({"shape": list(x.shape), "classes": list(classes)}).encode())
    h.update(np.ascontiguousarray(x, dtype=np.uint8).data)
    h.update(y.astype("<i8").tobytes())
    h.update(is_test.astype(np.uint8).tobytes())
    if pairs is not None:
        arrays = [pairs.dev_train, pairs.dev_train_same, pairs.dev_test, pairs.dev_test_same]
        for p, s in pairs.folds:
            arrays += [p, s]
        for a in arrays:
            h.update(json.dumps(list(a.shape)).encode())
            h.update(a.astype("<i8").tobytes())
    return h.hexdigest()


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _finish(
    uri: str,
    raw: _Raw,
    *,
    color: Color,
    size: int | None,
    caps: dict[bool, int] | None,
    fraction: float,
    seed: int,
) -> Dataset:
    """Split, cap, convert, resize, check and fingerprint a loader's result."""
    x, y = raw.x, raw.y.astype(np.int64, copy=False)
    is_test = raw.is_test
    if is_test is None:
        is_test = _stratified_mask(y, fraction, seed, stream=0)
    if not raw.converted:
        if caps is not None:
            keep = _cap_indices(y, is_test, caps, seed)
            x, y, is_test = x[keep], y[keep], is_test[keep]
        x = _to_color(x, color)
        if size is not None and x.shape[2:] != (size, size):
            x = _resize_array(x, (size, size))
    x = np.ascontiguousarray(x, dtype=np.uint8)
    n = x.shape[0]
    if n == 0:
        raise DatasetError(f"{uri}: no images left to load")
    if y.shape != (n,) or is_test.shape != (n,):
        raise DatasetError(f"{uri}: {n} images but {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= len(raw.classes):
        raise DatasetError(f"{uri}: labels outside 0..{len(raw.classes) - 1}")
    is_test = np.ascontiguousarray(is_test, dtype=bool)
    return Dataset(
        uri=uri,
        x=_readonly(x),
        y=_readonly(np.ascontiguousarray(y)),
        is_test=_readonly(is_test),
        classes=raw.classes,
        fingerprint=_fingerprint(x, y, is_test, raw.classes, None),
    )


def _digit_classes(n: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(n))
