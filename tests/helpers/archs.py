"""Small models for the worker suites: one-layer search spaces (what a study is created
with) and one-layer architectures (what the evaluations, blends and exports take)."""

from __future__ import annotations

import math
from typing import Any

from search_space.arch import (
    Activation,
    Architecture,
    FBCorr,
    Layer,
    LNorm,
    LPool,
    Readout,
    TrainSettings,
)


def space_layer(n_filters: Any, filter_size: Any) -> dict[str, Any]:
    """A search-space layer: ``n_filters`` and ``filter_size`` as given (a value or a
    distribution), then relu, an order-2 pool of 3 at stride 2 and a local norm of 3."""
    return {
        "n_filters": n_filters,
        "filter_size": filter_size,
        "min_out": 0,
        "max_out": "inf",
        "pool_size": 3,
        "pool_order": 2,
        "pool_stride": 2,
        "norm_size": 3,
    }


def one_layer_space(
    name: str, input_size: int, n_filters: Any, filter_size: Any, **extra: Any
) -> dict[str, Any]:
    """A search space of one :func:`space_layer`; ``extra``: more keys (``train``)."""
    return {
        "name": name,
        "input_size": input_size,
        "layers": [space_layer(n_filters, filter_size)],
        **extra,
    }


def one_layer_arch(
    n_filters: int = 16,
    *,
    size: int = 16,
    pool: int = 3,
    stretch: float = 10.0,
    seed: int = 42,
    readout: Readout | None = None,
    train: TrainSettings | None = None,
) -> Architecture:
    """A gray Pinto & Cox model of one layer: lnorm0 3 (``stretch``) -> ``n_filters`` 3x3
    filters, relu -> pool ``pool`` (order 2, stride 2) -> lnorm 3; ridge unless
    ``readout``. At 16 px with pool 3: 16 -> 14 -> 12 -> 5 -> 3, 3 x 3 x n_filters
    features; with pool 7 a 1 x 1 map (n_filters). At 32 px with pool 3: 11 x 11."""
    return Architecture(
        input_size=size,
        input_channels=1,
        lnorm0=LNorm(3, stretch=stretch, threshold=1.0),
        layers=(
            Layer(
                FBCorr(n_filters, 3),
                Activation(0.0, math.inf),
                LPool(pool, 2.0, 2),
                LNorm(3, threshold=1.0),
            ),
        ),
        readout=readout or Readout("ridge"),
        seed=seed,
        train=train,
    )


def export_arch(size: int) -> Architecture:
    """The export suites' model: :func:`one_layer_arch` with 8 filters, an lnorm0 stretch
    of 1 and filter seed 7."""
    return one_layer_arch(8, size=size, stretch=1.0, seed=7)
