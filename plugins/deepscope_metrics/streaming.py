"""Bounded-memory accumulators over batches of rows, reusable by any metric family.

The tools, each fed one ``[rows, features]`` batch at a time:

``StreamingCovariance``
    Mean, covariance and its eigenvalues in float64 with memory independent of the number of
    samples. Batches are merged with the pairwise (Chan–Golub–LeVeque) update of centred
    scatter matrices, which avoids the cancellation of the naive ``Σxxᵀ − n·μμᵀ``. While there
    are no more rows than the working width, the rows themselves are kept and the spectrum comes
    from the ``n × n`` Gram matrix (exact and cheaper when features outnumber samples); once
    rows outnumber it they are folded into the ``dim × dim`` scatter. Layers wider than
    ``max_dim`` are projected onto ``max_dim`` directions, chosen when the row buffer first
    overflows: ``"pca"`` = the top principal directions of the rows seen so far, ``"random"`` =
    random near-orthonormal directions. The retained variance fraction is reported.

``ReservoirSampler``
    A uniform random sample without replacement of at most ``capacity`` rows of a stream
    (Vitter's algorithm R, vectorised per batch), keeping several arrays aligned row by row
    (e.g. a layer's input and output for the same samples). For statistics that cannot be
    streamed exactly (regressions, clustering). ``PairedRows`` keeps such a sample of a map's
    (input, output) rows, wide sides randomly projected first (the complexity regressions).

``FirstRows``
    The first rows of a stream under a sample and a value cap, for statistics defined on the
    first samples (deterministic under any batching).

Example::

    cov = StreamingCovariance(max_dim=1024)
    for batch in batches:
        cov.update(batch)
    lam = cov.eigenvalues()          # descending, float64
    cov.info()                       # n_samples, n_features, dim, projection, method, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["FirstRows", "PairedRows", "ReservoirSampler", "StreamingCovariance", "merge_moments", "random_projection"]

#: Above this many dense entries (d · k) random projections are sparse (Li et al. 2006).
_DENSE_PROJECTION_LIMIT = 1 << 22


def random_projection(n_features: int, k: int, seed: int = 0) -> np.ndarray | sp.csr_matrix:
    """A ``[n_features, k]`` random projection with (near-)orthonormal columns.

    Small ones are exactly orthonormal (QR of a Gaussian matrix); large ones are very sparse
    ±1 matrices with density ``1/sqrt(n_features)`` scaled so that ``E[RᵀR] = I`` — memory
    ``O(k · sqrt(n_features))`` instead of ``O(k · n_features)``. Either way
    ``E‖Rᵀx‖² = (k / n_features)·‖x‖²``: a projection, not a norm-preserving embedding.
    """
    rng = np.random.default_rng(seed)
    if n_features * k <= _DENSE_PROJECTION_LIMIT:
        q, _ = np.linalg.qr(rng.standard_normal((n_features, k)))
        return q
    density = 1.0 / np.sqrt(n_features)
    nnz = rng.binomial(n_features * k, density)
    flat = rng.choice(n_features * k, size=nnz, replace=False)
    values = rng.choice(np.array([-1.0, 1.0]), size=nnz) / np.sqrt(density * n_features)
    return sp.csr_matrix((values, (flat // k, flat % k)), shape=(n_features, k))


def _outer(d: np.ndarray) -> np.ndarray:
    return np.outer(d, d)


def _scatter_merge(n_a: int, mean_a: np.ndarray | None, m2_a: np.ndarray | None, x: np.ndarray, diag: bool = False):
    """Chan et al. merge of (n, mean, centred scatter) with a batch; returns the merged triple."""
    mean_b = x.mean(axis=0)
    xc = x - mean_b
    return merge_moments(
        n_a,
        mean_a,
        m2_a,
        x.shape[0],
        mean_b,
        np.einsum("ij,ij->j", xc, xc) if diag else xc.T @ xc,
        np.square if diag else _outer,
    )


def merge_moments(
    n_a: int,
    mean_a: np.ndarray | None,
    m2_a: np.ndarray | None,
    n_b: int,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
    product: Callable[[np.ndarray], np.ndarray] = _outer,
):
    """Chan–Golub–LeVeque merge of two (n, mean, centred scatter) triples; returns the merged triple.

    Merging centred sums avoids the cancellation of ``Σxxᵀ − n·μμᵀ``. ``product`` says which
    scatter is kept: ``δδᵀ`` (default) a full scatter matrix, ``np.square`` per-feature sums of
    squares, or any map of the mean difference with the scatter's shape (e.g. co-moments).
    """
    if n_a == 0 or m2_a is None:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + product(delta) * (n_a * n_b / n)


class StreamingCovariance:
    """Streamed float64 covariance of ``[rows, features]`` batches; memory ``O(dim²)``.

    ``max_dim`` caps the working width (``None`` = never project); ``projection`` is ``"pca"``
    or ``"random"`` for layers wider than the cap; ``seed`` fixes the random projection.
    """

    def __init__(self, max_dim: int | None = None, projection: str = "pca", seed: int = 0) -> None:
        if projection not in ("pca", "random"):
            raise ValueError(f"unknown projection '{projection}': use pca or random")
        if max_dim is not None and max_dim < 1:
            raise ValueError("max_dim must be >= 1")
        self.max_dim = max_dim
        self.projection = projection
        self.seed = seed
        self.n = 0  #: rows seen
        self.n_features: int | None = None  #: raw width
        self._buffer: list[np.ndarray] | None = []  # raw rows while n <= dim; None once folded
        self._proj: np.ndarray | sp.csr_matrix | None = None
        self._proj_mean: np.ndarray | None = None  # centring used before a PCA projection
        self._mean: np.ndarray | None = None  # working-space mean / scatter once folded
        self._m2: np.ndarray | None = None
        self._raw_mean = None  # raw per-feature mean / scatter diagonal, for the total variance
        self._raw_m2 = None

    @property
    def dim(self) -> int:
        """Working width: ``min(n_features, max_dim)``."""
        if self.n_features is None:
            return 0
        return self.n_features if self.max_dim is None else min(self.n_features, self.max_dim)

    @property
    def projected(self) -> bool:
        return self._proj is not None

    def update(self, x: np.ndarray) -> None:
        """Fold a ``[rows, features]`` batch in (converted to float64)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a [rows, features] batch, got shape {x.shape}")
        if self.n_features is None:
            self.n_features = x.shape[1]
        elif x.shape[1] != self.n_features:
            raise ValueError(f"batch has {x.shape[1]} features, earlier batches had {self.n_features}")
        if x.shape[0] == 0:
            return
        _, self._raw_mean, self._raw_m2 = _scatter_merge(self.n, self._raw_mean, self._raw_m2, x, diag=True)
        if self._buffer is not None:
            self._buffer.append(x)
            self.n += x.shape[0]
            if self.n > self.dim:
                self._fold_buffer()
            return
        self._fold(self._project(x))
        self.n += x.shape[0]

    def _project(self, x: np.ndarray) -> np.ndarray:
        if self._proj is None:
            return x
        if self._proj_mean is not None:
            x = x - self._proj_mean
        return np.asarray(x @ self._proj)

    def _fold(self, x: np.ndarray) -> None:
        n_before = self.n if self._mean is not None else 0
        _, self._mean, self._m2 = _scatter_merge(n_before, self._mean, self._m2, x)

    def _fold_buffer(self) -> None:
        rows = np.concatenate(self._buffer)
        self._buffer = None
        if self.dim < self.n_features:
            if self.projection == "pca":
                # principal directions of every row seen so far (more rows than dim, so dim exist)
                self._proj_mean = rows.mean(axis=0)
                _, _, vt = np.linalg.svd(rows - self._proj_mean, full_matrices=False)
                self._proj = vt[: self.dim].T.copy()
            else:
                self._proj = random_projection(self.n_features, self.dim, self.seed)
        self._mean, self._m2 = None, None
        self._fold(self._project(rows))

    def merge(self, other: StreamingCovariance) -> None:
        """Fold in an accumulator (same settings) that was fed the rows after this one's.

        Exact (Chan et al.'s pairwise merge of centred scatters): the result is what one
        accumulator fed every row would hold, up to float rounding. Not possible once a side chose
        PCA directions from its own rows (a layer wider than ``max_dim`` with ``projection="pca"``):
        that raises ValueError. Random projections merge, as both sides draw the same matrix.
        """
        if (other.max_dim, other.projection, other.seed) != (self.max_dim, self.projection, self.seed):
            raise ValueError("only accumulators with the same max_dim, projection and seed can merge")
        if other.n == 0:
            return
        if self.n == 0:
            vars(self).update({k: (list(v) if isinstance(v, list) else v) for k, v in vars(other).items()})
            return
        if other.n_features != self.n_features:
            raise ValueError(f"cannot merge {other.n_features} features into {self.n_features}")
        if self.projection == "pca" and (self.projected or other.projected):
            raise ValueError("PCA-projected accumulators cannot merge: each chose its directions from its own rows")
        n = self.n + other.n
        _, self._raw_mean, self._raw_m2 = merge_moments(
            self.n, self._raw_mean, self._raw_m2, other.n, other._raw_mean, other._raw_m2, np.square
        )
        if self._buffer is not None and other._buffer is not None:
            self._buffer = self._buffer + other._buffer
            self.n = n
            if n > self.dim:
                self._fold_buffer()
            return
        if self._buffer is not None:  # fold ours through the other side's (identical) projection first
            self._proj = other._proj
            rows, self._buffer = np.concatenate(self._buffer), None
            self._mean, self._m2 = None, None
            self._fold(self._project(rows))
        mean_b, m2_b = other._mean, other._m2
        if other._buffer is not None:
            _, mean_b, m2_b = _scatter_merge(0, None, None, self._project(np.concatenate(other._buffer)))
        _, self._mean, self._m2 = merge_moments(self.n, self._mean, self._m2, other.n, mean_b, m2_b)
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        """Mean in the working space (after projection, if any)."""
        if self._buffer is not None:
            return np.concatenate(self._buffer).mean(axis=0) if self._buffer else np.zeros(0)
        return self._mean

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """``dim × dim`` covariance in the working space (``np.cov(x, rowvar=False, ddof=ddof)``)."""
        if self.n - ddof <= 0:
            raise ValueError(f"covariance needs more than {ddof} samples, got {self.n}")
        if self._buffer is not None:
            rows = np.concatenate(self._buffer)
            xc = rows - rows.mean(axis=0)
            return xc.T @ xc / (self.n - ddof)
        return self._m2 / (self.n - ddof)

    def eigenvalues(self, ddof: int = 1) -> np.ndarray:
        """Covariance eigenvalues, descending, clipped at 0; from the Gram matrix while n ≤ dim."""
        if self.n - ddof <= 0:
            return np.zeros(0)
        if self._buffer is not None:
            rows = np.concatenate(self._buffer)
            xc = rows - rows.mean(axis=0)
            mat = xc @ xc.T if xc.shape[0] <= xc.shape[1] else xc.T @ xc
        else:
            mat = self._m2
        lam = np.linalg.eigvalsh(mat)[::-1] / (self.n - ddof)
        return np.clip(lam, 0.0, None)

    def total_variance(self, ddof: int = 1) -> float:
        """Trace of the raw (unprojected) covariance, streamed per feature."""
        if self._raw_m2 is None or self.n - ddof <= 0:
            return float("nan")
        return float(self._raw_m2.sum() / (self.n - ddof))

    def info(self, ddof: int = 1) -> dict[str, Any]:
        """What to report next to a result: sizes, projection, how the spectrum was computed."""
        out: dict[str, Any] = {
            "n_samples": int(self.n),
            "n_features": int(self.n_features or 0),
            "dim": int(self.dim if self.projected else (self.n_features or 0)),
            "projection": (self.projection if self.projected else "none"),
            "method": "gram" if self._buffer is not None and self.n <= (self.n_features or 0) else "covariance",
        }
        total = self.total_variance(ddof)
        if self.projected and total > 0:
            out["retained_variance_fraction"] = float(np.trace(self._m2) / (self.n - ddof) / total)
        else:
            out["retained_variance_fraction"] = 1.0
        return out


