"""SS_rate of a feature network (Ding et al. 2025, arXiv 2507.17785), as the authors' code computes it.

The feature network of a layer has one node per unit; node ``i``'s feature vector is the unit's
output over a batch of B inputs, ``F[i] in R^B``, and ``d_ij = ||F_i - F_j|| / sqrt(B)``.
SS_rate follows ``sfm/sfm_loss_d_v2.py`` (the code behind the paper's tables, not the printed
Eq. 9): a box-count proxy ``N(theta)`` over a geometric grid of thresholds compared with the
straight line of a perfectly self-similar network. 0 = strongly self-similar, 1 = not at all.

Cost: one ``pdist`` (P = D(D-1)/2 distances, never a P x B array), one sort, one
``searchsorted`` for all S thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist

VARIANTS = ("code",)


@dataclass
class SSRate:
    """One SS_rate evaluation. ``value`` is NaN with a ``reason`` for degenerate inputs."""

    value: float
    n_nodes: int  #: D
    batch_size: int  #: B
    n_thresholds: int  #: S
    s: np.ndarray  #: s_k = k/(S-1)
    thresholds: np.ndarray  #: theta_k
    n_theta: np.ndarray  #: N_k, the box-count proxy at each threshold
    y: np.ndarray  #: ln N_k / ln D
    tz: float  #: smallest distance
    tv: float  #: largest distance
    zero_variance_fraction: float  #: nodes whose feature is constant over the batch
    reason: str = ""


def _empty(D: int, B: int, S: int, zero_var: float, reason: str) -> SSRate:
    nan = np.full(S, np.nan)
    return SSRate(
        float("nan"),
        D,
        B,
        S,
        np.linspace(0.0, 1.0, S),
        nan,
        nan,
        nan.copy(),
        float("nan"),
        float("nan"),
        zero_var,
        reason,
    )


def linspace_like_torch(n: int) -> np.ndarray:
    """``torch.linspace(0, 1, n)`` bit for bit: the upper half is counted down from 1 (numpy counts up)."""
    i = np.arange(n, dtype=np.float64)
    step = 1.0 / (n - 1)
    return np.where(i < n // 2, i * step, 1.0 - step * (n - 1 - i))


def sigmoid_count(d_sorted: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``#{d : sigmoid(theta_k - d) > 0.5}`` per threshold, as the authors' ``linkage_function`` counts.

    Mathematically ``d < theta_k``; in floating point a pair a few ulps below theta_k is not
    counted (sigmoid rounds to exactly 0.5), and theta_k itself carries rounding from its power
    formula, so the largest pair is sometimes inside the last threshold and sometimes not. Start
    from the strict count and step back while the boundary pair fails the sigmoid test: the test
    is monotone in d, so this stops after a step or two.
    """
    idx = np.searchsorted(d_sorted, theta, side="left")
    while True:
        prev = np.maximum(idx - 1, 0)
        with np.errstate(over="ignore"):
            inside = 1.0 / (1.0 + np.exp(-(theta - d_sorted[prev]))) > 0.5
        back = (idx > 0) & ~inside
        if not back.any():
            return idx
        idx = idx - back


def ss_rate_from_distances(d: np.ndarray, n_nodes: int, n_thresholds: int = 256) -> tuple[float, dict]:
    """SS_rate from the condensed pair distances ``d`` (length D(D-1)/2) of ``n_nodes`` nodes.

    ``theta_k = (1+TZ) ((1+TV)/(1+TZ))^{s_k} - 1``; ``p_k = #{d < theta_k} / P`` (strict, counted as
    ``sigmoid(theta_k - d) > 0.5`` like the code); ``N_k = D - (D-1) ln(1 + (D-1) p_k) / ln D``;
    ``SS = (2/S) sum_k |line_k - ln N_k / ln D|`` with the code's reference line
    ``line_k = 1 - (ln(1+theta_k) - ln(1+TZ)) / (ln(1+TV) - ln(1+TZ))`` (= 1 - s_k up to rounding).
    Everything in float64, in the code's order of operations. Assumes D >= 3 and finite,
    not-all-equal distances (``ss_rate`` checks).
    """
    D, S = int(n_nodes), int(n_thresholds)
    d_sorted = np.sort(np.asarray(d, np.float64))
    tz, tv = float(d_sorted[0]), float(d_sorted[-1])
    s = linspace_like_torch(S)
    theta = (1.0 + tz) * np.power((1.0 + tv) / (1.0 + tz), s) - 1.0
    p = sigmoid_count(d_sorted, theta) / d_sorted.size
    n_theta = D - (D - 1) * np.log(1.0 + (D - 1) * p) / np.log(D)
    y = np.log(n_theta) / np.log(D)
    a, b = np.log(1.0 + tz), np.log(1.0 + tv)
    line = (-np.log(1.0 + theta) + a) / (b - a) + 1.0
    value = float(np.sum(np.abs(line - y)) * 2.0 / S)
    return value, {"s": s, "thresholds": theta, "n_theta": n_theta, "y": y, "tz": tz, "tv": tv}


