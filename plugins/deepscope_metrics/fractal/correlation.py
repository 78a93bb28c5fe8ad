"""Correlation dimension of a layer's sample representations (Ding et al. 2025, appendix: Delta).

Grassberger-Procaccia: ``C(r)`` = fraction of sample pairs closer than r; the dimension is the
slope of ``log C`` against ``log r`` over radii between two distance quantiles (small enough to
avoid the saturation at the set's size, large enough to hold many pairs).
Delta = (max - min) / mean of the layer dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import pdist

from .scaling import linear_fit

NORMALISATIONS = ("l2", "standard", "none")


@dataclass
class CorrelationDimension:
    dimension: float
    r2: float
    radii: np.ndarray
    c: np.ndarray  #: C(r) at each radius
    n_samples: int
    n_features: int
    reason: str = ""


def normalise(x: np.ndarray, how: str = "l2") -> np.ndarray:
    """``l2``: each sample on the unit sphere; ``standard``: each feature z-scored; ``none``."""
    if how not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation '{how}'; valid: {', '.join(NORMALISATIONS)}")
    x = np.asarray(x, np.float64)
    if how == "l2":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norm > 0, norm, 1.0)
    if how == "standard":
        sd = x.std(axis=0)
        return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return x


def correlation_dimension(
    x: np.ndarray, n_radii: int = 16, quantiles: tuple[float, float] = (0.001, 0.05), how: str = "l2"
) -> CorrelationDimension:
    """Grassberger-Procaccia dimension of the rows of ``x[n, p]``; NaN with a reason when degenerate."""
    x = np.asarray(x, np.float64)
    n, p = x.shape if x.ndim == 2 else (0, 0)
    nan, empty = float("nan"), np.zeros(0)
    if n < 3:
        return CorrelationDimension(nan, nan, empty, empty, n, p, f"{n} samples: need at least 3")
    if not np.isfinite(x).all():
        return CorrelationDimension(nan, nan, empty, empty, n, p, "NaN/inf activations")
    d = np.sort(pdist(normalise(x, how)))
    lo, hi = np.quantile(d, quantiles)
    if not lo > 0 or hi <= lo:
        return CorrelationDimension(nan, nan, empty, empty, n, p,
                                    "distances at the chosen quantiles are zero or equal (duplicate/constant samples)")
    radii = np.geomspace(lo, hi, n_radii)
    c = np.searchsorted(d, radii, side="left") / d.size
    ok = c > 0
    slope, _, r2 = linear_fit(np.log(radii[ok]), np.log(c[ok]))
    return CorrelationDimension(slope, r2, radii, c, n, p, "" if np.isfinite(slope) else "fit failed")
