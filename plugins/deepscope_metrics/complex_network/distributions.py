"""Distributions of link weights / strengths: summaries, histograms, KDEs and divergences.

``jeffreys_divergence`` reproduces the authors' "Shannon divergence" (a symmetric KL on a
shared KDE grid, no dx) for parity; ``js_divergence`` is the properly normalised
Jensen–Shannon divergence used by default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from .binned_kde import BinnedKDE

DEFAULT_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DIVERGENCES = ("js", "jeffreys")


class DegenerateDistribution(ValueError):
    """Too few or constant values for a KDE; the message says why (adapters report it as ``reason``)."""


class OverBudget(ValueError):
    """The timed work extrapolates past ``budget_seconds``; the message names the parameters to change."""


def _values(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _kde(v: np.ndarray) -> BinnedKDE:
    """scipy's Gaussian KDE (Scott bandwidth), evaluated by bins so millions of values stay cheap."""
    if v.size < 2:
        raise DegenerateDistribution(f"a KDE needs at least 2 finite values, got {v.size}")
    if np.ptp(v) == 0:
        raise DegenerateDistribution(f"all {v.size} values equal {v[0]:.6g}: no KDE")
    return BinnedKDE(v)


def _plogp_over_q(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``P ln(P/Q)`` elementwise with ``0 ln 0 = 0`` and ``inf`` where P > 0 = Q.

    Uses ``ln P − ln Q``, never the ratio: P/Q overflows (and warns) when Q is subnormal.
    """
    out = np.zeros(np.shape(P))
    both = (P > 0) & (Q > 0)
    out[both] = P[both] * (np.log(P[both]) - np.log(Q[both]))
    out[(P > 0) & (Q <= 0)] = np.inf
    return out


def link_weights(W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """All of a layer's weights and biases as one flat float64 sample (the paper's link weights)."""
    parts = [np.asarray(W, dtype=np.float64).ravel()]
    if b is not None:
        parts.append(np.asarray(b, dtype=np.float64).ravel())
    return np.concatenate(parts)


def flat_links(W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """A layer's weights and biases as one flat sample in their own dtype (``link_weights`` casts to float64)."""
    return np.concatenate([W.ravel(), [] if b is None else b.ravel()])


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
    sample, summed without dx: not a normalised quantity and ``inf`` where one density underflows
    to 0 and the other does not (``divergence_matrix`` replaces inf as the authors' heatmaps did).
    """
    a, b = _values(d1), _values(d2)
    return _jeffreys(a, b, _kde(a), _kde(b), grid_points)


def _jeffreys(a: np.ndarray, b: np.ndarray, P_kde: BinnedKDE, Q_kde: BinnedKDE, grid_points: int) -> float:
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    x = lo + (hi - lo) / grid_points * np.arange(int(grid_points))
    P, Q = P_kde(x), Q_kde(x)
    return float(np.sum(_plogp_over_q(P, Q)) + np.sum(_plogp_over_q(Q, P)))


def js_divergence(
    d1: np.ndarray, d2: np.ndarray, grid_points: int = 1000, base: float = 2.0, pad_bandwidths: float = 3.0
) -> float:
    """Jensen–Shannon divergence of the two samples' KDEs (0 = same, 1 = disjoint in base 2).

    Both densities are evaluated on one grid spanning the pooled range widened by
    ``pad_bandwidths`` KDE bandwidths (so the tails are not cut), normalised to probability
    masses, and ``JS = ½ KL(p‖m) + ½ KL(q‖m)`` with ``m = (p + q)/2`` and ``0 ln 0 = 0``.
    """
    a, b = _values(d1), _values(d2)
    return _js(a, b, _kde(a), _kde(b), grid_points, base, pad_bandwidths)


def _js(
    a: np.ndarray,
    b: np.ndarray,
    P_kde: BinnedKDE,
    Q_kde: BinnedKDE,
    grid_points: int,
    base: float = 2.0,
    pad_bandwidths: float = 3.0,
) -> float:
    bw = max(float(np.sqrt(P_kde.covariance[0, 0])), float(np.sqrt(Q_kde.covariance[0, 0])))
    lo = min(a.min(), b.min()) - pad_bandwidths * bw
    hi = max(a.max(), b.max()) + pad_bandwidths * bw
    x = np.linspace(lo, hi, int(grid_points))
    p, q = P_kde(x), Q_kde(x)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    kl = 0.5 * (np.sum(_plogp_over_q(p, m)) + np.sum(_plogp_over_q(q, m)))
    return float(max(kl, 0.0) / np.log(base))


def divergence(d1: np.ndarray, d2: np.ndarray, method: str = "js", grid_points: int = 1000) -> float:
    """Dispatch to ``js_divergence`` or ``jeffreys_divergence``."""
    if method == "js":
        return js_divergence(d1, d2, grid_points)
    if method == "jeffreys":
        return jeffreys_divergence(d1, d2, grid_points)
    raise ValueError(f"method must be one of {DIVERGENCES}, got {method!r}")


def divergence_matrix(
    samples: Sequence[np.ndarray],
    method: str = "js",
    grid_points: int = 1000,
    replace_inf: bool = True,
    budget_seconds: float = math.inf,
) -> np.ndarray:
    """Symmetric matrix of pairwise divergences (zero diagonal); degenerate samples give NaN rows.

    With ``replace_inf`` infinite entries become (largest finite entry + 1), as in the
    authors' heatmaps. Cost: one KDE per sample (linear in its size), then per pair two KDE
    evaluations on ``grid_points`` points: quadratic in the number of samples. With a finite
    ``budget_seconds`` the KDEs and the first pair are timed and, if all pairs extrapolate past
    the budget, ``OverBudget`` is raised before the rest is computed.
    """
    if method not in DIVERGENCES:
        raise ValueError(f"method must be one of {DIVERGENCES}, got {method!r}")
    t0 = time.perf_counter()
    values = [_values(s) for s in samples]
    kdes: list[BinnedKDE | None] = []
    for v in values:  # one KDE per sample, not one per pair
        try:
            kdes.append(_kde(v))
        except DegenerateDistribution:
            kdes.append(None)
    pair = _js if method == "js" else _jeffreys
    n = len(samples)
    out = np.zeros((n, n))
    bad = [i for i, k in enumerate(kdes) if k is None]
    out[bad, :] = out[:, bad] = np.nan
    todo = [(i, j) for i in range(n) for j in range(i + 1, n) if kdes[i] is not None and kdes[j] is not None]
    for count, (i, j) in enumerate(todo):
        t_pair = time.perf_counter()
        out[i, j] = out[j, i] = pair(values[i], values[j], kdes[i], kdes[j], grid_points)
        if count == 0 and math.isfinite(budget_seconds):
            need = t_pair - t0 + (time.perf_counter() - t_pair) * len(todo)
            if need > budget_seconds:
                raise OverBudget(
                    f"{len(todo)} layer pairs at grid_points {grid_points} need ~{need:.0f} s > "
                    f"budget_seconds {budget_seconds:g}; raise budget_seconds or lower grid_points"
                )
    inf = np.isinf(out)
    if replace_inf and inf.any():
        finite = out[np.isfinite(out)]
        out[inf] = (finite.max() if finite.size else 0.0) + 1.0
    return out
