"""The ``cifar10:DIR`` loader: the official CIFAR-10 python batches.

``data_batch_1..5`` (train), ``test_batch`` (test) and ``batches.meta`` (class names), as
listed by :data:`search_space.dataset_uri.CIFAR10_FILES`, found by
:func:`search_space.dataset_uri.cifar10_dir`. Every file is unpickled through
:func:`workers.datasets.safe_pickle.safe_unpickle`, which can build numpy arrays and
nothing else; the batches' keys, shapes and labels are then checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from search_space.dataset_uri import CIFAR10_FILES, cifar10_dir

from .core import DatasetError, _Raw
from .safe_pickle import safe_unpickle


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