def ss_rate(features: np.ndarray, n_thresholds: int = 256, variant: str = "code") -> SSRate:
    """SS_rate of one batch. ``features[D, B]``: row i = unit i's outputs on the B inputs.

    Degenerate inputs (D < 3, non-finite values, all distances equal - e.g. identical nodes)
    give NaN with a reason.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown N_theta variant '{variant}'; available: {', '.join(VARIANTS)}")
    F = np.asarray(features, np.float64)
    if F.ndim != 2:
        raise ValueError(f"features must be [nodes, batch], got shape {F.shape}")
    D, B = F.shape
    S = int(n_thresholds)
    if S < 2:
        raise ValueError(f"n_thresholds must be >= 2, got {S}")
    if D == 0 or B == 0:
        return _empty(D, B, S, float("nan"), f"empty feature matrix ({D} nodes x {B} samples)")
    if not np.isfinite(F).all():
        bad = int((~np.isfinite(F)).any(axis=1).sum())
        return _empty(D, B, S, float("nan"), f"{bad} of {D} nodes have NaN/inf activations")
    zero_var = float(np.mean(np.ptp(F, axis=1) == 0))
    if D < 3:
        return _empty(D, B, S, zero_var, f"{D} nodes: SS_rate needs at least 3")
    d = pdist(F) / np.sqrt(B)
    if d.max() == d.min():
        return _empty(D, B, S, zero_var, "all node distances are equal (e.g. identical nodes): no scale to count")
    value, curves = ss_rate_from_distances(d, D, S)
    return SSRate(
        value,
        D,
        B,
        S,
        curves["s"],
        curves["thresholds"],
        curves["n_theta"],
        curves["y"],
        curves["tz"],
        curves["tv"],
        zero_var,
    )


def ss_rate_batches(activations: np.ndarray, batch_size: int = 64, n_thresholds: int = 256) -> list[SSRate]:
    """SS_rate on consecutive batches of ``batch_size`` samples of ``activations[N, D]`` (remainder dropped)."""
    A = np.asarray(activations)
    return [
        ss_rate(A[lo : lo + batch_size].T, n_thresholds) for lo in range(0, A.shape[0] - batch_size + 1, batch_size)
    ]


class SSRateTally:
    """Running sums over per-batch SS_rate results: memory O(S), whatever the number of batches."""

    def __init__(self) -> None:
        self.n_batches = 0
        self.n_good = 0
        self.n_nodes = 0
        self.reasons: set[str] = set()
        self.sums: dict[str, Any] = {}  # value, value^2, zero_variance_fraction, tz, tv, n_theta, y
        self.s: np.ndarray | None = None
        self.bad_zv = [0.0, 0]  # sum and count of zero-variance fractions of invalid batches

    def add(self, r: SSRate) -> None:
        self.n_batches += 1
        self.n_nodes = self.n_nodes or r.n_nodes
        if r.reason:
            self.reasons.add(r.reason)
        if not np.isfinite(r.value):
            if np.isfinite(r.zero_variance_fraction):
                self.bad_zv = [self.bad_zv[0] + r.zero_variance_fraction, self.bad_zv[1] + 1]
            return
        self.n_good += 1
        self.s = r.s if self.s is None else self.s
        for key, value in (
            ("value", r.value),
            ("value2", r.value**2),
            ("zv", r.zero_variance_fraction),
            ("tz", r.tz),
            ("tv", r.tv),
            ("n_theta", np.asarray(r.n_theta, np.float64)),
            ("y", np.asarray(r.y, np.float64)),
        ):
            self.sums[key] = self.sums.get(key, 0.0) + value

    def mean(self, key: str) -> Any:
        return self.sums[key] / self.n_good

    def summary(self) -> dict[str, Any]:
        """Mean and std of SS_rate over the valid batches (and mean curves ``s``, ``n_theta``, ``y``);
        NaN with a reason when no batch was valid."""
        if not self.n_good:
            zv_sum, zv_count = self.bad_zv
            return {
                "ss_rate": float("nan"),
                "ss_rate_std": float("nan"),
                "zero_variance_fraction": zv_sum / zv_count if zv_count else float("nan"),
                "reason": "; ".join(sorted(self.reasons) or ["no samples"]),
            }
        mean = self.mean("value")
        out = {
            "ss_rate": float(mean),
            "ss_rate_std": float(np.sqrt(max(self.mean("value2") - mean**2, 0.0))),
            "zero_variance_fraction": float(self.mean("zv")),
            "tz_mean": float(self.mean("tz")),
            "tv_mean": float(self.mean("tv")),
            "s": self.s,
            "n_theta": self.mean("n_theta"),
            "y": self.mean("y"),
        }
        if self.reasons:
            skipped = self.n_batches - self.n_good
            out["reason"] = f"{skipped} batches skipped: " + "; ".join(sorted(self.reasons))
        return out


class SSRateStream:
    """SS_rate on consecutive batches of ``batch_size`` rows of a stream of ``[n, D]`` unit outputs,
    however the stream is batched: a remainder waits for the next rows, results go into a tally."""

    def __init__(self, batch_size: int = 64, n_thresholds: int = 256) -> None:
        self.batch_size, self.n_thresholds = batch_size, n_thresholds
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.n_seen = 0
        self.tally = SSRateTally()

    def update(self, rows: np.ndarray) -> None:
        B = self.batch_size
        self.n_seen += rows.shape[0]
        self.pending.append(rows)
        self.n_pending += rows.shape[0]
        if self.n_pending >= B:
            stacked = np.concatenate(self.pending)
            full = (stacked.shape[0] // B) * B
            for lo in range(0, full, B):
                self.tally.add(ss_rate(stacked[lo : lo + B].T, self.n_thresholds))
            self.pending = [stacked[full:]]
            self.n_pending = stacked.shape[0] - full

    def use_short_batch(self) -> int:
        """With fewer rows than one batch in all, measure them as one smaller batch; return how many."""
        if self.tally.n_batches or not self.n_pending:
            return 0
        rows = np.concatenate(self.pending)
        self.tally.add(ss_rate(rows.T, self.n_thresholds))
        self.pending, self.n_pending = [], 0
        return rows.shape[0]
