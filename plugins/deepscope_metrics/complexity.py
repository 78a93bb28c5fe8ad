"""Nonlinearity complexity of a layer's computation (Janik & Witaszczyk 2020, reconstructed).

Only the abstract of arXiv 2006.04791 was read ("a notion of complexity which quantifies the
nonlinearity of the computation", "entropic", "as a function of scale"). These observables are
a reconstruction; every choice is a parameter. All work from activations alone:

* :func:`linear_fvu` — fraction of variance of a map's output left unexplained by the best
  affine map of its input (ridge, fitted on a training split, scored on a held-out split;
  input and output PCA-reduced to at most ``max_dim`` dimensions where wider). 0 = the map is
  linear on this data. The plugin feeds it the map from one hidden representation to the next.
* :func:`piecewise_fvu_curve` — FVU(K) of K = 1, 2, 3, … affine pieces on nested input clusters
  (greedy 2-means splits of the worst-fitted piece, least squares); ``C(ε) = ln K*(ε)`` with K*
  the fewest pieces reaching FVU ≤ ε, ε absolute or relative to FVU(1) (:func:`complexity_at`),
  and the cluster-occupancy entropy at K*.
* :class:`PatternEntropy` — entropy of binary activation patterns ``h > threshold``: the sum
  over units of the binary entropy of ``P(h_i > 0)``, the joint Shannon entropy of the
  empirical distribution of whole patterns (which linear piece of a piecewise-linear network a
  sample falls in), the number of distinct patterns, and the joint entropy as a function of the
  number of units considered (the "scale"). Entropies are in nats.

Why nested greedy splits for FVU(K): each split keeps the parent's map available to both halves,
so for least squares the training FVU cannot increase with K — the curve C is read from is
monotone by construction; the held-out FVU is reported beside it as the overfitting check
(earlier versions read K* from a held-out curve that was U-shaped on real layers).

Cost: the regressions run with one BLAS thread. Their matrices are small (≤ ``max_dim``²); on a
shared 2-core machine two BLAS threads made a 256² Cholesky ~25x slower, not faster.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

from .fits import fit_power_law

__all__ = [
    "PatternEntropy",
    "affine_fit",
    "binary_entropy",
    "complexity_at",
    "fvu",
    "linear_fvu",
    "occupancy_entropy",
    "pattern_entropy",
    "pca_basis",
    "piecewise_complexity",
    "piecewise_fvu_curve",
    "split_indices",
    "two_means",
]

_NAN = float("nan")
#: An FVU at or below this is float rounding of an exact fit: the map is linear.
LINEAR_FVU = 1e-12


# ----------------------------------------------------------------------------- helpers


def split_indices(n: int, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, test) index split; at least one sample on each side when n ≥ 2."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    n_test = min(max(n_test, 1), n - 1) if n >= 2 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def pca_basis(x: np.ndarray, max_dim: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Mean, top-``max_dim`` principal directions ``[features, k]`` and retained variance fraction.

    Returns ``basis=None`` (no reduction) when ``x`` is not wider than ``max_dim``.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    if x.shape[1] <= max_dim:
        return mean, None, 1.0
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    total = float((s * s).sum())
    kept = float((s[:max_dim] ** 2).sum())
    return mean, vt[:max_dim].T, kept / total if total > 0 else 1.0


def _reduce(x: np.ndarray, mean: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x if basis is None else (x - mean) @ basis


def affine_fit(
    x: np.ndarray, y: np.ndarray, alpha: float = 1e-3, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge affine map ``y ≈ x @ W + b``; returns ``(W[in, out], b[out])``.

    The intercept is not penalised. The penalty is ``λ = alpha · n · scale`` with ``scale``
    the mean per-feature variance of ``x`` (pass a fixed ``scale`` to share one penalty across
    clusters), so ``alpha`` is dimensionless. ``alpha = 0`` is least squares (minimum-norm
    solution when underdetermined).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    if alpha > 0:
        if scale is None:
            scale = float((xc * xc).sum() / max(x.shape[0] * x.shape[1], 1))
        lam = alpha * x.shape[0] * scale
    else:
        lam = 0.0
    if lam > 0 and x.shape[0] < x.shape[1]:
        # Dual form, same solution: (XᵀX + λI)⁻¹Xᵀ = Xᵀ(XXᵀ + λI)⁻¹ — an n×n system instead of d×d,
        # which is what makes many small clusters in a wide space cheap.
        w = xc.T @ scipy.linalg.cho_solve(scipy.linalg.cho_factor(xc @ xc.T + lam * np.eye(x.shape[0])), yc)
    elif lam > 0:
        w = scipy.linalg.cho_solve(scipy.linalg.cho_factor(xc.T @ xc + lam * np.eye(x.shape[1])), xc.T @ yc)
    else:
        w = np.linalg.lstsq(xc, yc, rcond=None)[0]
    return w, my - mx @ w


def fvu(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Fraction of variance unexplained ``Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` pooled over output dims.

    NaN when ``y`` has no variance.
    """
    y = np.asarray(y, dtype=np.float64)
    resid = y - y_hat
    yc = y - y.mean(axis=0)
    total = float((yc * yc).sum())
    return float((resid * resid).sum()) / total if total > 0 else _NAN


