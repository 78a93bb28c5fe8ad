"""Correlation dimension of a layer's sample representations (Ding et al. 2025, appendix: Delta).

Two estimators:

- ``authors_correlation_dimension`` follows the authors' ``analyze_fractal_dimension.py``: each
  sample's flattened representation is L2-normalised, reduced to 50 dimensions (UMAP in their
  code; PCA here when ``umap-learn`` is not installed), and ``C(r)`` is the mean fraction of the
  other samples among each sample's 29 nearest neighbours (30 with itself) closer than r, on 40
  radii from 10^-3 to 10^0.5; the slope of ``log C`` against ``log r`` over the middle half of
  the radii with ``C > 0``, clipped at 0, is the dimension. ``delta`` keeps dimensions > 0.001.
- ``correlation_dimension`` (an extension) is plain Grassberger-Procaccia over all sample
  pairs, with radii between two pair-distance quantiles (small enough to avoid the saturation at
  the set's size, large enough to hold many pairs).

Delta = (max - min) / mean of the layer dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import pdist

from ..fits import linear_fit

NORMALISATIONS = ("l2", "standard", "none")
REDUCTIONS = ("auto", "umap", "pca", "none")
#: the authors' radius grid: 40 radii from 10^-3 to 10^0.5
AUTHORS_RADII = np.logspace(-3, 0.5, 40)
#: the authors exclude dimensions at or below this from Delta (their degenerate layers give 0)
DELTA_FLOOR = 0.001


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
        return CorrelationDimension(
            nan,
            nan,
            empty,
            empty,
            n,
            p,
            "distances at the chosen quantiles are zero or equal (duplicate/constant samples)",
        )
    radii = np.geomspace(lo, hi, n_radii)
    c = np.searchsorted(d, radii, side="left") / d.size
    ok = c > 0
    fit = linear_fit(np.log(radii[ok]), np.log(c[ok]))
    return CorrelationDimension(fit.slope, fit.r2, radii, c, n, p, "" if np.isfinite(fit.slope) else "fit failed")


@dataclass
class KnnCorrelationDimension:
    dimension: float  #: max(0, slope), as the authors clip it
    slope: float
    radii: np.ndarray
    c: np.ndarray  #: C(r) at each radius
    fit_mask: np.ndarray  #: radii entering the fit
    n_samples: int
    n_neighbors: int  #: including the sample itself, as the authors count it
    reason: str = ""


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its norm (``torch.nn.functional.normalize``: norms below 1e-12 count as 1e-12)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def umap_available() -> bool:
    """True when the optional ``umap-learn`` is installed (``pip install deepscope-metrics[umap]``)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def reduce_dimension(
    x: np.ndarray,
    n_components: int = 50,
    method: str = "auto",
    seed: int = 42,
    umap_neighbors: int = 20,
    umap_min_dist: float = 0.1,
) -> tuple[np.ndarray, str]:
    """Rows of ``x`` in ``n_components`` dimensions, and the method used (``umap``, ``pca`` or ``none``).

    ``auto`` = UMAP when installed, else PCA (the authors' own fallback). PCA keeps
    ``min(n_components, samples, features)`` components, computed exactly (full SVD) up to 1000
    samples or features and by seeded randomized SVD beyond, where a full SVD would be too slow.
    """
    if method not in REDUCTIONS:
        raise ValueError(f"unknown reduction '{method}'; valid: {', '.join(REDUCTIONS)}")
    if method == "auto":
        method = "umap" if umap_available() else "pca"
    if method == "none":
        return np.asarray(x, np.float64), "none"
    if method == "umap":
        import umap  # optional extra

        reducer = umap.UMAP(
            n_components=n_components,
            n_neighbors=umap_neighbors,
            min_dist=umap_min_dist,
            metric="euclidean",
            random_state=seed,
        )
        return np.asarray(reducer.fit_transform(x), np.float64), "umap"
    from sklearn.decomposition import PCA

    k = min(n_components, x.shape[0], x.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):  # constant data: explained-variance ratio 0/0
        solver = "full" if min(x.shape) <= 1000 else "randomized"
        return PCA(n_components=k, svd_solver=solver, random_state=seed).fit_transform(np.asarray(x, np.float64)), "pca"


def authors_correlation_dimension(
    x: np.ndarray, n_neighbors: int = 30, radii: np.ndarray = AUTHORS_RADII, min_std: float = 1e-4
) -> KnnCorrelationDimension:
    """The authors' ``compute_correlation_dimension`` on the rows of ``x[n, p]`` (already reduced).

    Where they return 0 for unusable input (NaN, overall std < ``min_std``, fewer than two radii
    with C > 0) this returns NaN with a reason; a negative slope is clipped to 0 as they do.
    Fewer samples than ``n_neighbors`` use all samples as neighbours (said in ``n_neighbors``).
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    n = x.shape[0] if x.ndim == 2 else 0
    nan, empty = float("nan"), np.zeros(0)
    radii = np.asarray(radii, np.float64)

    def bad(reason: str, c: np.ndarray = empty, k: int = 0) -> KnnCorrelationDimension:
        return KnnCorrelationDimension(nan, nan, radii, c, np.zeros(radii.size, bool), n, k, reason)

    if n < 3:
        return bad(f"{n} samples: need at least 3")
    if not np.isfinite(x).all():
        return bad("NaN/inf activations")
    if x.std() < min_std:
        return bad(f"representation spread (std {x.std():.2e}) below {min_std:g}: no scale to measure")
    k = min(n_neighbors, n)
    dist, _ = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    dist = dist[:, 1:]  # the first neighbour is the sample itself
    c = np.array([np.mean(np.sum(dist < r, axis=1)) / (n - 1) for r in radii])
    valid = np.flatnonzero(c > 0)
    if valid.size < 2:
        return bad("fewer than 2 radii with C(r) > 0: the radius grid misses the data's scale", c, k)
    if valid.size > 5:  # the middle half
        valid = valid[valid.size // 4 : 3 * valid.size // 4]
    mask = np.zeros(radii.size, bool)
    mask[valid] = True
    slope = linear_fit(np.log(radii[valid]), np.log(c[valid])).slope
    return KnnCorrelationDimension(max(0.0, slope), slope, radii, c, mask, n, k)


def dimension_fluctuation(dims: np.ndarray, floor: float = DELTA_FLOOR) -> tuple[float, int, str]:
    """The authors' Delta = (max - min) / mean over the dimensions > ``floor``; NaN with a reason when
    fewer than two remain (they return 0). Also returns how many layers entered."""
    d = np.asarray(dims, np.float64)
    ok = d[np.isfinite(d) & (d > floor)]
    if ok.size < 2:
        return float("nan"), int(ok.size), f"{ok.size} layers with a dimension > {floor:g}: Delta needs 2"
    return float((ok.max() - ok.min()) / ok.mean()), int(ok.size), ""
