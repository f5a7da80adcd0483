"""Blends of the best screened models (issue 17): blend vs best member, and its cost.

For each dataset, ``MEMBERS`` random feasible candidates of the built-in ``pinto-cox``
space (``Space.sample``, seeds 0, 1, ...; at most :data:`MAX_GFLOPS` GFLOP per image so a
shared CPU finishes) are evaluated on their own, as a study would (``evaluate``: search
split, then final), ranked by validation score, and the top k = 1, 3, 5 are blended
(:func:`workers.blend.blend`, uniform and validation-chosen weights). The table gives the
blend's validation and test scores next to the best member's (the one with the best
validation score: the member a study would report), and the seconds of the blend next to
the sum of its members' own final evaluations.

Datasets:

* ``cifar10``: a CIFAR-10 subset: the full JPEG copy in ``../shared/data``
  (``cifar10-jpeg.zip``) capped at :data:`CIFAR_PER_CLASS` images per class and split when
  it is there, else the committed 600-image fixture (``tests/data/cifar10-mini.zip``);
* ``att-lfw``: the LFW-layout tree of the AT&T faces (tests/workers/lfw_fixture.py; all 40
  people from ``../shared/data/att-faces.zip`` when there, else the committed 10-people
  fixture), pairs protocol: View 1 for the value, View 2 folds for the test score.

``python -m bench blend`` (or ``python -m bench.blend [--quick] [--no-record]``); ``--quick``
uses 4 candidates and k = 1, 3 on the committed fixtures (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import report

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MEMBERS = 8
MAX_GFLOPS = 0.25
CIFAR_PER_CLASS = {"train": 100, "test": 50}
KS = (1, 3, 5)


def _candidates(n: int, channels: int) -> list[Any]:
    """The first ``n`` feasible pinto-cox samples under :data:`MAX_GFLOPS` (seed order)."""
    from search_space.arch import InfeasibleArchitecture, validate
    from search_space.builtin_spaces import get_space

    space = get_space("pinto-cox")
    out, seed = [], 0
    while len(out) < n:
        arch = space.to_arch(space.sample(seed), channels, seed=seed)
        seed += 1
        try:
            rep = validate(arch, max_features=100_000)
        except InfeasibleArchitecture:
            continue
        if rep.gflops <= MAX_GFLOPS:
            out.append(arch)
    return out


def _datasets(tmp: Path, quick: bool) -> list[tuple[str, str, Any]]:
    from tests.helpers.data import ATT_FACES_MINI_ZIP, CIFAR10_MINI_ZIP
    from tests.workers.lfw_fixture import build_lfw_tree
    from workers.datasets import load_dataset

    out = []
    full_cifar = SHARED / "cifar10-jpeg.zip"
    if full_cifar.exists() and not quick:
        name = f"cifar10 ({CIFAR_PER_CLASS['train']}+{CIFAR_PER_CLASS['test']} per class)"
        ds = load_dataset(f"imagefolder:{full_cifar}", color="rgb", max_per_class=CIFAR_PER_CLASS)
    else:
        name, ds = (
            "cifar10-mini (30+30 per class)",
            load_dataset(f"imagefolder:{CIFAR10_MINI_ZIP}", color="rgb"),
        )
    out.append((name, "screen", ds))
    full_att = SHARED / "att-faces.zip"
    if full_att.exists() and not quick:
        root = build_lfw_tree(
            full_att, tmp / "lfw", dev_train=100, dev_test=50, folds=4, per_fold=25
        )
        name = "att-lfw (40 people; View 1 200/100, View 2 4 x 50 pairs)"
    else:
        root = build_lfw_tree(
            ATT_FACES_MINI_ZIP, tmp / "lfw", people=10, dev_train=100, dev_test=50, folds=2,
            per_fold=40,
        )  # fmt: skip
        name = "att-lfw-mini (10 people; View 1 200/100, View 2 2 x 80 pairs)"
    out.append((name, "pairs", load_dataset(f"lfw:{root}", color="gray", size=64)))
    return out


def _one_dataset(name: str, protocol: str, ds: Any, quick: bool) -> list[list[Any]]:
    from workers.blend import blend
    from workers.evaluators import evaluate

    channels = int(ds.x.shape[1])
    members = []
    for arch in _candidates(4 if quick else MEMBERS, channels):
        t0 = time.perf_counter()
        search = evaluate(protocol, arch, ds)
        t1 = time.perf_counter()
        final = evaluate(protocol, arch, ds, final=True)
        t2 = time.perf_counter()
        members.append((search.value, final.value, t1 - t0, t2 - t1, arch))
        print(f"{name}: {arch.summary()} val {search.value:.3f} test {final.value:.3f} "
              f"({t1 - t0:.1f} + {t2 - t1:.1f} s)", flush=True)  # fmt: skip
    members.sort(key=lambda m: -m[0])  # best validation first, as a study ranks finals
    rows = []
    for k in (1, 3) if quick else KS:
        top = members[:k]
        best_val, best_test = top[0][0], top[0][1]
        own_final_s = sum(m[3] for m in top)
        own_both_s = sum(m[2] + m[3] for m in top)
        for weights in ("uniform", "validation"):
            t0 = time.perf_counter()
            r = blend(protocol, [m[4] for m in top], ds, weights=weights)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            chosen = " ".join(f"{w:.2f}" for w in r.metrics["weights"])
            estimate = f"{r.metrics['memory_estimate_mb']:.0f}"
            rows.append(
                [
                    name, k, weights, f"{r.value:.3f}", f"{best_val:.3f}", f"{r.test_value:.3f}",
                    f"{best_test:.3f}", chosen, f"{seconds:.1f}", f"{own_final_s:.1f}",
                    f"{own_both_s:.1f}", estimate,
                ]
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def run(quick: bool = False, record: bool = True) -> list[list[Any]]:
    """Evaluate the candidates, blend the top k, print (and record) the table."""
    t_start = time.perf_counter()
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-blend-") as tmp_name:
        for name, protocol, ds in _datasets(Path(tmp_name), quick):
            rows += _one_dataset(name, protocol, ds, quick)
    body = report.table(
        [
            "dataset",
            "k",
            "weights",
            "blend val",
            "best member val",
            "blend test",
            "best member test",
            "weights chosen",
            "blend s",
            "members' own finals s",
            "own search + finals s",
            "estimate MiB",
        ],
        rows,
    )
    body += (
        f"\n\nMembers: the first {4 if quick else MEMBERS} feasible samples of the pinto-cox "
        f"space (seeds 0, 1, ...) under {MAX_GFLOPS} GFLOP per image, ranked by their own "
        "validation score; 'best member' is the top one (its validation and test scores "
        "from its own evaluate). A blend of k takes the top k. 'blend s' covers the whole "
        "blend (feature extraction of every member for both splits, kernels, readout; "
        "validation weights try 1 + k(k-1)/2 + k weightings); 'members' own finals s' sums "
        "the members' own final evaluations, 'own search + finals s' their search and final "
        "evaluations (a blend scores both splits). Ridge, l2 chosen on the inner split, seed 0, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU. Wall time "
        f"{time.perf_counter() - t_start:.0f} s; 1-minute load average at the end "
        f"{os.getloadavg()[0]:.1f} (shared cores: seconds are noisy)."
    )
    report.record("blend: blends of the top-k screened models", body, enabled=record)
    return rows


def main(argv: list[str]) -> None:
    """``python -m bench.blend [--quick] [--no-record]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.blend", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    run(args.quick, not args.no_record)


if __name__ == "__main__":
    main(sys.argv[1:])
