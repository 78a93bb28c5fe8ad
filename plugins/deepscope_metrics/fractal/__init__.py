"""Fractal and self-similarity analysis: SS_rate (Ding et al. 2025), box covering (Song et al.),
spectrum exponents and correlation dimensions. Pure numpy/scipy; the torch loss S2-Con lives in
``deepscope_metrics.fractal.s2con`` (imported lazily: ``from deepscope_metrics.fractal import S2ConLoss``).
"""

from __future__ import annotations

from typing import Any

from .box_covering import (
    BoxCovering,
    box_covering,
    box_covering_networkx_baseline,
    check_cover,
    distance_matrix,
)
from .correlation import (
    CorrelationDimension,
    KnnCorrelationDimension,
    authors_correlation_dimension,
    correlation_dimension,
    dimension_fluctuation,
    reduce_dimension,
)
from .feature_graph import FeatureGraph, PairDistanceAccumulator, feature_graph
from .graphs import lattice, path, sierpinski_gasket, uv_flower, uv_flower_dimension
from .scaling import ScalingFit, fit_box_counts
from .spectrum import PowerLawDensityFit, power_law_mle, spectrum_exponent, top_eigenvalues
from .ss_rate import SSRate, ss_rate, ss_rate_batches, ss_rate_from_distances

__all__ = [
    "BoxCovering",
    "CorrelationDimension",
    "KnnCorrelationDimension",
    "FeatureGraph",
    "PairDistanceAccumulator",
    "PowerLawDensityFit",
    "S2ConLoss",
    "SSRate",
    "ScalingFit",
    "box_covering",
    "box_covering_networkx_baseline",
    "authors_correlation_dimension",
    "check_cover",
    "correlation_dimension",
    "dimension_fluctuation",
    "distance_matrix",
    "feature_graph",
    "fit_box_counts",
    "lattice",
    "path",
    "power_law_mle",
    "reduce_dimension",
    "sierpinski_gasket",
    "spectrum_exponent",
    "ss_rate",
    "ss_rate_batches",
    "top_eigenvalues",
    "ss_rate_from_distances",
    "ss_rate_torch",
    "uv_flower",
    "uv_flower_dimension",
]


def __getattr__(name: str) -> Any:  # torch only when the loss is asked for
    if name in ("S2ConLoss", "ss_rate_torch"):
        from . import s2con

        return getattr(s2con, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
