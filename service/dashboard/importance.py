"""Random-forest parameter importance for the score of a study (the importance chart).

Holds :func:`importance`: a scikit-learn regression forest fit on the COMPLETE search
trials' parameter columns (``columns.complete_columns``), its impurity-based importances
normalised to sum to 1, cached per number of COMPLETE trials (:data:`IMPORTANCE_CACHE`).

Called by ``service.api.results`` (``GET /api/v1/studies/{id}/importance``); the study
page's chart fetches that route. Unknown studies raise :class:`~service.errors.NotFound`.
"""

from __future__ import annotations

import math

import numpy as np
from sqlalchemy.orm import Session

from .. import studies as studies_mod
from .columns import Columns, ResultCache, cache_key, complete_columns, n_complete
from .schemas import Importance, ParamImportance

# Random-forest importance: fit on at most this many trials (a fixed-seed subsample), so
# that a 10,000-trial study refits in well under a second.
IMPORTANCE_MIN_TRIALS = 5
IMPORTANCE_MAX_FIT = 2000
IMPORTANCE_TREES = 64
IMPORTANCE_METHOD = (
    f"random forest ({IMPORTANCE_TREES} trees; 3 samples per leaf from 50 trials on) on raw "
    "parameter values, impurity-based importance"
)

IMPORTANCE_CACHE = ResultCache(size=64)


def importance(session: Session, study_id: int, cache: ResultCache | None = None) -> Importance:
    """Random-forest importance of each varying parameter label for the score.

    Cached per (study, number of COMPLETE search trials): the page refreshes cost one
    count query until another trial completes. See :class:`~.schemas.Importance`.
    """
    cache = cache or IMPORTANCE_CACHE
    study = studies_mod.get_study(session, study_id)
    key = cache_key(session, study_id, n_complete(session, study_id))
    if (hit := cache.get(key)) is not None:
        return hit
    with cache.compute_lock:
        if (hit := cache.get(key)) is not None:
            return hit
        result = _fit_importance(study_id, complete_columns(session, study))
        cache.put(key, result)  # the count read before: see columns.complete_columns
        return result


def _fit_importance(study_id: int, cols: Columns) -> Importance:
    n_complete = len(cols.numbers)

    def answer(n_fit: int, items: list[ParamImportance], note: str | None) -> Importance:
        return Importance(
            study_id=study_id,
            n_complete=n_complete,
            n_fit=n_fit,
            method=IMPORTANCE_METHOD,
            importances=items,
            note=note,
        )

    if n_complete < IMPORTANCE_MIN_TRIALS:
        return answer(
            0, [], f"needs at least {IMPORTANCE_MIN_TRIALS} COMPLETE trials; {n_complete} so far"
        )
    pick = np.arange(n_complete)
    if n_complete > IMPORTANCE_MAX_FIT:
        pick = np.sort(
            np.random.default_rng(0).choice(n_complete, IMPORTANCE_MAX_FIT, replace=False)
        )
    y = np.asarray(cols.values, dtype=float)[pick]
    if not cols.labels or float(np.ptp(y)) == 0.0:
        why = "no parameter varies" if not cols.labels else "every score is the same"
        return answer(len(pick), [], f"nothing to explain: {why}")
    x = np.empty((len(pick), len(cols.labels)))
    for j, label in enumerate(cols.labels):
        column = np.array(cols.columns[label], dtype=float)[pick]  # None -> nan
        present = column[~np.isnan(column)]
        inactive = float(present.min()) - 1.0 if present.size else -1.0
        x[:, j] = np.where(np.isnan(column), inactive, column)

    from sklearn.ensemble import RandomForestRegressor  # import cost paid on first use

    forest = RandomForestRegressor(
        n_estimators=IMPORTANCE_TREES,
        random_state=0,
        n_jobs=1,
        min_samples_leaf=3 if len(pick) >= 50 else 1,
    )
    forest.fit(x, y)
    weights = forest.feature_importances_
    total = float(weights.sum())
    if not math.isfinite(total) or total <= 0:
        return answer(len(pick), [], "the forest found no split that explains the scores")
    items = sorted(
        (
            ParamImportance(label=label, importance=float(w) / total)
            for label, w in zip(cols.labels, weights, strict=True)
        ),
        key=lambda item: (-item.importance, item.label),
    )
    return answer(len(pick), items, None)
