"""workers.datasets: every scheme, the splits, the fingerprint, and every bad input.

The parsers are exercised on tiny files the tests write, and on real images from the
committed fixtures (tests/data: 600 CIFAR-10 JPEGs, 100 AT&T faces). The Debian
Fashion-MNIST package and ../shared/data (to check that the fixtures are what
tests/data/make_fixtures.py makes of it) come through fixtures that skip with the reason,
or fail under ARCHSEARCH_REQUIRE_DATA=1 (CI).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search_space.dataset_uri import DatasetURIError, check_dataset_location
from tests.data import make_fixtures
from tests.helpers.data import ATT_FACES_MINI_ZIP, CIFAR10_MINI_ZIP
from tests.workers.lfw_fixture import build_lfw_tree
from workers.datasets import (
    Dataset,
    DatasetCache,
    DatasetError,
    load_dataset,
    safe_unpickle,
    search_split,
)


def pil_gray(rgb: np.ndarray) -> np.ndarray:
    """Pillow's own RGB -> L of an (H, W, 3) uint8 image."""
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


# ======================================================================================
# builtin:
# ======================================================================================


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("builtin:mnist5k", color="gray")


def test_mnist5k_shape_classes_and_stratified_split(mnist: Dataset) -> None:
    assert mnist.x.shape == (5000, 1, 28, 28) and mnist.x.dtype == np.uint8
    assert mnist.y.dtype == np.int64 and mnist.is_test.dtype == bool
    assert mnist.classes == tuple(str(i) for i in range(10))
    assert np.bincount(mnist.y).tolist() == [500] * 10
    assert np.bincount(mnist.y[mnist.is_test]).tolist() == [100] * 10  # 0.2 of each class
    assert mnist.x.max() == 255 and mnist.x.min() == 0
    # The file is sorted by class: the split must not be "the last rows of each class".
    class0 = np.flatnonzero(mnist.y == 0)
    assert class0.tolist() == list(range(500))
    assert mnist.is_test[:400].any() and not mnist.is_test[400:500].all()


def test_mnist5k_is_deterministic_and_seeded(mnist: Dataset) -> None:
    again = load_dataset("builtin:mnist5k", color="gray")
    assert again.fingerprint == mnist.fingerprint and len(mnist.fingerprint) == 64
    assert np.array_equal(again.x, mnist.x) and np.array_equal(again.is_test, mnist.is_test)
    other = load_dataset("builtin:mnist5k", color="gray", seed=1)
    assert not np.array_equal(other.is_test, mnist.is_test)
    assert other.fingerprint != mnist.fingerprint
    rgb = load_dataset("builtin:mnist5k", color="rgb")
    assert rgb.x.shape == (5000, 3, 28, 28)
    assert np.array_equal(rgb.x[:, 0], mnist.x[:, 0]) and np.array_equal(rgb.x[:, 2], rgb.x[:, 1])
    assert rgb.fingerprint != mnist.fingerprint


