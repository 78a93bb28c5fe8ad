"""Box covering of graphs and the box-counting fractal dimension d_B (Song, Havlin, Makse 2005/2007).

Convention (Song et al.): a box of size ``l_B`` is a node set whose pairwise distances are all
``< l_B``; ``N_B(l_B)`` is the number of boxes in a cover (a partition of the nodes), so
``N_B(1) = N`` and ``N_B(diam + 1) = 1``. Radius-based MEMB uses ``l_B = 2 r_B + 1``.

Everything works on a dense distance matrix (``scipy.sparse.csgraph.shortest_path`` for graphs).
The greedy colouring covers every size in one pass over the nodes: at step ``t`` each size
colours its own ``t``-th node (largest-first order in that size's dual graph), with numpy
boolean ops over all sizes at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, shortest_path

from .scaling import fit_box_counts

METHODS = ("greedy", "cbb", "memb")


@dataclass
class BoxCovering:
    """A cover per size plus the scaling fit. ``labels[k][i]`` = box of node ``i`` at ``sizes[k]``."""

    sizes: np.ndarray  #: l_B (Song convention: pairwise distance < l_B inside a box)
    counts: np.ndarray  #: N_B(l_B), the fewest boxes found (min over restarts)
    labels: list[np.ndarray]  #: per size, box index of every node (the best cover found)
    method: str
    dimension: float  #: d_B, from the fit of log N_B on log l_B (fit_on)
    r2: float
    r2_semilog: float
    fractal: bool  #: False when the semi-log fit beats the log-log fit (small world) or no fit
    local_slopes: np.ndarray
    fit_mask: np.ndarray  #: which sizes entered the fit
    n_nodes: int
    diameter: float
    n_components: int
    restarts: int
    seed: int
    fit_on: str = "l_B"  #: the fit uses l_B, not l_B - 1
    reason: str = ""
    nodes: list[Any] = field(default_factory=list)  #: node ids for networkx input (index -> node)

    @property
    def sizes_minus_one(self) -> np.ndarray:
        """``l_B - 1``: the largest distance allowed inside a box (another common convention)."""
        return self.sizes - 1

    @property
    def boxes(self) -> list[list[np.ndarray]]:
        """Per size, the list of boxes as arrays of node indices."""
        out = []
        for lab in self.labels:
            order = np.argsort(lab, kind="stable")
            cuts = np.flatnonzero(np.diff(lab[order])) + 1
            out.append(np.split(order, cuts))
        return out


# ---------------------------------------------------------------------------------------------
# input -> distance matrix
# ---------------------------------------------------------------------------------------------

def distance_matrix(graph: Any) -> tuple[np.ndarray, list[Any]]:
    """Hop-distance matrix (float64, ``inf`` between components) and the node list.

    ``graph``: a networkx graph (unweighted hops), a scipy sparse adjacency (unweighted hops,
    treated as undirected) or a dense square distance matrix (used as given; must be a metric
    for MEMB's validity argument).
    """
    if isinstance(graph, np.ndarray):
        d = np.asarray(graph, np.float64)
        if d.ndim != 2 or d.shape[0] != d.shape[1]:
            raise ValueError(f"a dense distance matrix must be square, got shape {d.shape}")
        return d, list(range(d.shape[0]))
    if sp.issparse(graph):
        adj, nodes = sp.csr_array(graph), list(range(graph.shape[0]))
    else:  # networkx
        import networkx as nx

        nodes = list(graph.nodes())
        if not nodes:
            return np.zeros((0, 0)), nodes
        adj = nx.to_scipy_sparse_array(graph, nodelist=nodes, format="csr", weight=None)
    if adj.shape[0] == 0:
        return np.zeros((0, 0)), nodes
    return shortest_path(adj, method="D", directed=False, unweighted=True), nodes


def default_sizes(diameter: float, n_sizes: int = 12, odd_only: bool = False) -> np.ndarray:
    """Geometric grid of integer sizes from 1 to ``diameter + 1`` (both ends included)."""
    top = int(np.floor(diameter)) + 1
    grid = np.unique(np.round(np.geomspace(1, max(top, 1), max(n_sizes, 2))).astype(np.int64))
    if odd_only:
        grid = np.unique(np.where(grid % 2 == 0, grid + 1, grid))
    return grid


# ---------------------------------------------------------------------------------------------
# algorithms: each returns labels [n_sizes, n]
# ---------------------------------------------------------------------------------------------

def largest_first_orders(dist: np.ndarray, sizes: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Per size, nodes by decreasing degree in the dual graph (``d_ij >= l_B``).

    Ties are broken at random (``rng``) or, with ``rng=None``, by node index, which is exactly
    the order of ``nx.greedy_color(dual, "largest_first")`` on a dual built over nodes 0..n-1.
    """
    n = dist.shape[0]
    orders = np.empty((len(sizes), n), np.int64)
    for k, l in enumerate(sizes):
        degree = (dist >= l).sum(axis=1)
        tie = rng.random(n) if rng is not None else np.arange(n)
        orders[k] = np.lexsort((tie, -degree))
    return orders


def greedy_colouring(dist: np.ndarray, sizes: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Greedy colouring of every size's dual graph in one pass; returns colours ``[L, n]`` by node.

    Step ``t`` colours node ``orders[k, t]`` for every size ``k`` with the smallest colour not
    used by an already coloured node at distance ``>= l_B`` (a dual-graph neighbour). Colour
    classes are boxes: no two of their nodes are dual neighbours. Sizes where most pairs are
    far apart look at the few near nodes instead (a colour is free when all its nodes are
    near), so each step touches ``min(near, far)`` nodes per size.
    """
    n_sizes, n = orders.shape
    thr = np.asarray(sizes, dist.dtype)[:, None]
    colour = np.full((n_sizes, n), -1, np.int64)
    class_size = np.zeros((n_sizes, n + 1), np.int64)  # nodes per colour, per size
    near_fraction = np.array([(dist < s).mean() for s in sizes])
    by_near, by_far = np.flatnonzero(near_fraction < 0.5), np.flatnonzero(near_fraction >= 0.5)
    all_sizes = np.arange(n_sizes)
    top = 0
    for t in range(n):
        v = orders[:, t]
        width = top + 2
        c = np.empty(n_sizes, np.int64)
        if by_near.size:
            near = (dist[v[by_near]] < thr[by_near]) & (colour[by_near] >= 0)
            li, ni = np.nonzero(near)
            counts = np.bincount(li * width + colour[by_near[li], ni], minlength=by_near.size * width)
            free = counts.reshape(by_near.size, width) == class_size[by_near, :width]
            c[by_near] = np.argmax(free, axis=1)
        if by_far.size:
            far = (dist[v[by_far]] >= thr[by_far]) & (colour[by_far] >= 0)
            li, ni = np.nonzero(far)
            used = np.zeros((by_far.size, width), bool)
            used[li, colour[by_far[li], ni]] = True
            c[by_far] = np.argmin(used, axis=1)
        colour[all_sizes, v] = c
        class_size[all_sizes, c] += 1
        top = max(top, int(c.max()))
    return colour


def compact_box_burning(dist: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Compact-box-burning (Song et al. 2007): grow each box from random candidates.

    A box starts with all uncovered nodes as candidates; a random candidate joins the box and
    every candidate at distance ``>= l_B`` from it is dropped, until no candidate is left.
    """
    n = dist.shape[0]
    labels = np.empty((len(sizes), n), np.int64)
    for k, l in enumerate(sizes):
        uncovered = np.ones(n, bool)
        box = 0
        while uncovered.any():
            cand = uncovered.copy()
            while cand.any():
                p = rng.choice(np.flatnonzero(cand))
                labels[k, p] = box
                uncovered[p] = cand[p] = False
                cand &= dist[p] < l
            box += 1
    return labels


def maximum_excluded_mass_burning(dist: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MEMB (Song et al. 2007) for ``l_B = 2 r_B + 1`` (sizes must be odd).

    Centres are chosen one by one as the non-centre node covering the most still-uncovered
    nodes within ``r_B`` (random ties); then every node joins its nearest centre (random ties).
    Each box lies in a ball of radius ``r_B``, so its diameter is ``<= 2 r_B < l_B``.
    """
    n = dist.shape[0]
    labels = np.empty((len(sizes), n), np.int64)
    for k, l in enumerate(sizes):
        r = (int(l) - 1) // 2
        ball = dist <= r
        mass = ball.sum(axis=1).astype(np.int64)
        uncovered = np.ones(n, bool)
        is_centre = np.zeros(n, bool)
        centres = []
        while uncovered.any():
            m = np.where(is_centre, -1, mass)
            c = int(rng.choice(np.flatnonzero(m == m.max())))
            centres.append(c)
            is_centre[c] = True
            newly = ball[c] & uncovered
            uncovered &= ~newly
            mass -= ball[newly].sum(axis=0)  # symmetric ball: rows == columns
        dc = dist[:, centres] + rng.random((n, len(centres))) * 0.5  # jitter < 1 hop: random ties
        dc[centres, np.arange(len(centres))] = -1.0  # a centre is in its own box
        labels[k] = np.argmin(dc, axis=1)
    return labels


def count_boxes(labels: np.ndarray) -> np.ndarray:
    """Number of distinct boxes per size."""
    return np.array([np.unique(row).size for row in labels], np.int64)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Box indices 0..N_B-1 in order of first appearance."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape)


def check_cover(dist: np.ndarray, l_B: float, labels: np.ndarray) -> str:
    """'' when ``labels`` is a valid cover at ``l_B`` (every node in one box, all pairs inside a
    box closer than ``l_B``), otherwise what is wrong. Used by the tests on every result."""
    labels = np.asarray(labels)
    if labels.shape != (dist.shape[0],):
        return f"labels shape {labels.shape} does not match {dist.shape[0]} nodes"
    same = labels[:, None] == labels[None, :]
    bad = same & (dist >= l_B)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        return f"nodes {i} and {j} share box {labels[i]} at distance {dist[i, j]} >= l_B = {l_B}"
    return ""


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------

def box_covering(
    graph: Any,
    method: str = "greedy",
    sizes: np.ndarray | list[int] | None = None,
    seed: int = 0,
    restarts: int = 3,
    n_sizes: int = 12,
    l_min: float = 2.0,
    min_boxes: int = 2,
    fit_on: str = "l_B",
) -> BoxCovering:
    """Cover ``graph`` with boxes at every size and fit ``N_B ~ l_B^(-d_B)``.

    ``method``: ``greedy`` (dual-graph colouring, largest-first with random tie-breaks; the
    minimum over ``restarts`` runs is kept per size), ``cbb`` (compact-box-burning, min over
    restarts) or ``memb`` (maximum-excluded-mass burning, odd sizes only). ``sizes`` default:
    a geometric grid of ``n_sizes`` from 1 to diameter + 1. The fit drops ``l_B < l_min`` and
    saturated sizes with ``N_B < min_boxes``; ``fit_on`` = ``l_B`` or ``l_B-1``. Degenerate graphs give NaN with a ``reason``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; valid: {', '.join(METHODS)}")
    dist, nodes = distance_matrix(graph)
    n = dist.shape[0]
    nan = float("nan")
    empty = np.zeros(0, np.int64)

    def degenerate(reason: str, sizes_=empty, counts_=empty, labels_=(), diam=nan, ncomp=0) -> BoxCovering:
        return BoxCovering(np.asarray(sizes_), np.asarray(counts_), list(labels_), method, nan, nan, nan, False,
                           np.zeros(0), np.zeros(len(sizes_), bool), n, diam, ncomp, restarts, seed,
                           reason=reason, nodes=nodes)

    if n < 3:
        return degenerate(f"graph has {n} nodes; a box-counting dimension needs at least 3")
    if not np.all(np.isfinite(dist) | np.isposinf(dist)) or (dist < 0).any():
        return degenerate("distance matrix has NaN or negative entries")
    finite = np.isfinite(dist)
    ncomp = int(connected_components(sp.csr_array(finite), directed=False)[0])
    diameter = float(dist[finite].max())
    big = diameter + 2.0  # stands in for inf: farther than any size we cover with
    dist = np.where(finite, dist, big)
    if sizes is None:
        sizes = default_sizes(diameter, n_sizes, odd_only=(method == "memb"))
    sizes = np.unique(np.asarray(sizes, np.int64))
    if (sizes < 1).any():
        raise ValueError(f"sizes must be >= 1, got {sizes.tolist()}")
    if method == "memb" and (sizes % 2 == 0).any():
        raise ValueError(f"MEMB covers odd sizes l_B = 2 r_B + 1 only, got {sizes.tolist()}")

    rng = np.random.default_rng(seed)
    best_labels, best_counts = None, None
    for _ in range(max(1, restarts)):
        if method == "greedy":
            labels = greedy_colouring(dist, sizes, largest_first_orders(dist, sizes, rng))
        elif method == "cbb":
            labels = compact_box_burning(dist, sizes, rng)
        else:
            labels = maximum_excluded_mass_burning(dist, sizes, rng)
        counts = count_boxes(labels)
        if best_labels is None:
            best_labels, best_counts = labels, counts
        else:
            better = counts < best_counts
            best_labels[better] = labels[better]
            best_counts = np.minimum(best_counts, counts)
    best_labels = np.stack([relabel(row) for row in best_labels])

    fit = fit_box_counts(sizes, best_counts, l_min=l_min, min_boxes=min_boxes, fit_on=fit_on)
    reason = fit.reason
    if ncomp > 1:
        reason = (reason + "; " if reason else "") + f"graph has {ncomp} components: boxes never span components"
    if np.isnan(fit.dimension):
        reason = reason or "fit failed"
    return BoxCovering(sizes, best_counts, list(best_labels), method, fit.dimension, fit.r2, fit.r2_semilog,
                       fit.fractal, fit.local_slopes, fit.used, n, diameter, ncomp, restarts, seed,
                       fit_on=fit_on, reason=reason, nodes=nodes)


def box_covering_networkx_baseline(G: Any, l_B: int) -> tuple[int, dict[Any, int]]:
    """Reference for benchmarks: ``nx.greedy_color(dual, "largest_first")`` at one size.

    The dual graph links nodes at hop distance ``>= l_B``; its colour classes are boxes.
    Returns (N_B, colouring by node).
    """
    import networkx as nx

    dist, nodes = distance_matrix(G)
    n = dist.shape[0]
    dual = nx.Graph()
    dual.add_nodes_from(range(n))
    i, j = np.nonzero(np.triu(dist >= l_B, 1))
    dual.add_edges_from(zip(i.tolist(), j.tolist()))
    colours = nx.greedy_color(dual, strategy="largest_first")
    return (max(colours.values()) + 1 if colours else 0), {nodes[k]: c for k, c in colours.items()}
