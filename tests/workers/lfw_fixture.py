"""Build a small tree in LFW's layout for tests (reused by the evaluator tests).

``build_lfw_tree`` writes ``<out>/Person_01/Person_01_0001.pgm`` ... and the three pairs
files in LFW's own format (``pairsDevTrain.txt`` / ``pairsDevTest.txt``: a count N, then N
"same" lines ``name n1 n2`` and N "different" lines ``name1 n1 name2 n2``; ``pairs.txt``:
``FOLDS N`` then per fold N same + N different lines). The faces come from the AT&T (ORL)
zip (``att_faces/s1..s40/1..10.pgm``, 112x92 gray, credit AT&T Laboratories Cambridge);
without a zip, synthetic 112x92 images are written instead (a per-person pattern plus noise),
so tests that only need the layout run on a clone without ``../shared``.

View 1 uses disjoint people for DevTrain and DevTest; View 2's folds use disjoint people
too, as in LFW. Everything is seeded: the same arguments write the same files.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np

ATT_SHAPE = (112, 92)  # H, W


def person_name(k: int) -> str:
    """``Person_01`` for person 1 (the tree's folder and file prefix)."""
    return f"Person_{k:02d}"


def _pgm(img: np.ndarray) -> bytes:
    h, w = img.shape
    return f"P5 {w} {h} 255\n".encode() + img.astype(np.uint8).tobytes()


def _synthetic_face(person: int, image: int) -> np.ndarray:
    rng = np.random.default_rng([person, image])
    yy, xx = np.mgrid[0 : ATT_SHAPE[0], 0 : ATT_SHAPE[1]]
    base = 128 + 60 * np.sin(xx / (3 + person % 7) + person) * np.cos(yy / (4 + person % 5))
    return np.clip(base + rng.normal(0, 12, ATT_SHAPE), 0, 255).astype(np.uint8)


def _same_pairs(
    rng: random.Random, people: list[int], n: int, per_person: int
) -> list[tuple[int, int, int]]:
    if n > len(people) * per_person * (per_person - 1) // 2:
        raise ValueError(f"cannot draw {n} distinct same pairs from {len(people)} people")
    out: set[tuple[int, int, int]] = set()
    while len(out) < n:
        p = rng.choice(people)
        a, b = sorted(rng.sample(range(1, per_person + 1), 2))
        out.add((p, a, b))
    return sorted(out)


def _diff_pairs(
    rng: random.Random, people: list[int], n: int, per_person: int
) -> list[tuple[int, int, int, int]]:
    if n > len(people) * (len(people) - 1) // 2 * per_person**2:
        raise ValueError(f"cannot draw {n} distinct different pairs from {len(people)} people")
    out: set[tuple[int, int, int, int]] = set()
    while len(out) < n:
        p, q = sorted(rng.sample(people, 2))
        out.add((p, rng.randint(1, per_person), q, rng.randint(1, per_person)))
    return sorted(out)


def _lines(same: list[tuple[int, int, int]], diff: list[tuple[int, int, int, int]]) -> list[str]:
    lines = [f"{person_name(p)}\t{a}\t{b}" for p, a, b in same]
    lines += [f"{person_name(p)}\t{a}\t{person_name(q)}\t{b}" for p, a, q, b in diff]
    return lines


def build_lfw_tree(
    zip_path: Path | None,
    out_dir: Path,
    *,
    people: int = 40,
    images_per_person: int = 10,
    dev_train: int = 20,
    dev_test: int = 10,
    folds: int = 2,
    per_fold: int = 20,
    seed: int = 0,
) -> Path:
    """Write an LFW-layout tree under ``out_dir`` (created) and return ``out_dir``.

    ``people`` (<= 40 with the AT&T zip) persons with ``images_per_person`` (<= 10) images
    each; ``pairsDevTrain.txt`` holds ``dev_train`` same + ``dev_train`` different pairs
    over the first 60% of the (seeded, shuffled) people, ``pairsDevTest.txt`` ``dev_test``
    + ``dev_test`` over the rest; ``pairs.txt`` has the header ``"{folds}\\t{per_fold}"``
    and ``folds`` blocks of ``per_fold`` same + ``per_fold`` different pairs, fold k using
    only the people assigned to it (round robin). Pairs are distinct within a file.
    """
    if zip_path is not None and (people > 40 or images_per_person > 10):
        raise ValueError("the AT&T zip has 40 people x 10 images")
    if people < 2 * max(2, folds) or images_per_person < 2:
        raise ValueError("need at least 2 people per fold / view and 2 images per person")
    out_dir.mkdir(parents=True, exist_ok=True)
    zf = zipfile.ZipFile(zip_path) if zip_path is not None else None
    try:
        for k in range(1, people + 1):
            folder = out_dir / person_name(k)
            folder.mkdir(exist_ok=True)
            for i in range(1, images_per_person + 1):
                if zf is not None:
                    data = zf.read(f"att_faces/s{k}/{i}.pgm")
                else:
                    data = _pgm(_synthetic_face(k, i))
                (folder / f"{person_name(k)}_{i:04d}.pgm").write_bytes(data)
    finally:
        if zf is not None:
            zf.close()

    rng = random.Random(seed)
    everyone = list(range(1, people + 1))
    rng.shuffle(everyone)
    cut = max(2, int(len(everyone) * 0.6))
    view1 = {
        "pairsDevTrain.txt": (everyone[:cut], dev_train),
        "pairsDevTest.txt": (
            everyone[cut:],
            dev_test,
        ),
    }
    for name, (group, n) in view1.items():
        same = _same_pairs(rng, group, n, images_per_person)
        diff = _diff_pairs(rng, group, n, images_per_person)
        (out_dir / name).write_text("\n".join([str(n), *_lines(same, diff)]) + "\n")

    blocks = [f"{folds}\t{per_fold}"]
    for f in range(folds):
        group = everyone[f::folds]
        blocks += _lines(
            _same_pairs(rng, group, per_fold, images_per_person),
            _diff_pairs(rng, group, per_fold, images_per_person),
        )
    (out_dir / "pairs.txt").write_text("\n".join(blocks) + "\n")
    return out_dir
