"""What the dashboard query modules share: the trial filters and the small value helpers.

Holds the state groups and the search/final filters (:data:`FINISHED`, :data:`FAILURES`,
:data:`IS_SEARCH`, :data:`IS_FINAL`), datetime normalising (:func:`as_utc`,
:func:`seconds_between`), the architecture line (:func:`arch_summary`, re-exported from
``service.views``) and the text of a choice option (:func:`option_text`, :func:`space_of`).

Called by ``columns``, ``importance``, ``study_queries`` and ``worker_queries`` of this
package, and by ``routes`` (``as_utc`` for the time filter of the templates).

Conventions: "search trials" are the trials a suggester proposed or a user queued;
final test-split re-scores (``source = "final"``) are counted apart and never plotted as
search history. Scores are maximised.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from search_space import ParamInfo, Space

from .. import studies as studies_mod
from ..lifecycle import IS_FINAL
from ..models import Study, TrialState
from ..views import arch_summary

FINISHED = TrialState.finished()
FAILURES = (TrialState.FAILED, TrialState.INFEASIBLE)
IS_SEARCH = ~IS_FINAL

__all__ = ["FAILURES", "FINISHED", "IS_FINAL", "IS_SEARCH", "arch_summary"]


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (SQLite hands back naive UTC datetimes)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def seconds_between(later: datetime | None, earlier: datetime | None) -> float | None:
    """``later - earlier`` in seconds, or ``None`` if either is missing."""
    a, b = as_utc(later), as_utc(earlier)
    return None if a is None or b is None else (a - b).total_seconds()


def option_text(option: Any) -> str:
    """A choice option as the short text a chart axis or a trial page shows."""
    if isinstance(option, ParamInfo):
        return f"<{option.label}>"
    if isinstance(option, dict) and isinstance(option.get("layers"), list):
        return f"{len(option['layers'])} layers"
    if isinstance(option, bool):
        return str(option).lower()
    if isinstance(option, float):
        return f"{option:g}"
    return str(option)


def space_of(study: Study) -> Space | None:
    """The compiled space of ``study``, or ``None`` if this version cannot compile it."""
    try:
        return studies_mod.study_space(study)
    except ValueError:  # a stored document this version cannot compile: plot raw values
        return None