def test_dataset_arrays_are_read_only(mnist: Dataset) -> None:
    with pytest.raises(ValueError):
        mnist.x[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        mnist.is_test[0] = True


def test_search_split_never_sees_test_and_is_deterministic(mnist: Dataset) -> None:
    train, val = search_split(mnist, 0.25, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    assert not mnist.is_test[train].any() and not mnist.is_test[val].any()
    assert sorted(np.concatenate([train, val]).tolist()) == np.flatnonzero(~mnist.is_test).tolist()
    assert np.bincount(mnist.y[val]).tolist() == [100] * 10  # 0.25 x 400 per class
    again_train, again_val = search_split(mnist, 0.25, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    _, other_val = search_split(mnist, 0.25, seed=4)
    assert not np.array_equal(val, other_val)
    with pytest.raises(DatasetError, match="validation_fraction"):
        search_split(mnist, 1.0, seed=0)


def test_digits_scaled_to_uint8() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("builtin:digits", color="gray", test_fraction=0.3)
    raw = load_digits().images
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.uint8
    assert np.array_equal(ds.x[:, 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert ds.x.max() == 255
    counts = np.bincount(ds.y)
    test_counts = np.bincount(ds.y[ds.is_test], minlength=10)
    assert np.all(np.abs(test_counts - 0.3 * counts) <= 0.5 + 1e-9)


# ======================================================================================
# imagefolder:
# ======================================================================================

CLASS_COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def write_png(path: Path, rgb: tuple[int, int, int], index: int, hw: tuple[int, int]) -> None:
    """A solid image of the class colour, with the image index in the top-left pixel."""
    img = np.empty((*hw, 3), dtype=np.uint8)
    img[:] = rgb
    img[0, 0] = (index, index, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGB").save(path)


def make_tree(
    root: Path,
    *,
    split: bool = True,
    per_class: int = 6,
    sizes: Callable[[str, int], tuple[int, int]] = lambda c, i: (6, 8),
) -> Path:
    """``root/{train,test}/<class>/NNN.png`` (split) or ``root/<class>/NNN.png``, plus
    junk that must be ignored (.DS_Store, README, __MACOSX)."""
    for split_name in ("train", "test") if split else ("",):
        for c, rgb in CLASS_COLORS.items():
            n = per_class if split_name != "test" else per_class // 2
            for i in range(n):
                base = root / split_name / c if split_name else root / c
                write_png(base / f"{i:03d}.png", rgb, i, sizes(c, i))
            (root / split_name / c / ".DS_Store").parent.mkdir(parents=True, exist_ok=True)
            (root / split_name / c / ".DS_Store").write_bytes(b"\0junk")
    (root / "README").write_text("not an image")
    (root / "__MACOSX").mkdir(exist_ok=True)
    (root / "__MACOSX" / "._x.png").write_bytes(b"junk")
    return root


def zip_tree(tree: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for file in sorted(tree.rglob("*")):
            arcname = prefix + file.relative_to(tree).as_posix()
            if file.is_dir():
                zf.writestr(arcname + "/", b"")
            else:  # writestr keeps the name as given ("./x" too; zf.write would normalise)
                zf.writestr(arcname, file.read_bytes())
    return out


def test_imagefolder_dir_official_split_labels_and_colors(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    ds = load_dataset(f"imagefolder:{tree}", color="rgb")
    assert ds.classes == ("cat", "dog", "emu")
    assert ds.x.shape == (27, 3, 6, 8)
    assert int(ds.is_test.sum()) == 9 and np.bincount(ds.y[ds.is_test]).tolist() == [3, 3, 3]
    for i in range(len(ds.y)):  # every image carries its class colour: labels are right
        assert tuple(ds.x[i, :, 3, 3]) == CLASS_COLORS[ds.classes[ds.y[i]]]
    # Order: train then test, by class, by file name (the index pixel counts up).
    assert ds.x[:6, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5] and not ds.is_test[:18].any()
    gray = load_dataset(f"imagefolder:{tree}", color="gray")
    assert gray.x.shape == (27, 1, 6, 8)
    for i in (0, 7, 14):
        rgb_img = np.ascontiguousarray(ds.x[i].transpose(1, 2, 0))
        assert np.array_equal(gray.x[i, 0], pil_gray(rgb_img))
    assert gray.fingerprint != ds.fingerprint


def test_imagefolder_zip_and_wrapped_zip_match_the_directory(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    from_dir = load_dataset(f"imagefolder:{tree}", color="rgb")
    flat = load_dataset(f"imagefolder:{zip_tree(tree, tmp_path / 'a.zip')}", color="rgb")
    wrapped_zip = zip_tree(tree, tmp_path / "b.zip", prefix="mydata/")
    wrapped = load_dataset(f"imagefolder:{wrapped_zip}", color="rgb")
    dotted_zip = zip_tree(tree, tmp_path / "c.zip", prefix="./")  # as some tools write them
    dotted = load_dataset(f"imagefolder:{dotted_zip}", color="rgb")
    assert flat.fingerprint == from_dir.fingerprint == wrapped.fingerprint == dotted.fingerprint
    assert wrapped.uri != from_dir.uri  # the fingerprint does not depend on where data is


def test_imagefolder_one_tree_fractional_split(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", split=False, per_class=10)
    ds = load_dataset(f"imagefolder:{tree}", color="rgb", test_fraction=0.3, seed=5)
    assert ds.x.shape[0] == 30
    assert np.bincount(ds.y[ds.is_test]).tolist() == [3, 3, 3]
    again = load_dataset(f"imagefolder:{tree}", color="rgb", test_fraction=0.3, seed=5)
    assert np.array_equal(again.is_test, ds.is_test) and again.fingerprint == ds.fingerprint
    other = load_dataset(f"imagefolder:{tree}", color="rgb", test_fraction=0.3, seed=6)
    assert not np.array_equal(other.is_test, ds.is_test)


def test_imagefolder_differing_sizes_are_resized(tmp_path: Path) -> None:
    def sizes(c: str, i: int) -> tuple[int, int]:
        return (12, 10) if (c, i) in {("cat", 0), ("dog", 1)} else (6, 8)

    tree = make_tree(tmp_path / "tree", sizes=sizes)
    ds = load_dataset(f"imagefolder:{tree}", color="rgb")
    assert ds.x.shape[2:] == (6, 8)  # the most common size wins
    assert tuple(ds.x[0, :, 3, 3]) == CLASS_COLORS["cat"]  # resized image keeps its colour
    square = load_dataset(f"imagefolder:{tree}", color="gray", size=5)
    assert square.x.shape == (27, 1, 5, 5)


def test_imagefolder_max_per_class_is_a_deterministic_subset(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", per_class=8)
    full = load_dataset(f"imagefolder:{tree}", color="rgb")
    sub = load_dataset(
        f"imagefolder:{tree}", color="rgb", max_per_class={"train": 3, "test": 2}, seed=1
    )
    assert np.bincount(sub.y[~sub.is_test]).tolist() == [3, 3, 3]
    assert np.bincount(sub.y[sub.is_test]).tolist() == [2, 2, 2]
    full_rows = {(bytes(full.x[i]), bool(full.is_test[i])) for i in range(len(full.y))}
    assert all((bytes(sub.x[i]), bool(sub.is_test[i])) in full_rows for i in range(len(sub.y)))
    again = load_dataset(
        f"imagefolder:{tree}", color="rgb", max_per_class={"train": 3, "test": 2}, seed=1
    )
    assert again.fingerprint == sub.fingerprint
    other = load_dataset(
        f"imagefolder:{tree}", color="rgb", max_per_class={"train": 3, "test": 2}, seed=2
    )
    assert other.fingerprint != sub.fingerprint
    both = load_dataset(f"imagefolder:{tree}", color="rgb", max_per_class=1)
    assert len(both.y) == 6


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: (r / "train" / "cat" / "001.png").write_bytes(b"not a png"), "001.png"),
        (lambda r: write_png(r / "stray.png", (1, 2, 3), 0, (6, 8)), "stray.png"),
        (lambda r: (r / "train" / "ant").mkdir(), "ant"),
        (lambda r: write_png(r / "val" / "cat" / "0.png", (1, 2, 3), 0, (6, 8)), "val"),
    ],
    ids=["corrupt-image", "image-outside-class", "empty-class", "extra-split-folder"],
)
def test_imagefolder_bad_trees(tmp_path: Path, mutate: Callable[[Path], object], message: str):
    tree = make_tree(tmp_path / "tree", per_class=2)
    mutate(tree)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(f"imagefolder:{tree}", color="rgb")
    assert str(tree) in str(info.value)


def test_imagefolder_layout_errors(tmp_path: Path) -> None:
    only_train = tmp_path / "only_train"
    write_png(only_train / "train" / "cat" / "0.png", (1, 2, 3), 0, (4, 4))
    write_png(only_train / "train" / "dog" / "0.png", (1, 2, 3), 0, (4, 4))
    with pytest.raises(DatasetError, match="no images under test/"):
        load_dataset(f"imagefolder:{only_train}", color="gray")
    single = tmp_path / "single"
    write_png(single / "cat" / "0.png", (1, 2, 3), 0, (4, 4))
    write_png(single / "cat" / "1.png", (1, 2, 3), 0, (4, 4))
    with pytest.raises(DatasetError, match="single class folder"):
        load_dataset(f"imagefolder:{single}", color="gray")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_dataset(f"imagefolder:{empty}", color="gray")
    not_zip = tmp_path / "data.zip"
    not_zip.write_bytes(b"PK? no")
    with pytest.raises(DatasetError, match=r"neither a directory nor a \.zip"):
        load_dataset(f"imagefolder:{not_zip}", color="gray")


def test_cifar10_jpeg_zip_fixture() -> None:
    """The committed 600-image cut of cifar10-jpeg.zip, same layout: ``cifar10/`` wrapping
    ``{train,test}/<class>/NNNN.jpg``."""
    assert check_dataset_location(f"imagefolder:{CIFAR10_MINI_ZIP}") is None
    ds = load_dataset(f"imagefolder:{CIFAR10_MINI_ZIP}", color="rgb")
    assert ds.classes == (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip
    assert ds.x.shape == (600, 3, 32, 32)
    assert np.bincount(ds.y[~ds.is_test]).tolist() == [30] * 10
    assert np.bincount(ds.y[ds.is_test]).tolist() == [30] * 10
    assert 40 < ds.x.mean() < 200  # real photographs, not blank
    sub = load_dataset(
        f"imagefolder:{CIFAR10_MINI_ZIP}", color="gray", max_per_class={"train": 20, "test": 5}
    )
    assert sub.x.shape == (250, 1, 32, 32)
    assert np.bincount(sub.y[sub.is_test]).tolist() == [5] * 10


def test_committed_fixtures_are_what_make_fixtures_makes(shared_data) -> None:
    """tests/data/*.zip are exactly what tests/data/make_fixtures.py makes of the shared
    zips (which it checks by SHA-256): the fixtures document how they were made."""
    data_dir = shared_data("cifar10-jpeg.zip").parent
    shared_data("att-faces.zip")
    assert make_fixtures.make_cifar(data_dir) == CIFAR10_MINI_ZIP.read_bytes()
    assert make_fixtures.make_att(data_dir) == ATT_FACES_MINI_ZIP.read_bytes()


# ======================================================================================
# npz:
# ======================================================================================


def test_npz_layouts_and_scales_normalise_to_the_same_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0])
    variants = {
        "nhwc_uint8": hwc,
        "nchw_float255": hwc.transpose(0, 3, 1, 2).astype(np.float32),
        "nhwc_float01": hwc.astype(np.float64) / 255.0,
    }
    prints = set()
    for name, x in variants.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x_train=x[:3], y_train=y[:3], x_test=x[3:], y_test=y[3:])
        ds = load_dataset(f"npz:{path}", color="rgb")
        assert ds.x.shape == (5, 3, 4, 6)
        assert np.array_equal(ds.x, hwc.transpose(0, 3, 1, 2)), name
        assert ds.is_test.tolist() == [False, False, False, True, True]
        assert ds.classes == ("0", "1", "2")
        prints.add(ds.fingerprint)
    assert len(prints) == 1
    gray = load_dataset(f"npz:{tmp_path / 'nhwc_uint8.npz'}", color="gray")
    assert np.array_equal(gray.x[1, 0], pil_gray(hwc[1]))  # same luma as Pillow's


def test_npz_gray_with_class_names_and_golden_fingerprint(tmp_path: Path) -> None:
    x = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 7 % 256).astype(np.uint8)
    path = tmp_path / "g.npz"
    np.savez(
        path, x_train=x, y_train=np.array([0, 1]), x_test=x[:1], y_test=np.array([1]),
        classes=np.array(["no", "yes"]),
    )  # fmt: skip
    ds = load_dataset(f"npz:{path}", color="gray")
    assert ds.x.shape == (3, 1, 3, 3) and ds.classes == ("no", "yes")
    # The fingerprint scheme is part of the coordinator/worker contract: a change here
    # would make every existing study refuse its workers. Update only on purpose.
    assert ds.fingerprint == "a7b68de06b0360efa8c9fca8abb728a701ec629514a098059f060d633c3172ea"


def test_npz_refuses_pickled_object_arrays_and_bad_input(tmp_path: Path) -> None:
    evil = tmp_path / "evil.npz"
    obj = np.empty(2, dtype=object)
    obj[:] = [{"a": 1}, [2]]
    np.savez(evil, x_train=obj, y_train=np.array([0, 1]), x_test=obj, y_test=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"(?i)object arrays"):
        load_dataset(f"npz:{evil}", color="gray")
    with pytest.raises(DatasetURIError, match="object array"):
        check_dataset_location(f"npz:{evil}")

    x = np.zeros((2, 4, 4), np.uint8)
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=x, y_train=np.array([0, 1]), x_test=x)
    with pytest.raises(DatasetError, match=r"lacks the array\(s\) \['y_test'\]"):
        load_dataset(f"npz:{missing}", color="gray")
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x_train=x, y_train=np.array([0, 1, 1]), x_test=x, y_test=np.array([0, 1]))
    with pytest.raises(DatasetError, match="x_train has 2 images but y_train 3 labels"):
        load_dataset(f"npz:{mismatch}", color="gray")
    ambiguous = tmp_path / "ambiguous.npz"
    a = np.zeros((2, 3, 5, 3), np.uint8)
    np.savez(ambiguous, x_train=a, y_train=np.array([0, 1]), x_test=a, y_test=np.array([0, 1]))
    with pytest.raises(DatasetError, match="cannot tell the channel axis"):
        load_dataset(f"npz:{ambiguous}", color="gray")
    out_of_range = tmp_path / "range.npz"
    f = np.full((2, 4, 4), 300.0)
    np.savez(out_of_range, x_train=f, y_train=np.array([0, 1]), x_test=f, y_test=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"need 0\.\.255"):
        load_dataset(f"npz:{out_of_range}", color="gray")


# ======================================================================================
# idx:
# ======================================================================================


def idx_bytes(arr: np.ndarray, magic: bytes | None = None) -> bytes:
    head = magic if magic is not None else bytes([0, 0, 8, arr.ndim])
    return head + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_idx_dir(root: Path, *, gz: bool, n_train: int = 6, n_test: int = 4) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 3).astype(np.uint8),
    }
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_parses_tiny_files(tmp_path: Path, gz: bool) -> None:
    root = write_idx_dir(tmp_path / "idx", gz=gz)
    ds = load_dataset(f"idx:{root}", color="gray")
    assert ds.x.shape == (10, 1, 5, 4)
    assert ds.is_test.tolist() == [False] * 6 + [True] * 4
    assert ds.y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert ds.classes == ("0", "1", "2")
    raw = (root / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
    raw = gzip.decompress(raw) if gz else raw
    assert np.array_equal(ds.x[:6, 0].ravel(), np.frombuffer(raw[16:], np.uint8))
    other = write_idx_dir(tmp_path / "other", gz=not gz)
    assert load_dataset(f"idx:{other}", color="gray").fingerprint == ds.fingerprint


def test_idx_bad_files(tmp_path: Path) -> None:
    root = write_idx_dir(tmp_path / "idx", gz=False)
    labels = root / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(b"\x00\x00\x08\x03" + good[4:])  # an images magic on a labels file
    with pytest.raises(DatasetError, match="magic 00000803, expected 00000801"):
        load_dataset(f"idx:{root}", color="gray")
    labels.write_bytes(good[:-2])  # truncated
    with pytest.raises(DatasetError, match="holds 4 data bytes, its header"):
        load_dataset(f"idx:{root}", color="gray")
    labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))  # 5 labels for 6 images
    with pytest.raises(DatasetError, match="train has 6 images but 5 labels"):
        load_dataset(f"idx:{root}", color="gray")
    labels.unlink()
    with pytest.raises(DatasetError, match="lacks train-labels-idx1-ubyte"):
        load_dataset(f"idx:{root}", color="gray")