class ReservoirSampler:
    """Uniform sample without replacement of ≤ ``capacity`` rows from a stream of batches.

    ``update(a, b, ...)`` takes arrays with the same number of rows; row i of each array
    belongs to the same sample and they are kept or dropped together. ``sample()`` returns the
    kept rows in arrival order. Memory: ``capacity`` rows of each array (stored in the arrays'
    own float dtype, at least float32 — computations on the sample should use float64).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.n_seen = 0
        self._rng = np.random.default_rng(seed)
        self._store: list[np.ndarray] | None = None
        self._order = np.full(self.capacity, -1, dtype=np.int64)  # arrival index of each slot

    @property
    def n_kept(self) -> int:
        return min(self.n_seen, self.capacity)

    def update(self, *arrays: np.ndarray) -> None:
        """Offer one batch of rows (one or more aligned arrays)."""
        arrays = tuple(np.asarray(a) for a in arrays)
        b = arrays[0].shape[0]
        if any(a.shape[0] != b for a in arrays):
            raise ValueError(f"aligned arrays need equal row counts, got {[a.shape[0] for a in arrays]}")
        if self._store is None:
            self._store = [
                np.empty((self.capacity, *a.shape[1:]), dtype=np.result_type(a.dtype, np.float32)) for a in arrays
            ]
        elif len(arrays) != len(self._store) or any(a.shape[1:] != s.shape[1:] for a, s in zip(arrays, self._store)):
            raise ValueError("batch arrays do not match the earlier batches' count or row shape")
        t = self.n_seen + np.arange(b, dtype=np.int64)  # arrival index of each row
        slot = np.where(t < self.capacity, t, -1)
        late = t >= self.capacity
        if late.any():
            j = self._rng.integers(0, t[late] + 1)  # algorithm R: replace slot j if j < capacity
            slot[late] = np.where(j < self.capacity, j, -1)
        rows = np.flatnonzero(slot >= 0)
        # several rows of one batch may hit the same slot: the latest one wins, as in the
        # sequential algorithm
        rev = rows[::-1]
        _, first = np.unique(slot[rev], return_index=True)
        rows = rev[first]
        for store, a in zip(self._store, arrays):
            store[slot[rows]] = a[rows]
        self._order[slot[rows]] = t[rows]
        self.n_seen += b

    def merge(self, other: ReservoirSampler) -> None:
        """Fold in a sampler (same capacity) that was offered the rows after this one's.

        A weighted merge: how many kept rows come from each side is drawn from the hypergeometric
        law of a uniform sample of the joint stream, then that many are drawn uniformly from each
        side's sample; the result is a uniform sample without replacement of the joint stream
        (exact in distribution, not the same rows one sampler would have kept). ``other``'s
        arrival indices are shifted by this side's ``n_seen``.
        """
        if other.capacity != self.capacity:
            raise ValueError(f"cannot merge a sampler of capacity {other.capacity} into one of {self.capacity}")
        if other._store is None:
            return
        if self._store is None:
            self._store, self._order = [s.copy() for s in other._store], other._order.copy()
            self.n_seen = other.n_seen
            return
        k = min(self.capacity, self.n_seen + other.n_seen)
        from_self = int(self._rng.hypergeometric(self.n_seen, other.n_seen, k))
        mine = self._rng.choice(self.n_kept, from_self, replace=False)
        theirs = self._rng.choice(other.n_kept, k - from_self, replace=False)
        self._store = [
            np.concatenate([a[mine], b[theirs], a[: self.capacity - k]]) for a, b in zip(self._store, other._store)
        ]
        order = np.concatenate([self._order[mine], other._order[theirs] + self.n_seen])
        self._order = np.concatenate([order, np.full(self.capacity - k, -1, dtype=np.int64)])
        self.n_seen += other.n_seen

    def sample(self) -> tuple[np.ndarray, ...]:
        """The kept rows of each array, in arrival order (copies)."""
        if self._store is None:
            return ()
        k = self.n_kept
        order = np.argsort(self._order[:k], kind="stable")
        return tuple(s[:k][order].copy() for s in self._store)

    def indices(self) -> np.ndarray:
        """Arrival indices (0-based over the whole stream) of the kept rows, ascending."""
        return np.sort(self._order[: self.n_kept])


class PairedRows:
    """A uniform sample (``ReservoirSampler``) of a map's aligned (input, output) rows, for regressions of the map.

    A side wider than ``max_width`` is randomly projected to ``max_width`` dims first (seeds
    ``seed + 1`` input, ``seed + 2`` output; ``warn`` is told once per side). Once a batch's two
    sides disagree in row count, ``reason`` says so and further rows are ignored.
    """

    def __init__(
        self, capacity: int, max_width: int, seed: int = 0, warn: Callable[[str], None] = lambda message: None
    ) -> None:
        self.sampler = ReservoirSampler(capacity, seed)
        self.max_width, self.seed, self.warn = max_width, seed, warn
        self.widths: dict[str, int] = {}
        self.projections: dict[str, Any] = {}
        self.reason: str | None = None

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.reason is not None:
            return
        if x.shape[0] != y.shape[0]:
            self.reason = f"input and output give different row counts ({x.shape[0]} vs {y.shape[0]})"
            return
        self.sampler.update(self._project("input", x), self._project("output", y))

    def _project(self, side: str, a: np.ndarray) -> np.ndarray:
        if side not in self.widths:
            self.widths[side] = a.shape[1]
            if a.shape[1] > self.max_width:
                seed = self.seed + (1 if side == "input" else 2)
                self.projections[side] = random_projection(a.shape[1], self.max_width, seed)
                self.warn(f"{side} has {a.shape[1]} units, randomly projected to {self.max_width} (max_width)")
        proj = self.projections.get(side)
        return a if proj is None else np.asarray(a.astype(np.float64) @ proj)

    def info(self) -> dict[str, Any]:
        """How many rows were seen and kept, and each side's width and projection."""
        return {
            "n_samples_seen": int(self.sampler.n_seen),
            "reservoir_size": int(self.sampler.n_kept),
            **{f"{side}_projection": "random" if side in self.projections else "none" for side in ("input", "output")},
            **{f"{side}_units_raw": int(self.widths.get(side, 0)) for side in ("input", "output")},
        }


