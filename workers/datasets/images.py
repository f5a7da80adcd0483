"""Image decoding shared by the ``imagefolder:`` and ``lfw:`` loaders.

``_TreeReader`` reads the files of a directory or a zip by their ``/``-separated relative
name, refusing any file (or zip member claiming to be) larger than :data:`MAX_IMAGE_BYTES`;
``_decode_images`` decodes a list of such files with Pillow into uint8 ``(N, C, H, W)``,
every image the same size, and turns any file Pillow cannot decode into a
:class:`~workers.datasets.core.DatasetError` naming it.

JPEG note: pixels (hence the fingerprint) of lossy formats depend on the decoder; workers
running the same Pillow build agree, a different libjpeg may differ by a few grey levels.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from search_space.dataset_uri import list_tree

from .core import Color, DatasetError

# One image file may not be larger than this (a zip member claiming more is refused).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
_EMPTY = np.empty(0, dtype=np.uint8)


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