def occupancy_entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of the cluster occupancy ``n_k / n``."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return _NAN
    _, counts = np.unique(labels, return_counts=True)
    p = counts / labels.size
    return float(-(p * np.log(p)).sum()) + 0.0  # no -0.0


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """``H(p) = −p ln p − (1−p) ln(1−p)`` in nats, elementwise, with ``0 ln 0 = 0``."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    return np.where((p <= 0) | (p >= 1), 0.0, h)


# ------------------------------------------------------------------------- regressions


def _prepare(x, y, test_fraction, max_dim, seed, max_in_dim=None):
    """Split, then PCA-reduce input and output with bases fitted on the training split.

    ``max_in_dim`` (a function of the training rows) caps the input dimension further.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    tr, te = split_indices(x.shape[0], test_fraction, seed)
    mx, bx, rx = pca_basis(x[tr], min(max_dim, max_in_dim(tr.size)) if max_in_dim else max_dim)
    my, by, ry = pca_basis(y[tr], max_dim)
    xr, yr = _reduce(x, mx, bx), _reduce(y, my, by)
    info = {
        "n_samples": int(x.shape[0]),
        "n_train": int(tr.size),
        "n_test": int(te.size),
        "input_units": int(x.shape[1]),
        "output_units": int(y.shape[1]),
        "input_dim": int(xr.shape[1]),
        "output_dim": int(yr.shape[1]),
        "input_pca_variance": rx,
        "output_pca_variance": ry,
    }
    return xr[tr], yr[tr], xr[te], yr[te], info


def _degenerate(x: np.ndarray, y: np.ndarray, min_samples: int = 4) -> str:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        return f"input and output rows differ ({x.shape} vs {y.shape}); use reduce='mean' or 'flatten'"
    if x.shape[0] < min_samples:
        return f"need at least {min_samples} samples, got {x.shape[0]}"
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return "non-finite values in the layer input or output"
    if float(np.ptp(y, axis=0).max(initial=0.0)) == 0.0:
        return "the layer output is constant over the samples (no variance to explain)"
    return ""


