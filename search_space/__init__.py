"""archsearch's pure core: the model family, search spaces, sampling and suggesters.

No database, no HTTP, no torch here: ``search_space.ops`` and ``search_space.model``
(torch) are imported explicitly by the code that runs models, so that importing this
package stays cheap (hyperopt, too, is imported only when a space is compiled).
"""

from .arch import (
    DEFAULT_MAX_FEATURES,
    DEFAULT_MAX_PARAMS,
    PREPROCESS_KINDS,
    READOUT_KINDS,
    Activation,
    Architecture,
    FBCorr,
    InfeasibleArchitecture,
    Layer,
    LNorm,
    LPool,
    Readout,
    ShapeReport,
    TrainSettings,
    validate,
    walk,
)
from .builtin_spaces import (
    BUILTIN_DOCUMENTS,
    DEFAULT_SPACE,
    get_space,
    list_spaces,
    preset_raw,
)
from .history import EncodedHistory
from .presets import PRESETS, get_preset
from .space import (
    MAX_DOCUMENT_BYTES,
    MAX_GRID_POINTS,
    MAX_PARAMETERS,
    ParamInfo,
    Space,
    SpaceError,
    build_architecture,
    parse_space,
)
from .suggest import (
    STATES,
    GridSuggester,
    HistoryItem,
    RandomSuggester,
    Suggester,
    TPESuggester,
    get_suggester,
    history_to_trials,
)

__all__ = [
    "BUILTIN_DOCUMENTS",
    "DEFAULT_MAX_FEATURES",
    "DEFAULT_MAX_PARAMS",
    "DEFAULT_SPACE",
    "MAX_DOCUMENT_BYTES",
    "MAX_GRID_POINTS",
    "MAX_PARAMETERS",
    "PREPROCESS_KINDS",
    "PRESETS",
    "READOUT_KINDS",
    "STATES",
    "Activation",
    "Architecture",
    "EncodedHistory",
    "FBCorr",
    "GridSuggester",
    "HistoryItem",
    "InfeasibleArchitecture",
    "LNorm",
    "LPool",
    "Layer",
    "ParamInfo",
    "RandomSuggester",
    "Readout",
    "ShapeReport",
    "Space",
    "SpaceError",
    "Suggester",
    "TPESuggester",
    "TrainSettings",
    "build_architecture",
    "get_preset",
    "get_space",
    "get_suggester",
    "history_to_trials",
    "list_spaces",
    "parse_space",
    "preset_raw",
    "validate",
    "walk",
]
