"""Log-log power-law fits ``y ≈ A · x^slope`` for metric curves.

Janik & Witaszczyk (arXiv 2006.04791) report power-law scaling of their observables; this one
helper serves every such curve: a metric over training checkpoints (x = step), the piecewise
FVU(K) over the number of clusters K, and a PCA spectrum over component index. It is public so
users can fit curves they assemble themselves (e.g. across runs)::

    from deepscope_metrics.powerlaw import fit_power_law
    fit = fit_power_law(steps, d_eff_per_checkpoint, x_min=1000)
    fit.slope, fit.r2, fit.x_range

The fit is ordinary least squares of ``ln y`` on ``ln x`` over the points with ``x > 0``,
``y > 0``, both finite, inside ``[x_min, x_max]``. Degenerate input gives NaN and a ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law"]


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`.

    ``slope`` is d ln y / d ln x (a decaying spectrum ``λ_i ∝ i^-α`` has ``slope = -α``);
    ``intercept`` is ln A; ``x_range`` the smallest and largest x actually used;
    ``reason`` is empty unless the fit is NaN.
    """

    slope: float
    intercept: float
    r2: float
    x_range: tuple[float, float]
    n_points: int
    reason: str = ""

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """The fitted curve ``exp(intercept) · x^slope``."""
        return np.exp(self.intercept) * np.asarray(x, dtype=np.float64) ** self.slope

    def as_dict(self, prefix: str = "") -> dict[str, float | int | str]:
        """Flat result entries (``{prefix}slope``, ``{prefix}r2``, ...), for metric results."""
        out: dict[str, float | int | str] = {
            f"{prefix}slope": self.slope,
            f"{prefix}intercept": self.intercept,
            f"{prefix}r2": self.r2,
            f"{prefix}x_min": self.x_range[0],
            f"{prefix}x_max": self.x_range[1],
            f"{prefix}n_points": self.n_points,
        }
        if self.reason:
            out[f"{prefix}reason"] = self.reason
        return out


def _nan_fit(reason: str, n: int = 0, lo: float = float("nan"), hi: float = float("nan")) -> PowerLawFit:
    return PowerLawFit(float("nan"), float("nan"), float("nan"), (lo, hi), n, reason)


def fit_power_law(
    x: np.ndarray,
    y: np.ndarray,
    *,
    x_min: float | None = None,
    x_max: float | None = None,
) -> PowerLawFit:
    """Fit ``ln y = intercept + slope · ln x`` by least squares over the usable points.

    Points with non-positive or non-finite x or y are skipped (a log-log fit cannot use them);
    ``x_min``/``x_max`` (inclusive) restrict the fit range, e.g. to drop the smallest scales.
    R² is the coefficient of determination of the log-log regression. Fewer than two usable
    points or a single distinct x give NaN with a ``reason``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if x_min is not None:
        keep &= x >= x_min
    if x_max is not None:
        keep &= x <= x_max
    n = int(keep.sum())
    if n < 2:
        return _nan_fit(f"power-law fit needs at least 2 points with x, y > 0 in range; got {n}", n)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    lo, hi = float(x[keep].min()), float(x[keep].max())
    dx = lx - lx.mean()
    sxx = float(dx @ dx)
    if sxx <= 0.0:
        return _nan_fit("power-law fit needs at least 2 distinct x values", n, lo, hi)
    dy = ly - ly.mean()
    slope = float(dx @ dy) / sxx
    intercept = float(ly.mean() - slope * lx.mean())
    syy = float(dy @ dy)
    resid = dy - slope * dx
    r2 = 1.0 - float(resid @ resid) / syy if syy > 0 else 1.0  # constant y: a perfect flat fit
    return PowerLawFit(slope, intercept, r2, (lo, hi), n)