def test_fashion_mnist_from_the_debian_package(fashion_mnist_dir: Path) -> None:
    ds = load_dataset(
        f"idx:{fashion_mnist_dir}", color="gray", max_per_class={"train": 50, "test": 10}
    )
    assert ds.x.shape == (600, 1, 28, 28) and len(ds.classes) == 10
    assert int(ds.is_test.sum()) == 100


# ======================================================================================
# cifar10: fake official batches, and pickles that must be refused
# ======================================================================================


def _p2str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _p2int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def py2_style_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The byte stream Python 2's cPickle (protocol 2) wrote for the official batches:
    str keys (bytes under encoding="bytes"), ``numpy.core.multiarray._reconstruct``."""
    dtype = b"cnumpy\ndtype\n" + _p2str(b"u1") + _p2int(0) + _p2int(1) + b"\x87R("
    dtype += _p2int(3) + _p2str(b"|") + b"NNN" + _p2int(-1) + _p2int(-1) + _p2int(0) + b"tb"
    shape = b"(" + b"".join(_p2int(s) for s in data.shape) + b"t"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _p2int(0) + b"\x85"
    array += _p2str(b"b") + b"\x87R(" + _p2int(1) + shape + dtype + b"\x89"
    array += _p2str(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(_p2int(v) for v in labels) + b"e"
    return b"\x80\x02}(" + _p2str(b"data") + array + _p2str(b"labels") + label_list + b"u."


LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]


def write_cifar_dir(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Five train batches of 3 images and a test batch of 2, as the official files are
    (batch 1 byte-for-byte in Python 2's format, the others by today's pickle, protocols
    2, 4 and 5)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (17, 3072), dtype=np.uint8)
    labels = (np.arange(17) % 5).tolist()
    for b in range(6):
        rows = slice(3 * b, 3 * b + 3) if b < 5 else slice(15, 17)
        name = f"data_batch_{b + 1}" if b < 5 else "test_batch"
        batch = {
            b"batch_label": f"batch {b + 1} of 5".encode(),
            b"labels": labels[rows],
            b"data": data[rows],
            b"filenames": [f"img_{i}.png".encode() for i in range(17)[rows]],
        }
        if b == 0:
            blob = py2_style_batch(data[rows], labels[rows])
        else:
            blob = pickle.dumps(batch, protocol=(2, 4, 5)[b % 3])
        (root / name).write_bytes(blob)
    meta = {b"label_names": LABEL_NAMES, b"num_cases_per_batch": 3, b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root, data, np.array(labels)


def test_cifar10_fake_batches(tmp_path: Path) -> None:
    root, data, labels = write_cifar_dir(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(f"cifar10:{root}", color="rgb")
    assert ds.x.shape == (17, 3, 32, 32)
    assert np.array_equal(ds.x.reshape(17, 3072), data)  # rows are R, G, B planes
    assert ds.y.tolist() == labels.tolist()
    assert ds.is_test.tolist() == [False] * 15 + [True] * 2
    assert ds.classes == tuple(n.decode() for n in LABEL_NAMES)
    gray = load_dataset(f"cifar10:{root}", color="gray")
    assert gray.x.shape == (17, 1, 32, 32)
    assert np.array_equal(gray.x[4, 0], pil_gray(np.ascontiguousarray(ds.x[4].transpose(1, 2, 0))))
    # The tarball's own folder is found from its parent, too.
    parent = load_dataset(f"cifar10:{tmp_path}", color="rgb")
    assert parent.fingerprint == ds.fingerprint
    assert check_dataset_location(f"cifar10:{tmp_path}") is None


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_cifar10_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    root, _, _ = write_cifar_dir(tmp_path / "c")
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (root / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(DatasetError, match=r"data_batch_3: refused pickle: .*system"):
        load_dataset(f"cifar10:{root}", color="rgb")
    assert not marker.exists()


@pytest.mark.parametrize(
    "blob",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",  # a builtin called by REDUCE
        b"\x80\x02cnumpy\nndarray\n(K\x02tR.",  # ndarray itself is not callable here
        b"\x80\x02cnumpy\ndtype\nU\x02O8K\x00K\x01\x87R.",  # object dtype
        b"\x80\x02K\x01Q.",  # persistent id
        b"\x80\x02}(U\x04data",  # truncated
    ],
    ids=["eval", "ndarray-call", "object-dtype", "persistent-id", "truncated"],
)
def test_safe_unpickle_refuses(blob: bytes) -> None:
    with pytest.raises(DatasetError, match=r"refused pickle|malformed pickle"):
        safe_unpickle(blob)


def test_cifar10_bad_layout(tmp_path: Path) -> None:
    root, _, _ = write_cifar_dir(tmp_path / "c")
    (root / "data_batch_5").unlink()
    with pytest.raises(
        DatasetError, match=r"lacks the CIFAR-10 batch file\(s\) \['data_batch_5'\]"
    ):
        load_dataset(f"cifar10:{root}", color="rgb")
    with pytest.raises(DatasetURIError, match="data_batch_5"):
        check_dataset_location(f"cifar10:{root}")
    (root / "data_batch_5").write_bytes(pickle.dumps({b"data": [1, 2], b"labels": []}))
    with pytest.raises(DatasetError, match="2-D uint8 array"):
        load_dataset(f"cifar10:{root}", color="rgb")


# ======================================================================================
# lfw:
# ======================================================================================


@pytest.fixture(scope="module")
def att_lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LFW-layout tree of the committed AT&T faces (10 people x 10 images)."""
    return build_lfw_tree(ATT_FACES_MINI_ZIP, tmp_path_factory.mktemp("lfw"), people=10)


