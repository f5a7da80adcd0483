"""Peak memory of the LFW View 2 final (``pairs`` protocol, ``final=True``), before / after.

The FG11 preset (``fg11-ht-l3-1st``, 200x200 gray input, 25,600 features per image, ridge
readout with l2 chosen on an inner split) on a synthetic tree in LFW's layout
(``tests/workers/lfw_fixture.build_lfw_tree`` without a zip: 112x92 synthetic faces,
loaded at the preset's 200 px), with View 2's shape: 10 folds x (300 same + 300 different)
pairs over disjoint people, ~7,600 distinct images. Each run is a child process (``python
-m bench.pairs child PATH ROOT``), so its peak RSS (``VmHWM``) is its own:

* ``new``: :func:`workers.evaluators.evaluate` as it is now (ridge kernels built in column
  chunks, :mod:`workers.pair_kernels`);
* ``old``: :func:`old_view2`, the algorithm of workers/pairs.py before it (every fold's
  comparison matrix, 9 concatenated per fold, ``select_and_fit``), on the same features.

The parent polls the child's ``VmRSS`` and kills it once it passes :data:`ABORT_BYTES`
(the old path at LFW's size would need ~11 GB): such a row says ``> 8 GB (aborted)``.
Scores are compared on a smaller tree (10 folds x 60 pairs) where both paths finish: the
same l2 per fold and the same fold accuracies (up to a pair on a rounding tie).
``--quick``: only a small tree (10 x 20 pairs; a smoke run, < 1 min).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import report
from search_space.arch import Activation, Architecture, FBCorr, Layer, LNorm, LPool

ABORT_BYTES = 8 << 30
PRESET = "fg11-ht-l3-1st"
# A stand-in with FG11's feature count (49 px -> lnorm0 3: 47 -> 64 filters 3x3: 45 -> pool
# 3 s2: 22 -> lnorm 3: 20; 20 x 20 x 64 = 25,600) at ~1/1000 of its extraction cost: the
# readout stage (what changed) sees the same feature matrix, so its memory and time are
# the same; for a loaded machine where extracting 7,600 images with FG11 is too slow.
STANDIN = Architecture(
    input_size=49,
    input_channels=1,
    lnorm0=LNorm(3, stretch=10.0, threshold=1.0),
    layers=(
        Layer(FBCorr(64, 3), Activation(0.0, math.inf), LPool(3, 2.0, 2), LNorm(3, threshold=1.0)),
    ),
    seed=42,
)
REPO = Path(__file__).resolve().parents[1]


# -- the old algorithm (git's workers/pairs.py before the kernels) ----------------------
def old_view2(arch: Any, ds: Any, seed: int = 0, max_folds: int | None = None) -> dict[str, Any]:
    """View 2 as it was computed before (the first ``max_folds`` folds, default all):
    returns ``value``, ``folds``, ``l2`` and timings."""
    from search_space.arch import validate
    from search_space.model import build_model
    from workers.evaluation_control import _Control
    from workers.pairs import PAIR_FEATURES_FINAL, pair_features
    from workers.stages import _extract_timed, _fit_readout, default_batch_size

    device = torch.device("cpu")
    rep = validate(arch, max_features=100_000)
    control = _Control(None, None, None)
    pairs = ds.pairs
    sets = [np.asarray(p, dtype=np.int64).reshape(-1, 2) for p, _ in pairs.folds]
    images = np.unique(np.concatenate([s.ravel() for s in sets]))
    model = build_model(arch, device=device, max_features=100_000)
    feats, ext = _extract_timed(model, ds, images, device, default_batch_size(rep, device), control)
    t1 = time.perf_counter()

    def comparison(p: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.searchsorted(images, p)).to(device)
        return pair_features(feats[rows[:, 0]], feats[rows[:, 1]], PAIR_FEATURES_FINAL)

    Xs = [comparison(s) for s in sets]
    ys = [torch.from_numpy(np.asarray(s, dtype=bool).astype(np.int64)) for _, s in pairs.folds]
    fold_acc: list[float] = []
    l2s: list[float] = []
    for k in range(len(sets) if max_folds is None else min(max_folds, len(sets))):
        others = [i for i in range(len(sets)) if i != k]
        Xtr = torch.cat([Xs[i] for i in others])
        ytr = torch.cat([ys[i] for i in others])
        clf = _fit_readout(Xtr, ytr, arch.readout.kind, arch.readout.l2, seed, device)
        del Xtr
        fold_acc.append(clf.accuracy(Xs[k], ys[k]))
        l2s.append(clf.l2)
    return {
        "value": float(np.mean(fold_acc)),
        "folds": fold_acc,
        "l2": l2s,
        "n_images": len(images),
        "extract_seconds": ext["extract_seconds"],
        "readout_seconds": time.perf_counter() - t1,
    }


# -- the child ---------------------------------------------------------------------------
def _status(key: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(path: str, root: str, model: str, max_folds: int | None) -> None:
    """Load ``root``, run View 2 by ``path`` (new / old) with ``model`` (fg11 / standin),
    the first ``max_folds`` folds (None: all), and print one JSON line."""
    from search_space.presets import get_preset
    from workers import pairs as wp
    from workers.datasets import load_dataset
    from workers.evaluators import Stopped, evaluate

    marks: dict[str, float] = {}
    real = wp._extract_timed

    def timed(*args: Any) -> Any:  # when extraction ends, for a run stopped after N folds
        out = real(*args)
        marks.update(end=time.perf_counter(), seconds=out[1]["extract_seconds"], n=len(args[2]))
        return out

    wp._extract_timed = timed
    arch = get_preset(PRESET) if model == "fg11" else STANDIN
    ds = load_dataset(f"lfw:{root}", color="gray", size=arch.input_size)
    before = _status("VmRSS")
    t0 = time.perf_counter()
    if path == "new":
        reports: list[tuple[int, float, float]] = []

        def report_fold(step: int, value: float) -> str:
            reports.append((step, value, time.perf_counter()))
            return "stop" if max_folds is not None and step >= max_folds else "continue"

        try:
            result = evaluate("pairs", arch, ds, final=True, report=report_fold)
            m = result.metrics
            out = {
                "value": result.value,
                "folds": m["folds"],
                "l2": m["l2"],
                "n_images": m["n_images"],
                "extract_seconds": m["extract_seconds"],
                "readout_seconds": m["readout_seconds"],
                "chunk_columns": m["kernel_chunk_columns"],
            }
        except Stopped:  # after max_folds folds: the running mean, no per-fold detail
            out = {
                "value": reports[-1][1],
                "folds": [],
                "l2": [],
                "stopped": len(reports),
                "n_images": marks["n"],
                "extract_seconds": marks["seconds"],
                "readout_seconds": reports[-1][2] - marks["end"],
                "chunk_columns": None,
            }
    else:
        out = old_view2(arch, ds, max_folds=max_folds)
    out.update(seconds=time.perf_counter() - t0, before=before, hwm=_status("VmHWM"))
    out["n_folds"] = len(out["folds"]) or out.get("stopped")
    print(json.dumps(out), flush=True)


# -- the parent --------------------------------------------------------------------------
def _run_child(path: str, root: Path, model: str, max_folds: int | None) -> dict[str, Any]:
    """Run one child, polling its RSS; kill it (our own child, by its id) past
    :data:`ABORT_BYTES`."""
    cmd = [sys.executable, "-m", "bench.pairs", "child", path, str(root), model, str(max_folds)]
    # Files, not pipes: a child that writes more than a pipe holds would block while the
    # parent only polls.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        peak, aborted = 0, False
        while proc.poll() is None:
            try:
                rss = _status("VmRSS", str(proc.pid))
            except (OSError, KeyError):
                rss = 0
            peak = max(peak, rss)
            if rss > ABORT_BYTES:
                proc.kill()
                aborted = True
                break
            time.sleep(0.25)
        proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if aborted:
        return {"aborted": True, "peak": peak}
    if proc.returncode != 0:
        raise RuntimeError(f"{path} child failed ({proc.returncode}): {stderr[-2000:]}")
    return {"aborted": False, **json.loads(stdout.strip().splitlines()[-1])}


def _tree(tmp: Path, name: str, *, people: int, per_person: int, per_fold: int) -> Path:
    from tests.workers.lfw_fixture import build_lfw_tree

    return build_lfw_tree(
        None, tmp / name, people=people, images_per_person=per_person, folds=10,
        per_fold=per_fold, dev_train=20, dev_test=10,
    )  # fmt: skip


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def run(
    quick: bool = False, record: bool = True, model: str = "fg11", max_folds: int | None = None
) -> list[dict[str, Any]]:
    """Build the trees, run the children, print (and record) the table.

    ``model``: ``fg11`` (the preset at 200 px) or ``standin`` (:data:`STANDIN`) for the
    LFW-size tree; ``max_folds``: stop the LFW-size runs after that many folds (the peak
    is the same in every fold: all folds have the same sizes). The small tree always runs
    FG11 on all 10 folds, new and old, for the equality check."""
    t_start = time.perf_counter()
    rows: list[tuple[str, str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as tmp_name:
        tmp = Path(tmp_name)
        small = _tree(tmp, "small", people=100, per_person=10, per_fold=10 if quick else 30)
        label_small = "10 x 20 pairs" if quick else "10 x 60 pairs"
        if not quick:
            big = _tree(tmp, "lfw-size", people=600, per_person=20, per_fold=300)
            for path in ("new", "old"):
                r = _run_child(path, big, model, max_folds)
                rows.append(("10 x 600 pairs", path, model, r))
                print(path, {k: v for k, v in r.items() if k not in ("folds", "l2")}, flush=True)
        for path in ("new", "old"):
            r = _run_child(path, small, "fg11", None)
            rows.append((label_small, path, "fg11", r))
            print(path, {k: v for k, v in r.items() if k not in ("folds", "l2")}, flush=True)
    table_rows = []
    for tree, path, model_name, r in rows:
        if r["aborted"]:
            table_rows.append(
                [tree, model_name, path, "-", f"> {_gb(ABORT_BYTES)} (aborted)", "-"] + ["-"] * 5
            )
            continue
        table_rows.append(
            [
                tree,
                model_name,
                path,
                r["n_images"],
                _gb(r["hwm"]),
                _gb(r["hwm"] - r["before"]),
                f"{r['extract_seconds']:.0f}",
                r["n_folds"],
                f"{r['readout_seconds'] / r['n_folds']:.0f}",
                f"{r['value']:.4f}",
                " ".join(f"{a:.3f}" for a in r["folds"]) or "(stopped)",
            ]
        )
    notes = []
    by_tree: dict[str, dict[str, dict[str, Any]]] = {}
    for tree, path, _, r in rows:
        by_tree.setdefault(tree, {})[path] = r
    for tree, paths in by_tree.items():
        new, old = paths.get("new"), paths.get("old")
        if not new or not old or new["aborted"] or old["aborted"] or not new["folds"]:
            continue
        diff = np.abs(np.asarray(new["folds"]) - np.asarray(old["folds"]))
        same_l2 = "equal" if new["l2"] == old["l2"] else "DIFFERENT"
        same_acc = "equal" if diff.max() == 0 else f"differ by up to {diff.max():.4f}"
        notes.append(
            f"{tree}: l2 per fold {same_l2} (new {new['l2']}, old {old['l2']}); fold "
            f"accuracies {same_acc}; score new {new['value']:.6f}, old {old['value']:.6f}."
        )
    body = report.table(
        [
            "tree",
            "model",
            "path",
            "images",
            "peak RSS GiB",
            "grown in evaluate GiB",
            "extract s",
            "folds run",
            "readout s / fold",
            "score",
            "fold accuracies",
        ],
        table_rows,
    )
    body += (
        f"\n\nModels: fg11 = {PRESET} at 200 px (25,600 features per image, 4 x 25,600 = "
        "102,400 comparison columns per pair); standin = a 1-layer model at 49 px with the "
        "same 25,600 features (bench/pairs.py:STANDIN), used where extracting 7,600 images "
        "with FG11 would take too long: the readout stage, the part that changed, sees the "
        "same matrix sizes. Ridge, l2 chosen on the inner split, seed 0, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads. Synthetic LFW-"
        "layout trees (tests/workers/lfw_fixture.build_lfw_tree without a zip: 112x92 "
        "synthetic faces resized to the input size; 10 folds over disjoint people). Each row "
        "is one child process: peak RSS is its VmHWM (the dataset, torch and the model "
        "included); 'grown' is VmHWM minus VmRSS after loading the dataset. 'old' is the "
        "algorithm of workers/pairs.py before the kernels (bench/pairs.py:old_view2), killed "
        f"once its RSS passed {_gb(ABORT_BYTES)} GiB; 'folds run' < 10: stopped after that "
        "many folds (every fold has the same sizes, so the same peak). Kernel chunks: "
        f"{', '.join(str(r.get('chunk_columns')) for _, p, _, r in rows if p == 'new')} "
        "columns. " + " ".join(notes) + f" Wall time {time.perf_counter() - t_start:.0f} s; "
        f"1-minute load average at the end {os.getloadavg()[0]:.1f} (other processes share "
        "the cores: seconds are noisy)." + (" Quick run: the small tree only." if quick else "")
    )
    report.record("pairs: LFW View 2 final, peak memory before / after", body, enabled=record)
    return [r for _, _, _, r in rows]


def main(argv: list[str]) -> None:
    """``python -m bench.pairs [--quick] [--no-record] [--model standin] [--folds N]``, or
    ``python -m bench.pairs child PATH ROOT MODEL MAX_FOLDS`` (one measured run)."""
    if argv[:1] == ["child"]:
        path, root, model, folds = argv[1:5]
        child(path, root, model, None if folds == "None" else int(folds))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.pairs", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--model", choices=["fg11", "standin"], default="fg11")
    parser.add_argument("--folds", type=int, default=None)
    args = parser.parse_args(argv)
    run(args.quick, not args.no_record, args.model, args.folds)


if __name__ == "__main__":
    main(sys.argv[1:])
