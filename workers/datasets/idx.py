"""The ``idx:DIR`` loader: MNIST / Fashion-MNIST as the four IDX files (plain or .gz).

Files named by :data:`search_space.dataset_uri.IDX_FILES`; ``t10k`` is the official test
split. Magic, dimension count and data length are checked, and no file may claim more than
:data:`MAX_IDX_BYTES` of data.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from search_space.dataset_uri import IDX_FILES

from .core import DatasetError, _digit_classes, _Raw

# An IDX file may not claim more than this many bytes of data.
MAX_IDX_BYTES = 8 * 1024**3


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