def test_lfw_from_att_faces(att_lfw: Path) -> None:
    ds = load_dataset(f"lfw:{att_lfw}", color="gray")
    assert ds.pairs is not None
    n = len(ds.y)
    assert ds.x.shape == (n, 1, 112, 92) and ds.x.dtype == np.uint8
    assert not ds.is_test.any()
    assert set(ds.classes) <= {f"Person_{k:02d}" for k in range(1, 11)}
    p = ds.pairs
    assert p.dev_train.shape == (40, 2) and p.dev_train_same.tolist() == [True] * 20 + [False] * 20
    assert p.dev_test.shape == (20, 2) and p.dev_test_same.sum() == 10
    assert len(p.folds) == 2 and all(f[0].shape == (40, 2) for f in p.folds)
    every = np.concatenate([p.dev_train, p.dev_test, *(f[0] for f in p.folds)])
    same = np.concatenate([p.dev_train_same, p.dev_test_same, *(f[1] for f in p.folds)])
    assert every.min() >= 0 and every.max() < n
    assert np.unique(every).size == n  # x holds exactly the referenced images, once each
    assert np.array_equal(ds.y[every[:, 0]] == ds.y[every[:, 1]], same)
    # View 1 people are disjoint between DevTrain and DevTest, as in LFW.
    assert not set(ds.y[p.dev_train].ravel()) & set(ds.y[p.dev_test].ravel())
    # The pixels are the AT&T image named by the first DevTrain line.
    first = (att_lfw / "pairsDevTrain.txt").read_text().splitlines()[1].split()
    file = att_lfw / first[0] / f"{first[0]}_{int(first[1]):04d}.pgm"
    assert np.array_equal(ds.x[p.dev_train[0, 0], 0], np.asarray(Image.open(file)))
    again = load_dataset(f"lfw:{att_lfw}", color="gray")
    assert again.fingerprint == ds.fingerprint
    small = load_dataset(f"lfw:{att_lfw}", color="rgb", size=32)
    assert small.x.shape == (n, 3, 32, 32) and small.fingerprint != ds.fingerprint


