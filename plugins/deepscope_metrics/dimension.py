"""Effective dimension of a representation from its PCA spectrum (Janik & Witaszczyk 2020).

``d_eff = exp(−Σ p_i ln p_i)`` with ``p_i = λ_i / Σλ`` the PCA explained-variance ratios
(covariance eigenvalues over their sum): the exponential of the spectrum's Shannon entropy, as
computed by ``iconrnd/crl`` (``common/nets.py``, ``dimeff_reg``) which cites the paper. Companion
numbers: the participation ratio ``(Σλ)² / Σλ²`` (the exponential of the order-2 Rényi
entropy, hence ``PR ≤ d_eff ≤ rank``), the number of components needed to reach a variance
fraction τ, and the power-law exponent of the spectrum ``λ_i ∝ i^−α``.

The eigenvalues come from a :class:`~deepscope_metrics.streaming.StreamingCovariance` (streamed,
Gram matrix when features outnumber samples) or directly from an array via
:func:`covariance_eigenvalues`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .fits import fit_power_law

__all__ = [
    "DEFAULT_TAUS",
    "components_for_variance",
    "covariance_eigenvalues",
    "effective_dimension",
    "entropy_dimension",
    "participation_ratio",
    "spectrum_dimensions",
]

DEFAULT_TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

#: Eigenvalues below this fraction of the largest count as numerically zero (rank).
RANK_RTOL = 1e-10


def covariance_eigenvalues(x: np.ndarray, ddof: int = 1) -> np.ndarray:
    """Descending eigenvalues of the covariance of ``x[samples, features]`` (float64).

    Uses the ``n × n`` Gram matrix of the centred rows when features outnumber samples (same
    non-zero eigenvalues, smaller problem).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n - ddof <= 0:
        return np.zeros(0)
    xc = x - x.mean(axis=0)
    mat = xc @ xc.T if n <= x.shape[1] else xc.T @ xc
    return np.clip(np.linalg.eigvalsh(mat)[::-1] / (n - ddof), 0.0, None)


def _ratios(eigenvalues: np.ndarray) -> np.ndarray:
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = lam.sum()
    return lam / total if total > 0 else np.full_like(lam, np.nan)


def entropy_dimension(eigenvalues: np.ndarray) -> float:
    """``exp(−Σ p ln p)`` over the explained-variance ratios (0 ln 0 = 0); NaN if all zero."""
    p = _ratios(eigenvalues)
    if p.size == 0 or not np.isfinite(p).all():
        return float("nan")
    nz = p[p > 0]
    return float(np.exp(-(nz * np.log(nz)).sum()))


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """``(Σλ)² / Σλ²``; NaN if all eigenvalues are zero."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    sq = float((lam * lam).sum())
    return float(lam.sum() ** 2 / sq) if sq > 0 else float("nan")


def components_for_variance(eigenvalues: np.ndarray, taus: Sequence[float] = DEFAULT_TAUS) -> np.ndarray:
    """Fewest leading components whose variance fraction reaches each τ (int array)."""
    p = _ratios(np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1])
    if p.size == 0 or not np.isfinite(p).all():
        return np.zeros(len(taus), dtype=np.int64)
    cum = np.cumsum(p)
    # tiny tolerance so that tau = 1 - rounding error still counts as reached
    idx = np.searchsorted(cum, np.asarray(taus, dtype=np.float64) - 1e-12, side="left")
    return np.minimum(idx + 1, p.size).astype(np.int64)


def spectrum_dimensions(
    eigenvalues: np.ndarray,
    taus: Sequence[float] = DEFAULT_TAUS,
    fit_start: int = 1,
    fit_stop: int | None = None,
) -> dict[str, Any]:
    """All spectrum-based dimensions of one representation.

    ``fit_start``/``fit_stop`` are the 1-based component indices bounding the power-law fit of
    ``λ_i`` against ``i`` (default: from the first to the last numerically non-zero eigenvalue).
    The exponent is reported as ``α = −slope`` (positive for a decaying spectrum).
    Returns ``d_eff``, ``participation_ratio``, ``rank``, ``n_components`` (per τ),
    ``explained_variance_ratio`` and ``spectrum_exponent`` with its fit's R² and range;
    ``reason`` is set when the spectrum is degenerate.
    """
    lam = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None))[::-1]
    out: dict[str, Any] = {}
    if lam.size == 0 or lam[0] <= 0:
        out.update(
            d_eff=float("nan"),
            participation_ratio=float("nan"),
            rank=0,
            n_components=np.zeros(len(taus), dtype=np.int64),
            explained_variance_ratio=np.zeros(lam.size),
            spectrum_exponent=float("nan"),
            spectrum_fit_r2=float("nan"),
            spectrum_fit_start=fit_start,
            spectrum_fit_stop=0,
            reason="zero variance: every sample has the same representation" if lam.size else "no samples",
        )
        return out
    rank = int((lam > RANK_RTOL * lam[0]).sum())
    stop = rank if fit_stop is None else min(int(fit_stop), lam.size)
    idx = np.arange(1, lam.size + 1, dtype=np.float64)
    use = lam > RANK_RTOL * lam[0]
    fit = fit_power_law(idx[use], lam[use], x_min=fit_start, x_max=stop)
    out.update(
        d_eff=entropy_dimension(lam),
        participation_ratio=participation_ratio(lam),
        rank=rank,
        n_components=components_for_variance(lam, taus),
        explained_variance_ratio=_ratios(lam),
        spectrum_exponent=-fit.slope,
        spectrum_fit_r2=fit.r2,
        spectrum_fit_start=int(fit_start),
        spectrum_fit_stop=int(stop),
    )
    if fit.reason:
        out["spectrum_fit_reason"] = fit.reason
    return out


def effective_dimension(x: np.ndarray, taus: Sequence[float] = DEFAULT_TAUS, **fit: Any) -> dict[str, Any]:
    """:func:`spectrum_dimensions` of the covariance of ``x[samples, features]``, plus sizes."""
    x = np.asarray(x)
    res = spectrum_dimensions(covariance_eigenvalues(x), taus, **fit)
    res.update(n_samples=int(x.shape[0]), n_features=int(x.shape[1]) if x.ndim == 2 else 0)
    return res
