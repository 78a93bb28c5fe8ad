"""Neuron transformation modes (Lin et al. 2025, arXiv 2501.02436) — reconstructed from the abstract.

A neuron j is *order-preserving* (OPT) over a set of P samples when its activation function maps
its pre-activations ``h_j(x_mu)`` to outputs in the same strict order on every pair of samples,
otherwise *non-order-preserving* (NPT); a neuron whose output is constant over the samples is
*dead*. Two ways to decide OPT:

- **region rule** (needs the function's name): OPT iff every pre-activation lies in the open
  interval where sigma is strictly increasing. Streams (per-neuron counts, output min/max). It
  is a *sufficient* condition: it says "order-preserving for any samples with these
  pre-activations"; on a given sample set a neuron with a single sample in a flat piece (ReLU,
  k = 1 below) still preserves every pairwise order, so the rank rule may call it OPT.
- **rank rule** (activation-agnostic, needs pre- and post-activations): sort samples by h; OPT
  iff the outputs strictly increase along that order, pairs tied in h skipped. Works on a capped
  sample (``streaming.ReservoirSampler``).

The graded score ``r_j = 1 - (#pairs tied or inverted in y) / (#pairs with distinct h)``
(``graded_scores``) is 1 exactly for rank-OPT neurons. For ReLU with distinct h and k samples
having ``h <= 0``: those k samples all map to 0 (their mutual order is lost, k(k-1)/2 tied
pairs) and every other pair keeps its order, so ``r = 1 - k(k-1) / (P(P-1))``.

The later version of the paper (v3/v4) names a Rank Probability Distribution and a Linear
Substitution Map; their definitions were not read, so :func:`rank_probability` (the distribution of
each sample's normalised rank by h and by y, pooled over neurons) and :func:`linear_substitution`
(each neuron's sigma replaced by its least-squares affine map of h; streamed moments) are
reconstructions whose assumptions docs/metrics.md states.

Arrays are ``[samples, units]`` (use ``plugin_api.unit_view`` for conv/token maps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from .streaming import ReservoirSampler, merge_moments

DEAD, NPT_ALIVE, OPT = 0, 1, 2
MODE_CODES = "0=dead,1=npt_alive,2=opt"

#: Activation functions whose derivative is piecewise constant (regions are exact, no root finding).
_PIECEWISE_LINEAR = ("relu", "relu6", "hardtanh", "leaky_relu")
#: Strictly increasing everywhere (for their default arguments).
_STRICTLY_INCREASING = ("tanh", "sigmoid", "softplus")
SUPPORTED_FUNCTIONS = ("relu", "relu6", "hardtanh", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _arg(attrs: Mapping[str, Any] | None, key: str, default: float) -> float:
    value = (attrs or {}).get(key)
    return float(default if value is None else value)


def _check_function(function: str) -> None:
    if function not in SUPPORTED_FUNCTIONS:
        raise ValueError(
            f"unknown activation function {function!r}; supported: {', '.join(SUPPORTED_FUNCTIONS)} "
            "(use the rank rule for other functions)"
        )


def activate(function: str, h: np.ndarray, attrs: Mapping[str, Any] | None = None) -> np.ndarray:
    """sigma(h) for the named activation with its PyTorch defaults (``attrs`` override them)."""
    _check_function(function)
    h = np.asarray(h, dtype=np.float64)
    if function == "relu":
        return np.maximum(h, 0.0)
    if function in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if function == "relu6" else (-1.0, 1.0)
        return np.clip(h, _arg(attrs, "min_val", lo), _arg(attrs, "max_val", hi))
    if function == "gelu":
        if (attrs or {}).get("approximate", "none") == "tanh":
            return 0.5 * h * (1.0 + np.tanh(_SQRT_2_OVER_PI * (h + 0.044715 * h**3)))
        return 0.5 * h * (1.0 + special.erf(h / math.sqrt(2.0)))
    if function == "silu":
        return h * special.expit(h)
    if function == "tanh":
        return np.tanh(h)
    if function == "sigmoid":
        return special.expit(h)
    if function == "leaky_relu":
        return np.where(h >= 0, h, _arg(attrs, "negative_slope", 0.01) * h)
    if function == "elu":
        return np.where(h > 0, h, _arg(attrs, "alpha", 1.0) * np.expm1(np.minimum(h, 0.0)))
    beta = _arg(attrs, "beta", 1.0)  # softplus
    return np.logaddexp(0.0, beta * h) / beta


def derivative(function: str, h: np.ndarray, attrs: Mapping[str, Any] | None = None) -> np.ndarray:
    """sigma'(h) (one-sided where sigma has kinks); used to locate increasing and saturated regions."""
    _check_function(function)
    h = np.asarray(h, dtype=np.float64)
    if function == "relu":
        return (h > 0).astype(np.float64)
    if function in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if function == "relu6" else (-1.0, 1.0)
        return ((h > _arg(attrs, "min_val", lo)) & (h < _arg(attrs, "max_val", hi))).astype(np.float64)
    if function == "gelu":
        if (attrs or {}).get("approximate", "none") == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (h + 0.044715 * h**3))
            return 0.5 * (1 + t) + 0.5 * h * (1 - t**2) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * h**2)
        return special.ndtr(h) + h * np.exp(-0.5 * h**2) / math.sqrt(2 * math.pi)
    if function == "silu":
        s = special.expit(h)
        return s * (1.0 + h * (1.0 - s))
    if function == "tanh":
        return 1.0 - np.tanh(h) ** 2
    if function == "sigmoid":
        s = special.expit(h)
        return s * (1.0 - s)
    if function == "leaky_relu":
        return np.where(h > 0, 1.0, _arg(attrs, "negative_slope", 0.01))
    if function == "elu":
        return np.where(h > 0, 1.0, _arg(attrs, "alpha", 1.0) * np.exp(np.minimum(h, 0.0)))
    return special.expit(_arg(attrs, "beta", 1.0) * h)  # softplus