@pytest.fixture
def synthetic_lfw(tmp_path: Path) -> Path:
    return build_lfw_tree(
        None, tmp_path / "lfw", people=8, images_per_person=3, dev_train=4, dev_test=2,
        folds=2, per_fold=3,
    )  # fmt: skip


def test_lfw_synthetic_tree_loads(synthetic_lfw: Path) -> None:
    ds = load_dataset(f"lfw:{synthetic_lfw}", color="gray")
    assert ds.pairs is not None and len(ds.pairs.folds) == 2
    assert ds.pairs.folds[0][0].shape == (6, 2)
    assert check_dataset_location(f"lfw:{synthetic_lfw}") is None


def _replace_line(file: Path, lineno: int, text: str) -> None:
    lines = file.read_text().splitlines()
    lines[lineno - 1] = text
    file.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("file", "lineno", "text", "message"),
    [
        ("pairsDevTest.txt", 2, "Nobody_Here\t1\t2", r"pairsDevTest.txt:2 names 'Nobody_Here'"),
        ("pairsDevTrain.txt", 3, "Person_01\t1\t99", r"pairsDevTrain.txt:3 names image 99"),
        ("pairs.txt", 1, "2", r"pairs.txt:1: header must be 'FOLDS N'"),
        ("pairs.txt", 2, "Person_01\t1", r"pairs.txt:2: a 'same' line must be"),
        ("pairsDevTest.txt", 1, "5", r"header says 1 fold\(s\) x \(2 x 5\) = 10 pair lines"),
        ("pairsDevTrain.txt", 2, "../etc\t1\t2", r"'\.\./etc' is not a person folder name"),
    ],
    ids=["missing-person", "missing-image", "bad-header", "short-line", "wrong-count", "path"],
)
def test_lfw_bad_pairs_files(
    synthetic_lfw: Path, file: str, lineno: int, text: str, message: str
) -> None:
    _replace_line(synthetic_lfw / file, lineno, text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"lfw:{synthetic_lfw}", color="gray")


