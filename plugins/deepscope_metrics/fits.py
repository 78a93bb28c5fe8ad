"""Least-squares line and power-law fits for metric curves, on :func:`scipy.stats.linregress`.

Every straight-line fit in the metrics goes through here: power laws ``y ≈ A · x^slope`` fitted
on log-log axes (a metric over training checkpoints, the piecewise FVU(K), a PCA spectrum over
component index, box counts, correlation sums) and the semi-log fit that tells small-world
decay from a power law. Janik & Witaszczyk (arXiv 2006.04791) report power-law scaling of their
observables; :func:`fit_power_law` is public so users can fit curves they assemble themselves::

    from deepscope_metrics.fits import fit_power_law
    fit = fit_power_law(steps, d_eff_per_checkpoint, x_min=1000)
    fit.slope, fit.r2, fit.stderr, fit.x_range

``r2`` is the coefficient of determination, ``linregress``'s ``rvalue²`` (the same number for a
least-squares line with intercept), except that a constant ``y`` counts as a perfect flat fit
(``r2 = 1``) where ``linregress`` reports ``rvalue = 0``. ``stderr`` is ``linregress``'s standard
error of the slope (0 for two points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.stats import linregress

__all__ = ["LineFit", "PowerLawFit", "fit_power_law", "linear_fit"]

NAN = float("nan")


class LineFit(NamedTuple):
    """Least-squares ``y = slope · x + intercept``; NaN when there are not two distinct x."""

    slope: float
    intercept: float
    r2: float
    stderr: float


def linear_fit(x: np.ndarray, y: np.ndarray) -> LineFit:
    """Fit ``y = slope · x + intercept`` by least squares over all the given points."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.size < 2 or np.ptp(x) == 0:
        return LineFit(NAN, NAN, NAN, NAN)
    res = linregress(x, y)
    # constant y: linregress says r = 0, but the flat line fits every point
    r2 = float(res.rvalue) ** 2 if np.ptp(y) > 0 else 1.0
    return LineFit(float(res.slope), float(res.intercept), r2, float(res.stderr))


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`.

    ``slope`` is d ln y / d ln x (a decaying spectrum ``λ_i ∝ i^-α`` has ``slope = -α``);
    ``intercept`` is ln A; ``x_range`` the smallest and largest x actually used; ``stderr`` the
    slope's standard error; ``reason`` is empty unless the fit is NaN.
    """

    slope: float
    intercept: float
    r2: float
    x_range: tuple[float, float]
    n_points: int
    reason: str = ""
    stderr: float = NAN

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
    Fewer than two usable points or a single distinct x give NaN with a ``reason``.
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
        return PowerLawFit(
            NAN, NAN, NAN, (NAN, NAN), n, f"power-law fit needs at least 2 points with x, y > 0 in range; got {n}"
        )
    x_range = (float(x[keep].min()), float(x[keep].max()))
    line = linear_fit(np.log(x[keep]), np.log(y[keep]))
    if np.isnan(line.slope):
        return PowerLawFit(NAN, NAN, NAN, x_range, n, "power-law fit needs at least 2 distinct x values")
    return PowerLawFit(line.slope, line.intercept, line.r2, x_range, n, stderr=line.stderr)
