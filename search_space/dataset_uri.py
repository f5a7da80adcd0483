"""The dataset URI grammar shared by the coordinator (validation) and the workers (loading).

``builtin:mnist5k``, ``builtin:digits``, ``imagefolder:PATH`` (directory or .zip),
``npz:PATH``, ``idx:DIR``, ``cifar10:DIR``, ``lfw:DIR`` (docs/design.md section 4); the
scheme names and their default colors are said once, in :mod:`protocol.datasets`.
:func:`parse_dataset_uri` is pure: it checks the form of a URI, never the file system.
:func:`check_dataset_location` (below it) is the coordinator's cheap look at the file system:
does the path exist, is the layout right; it decodes no image (stdlib + numpy only).
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from protocol.datasets import BUILTINS, PATH_SCHEMES, SCHEMES

__all__ = [
    "BUILTINS",
    "PATH_SCHEMES",
    "SCHEMES",
    "DatasetURI",
    "DatasetURIError",
    "check_dataset_location",
    "parse_dataset_uri",
]


class DatasetURIError(ValueError):
    """The URI is not of the grammar above; the message names the rule broken."""


@dataclass(frozen=True)
class DatasetURI:
    scheme: str
    target: str  # builtin name or path

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_dataset_uri(uri: str) -> DatasetURI:
    """Split and check ``uri``. Raises :class:`DatasetURIError` naming the rule."""
    scheme, sep, target = uri.partition(":")
    if not sep:
        raise DatasetURIError(
            f"dataset must be SCHEME:TARGET with SCHEME one of {list(SCHEMES)}, got {uri!r}"
        )
    if scheme not in SCHEMES:
        raise DatasetURIError(f"unknown dataset scheme {scheme!r}; known: {list(SCHEMES)}")
    if scheme == "builtin" and target not in BUILTINS:
        raise DatasetURIError(f"unknown builtin dataset {target!r}; known: {list(BUILTINS)}")
    if not target.strip():
        raise DatasetURIError(f"{scheme}: needs a path, e.g. {scheme}:/data/{scheme}")
    if "\x00" in target:
        raise DatasetURIError("dataset path must not contain NUL characters")
    if scheme in PATH_SCHEMES and not target.startswith("/"):
        # The coordinator and every worker resolve paths in their own working directory:
        # only an absolute path means the same data everywhere.
        raise DatasetURIError(
            f"{scheme}: needs an absolute path (the CLI makes relative ones absolute), "
            f"got {target!r}"
        )
    return DatasetURI(scheme=scheme, target=target)


# --------------------------------------------------------------------------------------
# Location and layout checks (these DO look at the file system; the grammar above does not)
# --------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
    }
)
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
LFW_PAIRS_FILES = ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt")
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageFolderLayout:
    """Where the images of an ``imagefolder:`` tree are, before anything is decoded.

    ``root`` is the wrapper folder(s) stripped off (``"cifar10/"`` for the shared CIFAR zip,
    ``""`` when the class or split folders sit at the top). ``train`` / ``test`` map each
    class name to its image paths (relative to the tree or zip, ``/``-separated, sorted).
    ``official_split`` is False for a single ``<class>/*`` tree: then every image is in
    ``train`` and ``test`` is empty (the loader splits by a seeded fraction).
    """

    root: str
    official_split: bool
    train: dict[str, list[str]]
    test: dict[str, list[str]]

    @property
    def classes(self) -> tuple[str, ...]:
        """Sorted class names (those of ``train``; ``test`` classes are a subset)."""
        return tuple(sorted(self.train))


def _hidden(parts: list[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def imagefolder_layout(files: Iterable[str], dirs: Iterable[str] = ()) -> ImageFolderLayout:
    """Find the layout of an image tree from its ``/``-separated relative file and dir names.

    Accepted: ``train/<class>/<image>`` + ``test/<class>/<image>`` (official split), or
    ``<class>/<image>`` (one tree), either of them under any number of single wrapper
    folders (``cifar10/train/...``). Hidden entries (``.DS_Store``, ``__MACOSX``) and
    non-image files (``README``) are ignored. Raises :class:`DatasetURIError` naming the
    problem: no images, an image outside a class folder, a ``train/`` without ``test/``,
    another folder next to them, an empty class folder, or a test class unknown to train.
    """
    images: list[list[str]] = []
    original: dict[tuple[str, ...], str] = {}  # clean parts -> the name as listed
    for name in files:
        parts = [p for p in name.split("/") if p and p != "."]
        if not parts or _hidden(parts):
            continue
        ext = "." + parts[-1].rsplit(".", 1)[-1].lower() if "." in parts[-1] else ""
        if ext in IMAGE_EXTENSIONS:
            images.append(parts)
            original[tuple(parts)] = name
    if not images:
        raise DatasetURIError(
            f"no image files found (extensions {sorted(IMAGE_EXTENSIONS)}); expected "
            "train/<class>/<image> and test/<class>/<image>, or <class>/<image>"
        )
    dir_parts = [[p for p in d.split("/") if p and p != "."] for d in dirs]
    dir_parts = [d for d in dir_parts if d and not _hidden(d)]
    prefix: list[str] = []
    while True:
        firsts = {p[0] for p in images}
        depths = {len(p) for p in images}
        if firsts & set(_SPLITS):
            return _split_layout(images, dir_parts, prefix, firsts, depths, original)
        if depths == {2}:
            return _tree_layout(images, dir_parts, prefix, original)
        if len(firsts) == 1 and min(depths) >= 3:
            prefix.append(next(iter(firsts)))
            images = [p[1:] for p in images]
            dir_parts = [d[1:] for d in dir_parts if d[0] == prefix[-1] and len(d) > 1]
            continue
        odd = min((p for p in images if len(p) != 2), key=len)
        where = "/".join(prefix + odd)
        raise DatasetURIError(
            f"image {where!r} is not at <class>/<image> (nor train|test/<class>/<image>); "
            "every image must sit directly in a class folder"
        )


def _collect(
    images: list[list[str]],
    prefix: list[str],
    depth_prefix: int,
    original: dict[tuple[str, ...], str],
) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = {}
    for parts in images:
        by_class.setdefault(parts[depth_prefix], []).append(original[(*prefix, *parts)])
    return {c: sorted(v) for c, v in sorted(by_class.items())}


def _empty_class_dirs(
    dir_parts: list[list[str]], head: list[str], classes: set[str], root: str
) -> None:
    n = len(head)
    for d in dir_parts:
        if len(d) == n + 1 and d[:n] == head and d[n] not in classes:
            raise DatasetURIError(f"class folder {root + '/'.join(d)!r} has no image files")


def _tree_layout(
    images: list[list[str]],
    dir_parts: list[list[str]],
    prefix: list[str],
    original: dict[tuple[str, ...], str],
) -> ImageFolderLayout:
    root = "".join(p + "/" for p in prefix)
    train = _collect(images, prefix, 0, original)
    _empty_class_dirs(dir_parts, [], set(train), root)
    return ImageFolderLayout(root=root, official_split=False, train=train, test={})


def _split_layout(
    images: list[list[str]],
    dir_parts: list[list[str]],
    prefix: list[str],
    firsts: set[str],
    depths: set[int],
    original: dict[tuple[str, ...], str],
) -> ImageFolderLayout:
    root = "".join(p + "/" for p in prefix)
    if firsts != set(_SPLITS):
        missing = sorted(set(_SPLITS) - firsts)
        extra = sorted(firsts - set(_SPLITS))
        if missing:
            raise DatasetURIError(
                f"{root or './'} has {sorted(firsts & set(_SPLITS))[0]}/ but no images under "
                f"{missing[0]}/: an official split needs train/<class>/* and test/<class>/*"
            )
        raise DatasetURIError(
            f"{root or './'} has train/ and test/ but also {extra} holding images: only "
            "train/ and test/ are allowed next to each other"
        )
    if depths != {3}:
        odd = next(p for p in images if len(p) != 3)
        raise DatasetURIError(
            f"image {root + '/'.join(odd)!r} is not at train|test/<class>/<image>"
        )
    train = _collect([p for p in images if p[0] == "train"], prefix, 1, original)
    test = _collect([p for p in images if p[0] == "test"], prefix, 1, original)
    for split, classes in (("train", train), ("test", test)):
        _empty_class_dirs(dir_parts, [split], set(classes), root)
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise DatasetURIError(
            f"test classes {unknown} have no train/ folder in {root or './'}: every test "
            "class must also be a training class"
        )
    return ImageFolderLayout(root=root, official_split=True, train=train, test=test)


class CheckBudgetExceeded(Exception):
    """Looking at the files took longer than the caller's budget (not a dataset error)."""


def list_tree(path: Path, *, deadline: float | None = None) -> tuple[list[str], list[str]]:
    """``(files, dirs)`` of a directory or a .zip, as ``/``-separated relative names.

    Hidden folders are not descended into. Raises :class:`DatasetURIError` for a file that
    is not a zip archive, or an unreadable zip, and :class:`CheckBudgetExceeded` when a
    directory walk is still going at ``deadline`` (a ``time.monotonic()`` value).
    """
    if path.is_dir():
        files: list[str] = []
        dirs: list[str] = []
        for here, subdirs, names in os.walk(path):
            if deadline is not None and time.monotonic() > deadline:
                raise CheckBudgetExceeded(f"{len(files)} files seen")
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            rel = Path(here).relative_to(path).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirs.extend(rel + d for d in subdirs)
            files.extend(rel + n for n in names)
        return files, dirs
    if not zipfile.is_zipfile(path):
        raise DatasetURIError(f"{path} is neither a directory nor a .zip archive")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetURIError(f"{path}: unreadable zip archive ({exc})") from exc
    files = [i.filename for i in infos if not i.is_dir()]
    dirs = [i.filename for i in infos if i.is_dir()]
    return files, dirs


def check_dataset_location(uri: str, *, budget_seconds: float | None = None) -> str | None:
    """Cheap check the coordinator runs when a study is created: is the data there?

    Returns ``None`` when the data look right, or a message when the path does not exist
    on this machine (the coordinator may simply not see the workers' disks: the caller
    decides whether that is an error) or when walking it took longer than
    ``budget_seconds`` (then the workers find out, as for a path the coordinator cannot
    see). Raises :class:`DatasetURIError` for a malformed URI
    or for a path that exists with the wrong layout (imagefolder: class folders with images;
    npz: an archive holding x_train, y_train, x_test, y_test, no object arrays; idx: the
    four IDX files, plain or .gz; cifar10: data_batch_1..5, test_batch, batches.meta;
    lfw: the three pairs files and at least one person folder). Decodes no image; builtin
    datasets are always fine. Relative paths are resolved against the current directory.
    """
    parsed = parse_dataset_uri(uri)
    if parsed.scheme == "builtin":
        return None
    path = Path(parsed.target).expanduser()
    if not path.exists():
        return (
            f"{uri}: {path} does not exist on the coordinator's machine; it cannot check "
            "the layout (fine if only the workers have the data at that path)"
        )
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    try:
        _check_layout(parsed.scheme, path, deadline)
    except DatasetURIError as exc:
        raise DatasetURIError(f"{uri}: {exc}") from None
    except CheckBudgetExceeded as exc:
        return (
            f"{uri}: layout not checked, {path} is too large to walk in "
            f"{budget_seconds:g} s ({exc})"
        )
    return None


def _check_layout(scheme: str, path: Path, deadline: float | None = None) -> None:
    if scheme == "imagefolder":
        files, dirs = list_tree(path, deadline=deadline)
        layout = imagefolder_layout(files, dirs)
        if len(layout.classes) < 2:
            raise DatasetURIError(
                f"{path} has a single class folder {list(layout.classes)}; a classification "
                "dataset needs two or more <class>/ folders"
            )
    elif scheme == "npz":
        _check_npz(path)
    elif scheme == "idx":
        _need_dir(path)
        missing = [
            f for f in IDX_FILES if not (path / f).is_file() and not (path / f"{f}.gz").is_file()
        ]
        if missing:
            raise DatasetURIError(f"{path} lacks the IDX file(s) {missing} (plain or .gz)")
    elif scheme == "cifar10":
        _need_dir(path)
        base = cifar10_dir(path)
        missing = [f for f in CIFAR10_FILES if not (base / f).is_file()]
        if missing:
            raise DatasetURIError(f"{path} lacks the CIFAR-10 python batch file(s) {missing}")
    elif scheme == "lfw":
        _need_dir(path)
        missing = [f for f in LFW_PAIRS_FILES if not (path / f).is_file()]
        if missing:
            raise DatasetURIError(f"{path} lacks the LFW pairs file(s) {missing}")
        if not any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            raise DatasetURIError(f"{path} has no person folder (<Name>/<Name>_0001.jpg)")


def cifar10_dir(path: Path) -> Path:
    """``path``, or ``path/cifar-10-batches-py`` when the batches sit there (the tarball's
    own folder) and not directly in ``path``."""
    inner = path / "cifar-10-batches-py"
    if not (path / "batches.meta").exists() and inner.is_dir():
        return inner
    return path


def _need_dir(path: Path) -> None:
    if not path.is_dir():
        raise DatasetURIError(f"{path} is not a directory")


def _check_npz(path: Path) -> None:
    import numpy as np

    if not path.is_file():
        raise DatasetURIError(f"{path} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError / OSError / BadZipFile
        raise DatasetURIError(f"{path} is not a readable .npz archive ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DatasetURIError(f"{path} is a single .npy array, not an .npz archive")
    with loaded:
        missing = [k for k in NPZ_KEYS if k not in loaded.files]
        if missing:
            raise DatasetURIError(
                f"{path} lacks the array(s) {missing}; it holds {sorted(loaded.files)}"
            )
        for key in NPZ_KEYS:
            with loaded.zip.open(f"{key}.npy") as fp:
                try:
                    fmt = np.lib.format
                    version = fmt.read_magic(fp)
                    read_header = (
                        fmt.read_array_header_1_0
                        if version == (1, 0)
                        else fmt.read_array_header_2_0
                    )
                    _shape, _fortran, dtype = read_header(fp)
                except Exception as exc:
                    raise DatasetURIError(f"{path}: {key} is not a valid .npy ({exc})") from exc
            if dtype.hasobject:
                raise DatasetURIError(
                    f"{path}: {key} is an object array (pickled Python objects); "
                    "only numeric arrays are accepted"
                )
