"""Power-law exponent of a layer's feature-covariance spectrum (Ding et al. 2025, appendix: sigma_gamma).

The eigenvalues of the unit covariance are treated as samples of a power-law density
``p(lambda) ~ lambda^(-gamma)`` for ``lambda >= lambda_min``; gamma is the continuous MLE
``1 + n / sum ln(lambda_i / lambda_min)`` and lambda_min is chosen automatically as the
candidate minimising the Kolmogorov-Smirnov distance (Clauset, Shalizi, Newman 2009).
sigma_gamma = population std of gamma across layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class CovarianceAccumulator:
    """Streaming float64 covariance of ``[n, D]`` batches (Chan et al. pairwise update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.nonfinite = False

    def update(self, a: np.ndarray) -> None:
        a = np.asarray(a, np.float64)
        if a.shape[0] == 0:
            return
        if not np.isfinite(a).all():
            self.nonfinite = True
            return
        nb = a.shape[0]
        mb = a.mean(axis=0)
        c = a - mb
        m2b = c.T @ c
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        delta = mb - self.mean
        total = self.n + nb
        self.m2 = self.m2 + m2b + np.outer(delta, delta) * (self.n * nb / total)
        self.mean = self.mean + delta * (nb / total)
        self.n = total

    def covariance(self, ddof: int = 1) -> np.ndarray:
        return self.m2 / max(self.n - ddof, 1)


@dataclass
class PowerLawFit:
    gamma: float  #: exponent of the density p(x) ~ x^-gamma
    xmin: float
    n_tail: int
    ks: float
    n_values: int
    reason: str = ""


def power_law_mle(values: np.ndarray, min_tail: int = 5, rel_tol: float = 1e-10) -> PowerLawFit:
    """Continuous power-law MLE with automatic ``xmin`` (KS minimisation over candidates).

    Values ``<= rel_tol * max`` (numerically zero eigenvalues) are dropped first; every
    distinct value leaving at least ``min_tail`` points in the tail is a candidate ``xmin``.
    """
    x = np.asarray(values, np.float64)
    nan = float("nan")
    if not np.isfinite(x).all():
        return PowerLawFit(nan, nan, 0, nan, x.size, "non-finite values")
    x = np.sort(x[x > rel_tol * (x.max() if x.size else 0.0)])
    n = x.size
    if n < min_tail:
        return PowerLawFit(nan, nan, 0, nan, n, f"{n} positive values, need at least {min_tail}")
    logx = np.log(x)
    tail_sum = np.cumsum(logx[::-1])[::-1]  # sum of log x[i:]
    best = (np.inf, nan, nan, 0)
    for i in range(n - min_tail + 1):
        if i > 0 and x[i] == x[i - 1]:
            continue
        m = n - i
        denom = tail_sum[i] - m * logx[i]
        if denom <= 0:
            continue
        gamma = 1.0 + m / denom
        tail = x[i:]
        model = 1.0 - (tail / x[i]) ** (1.0 - gamma)  # CDF of the fitted power law
        emp_hi = np.arange(1, m + 1) / m
        emp_lo = np.arange(0, m) / m
        ks = float(max(np.abs(emp_hi - model).max(), np.abs(emp_lo - model).max()))
        if ks < best[0]:
            best = (ks, float(gamma), float(x[i]), m)
    if not np.isfinite(best[0]):
        return PowerLawFit(nan, nan, 0, nan, n, "all values equal: no power law to fit")
    return PowerLawFit(best[1], best[2], best[3], best[0], n)


def spectrum_exponent(cov: np.ndarray, min_tail: int = 5) -> PowerLawFit:
    """Power-law exponent of the eigenvalue distribution of a covariance matrix."""
    eig = np.linalg.eigvalsh(np.asarray(cov, np.float64))
    return power_law_mle(eig, min_tail=min_tail)
