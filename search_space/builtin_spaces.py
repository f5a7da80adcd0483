"""The built-in search spaces of docs/design.md section 3, as space documents.

* ``fg11``: the Cox & Pinto (FG 2011) grid, 3 layers at 200x200.
* ``pinto-cox`` (the default): the same grids with depth in {1, 2, 3}, each depth with
  input sizes at which it is reachable.
* ``bergstra13``: the continuous relaxation of Bergstra, Yamins & Cox (ICML 2013).

The documents are plain JSON-like data (:data:`BUILTIN_DOCUMENTS`); :func:`get_space`
compiles one on first use and caches it.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from .presets import PRESETS
from .space import Space, parse_space

DEFAULT_SPACE = "pinto-cox"

# -- the FG11 grids ------------------------------------------------------------------
_WINDOWS = [3, 5, 7, 9]  # filter, pool and lnorm sizes
_FG11_N_FILTERS = ([16, 32, 64], [16, 32, 64, 128], [16, 32, 64, 128, 256])  # L1, L2, L3


def _choice(options: list[Any]) -> dict[str, Any]:
    return {"type": "choice", "options": list(options)}


def _fg11_layer(index: int) -> dict[str, Any]:
    """Layer ``index`` (0-based) of the FG11 grid."""
    return {
        "n_filters": _choice(_FG11_N_FILTERS[index]),
        "filter_size": _choice(_WINDOWS),
        "min_out": _choice(["-inf", 0]),
        "max_out": _choice([1, "inf"]),
        "pool_size": _choice(_WINDOWS),
        "pool_order": _choice([1, 2, 10]),
        "pool_stride": 2,
        "norm_size": _choice(_WINDOWS),
        "norm_remove_mean": _choice([False, True]),
        "norm_stretch": _choice([0.1, 1, 10]),
        "norm_threshold": _choice([0.1, 1, 10]),
    }


def _fg11_lnorm0() -> dict[str, Any]:
    return {
        "size": _choice(_WINDOWS),
        "remove_mean": _choice([False, True]),
        "stretch": _choice([0.1, 1, 10]),
        "threshold": _choice([0.1, 1, 10]),
    }


_SCREEN_READOUT = {"kind": "ridge", "l2": None}  # l2 chosen on the training split

# fg11: the grid of Cox & Pinto, "Beyond simple features: a large-scale feature search
# approach to unconstrained face recognition" (FG 2011), as docs/design.md section 3 lists it;
# 200x200 inputs as there (the HT-L3-1st preset is a point of it, see preset_raw).
FG11: dict[str, Any] = {
    "name": "fg11",
    "description": (
        "Cox & Pinto (FG 2011) grid, 3 layers at 200x200: filter/pool/lnorm sizes "
        "{3,5,7,9}, n_filters L1 {16,32,64} L2 {16..128} L3 {16..256}, min_out {-inf,0}, "
        "max_out {1,inf}, pool order {1,2,10} stride 2, lnorm remove_mean {0,1}, "
        "stretch and threshold {.1,1,10}; layer 0 lnorm too."
    ),
    "input_size": 200,
    "lnorm0": _fg11_lnorm0(),
    "layers": [_fg11_layer(i) for i in range(3)],
    "readout": _SCREEN_READOUT,
}

# Input sizes per depth for pinto-cox.  With FG11 windows the fraction of feasible
# configurations (feature map >= 1x1 and <= 100,000 features, lnorm0 included; 20,000
# draws each, measured with search_space.arch.validate) is:
#   depth 1:  32px 83%,  48px 100%, 96px 97%, 128px 63% (feature cap), 200px 0%
#   depth 2:  48px 7.5%, 64px 44%,  80px 86%, 96px 99.6%, 128px 100%
#   depth 3:  64px 0.01%, 96px 1.9%, 128px 25%, 144px 47%, 160px 70%, 200px 99%
# So each depth gets two sizes where it is mostly feasible and cheap on a CPU (median
# cost per image about 5, 100 and 450 MFLOP): this makes every depth reachable whatever
# the dataset's own resolution (images are resized to the trial's input size).  Sampled
# from this space (20,000 draws): feasible 91% of depth-1, 93% of depth-2 and 48% of
# depth-3 draws, 77% overall.  Infeasible draws cost no evaluation: the coordinator's
# shape walk marks them before any worker sees them, and TPE learns to avoid them.
PINTO_COX_INPUT_SIZES = {1: [32, 48], 2: [80, 96], 3: [128, 160]}

# pinto-cox: Pinto & Cox's high-throughput screening over the same grids, with the
# depth itself searched (Pinto, Doukhan, DiCarlo & Cox 2009 screened 2- and 3-layer
# models); the input size per depth is ours, from the measurements above.
PINTO_COX: dict[str, Any] = {
    "name": "pinto-cox",
    "description": (
        "The FG11 grids with depth in {1,2,3} (Pinto & Cox): filter counts, pooling "
        "strength, normalization neighbourhoods and depth; input size per depth "
        "{32,48} / {80,96} / {128,160} so that every depth is reachable."
    ),
    "lnorm0": _fg11_lnorm0(),
    "depth": _choice(
        [
            {
                "input_size": _choice(PINTO_COX_INPUT_SIZES[d]),
                "layers": [_fg11_layer(i) for i in range(d)],
            }
            for d in (1, 2, 3)
        ]
    ),
    "readout": _SCREEN_READOUT,
}

# -- the ICML 2013 relaxation ----------------------------------------------------------
_LOG3 = math.log(3.0)
_LOG10 = math.log(10.0)


def _lognormal(mu: float, sigma: float) -> dict[str, Any]:
    return {"type": "lognormal", "mu": mu, "sigma": sigma}


def _int_uniform(low: int, high: int) -> dict[str, Any]:
    # quniform on [low - .5, high + .5]: every integer of [low, high] equally likely,
    # and TPE still models the order of the values (a randint would be categorical)
    return {"type": "quniform", "low": low - 0.5, "high": high + 0.5, "q": 1}


def _bergstra13_layer() -> dict[str, Any]:
    return {
        "n_filters": {"type": "qloguniform", "low": 16, "high": 256, "q": 16},
        "filter_size": _int_uniform(3, 9),
        "min_out": _choice(["-inf", 0]),
        "max_out": _choice([1, "inf"]),
        "pool_size": _int_uniform(2, 8),
        "pool_order": _choice([1, 2, _lognormal(0.0, _LOG3)]),
        "pool_stride": _choice([1, 2]),
        "norm_size": _int_uniform(3, 9),
        "norm_remove_mean": _choice([False, True]),
        "norm_stretch": _lognormal(0.0, _LOG10),
        "norm_threshold": _lognormal(0.0, _LOG10),
    }


# An input size choice per depth, as ICML13's warp size; stride 1 and 256 filters make
# the feature cap bite at the larger sizes.  Feasible (20,000 draws): depth 1 83%,
# depth 2 65%, depth 3 57%, 69% overall.
BERGSTRA13_INPUT_SIZES = {1: [32, 48, 64], 2: [64, 96, 128], 3: [128, 160, 200]}

# bergstra13: Bergstra, Yamins & Cox, "Making a science of model search" (ICML 2013),
# the continuous relaxation of the same family that TPE searched; ranges as docs/design.md
# section 3.  The table gives no law for the lnorm stretch: we use the threshold's.
BERGSTRA13: dict[str, Any] = {
    "name": "bergstra13",
    "description": (
        "Continuous relaxation after Bergstra, Yamins & Cox (ICML 2013): n_filters "
        "qloguniform 16..256 step 16, filter size 3..9, pool size 2..8, stride {1,2}, "
        "p {1, 2, lognormal(0, log 3)}, lnorm size 3..9, stretch and threshold "
        "lognormal(0, log 10), classifier l2 lognormal(log 1e-5, log 1e3), depth 1..3 "
        "with an input size choice per depth."
    ),
    "lnorm0": {
        "size": _int_uniform(3, 9),
        "remove_mean": _choice([False, True]),
        "stretch": _lognormal(0.0, _LOG10),
        "threshold": _lognormal(0.0, _LOG10),
    },
    "depth": _choice(
        [
            {
                "input_size": _choice(BERGSTRA13_INPUT_SIZES[d]),
                "layers": [_bergstra13_layer() for _ in range(d)],
            }
            for d in (1, 2, 3)
        ]
    ),
    "readout": {"kind": "ridge", "l2": _lognormal(math.log(1e-5), math.log(1e3))},
}

BUILTIN_DOCUMENTS: dict[str, dict[str, Any]] = {
    doc["name"]: doc for doc in (PINTO_COX, FG11, BERGSTRA13)
}


@cache
def get_space(name: str) -> Space:
    """The built-in space ``name``, compiled (cached: compile once per process).

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        doc = BUILTIN_DOCUMENTS[name]
    except KeyError:
        raise KeyError(f"unknown space {name!r}; built-in: {sorted(BUILTIN_DOCUMENTS)}") from None
    return parse_space(doc)


def list_spaces() -> list[Space]:
    """Every built-in space, the default (:data:`DEFAULT_SPACE`) first."""
    return [get_space(name) for name in BUILTIN_DOCUMENTS]


def preset_raw(name: str, space_name: str = "fg11") -> dict[str, Any]:
    """The raw point of ``space_name`` whose architecture is the preset ``name``.

    ``get_space(space_name).to_arch(preset_raw(name, space_name)) == PRESETS[name]`` (for
    the preset's channel count and seed), so a study can be seeded with a preset.

    Raises:
        KeyError: unknown preset or space.
        SpaceError: the preset is not a point of that space.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return get_space(space_name).raw_from_arch(PRESETS[name])
