"""The entry point: :func:`load_dataset` dispatches a dataset URI to its format's loader.

The URI is parsed (and its scheme validated) by
:func:`search_space.dataset_uri.parse_dataset_uri`; this module only maps the parsed scheme
to a loader (``_BUILTINS`` for ``builtin:``, ``_PATH_LOADERS`` for the plain path formats,
and the ``imagefolder`` and ``lfw`` loaders, which take colour and size themselves) and
finishes the result with ``_finish``. :class:`DatasetCache` keeps loaded datasets so a
worker loads each study's data once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from search_space.dataset_uri import DatasetURIError, parse_dataset_uri

from .builtin import _BUILTINS
from .cifar10 import _load_cifar10
from .core import Color, Dataset, DatasetError, MaxPerClass, _caps, _finish, _Raw
from .idx import _load_idx
from .imagefolder import _load_imagefolder
from .lfw import _load_lfw
from .npz import _load_npz

_PATH_LOADERS: dict[str, Callable[[str, Path], _Raw]] = {
    "npz": _load_npz,
    "idx": _load_idx,
    "cifar10": _load_cifar10,
}


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


class DatasetCache:
    """Keeps loaded datasets in memory so a worker loads each study's data once.

    ``get`` takes the arguments of :func:`load_dataset` and returns the same
    :class:`Dataset` object for the same arguments. At most ``max_entries`` datasets are
    kept (least recently used dropped first). Thread-safe: concurrent ``get`` calls for
    the same arguments load once; calls for other arguments do not wait for that load (the
    worker loads the next study's data in the background while a trial runs).
    """

    def __init__(self, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], Dataset] = OrderedDict()
        self._lock = threading.Lock()
        # Keys being loaded now, each with the event its loader sets when done.
        self._loading: dict[tuple[Any, ...], threading.Event] = {}

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
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key]
                loading = self._loading.get(key)
                if loading is None:
                    self._loading[key] = threading.Event()
                    break
            loading.wait()  # another thread loads these arguments: take its result
        try:
            ds = load_dataset(
                uri,
                color=color,
                test_fraction=test_fraction,
                seed=seed,
                size=size,
                max_per_class=max_per_class,
            )
            with self._lock:
                self._entries[key] = ds
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return ds
        finally:
            # On failure the waiters find no entry and the first of them loads again
            # (and raises the error itself).
            with self._lock:
                self._loading.pop(key).set()

    def clear(self) -> None:
        """Forget every loaded dataset."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
