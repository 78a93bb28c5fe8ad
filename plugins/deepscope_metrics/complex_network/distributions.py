"""Distributions of link weights / strengths: summaries, histograms, KDEs and divergences.

``jeffreys_divergence`` reproduces the authors' "Shannon divergence" (a symmetric KL on a
shared KDE grid, no dx) for parity; ``js_divergence`` is the properly normalised
Jensen–Shannon divergence used by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

DEFAULT_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DIVERGENCES = ("js", "jeffreys")


class DegenerateDistribution(ValueError):
    """Too few or constant values for a KDE; the message says why (adapters report it as ``reason``)."""


def _values(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _kde(v: np.ndarray) -> stats.gaussian_kde:
    if v.size < 2:
        raise DegenerateDistribution(f"a KDE needs at least 2 finite values, got {v.size}")
    if np.ptp(v) == 0:
        raise DegenerateDistribution(f"all {v.size} values equal {v[0]:.6g}: no KDE")
    return stats.gaussian_kde(v, bw_method="scott")


def link_weights(W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """All of a layer's weights and biases as one flat float64 sample (the paper's link weights)."""
    parts = [np.asarray(W, dtype=np.float64).ravel()]
    if b is not None:
        parts.append(np.asarray(b, dtype=np.float64).ravel())
    return np.concatenate(parts)


def summary(values: np.ndarray, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, float]:
    """Count, mean, std (ddof=0), min, max and quantiles (``q0.05`` ...) of a sample; NaN when empty."""
    v = _values(values)
    out: dict[str, float] = {"n": int(v.size)}
    if v.size == 0:
        out.update({k: float("nan") for k in ("mean", "std", "min", "max")})
        out.update({f"q{q:g}": float("nan") for q in quantiles})
        return out
    out.update(mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()))
    out.update({f"q{q:g}": float(x) for q, x in zip(quantiles, np.quantile(v, quantiles))})
    return out


def histogram(values: np.ndarray, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` over [min, max] with ``bins`` equal bins."""
    return np.histogram(_values(values), bins=bins)


def link_weight_summary(
    W: np.ndarray, b: np.ndarray | None = None, quantiles: Sequence[float] = DEFAULT_QUANTILES, bins: int = 50
) -> dict[str, object]:
    """Summary statistics and histogram of a layer's link weights (weights + biases).

    Returns the ``summary`` keys plus ``n_weights``, ``n_biases``, ``hist_counts``, ``hist_edges``.
    """
    v = link_weights(W, b)
    out: dict[str, object] = dict(summary(v, quantiles))
    out["n_weights"] = int(np.size(W))
    out["n_biases"] = 0 if b is None else int(np.size(b))
    counts, edges = histogram(v, bins) if v.size else (np.zeros(bins, dtype=np.int64), np.full(bins + 1, np.nan))
    out["hist_counts"], out["hist_edges"] = counts, edges
    return out


def kde_curve(
    values: np.ndarray, grid_points: int = 1000, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian KDE (scipy, Scott bandwidth) on ``grid_points`` evenly spaced points over [lo, hi].

    The default range is the sample's [min, max], as in the papers' plots. Raises
    DegenerateDistribution for fewer than 2 or constant values.
    """
    v = _values(values)
    kde = _kde(v)
    x = np.linspace(v.min() if lo is None else lo, v.max() if hi is None else hi, int(grid_points))
    return x, kde(x)


def jeffreys_divergence(d1: np.ndarray, d2: np.ndarray, grid_points: int = 1000) -> float:
    """The authors' "Shannon divergence": ``Σ P ln(P/Q) + Σ Q ln(Q/P)`` over a shared grid.

    P, Q are KDE densities on ``min + k·(max − min)/grid_points`` (k < grid_points) of the pooled
    sample, summed without dx: not a normalised quantity and may be ``inf`` where a density
    underflows to 0 (``divergence_matrix`` replaces inf as the authors' heatmaps did).
    """
    a, b = _values(d1), _values(d2)
    P_kde, Q_kde = _kde(a), _kde(b)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    x = lo + (hi - lo) / grid_points * np.arange(int(grid_points))
    P, Q = P_kde(x), Q_kde(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(P != 0, P * np.log(P / Q), 0.0)
        t2 = np.where(Q != 0, Q * np.log(Q / P), 0.0)
    return float(np.sum(t1) + np.sum(t2))


def js_divergence(
    d1: np.ndarray, d2: np.ndarray, grid_points: int = 1000, base: float = 2.0, pad_bandwidths: float = 3.0
) -> float:
    """Jensen–Shannon divergence of the two samples' KDEs (0 = same, 1 = disjoint in base 2).

    Both densities are evaluated on one grid spanning the pooled range widened by
    ``pad_bandwidths`` KDE bandwidths (so the tails are not cut), normalised to probability
    masses, and ``JS = ½ KL(p‖m) + ½ KL(q‖m)`` with ``m = (p + q)/2`` and ``0 ln 0 = 0``.
    """
    a, b = _values(d1), _values(d2)
    P_kde, Q_kde = _kde(a), _kde(b)
    bw = max(float(np.sqrt(P_kde.covariance[0, 0])), float(np.sqrt(Q_kde.covariance[0, 0])))
    lo = min(a.min(), b.min()) - pad_bandwidths * bw
    hi = max(a.max(), b.max()) + pad_bandwidths * bw
    x = np.linspace(lo, hi, int(grid_points))
    p, q = P_kde(x), Q_kde(x)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.sum(np.where(p > 0, p * np.log(p / m), 0.0))
        kl_qm = np.sum(np.where(q > 0, q * np.log(q / m), 0.0))
    return float(max(0.5 * (kl_pm + kl_qm), 0.0) / np.log(base))


def divergence(d1: np.ndarray, d2: np.ndarray, method: str = "js", grid_points: int = 1000) -> float:
    """Dispatch to ``js_divergence`` or ``jeffreys_divergence``."""
    if method == "js":
        return js_divergence(d1, d2, grid_points)
    if method == "jeffreys":
        return jeffreys_divergence(d1, d2, grid_points)
    raise ValueError(f"method must be one of {DIVERGENCES}, got {method!r}")


def divergence_matrix(
    samples: Sequence[np.ndarray], method: str = "js", grid_points: int = 1000, replace_inf: bool = True
) -> np.ndarray:
    """Symmetric matrix of pairwise divergences (zero diagonal); degenerate samples give NaN rows.

    With ``replace_inf`` infinite entries become (largest finite entry + 1), as in the
    authors' heatmaps.
    """
    n = len(samples)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            try:
                out[i, j] = out[j, i] = divergence(samples[i], samples[j], method, grid_points)
            except DegenerateDistribution:
                out[i, j] = out[j, i] = np.nan
        try:
            _kde(_values(samples[i]))
        except DegenerateDistribution:
            out[i, i] = np.nan
    inf = np.isinf(out)
    if replace_inf and inf.any():
        finite = out[np.isfinite(out)]
        out[inf] = (finite.max() if finite.size else 0.0) + 1.0
    return out
