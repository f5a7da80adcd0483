"""The ``imagefolder:PATH`` loader: class folders in a directory or a .zip.

Layout (decided by :func:`search_space.dataset_uri.imagefolder_layout`):
``train/<class>/*`` + ``test/<class>/*`` (official split) or ``<class>/*`` (split by the
seeded fraction), possibly under wrapper folders. Unlike the other loaders it applies
colour, size and the per-class caps itself (``_Raw.converted``), so only the chosen files
are decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_space.dataset_uri import DatasetURIError, imagefolder_layout

from .core import Color, DatasetError, _cap_indices, _Raw, _stratified_mask
from .images import _decode_images, _TreeReader


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
