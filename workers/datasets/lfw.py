"""The ``lfw:DIR`` loader: Labeled Faces in the Wild and its pairs protocol.

Layout: ``<Name>/<Name>_NNNN.jpg`` (or .pgm/.png...) + the pairs files named by
:data:`search_space.dataset_uri.LFW_PAIRS_FILES`. Returns a finished
:class:`~workers.datasets.core.Dataset` with :attr:`~workers.datasets.core.Dataset.pairs`
set and ``is_test`` all False: View 1 (pairsDev*) is for the search, View 2's folds
(pairs.txt) for the final score. ``max_per_class`` is not supported (refused by
:func:`~workers.datasets.load.load_dataset`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from search_space.dataset_uri import LFW_PAIRS_FILES

from .core import Color, Dataset, DatasetError, Pairs, _fingerprint, _readonly
from .images import _decode_images, _TreeReader
from .lfw_pairs import _PairLine, _parse_pairs_file

_LFW_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")


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
