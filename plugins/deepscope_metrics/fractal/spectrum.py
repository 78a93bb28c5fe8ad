"""Eigenvalue-density exponent gamma of a layer's feature covariance (Ding et al. 2025, appendix: sigma_gamma).

As the authors' ``analyze_feature_distribution.py``: the layer output is flattened to
``(B, H*W*C)``; wider than 1000 features, it is PCA-reduced to ``min(1000, B // 2)`` components;
the eigenvalues of the covariance (``np.cov``, ddof 1) are treated as samples of a power-law
*density* ``p(lambda) ~ lambda^(-gamma)`` for ``lambda >= lambda_min``, fitted as the ``powerlaw``
package does (Alstott et al. 2014, after Clauset, Shalizi, Newman 2009): |lambda| > 1e-10 kept,
at least 50 of them, gamma the continuous MLE ``1 + n / sum ln(lambda_i / lambda_min)`` and
lambda_min the distinct value (all but the largest) minimising the KS distance between the tail's
empirical CDF (fraction of tail values below x) and the fitted one.
sigma_gamma = population std of gamma across layers.

gamma is not the rank-plot slope alpha of ``lambda_i ~ i^(-alpha)`` (dimension.effective): for a
pure power law the two are related by ``gamma = 1 + 1/alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..streaming import StreamingCovariance


@dataclass
class PowerLawDensityFit:
    """Continuous MLE of a power-law *density* (not a log-log line: that is ``fits.PowerLawFit``)."""

    gamma: float  #: exponent of the density p(x) ~ x^-gamma
    xmin: float
    n_tail: int
    ks: float
    n_values: int
    reason: str = ""


def power_law_mle(
    values: np.ndarray, min_tail: int = 2, min_value: float = 1e-10, min_values: int = 50
) -> PowerLawDensityFit:
    """Continuous power-law MLE with automatic ``xmin``, as ``powerlaw.Fit(|values|)`` (v1.x) finds it.

    ``|values| <= min_value`` are dropped; fewer than ``min_values`` left gives NaN with a reason
    (the authors' guard). Every distinct value but the largest leaving at least ``min_tail``
    points is a candidate ``xmin``; the one with the smallest KS distance wins (first on ties).
    """
    x = np.abs(np.asarray(values, np.float64)).ravel()
    nan = float("nan")
    if not np.isfinite(x).all():
        return PowerLawDensityFit(nan, nan, 0, nan, x.size, "non-finite values")
    x = np.sort(x[x > min_value])
    n = x.size
    need = max(min_values, min_tail)
    if n < need:
        return PowerLawDensityFit(nan, nan, 0, nan, n, f"{n} values above {min_value:g}, need at least {need}")
    logx = np.log(x)
    tail_sum = np.cumsum(logx[::-1])[::-1]  # sum of log x[i:]
    best = (np.inf, nan, nan, 0)
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])  # first index of each distinct value
    for i in starts[:-1]:  # the largest distinct value is never xmin
        m = n - i
        if m < min_tail:
            continue
        gamma = 1.0 + m / (tail_sum[i] - m * logx[i])
        tail = x[i:]
        firsts = np.flatnonzero(np.r_[True, tail[1:] != tail[:-1]])
        empirical = firsts / m  # fraction of the tail strictly below each distinct value
        model = 1.0 - (tail[firsts] / x[i]) ** (1.0 - gamma)
        ks = float(np.abs(empirical - model).max())
        if ks < best[0]:
            best = (ks, float(gamma), float(x[i]), m)
    if not np.isfinite(best[0]):
        return PowerLawDensityFit(nan, nan, 0, nan, n, "all values equal: no power law to fit")
    return PowerLawDensityFit(best[1], best[2], best[3], best[0], n)


def top_eigenvalues(x: np.ndarray, max_dim: int = 1000) -> np.ndarray:
    """Covariance eigenvalues of the rows of ``x[B, p]`` as the authors take them.

    ``p <= max_dim``: all ``p`` eigenvalues of ``np.cov``. Wider: the top ``min(max_dim, B // 2)``
    (what their PCA keeps), computed exactly from the ``B x B`` Gram matrix - their sklearn PCA
    approximates the same values with a randomized SVD.
    """
    x = np.asarray(x, np.float64)
    B, p = x.shape
    c = x - x.mean(axis=0)
    if p <= max_dim:
        return np.linalg.eigvalsh(c.T @ c / max(B - 1, 1))
    k = min(max_dim, B // 2)
    eig = np.linalg.eigvalsh(c @ c.T / max(B - 1, 1))  # same non-zero eigenvalues as the covariance
    return eig[::-1][:k][::-1]


def spectrum_exponent(cov: np.ndarray, min_tail: int = 2, min_values: int = 50) -> PowerLawDensityFit:
    """Power-law exponent gamma of the eigenvalue distribution of a covariance matrix."""
    eig = np.linalg.eigvalsh(np.asarray(cov, np.float64))
    return power_law_mle(eig, min_tail=min_tail, min_values=min_values)


class EigenvalueSource:
    """One layer's eigenvalue source: a streamed covariance up to ``max_dim`` features, else the first
    rows (for the top eigenvalues from their Gram matrix), at most ``max_samples`` x ``max_values``."""

    def __init__(self, max_dim: int, max_samples: int, max_values: int) -> None:
        self.max_dim, self.max_samples, self.max_values = max_dim, max_samples, max_values
        self.cov = StreamingCovariance()
        self.rows: list[np.ndarray] = []
        self.n_rows = 0
        self.n_seen = 0
        self.width = 0
        self.nonfinite = False

    def update(self, u: np.ndarray) -> None:
        if u.shape[0] == 0:
            return
        self.n_seen += u.shape[0]
        self.width = u.shape[1]
        if self.width <= self.max_dim:
            if np.isfinite(u).all():
                self.cov.update(u)
            else:  # the result is NaN; the bad rows are not counted as used
                self.nonfinite = True
            return
        room = min(self.max_samples, self.max_values // self.width) - self.n_rows
        if room > 0:
            kept = np.asarray(u[:room])
            self.nonfinite |= not np.isfinite(kept).all()
            self.rows.append(kept)
            self.n_rows += kept.shape[0]

    @property
    def n_used(self) -> int:
        return self.cov.n if self.width <= self.max_dim else self.n_rows

    def eigenvalues(self) -> np.ndarray:
        if self.width <= self.max_dim:
            return np.linalg.eigvalsh(self.cov.covariance())
        return top_eigenvalues(np.concatenate(self.rows), self.max_dim)