def test_lfw_refuses_max_per_class(synthetic_lfw: Path) -> None:
    with pytest.raises(DatasetError, match="not supported for lfw"):
        load_dataset(f"lfw:{synthetic_lfw}", color="gray", max_per_class=2)


# ======================================================================================
# URIs, arguments, cache, check_dataset_location
# ======================================================================================


def test_bad_uris_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset scheme 'ftp'"):
        load_dataset("ftp:/x", color="gray")
    with pytest.raises(DatasetError, match="unknown builtin dataset 'mnist'"):
        load_dataset("builtin:mnist", color="gray")
    missing = tmp_path / "nowhere"
    for scheme in ("imagefolder", "npz", "idx", "cifar10", "lfw"):
        with pytest.raises(DatasetError, match=f"{scheme}:.*nowhere does not exist"):
            load_dataset(f"{scheme}:{missing}", color="gray")
    with pytest.raises(DatasetError, match="color must be"):
        load_dataset("builtin:digits", color="blue")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="test_fraction"):
        load_dataset("builtin:digits", color="gray", test_fraction=1.5)
    with pytest.raises(DatasetError, match="max_per_class keys"):
        load_dataset("builtin:digits", color="gray", max_per_class={"val": 3})
    assert issubclass(DatasetError, ValueError)