def _base_region(function: str, attrs: Mapping[str, Any] | None) -> tuple[float, float]:
    """Open interval where sigma is strictly increasing (no saturation tolerance)."""
    if function == "relu":
        return 0.0, math.inf
    if function == "relu6":
        return _arg(attrs, "min_val", 0.0), _arg(attrs, "max_val", 6.0)
    if function == "hardtanh":
        return _arg(attrs, "min_val", -1.0), _arg(attrs, "max_val", 1.0)
    if function in ("gelu", "silu"):  # one minimum: sigma' < 0 left of the root, > 0 right of it
        root = optimize.brentq(lambda x: float(derivative(function, x, attrs)), -4.0, 0.0, xtol=1e-14)
        return root, math.inf
    if function == "leaky_relu":
        return (-math.inf, math.inf) if _arg(attrs, "negative_slope", 0.01) > 0 else (0.0, math.inf)
    if function == "elu":
        return (-math.inf, math.inf) if _arg(attrs, "alpha", 1.0) > 0 else (0.0, math.inf)
    if function == "softplus" and _arg(attrs, "beta", 1.0) <= 0:
        raise ValueError("softplus needs beta > 0")
    return -math.inf, math.inf  # tanh, sigmoid, softplus


def increasing_region(
    function: str, attrs: Mapping[str, Any] | None = None, saturation_tol: float = 0.0
) -> tuple[float, float]:
    """Open interval (lo, hi) of pre-activations where sigma counts as strictly increasing.

    ``saturation_tol`` tau in [0, 1) additionally requires ``sigma'(h) > tau * max sigma'``, so
    that saturated tails of tanh/sigmoid/softplus/ELU/GELU/SiLU count as flat (for ReLU-like
    functions with slope 0 or 1 it changes nothing; leaky ReLU's negative side is flat when its
    slope <= tau). tau = 0 gives the exact strictly-increasing region.
    """
    _check_function(function)
    if not 0.0 <= saturation_tol < 1.0:
        raise ValueError(f"saturation_tol must be in [0, 1), got {saturation_tol}")
    lo, hi = _base_region(function, attrs)
    if saturation_tol == 0.0:
        return lo, hi
    if function in _PIECEWISE_LINEAR:
        if function == "leaky_relu":
            slope = _arg(attrs, "negative_slope", 0.01)
            if slope <= saturation_tol * max(1.0, slope):
                return 0.0, math.inf
        return lo, hi
    # Smooth, unimodal derivative: locate the peak on a grid, then the two crossings of tau*max.
    span = 60.0 / _arg(attrs, "beta", 1.0) if function == "softplus" else 60.0
    grid = np.linspace(-span, span, 24001)
    d = derivative(function, grid, attrs)
    peak = int(np.argmax(d))
    target = saturation_tol * float(d[peak])

    def excess(x: float) -> float:
        return float(derivative(function, x, attrs)) - target

    left = -math.inf if d[0] > target else optimize.brentq(excess, grid[0], grid[peak], xtol=1e-12)
    right = math.inf if d[-1] > target else optimize.brentq(excess, grid[peak], grid[-1], xtol=1e-12)
    return max(lo, left), min(hi, right)


