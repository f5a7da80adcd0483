"""The seeded, stratified splits of a dataset's labels (docs/design.md section 4), pure numpy.

The workers' loaders (``workers/datasets``) make a dataset's test split, its per-class
caps and the search's validation split with these functions; the coordinator uses them
too (the trial page draws the first validation image of a builtin dataset) and may not
import the workers (section 1), hence their home below both. Every function is a pure
function of labels, a fraction and a seed: the same on every machine.
"""

from __future__ import annotations

import math

import numpy as np

# The loaders' default test fraction for a dataset without an official split
# (``workers.datasets.load_dataset(test_fraction=...)``; workers use the default).
TEST_FRACTION = 0.2

__all__ = ["TEST_FRACTION", "cap_indices", "search_split_indices", "stratified_mask"]


def stratified_mask(y: np.ndarray, fraction: float, seed: int, stream: int) -> np.ndarray:
    """A bool mask choosing ``round(fraction * n_c)`` items of every class ``c``.

    Seeded per (seed, stream, class), so one class's choice does not depend on the others.
    A class with two or more items keeps at least one on each side when 0 < fraction < 1.
    The loaders use stream 0 for the test split, the search split stream 1.
    """
    mask = np.zeros(len(y), dtype=bool)
    if fraction <= 0:
        return mask
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = len(idx)
        k = math.floor(fraction * n + 0.5)
        k = min(max(k, 1), n - 1) if n >= 2 else 0
        perm = np.random.default_rng([seed, stream, int(c)]).permutation(n)
        mask[idx[perm[:k]]] = True
    return mask


def cap_indices(y: np.ndarray, is_test: np.ndarray, caps: dict[bool, int], seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``caps[split]`` items per class and split
    (``caps`` keyed by ``is_test``; a split without a key is not capped).

    The items of a class are taken in their given (sorted-file) order, then a seeded choice
    of ``cap`` of them, so the selection is deterministic and independent of other classes.
    """
    keep = []
    for split in (False, True):
        cap = caps.get(split)
        for c in np.unique(y):
            idx = np.flatnonzero((y == c) & (is_test == split))
            if cap is not None and len(idx) > cap:
                rng = np.random.default_rng([seed, 2, int(split), int(c)])
                idx = idx[np.sort(rng.choice(len(idx), cap, replace=False))]
            keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def search_split_indices(
    y: np.ndarray, is_test: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` sorted index arrays for the search: the non-test items, each
    class split in the same proportion (stream 1). The caller checks the arguments
    (``workers.datasets.search_split`` raises its ``DatasetError``)."""
    pool = np.flatnonzero(~np.asarray(is_test, dtype=bool))
    val_mask = stratified_mask(np.asarray(y)[pool], validation_fraction, int(seed), stream=1)
    return pool[~val_mask], pool[val_mask]