def test_max_per_class_applies_to_array_formats() -> None:
    ds = load_dataset("builtin:digits", color="gray", max_per_class={"train": 5, "test": 2})
    assert np.bincount(ds.y[~ds.is_test]).tolist() == [5] * 10
    assert np.bincount(ds.y[ds.is_test]).tolist() == [2] * 10


def test_dataset_cache_loads_once_and_evicts(tmp_path: Path) -> None:
    root = write_idx_dir(tmp_path / "idx", gz=True)
    cache = DatasetCache(max_entries=2)
    uri = f"idx:{tmp_path / 'idx'}"
    first = cache.get(uri, color="gray")
    assert cache.get(uri, color="gray") is first
    assert first.fingerprint == load_dataset(f"idx:{root}", color="gray").fingerprint
    rgb = cache.get(uri, color="rgb")
    assert rgb is not first and rgb.x.shape[1] == 3
    cache.get(uri, color="gray", size=3)  # third entry: the oldest (first) goes
    assert len(cache) == 2
    assert cache.get(uri, color="gray") is not first


def test_dataset_cache_loads_other_arguments_while_one_loads(monkeypatch) -> None:
    # A slow load (the prefetch of the next study's data) must not hold up a get of other
    # arguments; concurrent gets of the same arguments load once; a failed load is not
    # cached and the next get loads again.
    from workers.datasets import load as load_module

    calls: list[str] = []
    gate = threading.Event()

    def fake_load(uri: str, **_: object) -> str:
        calls.append(uri)
        if uri == "slow:":
            gate.wait(10)
        if uri == "bad:" and calls.count("bad:") == 1:
            raise OSError("disk on fire")
        return f"data of {uri}"

    monkeypatch.setattr(load_module, "load_dataset", fake_load)
    cache = DatasetCache()
    slow = [threading.Thread(target=cache.get, args=("slow:",), kwargs={"color": "gray"})
            for _ in range(3)]  # fmt: skip
    for t in slow:
        t.start()
    t0 = time.monotonic()
    assert cache.get("fast:", color="gray") == "data of fast:"
    assert time.monotonic() - t0 < 2.0  # not behind the slow load
    gate.set()
    for t in slow:
        t.join(10)
    assert calls.count("slow:") == 1 and calls.count("fast:") == 1
    with pytest.raises(OSError, match="disk on fire"):
        cache.get("bad:", color="gray")
    assert cache.get("bad:", color="gray") == "data of bad:"
    assert calls.count("bad:") == 2


