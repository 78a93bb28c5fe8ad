"""The explicit feature network G_M of a layer and its box-counting dimension (extension beyond Ding et al.).

Nodes are units; ``d_ij = ||F_i - F_j|| / sqrt(n)`` over all n samples seen, accumulated as a
float64 Gram matrix so memory is O(D^2) whatever n. Edges join ``d_ij <= eps``; the default
eps is the largest edge of the Euclidean minimum spanning tree, the smallest eps that connects
G_M (``<=``, not ``<``: with a strict inequality the MST's largest edge itself would be cut).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import minimum_spanning_tree

EPSILON_MODES = ("mst", "quantile")


class PairDistanceAccumulator:
    """Streams ``sum_b (F_ib - F_jb)^2`` over batches of ``[n, D]`` unit outputs (float64 Gram).

    Each batch is centred per sample across units first: distances are unchanged (a common
    shift of every node cancels) and the Gram entries stay small, limiting cancellation.
    """

    def __init__(self) -> None:
        self.gram: np.ndarray | None = None
        self.n = 0
        self.nonfinite = False

    def update(self, a: np.ndarray) -> None:
        a = np.asarray(a, np.float64)
        if not np.isfinite(a).all():
            self.nonfinite = True
            return
        a = a - a.mean(axis=1, keepdims=True)
        g = a.T @ a
        self.gram = g if self.gram is None else self.gram + g
        self.n += a.shape[0]

    def distances(self) -> np.ndarray:
        """Dense ``[D, D]`` matrix of ``d_ij = ||F_i - F_j|| / sqrt(n)``."""
        g = self.gram
        sq = np.diag(g)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0) / max(self.n, 1)
        np.fill_diagonal(d2, 0.0)
        return np.sqrt(d2)


@dataclass
class FeatureGraph:
    adjacency: sp.csr_array | None
    epsilon: float
    n_edges: int
    reason: str = ""


def feature_graph(dist: np.ndarray, epsilon: str = "mst", quantile: float = 0.1, rtol: float = 1e-6) -> FeatureGraph:
    """Threshold graph ``d_ij <= eps`` over a dense node-distance matrix.

    ``epsilon="mst"``: eps = largest MST edge (connected by construction); ``"quantile"``: eps =
    that quantile of the pair distances (may leave G_M disconnected). Distances within ``rtol``
    of eps count as equal to it: Gram-based distances carry rounding error, and equidistant
    units (e.g. a regular grid) must all be joined or none.
    """
    if epsilon not in EPSILON_MODES:
        raise ValueError(f"unknown epsilon mode '{epsilon}'; valid: {', '.join(EPSILON_MODES)}")
    n = dist.shape[0]
    if n < 3:
        return FeatureGraph(None, float("nan"), 0, f"{n} nodes: a feature graph needs at least 3")
    iu = np.triu_indices(n, 1)
    pairs = dist[iu]
    if not np.isfinite(pairs).all():
        return FeatureGraph(None, float("nan"), 0, "non-finite node distances")
    if pairs.max() == 0:
        return FeatureGraph(None, float("nan"), 0, "all nodes identical (every distance is 0)")
    if epsilon == "mst":
        # scipy treats 0 as "no edge": give duplicate nodes a tiny positive weight instead
        w = np.where(dist > 0, dist, np.finfo(np.float64).tiny)
        np.fill_diagonal(w, 0.0)
        eps = float(minimum_spanning_tree(w).max())
    else:
        eps = float(np.quantile(pairs, quantile))
    adj = (dist <= eps * (1.0 + rtol)) & ~np.eye(n, dtype=bool)
    return FeatureGraph(sp.csr_array(adj.astype(np.int8)), eps, int(adj.sum() // 2))