@threadpool_limits.wrap(limits=1, user_api="blas")
def linear_fvu(
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float = 0.25,
    alpha: float = 1e-3,
    max_dim: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """FVU of the best affine map from a layer's input ``x[n, in]`` to its output ``y[n, out]``.

    Fitted (ridge, see :func:`affine_fit`) on a random ``1 − test_fraction`` split and scored
    on the rest: ``fvu`` (held-out, the headline) and ``fvu_train``. Degenerate data gives NaN
    and a ``reason``.
    """
    x, y = np.asarray(x), np.asarray(y)
    reason = _degenerate(x, y)
    if reason:
        return {"fvu": _NAN, "fvu_train": _NAN, "n_samples": int(x.shape[0]), "reason": reason}
    xtr, ytr, xte, yte, info = _prepare(x, y, test_fraction, max_dim, seed)
    w, b = affine_fit(xtr, ytr, alpha)
    out = {"fvu": fvu(yte, xte @ w + b), "fvu_train": fvu(ytr, xtr @ w + b), **info}
    if not np.isfinite(out["fvu"]):
        out["reason"] = "the held-out output has no variance"
    elif info["n_train"] <= info["input_dim"]:
        out["warning"] = underdetermined(info["n_train"], info["input_dim"])
    return out


def underdetermined(rows: int, dims: int) -> str:
    """The warning for an affine fit with no more training rows than input dimensions."""
    return (
        f"{rows} training rows for {dims} input dimensions: the affine fit is underdetermined (ridge only), "
        f"so held-out FVU can exceed 1; raise max_samples / the run's samples or lower pca_dim"
    )


def two_means(
    x: np.ndarray, seed: int = 0, n_init: int = 3, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray] | None:
    """2-means (Lloyd from k-means++ starts, best of ``n_init``): ``(labels, centroids[2, d])``.

    Why not sklearn's KMeans: for k = 2 on a few hundred points its per-call set-up (thread
    pools, validation) cost ~15 ms, and the nested split calls it once per cluster per level;
    this is the same algorithm in a few vectorised numpy lines. None when a side stays empty.
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(axis=1)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        first = x[rng.integers(x.shape[0])]
        d2 = np.maximum(sq - 2 * x @ first + first @ first, 0.0)
        if d2.sum() <= 0:
            return None
        cents = np.stack([first, x[rng.choice(x.shape[0], p=d2 / d2.sum())]])
        labels = np.full(x.shape[0], -1)
        for _ in range(max_iter):
            dist = sq[:, None] - 2 * x @ cents.T + (cents * cents).sum(axis=1)[None, :]
            new = np.argmin(dist, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=2)
            if counts.min() == 0:
                break
            cents = np.stack([x[labels == j].mean(axis=0) for j in (0, 1)])
        counts = np.bincount(labels, minlength=2)
        if counts.min() == 0:
            continue
        inertia = float(((x - cents[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels.copy(), cents.copy())
    return None if best is None else (best[1], best[2])


def _median_split(x: np.ndarray, cents: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Halve ``x`` at the median of its projection on the 2-means direction (when 2-means is lopsided).

    Returns labels and the halves' centroids, so held-out points descend by the nearer centroid as
    for a 2-means split; None when the projection is constant.
    """
    t = x @ (cents[1] - cents[0])
    order = np.argsort(t, kind="stable")
    labels = np.zeros(x.shape[0], dtype=np.int64)
    labels[order[x.shape[0] // 2 :]] = 1
    if t[order[0]] == t[order[-1]]:
        return None
    return labels, np.stack([x[labels == 0].mean(axis=0), x[labels == 1].mean(axis=0)])


def _fit_cluster(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares affine map of one cluster and its residual sum of squares."""
    w, b = affine_fit(x, y, 0.0)
    r = y - (x @ w + b)
    return w, b, float((r * r).sum())


@threadpool_limits.wrap(limits=1, user_api="blas")
def piecewise_fvu_curve(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k_max: int = 64,
    min_cluster_size: int = 10,
    rows_per_dim: float = 3.0,
    min_pieces: int = 4,
    test_fraction: float = 0.25,
    max_dim: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """FVU(K) of a piecewise-affine model of the map ``x -> y``: K input clusters, one affine map each.

    Divisive and greedy: start from one cluster (K = 1 is the linear fit); at every step split
    the cluster with the largest training residual in two by 2-means on its inputs (at the median
    along the 2-means direction when one side would be too small) and refit
    both halves by least squares, so K runs 1, 2, 3, ... ≤ ``k_max``. The partitions are nested
    and each child may reuse its parent's map, so the **training** FVU (``fvu_train``, the
    curve the complexity is read from) cannot increase with K — monotone by construction.
    A cluster is split only when both halves keep ``max(min_cluster_size, rows_per_dim ·
    (input_dim + 1))`` training rows, so every map is overdetermined (a least-squares fit of pure
    noise with r = ``rows_per_dim`` rows per parameter keeps an expected FVU of 1 − 1/r, so a
    relative eps below that is not met by overfitting alone). When the sample is small the input
    is PCA-reduced further, to the most dimensions with which ``min_pieces`` pieces still fit
    (``input_dim`` and ``input_pca_variance`` say so). Held-out points take the
    map of the half whose centroid is nearer at each split: ``fvu_test`` is the separate
    generalisation check (it may rise again when pieces overfit). Also returns the training
    cluster-occupancy entropy per K and sizes; degenerate data gives a ``reason``.
    """
    x, y = np.asarray(x), np.asarray(y)
    reason = _degenerate(x, y)
    if reason:
        return {
            "k": np.zeros(0, np.int64),
            "fvu_train": np.zeros(0),
            "fvu_test": np.zeros(0),
            "occupancy_entropy": np.zeros(0),
            "n_samples": int(x.shape[0]),
            "reason": reason,
        }
    min_pieces = min(min_pieces, k_max)

    def fitting_dim(n_train: int) -> int:  # the most input dims with which min_pieces pieces still fit
        return max(1, int(n_train // (min_pieces * max(rows_per_dim, 1e-9))) - 1)

    xtr, ytr, xte, yte, info = _prepare(x, y, test_fraction, max_dim, seed, fitting_dim if min_pieces > 1 else None)
    min_size = max(int(min_cluster_size), int(np.ceil(rows_per_dim * (xtr.shape[1] + 1))))
    total = float(((ytr - ytr.mean(axis=0)) ** 2).sum())
    ltr = np.zeros(xtr.shape[0], dtype=np.int64)
    lte = np.zeros(xte.shape[0], dtype=np.int64)
    pred_te = np.empty_like(yte)
    sse: list[float] = []
    splittable: list[bool] = []

    def refit(c: int) -> None:
        m, mt = ltr == c, lte == c
        w, b, err = _fit_cluster(xtr[m], ytr[m])
        pred_te[mt] = xte[mt] @ w + b
        if c == len(sse):
            sse.append(err)
            splittable.append(True)
        sse[c] = err
        splittable[c] = bool(m.sum() >= 2 * min_size and err > 0)

    refit(0)
    ks, f_tr, f_te, occ = [1], [sse[0] / total], [fvu(yte, pred_te)], [0.0]
    attempt = 0
    while len(sse) < k_max:
        open_ = [c for c in range(len(sse)) if splittable[c]]
        if not open_:
            break
        c = max(open_, key=lambda j: sse[j])
        members = np.flatnonzero(ltr == c)
        split = two_means(xtr[members], seed=seed + 7919 * attempt)
        attempt += 1
        if split is not None and np.bincount(split[0], minlength=2).min() < min_size:
            split = _median_split(xtr[members], split[1])
        if split is None:
            splittable[c] = False
            continue
        labels, cents = split
        new = len(sse)
        ltr[members[labels == 1]] = new
        tm = np.flatnonzero(lte == c)
        if tm.size:
            d2 = ((xte[tm, None, :] - cents[None, :, :]) ** 2).sum(axis=2)
            lte[tm[np.argmin(d2, axis=1) == 1]] = new
        refit(c)
        refit(new)
        ks.append(len(sse))
        f_tr.append(sum(sse) / total)
        f_te.append(fvu(yte, pred_te))
        occ.append(occupancy_entropy(ltr))
    out = {
        "k": np.asarray(ks, dtype=np.int64),
        "fvu_train": np.asarray(f_tr),
        "fvu_test": np.asarray(f_te),
        "occupancy_entropy": np.asarray(occ),
        "min_cluster_rows": min_size,
        "smallest_piece_rows": int(np.bincount(ltr).min()),
        **info,
    }
    if min_pieces > 1 and info["input_dim"] == fitting_dim(info["n_train"]) < min(max_dim, info["input_units"]):
        out["warning"] = (
            f"only {info['n_train']} training rows: the input is PCA-reduced to {info['input_dim']} dims "
            f"(variance kept {info['input_pca_variance']:.3f}) so that {min_pieces} pieces of "
            f"{min_size} rows fit; give more samples for a finer measurement"
        )
    if info["n_train"] <= info["input_dim"]:
        out["underdetermined_from_k"] = 1
        out["warning"] = (
            f"from K = 1 some cluster has <= {info['input_dim']} training rows: "
            + underdetermined(info["n_train"], info["input_dim"]).split(": ", 1)[1]
        )
    return out


def complexity_at(k: np.ndarray, fvu_curve: np.ndarray, eps: float, relative: bool = False) -> tuple[int, float]:
    """``(K*, C = ln K*)`` with K* the fewest clusters whose FVU ≤ eps; ``(0, NaN)`` if none.

    ``relative=True`` reads eps as a fraction of the curve's first (K = 1, linear) value: K*
    is the fewest pieces that remove a ``1 − eps`` share of what the linear map leaves
    unexplained. A linear map (FVU(1) ≤ ``LINEAR_FVU``, rounding) has K* = 1, C = 0.
    """
    k = np.asarray(k)
    curve = np.asarray(fvu_curve, dtype=np.float64)
    if curve.size == 0:
        return 0, _NAN
    threshold = max(eps * curve[0], LINEAR_FVU) if relative else eps
    ok = np.flatnonzero(curve <= threshold)
    if ok.size == 0:
        return 0, _NAN
    k_star = int(k[ok].min())
    return k_star, float(np.log(k_star))


def piecewise_complexity(
    x: np.ndarray, y: np.ndarray, *, eps: float, relative: bool, eps_grid: np.ndarray, **curve: Any
) -> dict[str, Any]:
    """``C(eps) = ln K*(eps)`` of the map ``x -> y`` read from its training FVU(K) curve
    (``piecewise_fvu_curve(x, y, **curve)``, whose keys it keeps): ``k_star``, ``complexity``, C over
    ``eps_grid`` (``complexity_eps``), the occupancy entropy at K* (``occupancy_entropy_at_k_star``),
    the held-out best K (``k_best_test``, ``fvu_best_test``) and the fit FVU(K) ~ K^slope (``fit``).
    Only the curve's ``reason`` when no curve could be fitted."""
    c = piecewise_fvu_curve(x, y, **curve)
    if "reason" in c:
        return c
    k, f_tr, f_te = c["k"], c["fvu_train"], c["fvu_test"]
    k_star, comp = complexity_at(k, f_tr, eps, relative)
    best = int(np.argmin(f_te))
    at_k_star = float(c["occupancy_entropy"][np.flatnonzero(k == k_star)[0]]) if k_star else _NAN
    return {
        **c,
        "k_star": k_star,
        "complexity": comp,
        "complexity_eps": np.array([complexity_at(k, f_tr, e, relative)[1] for e in eps_grid]),
        "occupancy_entropy_at_k_star": at_k_star,
        "k_best_test": int(k[best]),
        "fvu_best_test": float(f_te[best]),
        "fit": fit_power_law(k, f_tr),
    }


# ----------------------------------------------------------------------- pattern entropy


class PatternEntropy:
    """Streamed activation-pattern entropies of ``a[rows, units]`` with patterns ``a > threshold``.

    Per-unit activation counts are O(units); whole patterns are counted exactly (packed to
    bits) for the nested unit subsets of sizes 1, 2, 4, …, units, taken in a fixed random
    order (``unit_order="random"``, seeded) or by index. Memory grows with the number of
    *distinct* patterns (at most the number of samples), ``units/8`` bytes each, per scale.
    """

    def __init__(self, threshold: float = 0.0, unit_order: str = "random", seed: int = 0) -> None:
        if unit_order not in ("random", "index"):
            raise ValueError(f"unknown unit_order '{unit_order}': use random or index")
        self.threshold = threshold
        self.unit_order = unit_order
        self.seed = seed
        self.n = 0
        self.n_units: int | None = None
        self._active: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._scales: list[int] = []
        self._counters: list[Counter] = []

    def update(self, a: np.ndarray) -> None:
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"expected [rows, units], got shape {a.shape}")
        if self.n_units is None:
            d = self.n_units = a.shape[1]
            self._active = np.zeros(d, dtype=np.int64)
            self._order = (
                np.random.default_rng(self.seed).permutation(d) if self.unit_order == "random" else np.arange(d)
            )
            self._scales = sorted({*(2**i for i in range(int(np.log2(max(d, 1))) + 1)), d} - {0})
            self._counters = [Counter() for _ in self._scales]
        elif a.shape[1] != self.n_units:
            raise ValueError(f"batch has {a.shape[1]} units, earlier batches had {self.n_units}")
        on = a > self.threshold
        self._active += on.sum(axis=0)
        self.n += a.shape[0]
        ordered = on[:, self._order]
        for m, counter in zip(self._scales, self._counters):
            packed = np.ascontiguousarray(np.packbits(ordered[:, :m], axis=1))
            counter.update(packed.view(np.dtype((np.void, packed.shape[1]))).ravel().tolist())

    def result(self) -> dict[str, Any]:
        """Entropies (nats), activation rates, distinct-pattern counts and the scale curve."""
        if not self.n or not self.n_units:
            return {
                "unit_entropy_sum": _NAN,
                "joint_entropy": _NAN,
                "n_samples": int(self.n),
                "n_units": int(self.n_units or 0),
                "reason": "no samples or no units",
            }
        rate = self._active / self.n
        h_unit = binary_entropy(rate)
        joint, distinct = [], []
        for counter in self._counters:
            c = np.fromiter(counter.values(), dtype=np.float64, count=len(counter))
            p = c / self.n
            joint.append(float(-(p * np.log(p)).sum()) + 0.0)
            distinct.append(len(counter))
        return {
            "unit_entropy_sum": float(h_unit.sum()),
            "unit_entropy": h_unit,
            "activation_rate": rate,
            "joint_entropy": joint[-1],
            "n_distinct_patterns": distinct[-1],
            "max_joint_entropy": float(np.log(self.n)),
            "saturated": bool(distinct[-1] == self.n and self.n > 1),
            "scale_units": np.asarray(self._scales, dtype=np.int64),
            "scale_joint_entropy": np.asarray(joint),
            "scale_distinct_patterns": np.asarray(distinct, dtype=np.int64),
            "n_samples": int(self.n),
            "n_units": int(self.n_units),
            "dead_units": int((self._active == 0).sum()),
            "always_active_units": int((self._active == self.n).sum()),
        }


def pattern_entropy(a: np.ndarray, threshold: float = 0.0, unit_order: str = "random", seed: int = 0) -> dict[str, Any]:
    """:class:`PatternEntropy` of one array ``a[samples, units]``."""
    acc = PatternEntropy(threshold, unit_order, seed)
    acc.update(a)
    return acc.result()