def test_check_dataset_location(tmp_path: Path) -> None:
    assert check_dataset_location("builtin:mnist5k") is None
    message = check_dataset_location(f"idx:{tmp_path / 'absent'}")
    assert message is not None and "does not exist" in message and "coordinator" in message
    with pytest.raises(DatasetURIError, match="unknown dataset scheme"):
        check_dataset_location("nope:/x")

    tree = make_tree(tmp_path / "tree", per_class=2)
    assert check_dataset_location(f"imagefolder:{tree}") is None
    assert check_dataset_location(f"imagefolder:{zip_tree(tree, tmp_path / 't.zip', 'w/')}") is None
    (tree / "train" / "ant").mkdir()
    with pytest.raises(DatasetURIError, match="class folder 'train/ant' has no image files"):
        check_dataset_location(f"imagefolder:{tree}")
    single = tmp_path / "single"
    write_png(single / "cat" / "0.png", (1, 2, 3), 0, (4, 4))
    with pytest.raises(DatasetURIError, match="single class folder"):
        check_dataset_location(f"imagefolder:{single}")

    idx = write_idx_dir(tmp_path / "idx", gz=True)
    assert check_dataset_location(f"idx:{idx}") is None
    (idx / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetURIError, match="t10k-labels-idx1-ubyte"):
        check_dataset_location(f"idx:{idx}")

    good = tmp_path / "good.npz"
    z = np.zeros((1, 2, 2), np.uint8)
    np.savez(good, x_train=z, y_train=np.zeros(1, int), x_test=z, y_test=np.zeros(1, int))
    assert check_dataset_location(f"npz:{good}") is None
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=z)
    with pytest.raises(DatasetURIError, match="y_train"):
        check_dataset_location(f"npz:{bad}")
    npy = tmp_path / "one.npy"
    np.save(npy, z)
    with pytest.raises(DatasetURIError, match=r"not an \.npz"):
        check_dataset_location(f"npz:{npy}")

    lfw = tmp_path / "lfw"
    lfw.mkdir()
    with pytest.raises(DatasetURIError, match=r"pairsDevTrain\.txt"):
        check_dataset_location(f"lfw:{lfw}")
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt"):
        (lfw / name).write_text("0\n")
    with pytest.raises(DatasetURIError, match="no person folder"):
        check_dataset_location(f"lfw:{lfw}")
    with pytest.raises(DatasetURIError, match="not a directory"):
        check_dataset_location(f"cifar10:{good}")


def test_corrupt_image_in_zip_names_the_member(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", per_class=2)
    buf = io.BytesIO()
    Image.new("RGB", (6, 8)).save(buf, "JPEG")
    (tree / "test" / "dog" / "broken.jpg").write_bytes(buf.getvalue()[:40])  # truncated
    archive = zip_tree(tree, tmp_path / "t.zip", prefix="top/")
    with pytest.raises(DatasetError, match=r"cannot decode image 'top/test/dog/broken.jpg'"):
        load_dataset(f"imagefolder:{archive}", color="rgb")
