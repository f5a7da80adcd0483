"""Search quality: TPE vs random search at equal budget on a CIFAR-10 subset (the JPEG zip
in ../shared/data) with the ``screen`` evaluator, several seeds. Prints the median and the
spread of the best validation accuracy found, and draws best-so-far curves to
bench/out/search.png.

The loop is the coordinator's (suggest from the history, INFEASIBLE as the worst score,
one trial at a time) run in-process, so the numbers measure the algorithms, not HTTP.
CIFAR-10 here is JPEG quality 75: close to, not identical with, published CIFAR-10 numbers.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
PNG = ROOT / "bench" / "out" / "search.png"


def one_search(algorithm: str, seed: int, budget: int, ds: object) -> list[float]:
    """Best-so-far validation accuracy after each trial (0 until a trial completes)."""
    from search_space import HistoryItem, InfeasibleArchitecture, get_space, get_suggester
    from workers.evaluators import evaluate

    space = get_space("pinto-cox")
    suggester = get_suggester(algorithm, n_startup_jobs=max(5, budget // 3))
    history: list[HistoryItem] = []
    best, curve = 0.0, []
    for i in range(budget):
        [raw] = suggester.suggest(space, history, 1, seed=seed * 10_007 + i)
        arch = space.to_arch(raw, input_channels=3, seed=42)
        try:
            value = evaluate("screen", arch, ds, seed=seed, max_features=50_000).value
            history.append(HistoryItem(raw=raw, state="COMPLETE", value=value))
            best = max(best, value)
        except InfeasibleArchitecture:
            history.append(HistoryItem(raw=raw, state="INFEASIBLE"))
        curve.append(best)
    return curve


def run(quick: bool = False, record: bool = True) -> None:
    if not CIFAR_ZIP.is_file():
        print(f"search benchmark skipped: {CIFAR_ZIP} is absent")
        return
    from workers.datasets import load_dataset

    per_class = {"train": 60, "test": 10} if quick else {"train": 100, "test": 20}
    budget, seeds = (8, (0, 1)) if quick else (20, (0, 1, 2))
    ds = load_dataset(f"imagefolder:{CIFAR_ZIP}", color="rgb", max_per_class=per_class)
    curves: dict[str, list[list[float]]] = {"random": [], "tpe": []}
    started = time.perf_counter()
    for seed in seeds:
        for algorithm in curves:
            curves[algorithm].append(one_search(algorithm, seed, budget, ds))
    seconds = time.perf_counter() - started
    rows = []
    for algorithm, cs in curves.items():
        finals = [c[-1] for c in cs]
        rows.append(
            [algorithm, len(cs), budget, statistics.median(finals), min(finals), max(finals)]
        )
    tpe_med, rnd_med = rows[1][3], rows[0][3]
    body = report.table(["algorithm", "seeds", "trials", "median best", "min", "max"], rows)
    body += (
        f"\n\nTPE / random (median best): {tpe_med / rnd_med:.3f}x. pinto-cox space, "
        f"screen evaluator, CIFAR-10 JPEG subset ({per_class['train']} per class, 20% "
        f"of it for validation), {seconds:.0f} s in all. Curves: {PNG.relative_to(ROOT)}."
        " JPEG quality 75: not the official CIFAR-10 pixels."
    )
    _plot(curves)
    report.record("search: TPE vs random at equal budget (CIFAR-10 subset)", body, enabled=record)


def _plot(curves: dict[str, list[list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for (algorithm, cs), color in zip(curves.items(), ("tab:gray", "tab:blue"), strict=True):
        for c in cs:
            ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.35)
        med = [statistics.median(v) for v in zip(*cs, strict=True)]
        ax.plot(
            range(1, len(med) + 1),
            med,
            color=color,
            linewidth=2.5,
            label=f"{algorithm} (median of {len(cs)})",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)
    plt.close(fig)
