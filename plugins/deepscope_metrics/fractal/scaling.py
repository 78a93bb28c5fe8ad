"""Scaling-law fits for box counts: log-log (fractal) versus semi-log (small-world) fits.

One job: given ``(l_B, N_B)`` pairs, say whether ``N_B ~ l_B^(-d_B)`` and with which ``d_B``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..fits import linear_fit


@dataclass
class ScalingFit:
    """Result of fitting ``log N_B`` against ``log l_B`` (and ``l_B``, for the small-world test)."""

    dimension: float  #: d_B = minus the log-log slope
    r2: float  #: R^2 of the log-log fit
    r2_semilog: float  #: R^2 of log N_B against l_B (exponential decay, small-world graphs)
    fractal: bool  #: True when the log-log fit is at least as good as the semi-log fit
    local_slopes: np.ndarray  #: -d log N / d log l between consecutive sizes (all sizes)
    used: np.ndarray  #: boolean mask of the sizes entering the fit
    reason: str = ""
    extras: dict = field(default_factory=dict)


def fit_box_counts(
    sizes: np.ndarray,
    counts: np.ndarray,
    l_min: float = 2.0,
    min_boxes: int = 4,
    min_points: int = 3,
    fit_on: str = "l_B",
) -> ScalingFit:
    """Fit ``log N_B = -d_B log x + c`` with ``x = l_B`` (or ``l_B - 1``, ``fit_on``).

    The fit keeps sizes ``l_B >= l_min`` (the smallest scales are lattice-dominated, and
    ``N_B(1) = N`` is trivial) with ``N_B >= min_boxes`` (the saturated top end: with fewer than
    ~4 boxes the count is dominated by whole-box rounding, e.g. a path's optimal ``ceil(N / l_B)``
    bends the curve down to a slope of ~0.89 instead of 1 when N_B = 2 and 3 are kept). ``fractal`` compares log-log and semi-log fits
    (Song, Havlin, Makse 2007: small-world networks decay as ``exp(-l_B / l_0)``) on every
    unsaturated size including ``l_B = 1``: small-world graphs have few sizes, and ``N_B(1) = N``
    is what makes their exponential decay visible against a power law.
    """
    if fit_on not in ("l_B", "l_B-1"):
        raise ValueError(f"fit_on must be 'l_B' or 'l_B-1', got {fit_on!r}")
    sizes = np.asarray(sizes, np.float64)
    counts = np.asarray(counts, np.float64)
    x = sizes - 1.0 if fit_on == "l_B-1" else sizes
    ok = x > 0
    logx = np.full(x.shape, np.nan)
    logx[ok] = np.log(x[ok])
    logc = np.log(np.maximum(counts, 1e-300))
    slopes = -np.diff(logc) / np.diff(logx) if sizes.size > 1 else np.zeros(0)
    used = ok & (sizes >= l_min) & (counts >= min_boxes)
    nan = float("nan")
    if used.sum() < min_points:
        return ScalingFit(
            nan,
            nan,
            nan,
            False,
            slopes,
            used,
            reason=f"only {int(used.sum())} sizes with l_B >= {l_min} and N_B >= {min_boxes} "
            f"(need {min_points}): graph too small for a scaling fit",
        )
    fit = linear_fit(logx[used], logc[used])
    shape = ok & (counts >= min_boxes)  # classification range: all unsaturated sizes
    r2_log = linear_fit(logx[shape], logc[shape]).r2
    r2_semi = linear_fit(x[shape], logc[shape]).r2
    return ScalingFit(
        -fit.slope, fit.r2, r2_semi, bool(r2_log >= r2_semi), slopes, used, extras={"r2_loglog_all": r2_log}
    )