def in_region(h: np.ndarray, region: tuple[float, float]) -> np.ndarray:
    """Boolean mask: which pre-activations lie strictly inside the increasing region."""
    lo, hi = region
    return (h > lo) & (h < hi)


def _sorted_by_h_then_y(h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((y, h), axis=0)
    return order, np.take_along_axis(h, order, 0), np.take_along_axis(y, order, 0)


def rank_rule_opt(h: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per unit: True iff outputs strictly increase along the samples sorted by h (ties in h skipped).

    Sorting by (h, y) puts each tie group's largest y last and the next group's smallest y
    first, so checking consecutive rows that differ in h checks every pair with distinct h.
    """
    h, y = np.asarray(h), np.asarray(y)
    _, hs, ys = _sorted_by_h_then_y(h, y)
    ok = (hs[1:] == hs[:-1]) | (ys[1:] > ys[:-1])
    return ok.all(axis=0)


def _tied_pairs(equal_to_previous: np.ndarray) -> np.ndarray:
    """Number of tied pairs per column given a sorted column's 'equals previous row' mask."""
    c = np.cumsum(equal_to_previous, axis=0, dtype=np.int64)
    base = np.maximum.accumulate(np.where(equal_to_previous, 0, c), axis=0)
    return (c - base).sum(axis=0)


def _dense_ranks(y: np.ndarray) -> np.ndarray:
    """Per column dense ranks 0..(distinct-1); equal values share a rank."""
    order = np.argsort(y, axis=0, kind="stable")
    ys = np.take_along_axis(y, order, 0)
    new = np.ones(y.shape, dtype=np.int64)
    new[1:] = ys[1:] != ys[:-1]
    dense = np.cumsum(new, axis=0) - 1
    ranks = np.empty_like(dense)
    np.put_along_axis(ranks, order, dense, 0)
    return ranks


def _count_weak_inversions(ranks: np.ndarray) -> np.ndarray:
    """Per row of ``ranks[n, P]`` (ints in [0, P)): #pairs i < j with ranks[i] >= ranks[j].

    Bottom-up merge sort, vectorised over rows and blocks: at each level every element of a
    right block counts the elements of its (sorted) left block that are >= it, with one
    ``searchsorted`` over all blocks at once (block id offsets keep the keys globally sorted).
    O(n P log^2 P) work, no Python loop over samples.
    """
    n, p = ranks.shape
    length = 1 << max(0, (p - 1).bit_length())
    pad = p  # larger than any real rank; pads sit at the end and only ever fall in right blocks
    arr = np.full((n, length), pad, dtype=np.int64)
    arr[:, :p] = ranks
    total = np.zeros(n, dtype=np.int64)
    size = 1
    while size < length:
        groups = length // (2 * size)
        blocks = arr.reshape(n, groups, 2, size)
        left, right = blocks[:, :, 0, :], blocks[:, :, 1, :]
        gid = np.arange(n * groups, dtype=np.int64).reshape(n, groups, 1)
        offset = gid * (pad + 1)
        pos = np.searchsorted((left + offset).ravel(), (right + offset).ravel(), side="left")
        count = (gid + 1) * size - pos.reshape(n, groups, size)
        total += np.where(right == pad, 0, count).reshape(n, -1).sum(axis=1)
        arr = np.sort(blocks.reshape(n, groups, 2 * size), axis=-1).reshape(n, length)
        size *= 2
    return total


def graded_scores(
    h: np.ndarray, y: np.ndarray, chunk_elements: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit ``(r, bad, distinct)``: the graded order-preservation score and its pair counts.

    ``distinct`` = #pairs with different h, ``bad`` = #those pairs whose outputs are tied or in
    the opposite order, ``r = 1 - bad/distinct`` (NaN when distinct == 0, e.g. P < 2).
    Exact pair counts without materialising P^2 pairs; units are processed in chunks.
    """
    h, y = np.asarray(h), np.asarray(y)
    if h.shape != y.shape or h.ndim != 2:
        raise ValueError(f"h and y must be equal-shape [samples, units]; got {h.shape} and {y.shape}")
    p, n = h.shape
    bad = np.zeros(n, dtype=np.int64)
    distinct = np.zeros(n, dtype=np.int64)
    if p >= 2:
        step = max(1, chunk_elements // max(p, 1))
        for lo in range(0, n, step):
            hc, yc = h[:, lo : lo + step], y[:, lo : lo + step]
            order, hs, ys = _sorted_by_h_then_y(hc, yc)
            same_h = hs[1:] == hs[:-1]
            tied_h = _tied_pairs(same_h)
            tied_hy = _tied_pairs(same_h & (ys[1:] == ys[:-1]))
            ranks = np.take_along_axis(_dense_ranks(yc), order, 0).T
            # Within an h-tie group y ascends, so only pairs tied in both h and y were counted.
            bad[lo : lo + step] = _count_weak_inversions(np.ascontiguousarray(ranks)) - tied_hy
            distinct[lo : lo + step] = p * (p - 1) // 2 - tied_h
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(distinct > 0, 1.0 - bad / np.maximum(distinct, 1), np.nan)
    return r, bad, distinct


def classify_modes(opt: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Mode code per unit (dead takes precedence, then OPT, else NPT-alive); see MODE_CODES."""
    return np.where(dead, DEAD, np.where(opt, OPT, NPT_ALIVE)).astype(np.int8)


def mode_fractions(codes: np.ndarray) -> dict[str, float | int]:
    """Fractions and counts of OPT / NPT-alive / dead units."""
    n = int(codes.size)
    counts = {
        name: int(np.sum(codes == code)) for name, code in (("opt", OPT), ("npt_alive", NPT_ALIVE), ("dead", DEAD))
    }
    out: dict[str, float | int] = {f"n_{k}": v for k, v in counts.items()}
    out.update({f"frac_{k}": (v / n if n else math.nan) for k, v in counts.items()})
    return out


class ModeStats:
    """Streaming per-unit statistics for the mode metrics of one layer.

    Exact over all rows: row count, #rows in the increasing region (when ``region`` is given),
    output min/max (dead detection). Optionally a ``ReservoirSampler`` of (h, y) rows for the rank rule and r_j.
    """

    def __init__(
        self,
        n_units: int,
        region: tuple[float, float] | None,
        reservoir_size: int = 0,
        seed: int = 0,
    ) -> None:
        self.n_units = n_units
        self.region = region
        self.n = 0
        self.n_in_region = np.zeros(n_units, dtype=np.int64)
        self.y_min = np.full(n_units, np.inf)
        self.y_max = np.full(n_units, -np.inf)
        self.reservoir = ReservoirSampler(reservoir_size, seed) if reservoir_size > 0 else None
        self.moments = PairMoments(n_units)

    def update(self, h: np.ndarray, y: np.ndarray) -> None:
        if h.shape != y.shape or h.shape[1] != self.n_units:
            raise ValueError(f"pre/post-activation shapes {h.shape} / {y.shape} do not match {self.n_units} units")
        if h.shape[0] == 0:
            return
        self.n += h.shape[0]
        if self.region is not None:
            self.n_in_region += in_region(h, self.region).sum(axis=0)
        np.minimum(self.y_min, y.min(axis=0), out=self.y_min)
        np.maximum(self.y_max, y.max(axis=0), out=self.y_max)
        self.moments.update(h, y)
        if self.reservoir is not None:
            self.reservoir.update(h, y)

    def dead(self, dead_tol: float = 0.0) -> np.ndarray:
        """Units whose output varies by at most ``dead_tol`` over every row seen."""
        return (self.y_max - self.y_min) <= dead_tol

    def region_opt(self) -> np.ndarray:
        """Region rule: every row seen lies in the increasing region."""
        if self.region is None:
            raise ValueError("region rule needs a known activation function")
        return self.n_in_region == self.n

    def activation_rates(self) -> np.ndarray:
        """Per unit, the fraction of rows in the increasing region."""
        return self.n_in_region / self.n if self.n else np.full(self.n_units, np.nan)


# ------------------------------------------------------ later version: RPD and L-Map (reconstructed)


def _pair_products(d: np.ndarray) -> np.ndarray:
    """``[hh, yy, hy]`` products of stacked ``[h, y]`` deviations: the co-moments PairMoments keeps."""
    h, y = d[0], d[1]
    return np.stack([h * h, y * y, h * y])


#: Reservoir elements per tensor (rows x units) above which the row cap is lowered (~128 MB float32).
RESERVOIR_BUDGET = 1 << 25


class LayerModeStream:
    """One activation layer's stream of (pre, post) ``[rows, units]`` pairs: its ``ModeStats``, made at the
    first batch (the width is known then), the images seen, and why the layer cannot be measured, if so.

    ``reservoir`` rows are sampled (fewer when rows x units would pass ``RESERVOIR_BUDGET``; ``warn``
    is told).
    """

    def __init__(
        self,
        region: tuple[float, float] | None,
        reservoir: int = 0,
        seed: int = 0,
        reason: str | None = None,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.region, self.reservoir, self.seed, self.reason, self.warn = region, reservoir, seed, reason, warn
        self.stats: ModeStats | None = None
        self.images = 0

    def update(self, h: np.ndarray, y: np.ndarray, n_images: int) -> None:
        if self.reason is not None:
            return
        if h.shape != y.shape:
            self.reason = f"input {h.shape} and output {y.shape} shapes differ: not an elementwise activation"
            return
        if self.stats is None:
            cap = self.reservoir
            if cap * h.shape[1] > RESERVOIR_BUDGET:
                cap = max(2, RESERVOIR_BUDGET // h.shape[1])
                self.warn(f"{h.shape[1]} units; sample capped at {cap} rows for memory")
            self.stats = ModeStats(h.shape[1], self.region, cap, seed=self.seed)
        self.stats.update(h, y)
        self.images += n_images


class PairMoments:
    """Streamed per-unit means, variances and covariance of (h, y) (Chan et al.'s pairwise merge, float64).

    Exact over every row seen, O(units) memory: all the linear substitution map needs.
    """

    def __init__(self, n_units: int) -> None:
        self.n = 0
        self._mean = np.zeros((2, n_units))  # [mean_h, mean_y]
        self._m2 = np.zeros((3, n_units))  # centred [Σhh, Σyy, Σhy]

    def update(self, h: np.ndarray, y: np.ndarray) -> None:
        hy = np.stack([np.asarray(h, dtype=np.float64), np.asarray(y, dtype=np.float64)])  # [2, rows, units]
        if hy.shape[1] == 0:
            return
        mean_b = hy.mean(axis=1)
        m2_b = _pair_products(hy - mean_b[:, None]).sum(axis=1)
        self.n, self._mean, self._m2 = merge_moments(
            self.n, self._mean, self._m2, hy.shape[1], mean_b, m2_b, _pair_products
        )

    mean_h = property(lambda self: self._mean[0])
    mean_y = property(lambda self: self._mean[1])
    m2_h = property(lambda self: self._m2[0])
    m2_y = property(lambda self: self._m2[1])
    c_hy = property(lambda self: self._m2[2])


def linear_substitution(m: PairMoments) -> dict[str, Any]:
    """Linear Substitution Map of one layer: each neuron's sigma replaced by its best affine map of h.

    Per neuron ``y ≈ a_j h + b_j`` (least squares over the samples) with substitution error
    ``e_j = SSE_j / SST_j = 1 − corr(h_j, y_j)²`` (0: sigma acts linearly on these samples, as an
    OPT ReLU neuron does); dead neurons (no output variance) and neurons with constant h get NaN.
    Layer value: ``fvu_pooled = Σ SSE_j / Σ SST_j``, the fraction of the layer's output variance lost
    when every neuron is linearised.
    """
    ok_h = m.m2_h > 0
    ok = ok_h & (m.m2_y > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(ok_h, m.c_hy / np.where(ok_h, m.m2_h, 1.0), np.nan)
        sse = np.where(ok_h, np.maximum(m.m2_y - m.c_hy * slope, 0.0), m.m2_y)
        err = np.where(ok, sse / np.where(ok, m.m2_y, 1.0), np.nan)
    total = float(m.m2_y[ok].sum())
    return {
        "substitution_fvu": err,
        "slope": slope,
        "intercept": m.mean_y - slope * m.mean_h,
        "fvu_pooled": float(sse[ok].sum()) / total if total > 0 else math.nan,
        "n_measured": int(ok.sum()),
    }


def rank_probability(h: np.ndarray, y: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """Rank Probability Distribution of one layer over a sample ``h, y [P, units]`` (reconstruction).

    Each sample's normalised rank among the P samples by pre-activation, ``u = (rank_h − 1)/(P − 1)``,
    and by output, ``v`` (ties share their average rank), pooled over the measured neurons (those
    with varying h and y). Returns the joint distribution ``joint[a, b] = P(u in bin a, v in bin b)``
    and the conditional ``P(v bin | u bin)`` (the identity for order-preserving neurons; a ReLU
    neuron silent on a fraction q of the samples sends the lowest-q input ranks to one output rank),
    per neuron the mean rank displacement ``E|u − v|`` and the Spearman correlation of h and y, and
    their layer means.
    """
    h, y = np.asarray(h, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if h.shape != y.shape or h.ndim != 2:
        raise ValueError(f"h and y must be equal-shape [samples, units]; got {h.shape} and {y.shape}")
    p, n = h.shape
    ok = (np.ptp(h, axis=0) > 0) & (np.ptp(y, axis=0) > 0) if p else np.zeros(n, bool)
    disp = np.full(n, np.nan)
    rho = np.full(n, np.nan)
    joint = np.zeros((bins, bins))
    if p >= 2 and ok.any():
        rh = stats.rankdata(h[:, ok], axis=0)
        ry = stats.rankdata(y[:, ok], axis=0)
        u, v = (rh - 1) / (p - 1), (ry - 1) / (p - 1)
        disp[ok] = np.abs(u - v).mean(axis=0)
        uc, vc = u - u.mean(axis=0), v - v.mean(axis=0)
        rho[ok] = (uc * vc).sum(axis=0) / np.sqrt((uc * uc).sum(axis=0) * (vc * vc).sum(axis=0))
        joint = np.histogram2d(u.ravel(), v.ravel(), bins=bins, range=[[0, 1], [0, 1]])[0]
        joint /= joint.sum()
    rows = joint.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = np.where(rows > 0, joint / np.where(rows > 0, rows, 1.0), np.nan)
    return {
        "joint": joint,
        "conditional": cond,
        "rank_displacement": disp,
        "spearman": rho,
        "rank_displacement_mean": float(np.nanmean(disp)) if ok.any() and p >= 2 else math.nan,
        "spearman_mean": float(np.nanmean(rho)) if ok.any() and p >= 2 else math.nan,
        "diagonal_mass": float(np.trace(joint)) if ok.any() and p >= 2 else math.nan,
        "n_measured": int(ok.sum()) if p >= 2 else 0,
    }
