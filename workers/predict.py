"""Image files in, labels out: the ``archsearch predict`` side of an exported model.

:func:`image_paths` expands the command line (files, and directories searched
recursively for image files, sorted); :func:`read_images` decodes them with Pillow into the
uint8 ``(N, C, H, W)`` batch :meth:`workers.model_file.ExportedModel.predict` takes.
:func:`read_pair_file` reads the pairs a pairs model compares (``predict --pairs FILE``).

Size and colour are checked, not fixed: an image whose size is not the size of the
model's dataset images, or whose channels are not the model's (1 for a gray model: modes
``1``, ``L``, ``I``, ``F``...; 3 for an RGB one), is a :class:`PredictInputError` naming
the file and both shapes. The dataset loaders do not resize a dataset to the model (the
model resizes its input itself, but from the dataset's size, which the readout was fitted
on), so a silently resized image would be a different input than the model was scored
on. ``convert=True`` opts in to what the ``imagefolder:`` loader does with an odd file:
Pillow ``convert("L")`` / ``convert("RGB")`` and a bilinear resize to the dataset size.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datasets.images import MAX_IMAGE_BYTES

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
)
# Pillow modes whose pixels have one channel (alpha aside); every other mode is colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

__all__ = ["PredictInputError", "image_paths", "read_images", "read_pair_file"]

# A pairs file larger than this is not a list of image pairs.
MAX_PAIR_FILE_BYTES = 64 << 20


class PredictInputError(ValueError):
    """An input that cannot be labelled by this model; the message names the file."""


def image_paths(args: Sequence[str | Path]) -> list[Path]:
    """Files as given, directories expanded to their image files (recursive, sorted by
    path). Raises :class:`PredictInputError` for a missing path or no image at all."""
    out: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise PredictInputError(f"{p}: no image files in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise PredictInputError(f"{p}: no such file or directory")
    if not out:
        raise PredictInputError("no images given")
    return out


def read_images(
    paths: Sequence[Path], *, color: str, size: tuple[int, int], convert: bool = False
) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` of ``paths`` for a model taking ``color`` images of ``size``
    ``(H, W)``. Raises :class:`PredictInputError` for a file Pillow cannot decode, too
    large, or (without ``convert``) of the wrong size or channel count."""
    from PIL import Image

    mode = "L" if color == "gray" else "RGB"
    channels = 1 if color == "gray" else 3
    h, w = size
    out = np.empty((len(paths), h, w, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise PredictInputError(f"{path}: larger than {MAX_IMAGE_BYTES} bytes")
            with Image.open(io.BytesIO(path.read_bytes())) as img:
                img.load()
                have = 1 if img.mode in GRAY_MODES else 3
                if not convert and have != channels:
                    raise PredictInputError(
                        f"{path}: {have} channel(s) (mode {img.mode}); this model takes "
                        f"{channels} ({color}); pass --convert to convert it as the "
                        "imagefolder loader does"
                    )
                if not convert and img.size != (w, h):
                    raise PredictInputError(
                        f"{path}: {img.size[1]}x{img.size[0]} pixels; this model takes "
                        f"{h}x{w} (its dataset's image size); pass --convert to resize it"
                    )
                pic = img.convert(mode) if img.mode != mode else img
                if pic.size != (w, h):
                    pic = pic.resize((w, h), Image.Resampling.BILINEAR)
                out[i] = np.asarray(pic).reshape(h, w, channels)
        except PredictInputError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
            raise PredictInputError(
                f"{path}: cannot decode the image: {type(exc).__name__}: {exc}"
            ) from None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def read_pair_file(path: str | Path) -> list[tuple[Path, Path]]:
    """The pairs of a pairs file: one pair per line, ``IMG1 IMG2`` (whitespace) or CSV
    ``IMG1,IMG2`` (quoted fields for names with commas or spaces); blank lines and lines
    starting with ``#`` are skipped. Relative paths are relative to the file's directory.

    Raises :class:`PredictInputError` naming the file and line for a line that is not two
    paths, a path that is not a file, an unreadable or non-UTF-8 file, or no pair at all.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PAIR_FILE_BYTES:
            raise PredictInputError(f"{path}: larger than {MAX_PAIR_FILE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PredictInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictInputError(f"{path}: cannot read the pairs file: {exc}") from None
    base = path.parent
    out: list[tuple[Path, Path]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = next(csv.reader([stripped])) if "," in stripped else stripped.split()
        fields = [f.strip() for f in fields]
        if len(fields) != 2 or not all(fields):
            raise PredictInputError(
                f"{path}:{number}: expected two image paths (IMG1 IMG2, or IMG1,IMG2), "
                f"got {len([f for f in fields if f])} field(s): {stripped[:80]!r}"
            )
        pair = tuple(p if p.is_absolute() else base / p for p in map(Path, fields))
        for p in pair:
            if not p.is_file():
                raise PredictInputError(f"{path}:{number}: {p}: no such image file")
        out.append((pair[0], pair[1]))
    if not out:
        raise PredictInputError(f"{path}: no pairs in the file")
    return out
