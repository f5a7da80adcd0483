"""Make the small image fixtures committed next to this script, from ../shared/data.

    .venv/bin/python tests/data/make_fixtures.py            # (re)write both zips
    .venv/bin/python tests/data/make_fixtures.py --check    # exit 1 if they would differ

* ``cifar10-mini.zip`` (600 JPEGs): from ``cifar10-jpeg.zip`` (the CIFAR-10 images as
  JPEG quality 75, ``cifar10/{train,test}/<class>/NNNN.jpg``, 5,000 / 1,000 per class),
  the first ``CIFAR_PER_CLASS`` = 30 file names in sorted order of every class folder, in
  both splits: ``cifar10/train/airplane/0000.jpg`` ... ``0029.jpg``, same for ``test/``.
  The JPEG bytes are copied as they are (stored, as in the source zip).
* ``att-faces-mini.zip`` (100 PGMs): from ``att-faces.zip`` (the AT&T / ORL faces,
  ``att_faces/s1..s40/1..10.pgm``, 112x92 gray), subjects ``s1`` .. ``s10``, all 10
  images each, plus the database's ``README`` (its credit line: "When using these
  images, please give credit to Olivetti Research Laboratory"). Deflated, as in the source.

Both zips keep the source layout, directory entries included, so every loader reads them
exactly as the full archives. The output is deterministic (sorted members, fixed
timestamps), so ``--check`` tells whether the committed files are what this script makes;
tests/workers/test_datasets.py runs that check when ../shared/data is there. The sources'
SHA-256 are checked first: a different source is an error, not a silently new fixture.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[2] / "shared" / "data"

CIFAR_SOURCE = "cifar10-jpeg.zip"
CIFAR_SHA256 = "e8116adc6e3b549210bc1e92e4a7d4f2907980810865603bd738b0a45cd1ab63"
CIFAR_OUT = HERE / "cifar10-mini.zip"
CIFAR_PER_CLASS = 30

ATT_SOURCE = "att-faces.zip"
ATT_SHA256 = "c6b8ab91cd25f1e88b952f85cda57134961df6bcb91eb84e202a6558ba16ae81"
ATT_OUT = HERE / "att-faces-mini.zip"
ATT_SUBJECTS = 10  # s1 .. s10
ATT_IMAGES = 10  # 1.pgm .. 10.pgm

_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time in the bytes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source(data_dir: Path, name: str, sha256: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing: these fixtures are made from ../shared/data")
    if (got := _sha256(path)) != sha256:
        raise SystemExit(f"{path}: SHA-256 {got}, expected {sha256} (another source?)")
    return path


def _write_zip(members: list[tuple[str, bytes]], compression: int) -> bytes:
    """A zip of ``members`` (``name/`` for a directory) with parents' directory entries
    added, sorted, timestamps fixed."""
    names = dict(members)
    for name in list(names):
        parts = name.rstrip("/").split("/")
        for i in range(1, len(parts)):
            names.setdefault("/".join(parts[:i]) + "/", b"")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(names):
            info = zipfile.ZipInfo(name, date_time=_DATE)
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = compression
                zf.writestr(info, names[name], compresslevel=9)
    return buf.getvalue()


def make_cifar(data_dir: Path) -> bytes:
    with zipfile.ZipFile(_source(data_dir, CIFAR_SOURCE, CIFAR_SHA256)) as src:
        by_folder: dict[str, list[str]] = {}
        for name in src.namelist():
            if name.endswith(".jpg"):
                by_folder.setdefault(name.rsplit("/", 1)[0], []).append(name)
        if len(by_folder) != 20:  # {train, test} x 10 classes
            raise SystemExit(f"{CIFAR_SOURCE}: expected 20 class folders, got {len(by_folder)}")
        picked = [
            name
            for folder in sorted(by_folder)
            for name in sorted(by_folder[folder])[:CIFAR_PER_CLASS]
        ]
        return _write_zip([(n, src.read(n)) for n in picked], zipfile.ZIP_STORED)


def make_att(data_dir: Path) -> bytes:
    with zipfile.ZipFile(_source(data_dir, ATT_SOURCE, ATT_SHA256)) as src:
        picked = ["att_faces/README"] + [
            f"att_faces/s{k}/{i}.pgm"
            for k in range(1, ATT_SUBJECTS + 1)
            for i in range(1, ATT_IMAGES + 1)
        ]
        return _write_zip([(n, src.read(n)) for n in picked], zipfile.ZIP_DEFLATED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="../shared/data")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for out, make in ((CIFAR_OUT, make_cifar), (ATT_OUT, make_att)):
        data = make(args.data_dir)
        same = out.is_file() and out.read_bytes() == data
        if args.check:
            print(f"{out.name}: {'up to date' if same else 'DIFFERS from what this makes'}")
            stale += [] if same else [out.name]
        else:
            out.write_bytes(data)
            print(f"{out.name}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
