"""Named architectures from the literature, as :class:`Architecture` values.

``fg11-ht-l3-1st`` is the "HT-L3-1st" model of Cox & Pinto (FG 2011), docs/design.md section 2:
at 200x200 it gives 10 x 10 x 256 = 25,600 features.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .arch import Activation, Architecture, FBCorr, Layer, LNorm, LPool

_RELU = Activation(min_out=0.0, max_out=math.inf)

FG11_HT_L3_1ST = Architecture(
    input_size=200,
    input_channels=1,
    lnorm0=LNorm(size=9, remove_mean=False, stretch=10.0, threshold=1.0),
    layers=(
        Layer(
            fbcorr=FBCorr(n_filters=64, size=3),
            activation=_RELU,
            lpool=LPool(size=7, order=1.0, stride=2),
            lnorm=LNorm(size=5, remove_mean=False, stretch=0.1, threshold=1.0),
        ),
        Layer(
            fbcorr=FBCorr(n_filters=128, size=5),
            activation=_RELU,
            lpool=LPool(size=5, order=1.0, stride=2),
            lnorm=LNorm(size=7, remove_mean=False, stretch=1.0, threshold=1.0),
        ),
        Layer(
            fbcorr=FBCorr(n_filters=256, size=5),
            activation=_RELU,
            lpool=LPool(size=7, order=10.0, stride=2),
            lnorm=LNorm(size=3, remove_mean=False, stretch=10.0, threshold=1.0),
        ),
    ),
    seed=42,
)

PRESETS: dict[str, Architecture] = {
    "fg11-ht-l3-1st": FG11_HT_L3_1ST,
}


def get_preset(
    name: str, input_size: int | None = None, input_channels: int | None = None
) -> Architecture:
    """The preset ``name``, optionally re-targeted to another input size / channel count.

    Raises ``KeyError`` with the known names when ``name`` is unknown.
    """
    try:
        arch = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
    return replace(
        arch,
        input_size=input_size or arch.input_size,
        input_channels=input_channels or arch.input_channels,
    )