class FirstRows:
    """The first ``max_samples`` rows of a stream, at most ``max_values`` numbers in all (None = no cap).

    For statistics the authors compute on the first samples (not a random sample): exact and
    deterministic under any batching. ``warn`` is told once when ``max_values`` cuts the rows.
    """

    def __init__(
        self, max_samples: int, max_values: int | None = None, warn: Callable[[str], None] = lambda message: None
    ) -> None:
        self.max_samples, self.max_values, self.warn = max_samples, max_values, warn
        self.kept: list[np.ndarray] = []
        self.n_kept = 0
        self.n_seen = 0
        self.capped = False

    def update(self, rows: np.ndarray) -> None:
        self.n_seen += rows.shape[0]
        room = self.max_samples - self.n_kept
        if room <= 0 or rows.shape[0] == 0:
            return
        u = rows[:room]
        width = max(u.shape[1], 1)
        limit = self.max_values
        if limit is not None and (self.n_kept + u.shape[0]) * width > limit:
            u = u[: max(limit // width - self.n_kept, 0)]
            if not self.capped:
                self.capped = True
                self.warn(f"{width} values per sample; max_values={limit} keeps {limit // width} samples")
        self.kept.append(u)
        self.n_kept += u.shape[0]

    def stacked(self) -> np.ndarray:
        """The kept rows as one array (``0 x 0`` when none were kept)."""
        return np.concatenate(self.kept) if self.kept else np.zeros((0, 0))
