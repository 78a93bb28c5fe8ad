"""Box covering of graphs and the box-counting fractal dimension d_B (Song, Havlin, Makse 2005/2007).

Convention (Song et al.): a box of size ``l_B`` is a node set whose pairwise distances are all
``< l_B``; ``N_B(l_B)`` is the number of boxes in a cover (a partition of the nodes), so
``N_B(1) = N`` and ``N_B(diam + 1) = 1``. Radius-based MEMB uses ``l_B = 2 r_B + 1``.

Everything works on a dense distance matrix (``scipy.sparse.csgraph.shortest_path`` for graphs).
The greedy colouring covers every size and every restart in one pass over the nodes: at step
``t`` each (size, restart) row colours its own ``t``-th node (largest-first order in that size's
dual graph), with bit-set numpy ops over all rows at once.
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
        adj, nodes, symmetric = sp.csr_array(graph), list(range(graph.shape[0])), False
    else:  # networkx
        import networkx as nx

        nodes = list(graph.nodes())
        if not nodes:
            return np.zeros((0, 0)), nodes
        adj = nx.to_scipy_sparse_array(graph, nodelist=nodes, format="csr", weight=None)
        symmetric = not graph.is_directed()  # then skip csgraph's own symmetrisation (~15 % faster)
    if adj.shape[0] == 0:
        return np.zeros((0, 0)), nodes
    return shortest_path(adj, method="D", directed=symmetric, unweighted=True), nodes


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


def dual_degrees(dist: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per size, every node's degree in the dual graph (``d_ij >= l_B``): ``[L, n]``."""
    return np.stack([(dist >= size).sum(axis=1) for size in sizes]) if len(sizes) else np.zeros((0, dist.shape[0]), int)


def largest_first_orders(
    dist: np.ndarray, sizes: np.ndarray, rng: np.random.Generator | None, degrees: np.ndarray | None = None
) -> np.ndarray:
    """Per size, nodes by decreasing degree in the dual graph (``d_ij >= l_B``).

    Ties are broken at random (``rng``) or, with ``rng=None``, by node index, which is exactly
    the order of ``nx.greedy_color(dual, "largest_first")`` on a dual built over nodes 0..n-1.
    ``degrees`` (from ``dual_degrees``) saves recounting them for every restart.
    """
    n = dist.shape[0]
    if degrees is None:
        degrees = dual_degrees(dist, sizes)
    orders = np.empty((len(sizes), n), np.int64)
    for k in range(len(sizes)):
        tie = rng.random(n) if rng is not None else np.arange(n)
        orders[k] = np.lexsort((tie, -degrees[k]))
    return orders


def greedy_colouring(dist: np.ndarray, sizes: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Greedy colouring of every row's dual graph in one pass; returns colours ``[R, n]`` by node.

    Row ``k`` colours at size ``sizes[k]`` in the order ``orders[k]`` (sizes may repeat, e.g. one
    row per size and restart). Step ``t`` gives node ``orders[k, t]`` the smallest colour not
    used by an already coloured node at distance ``>= l_B`` (a dual-graph neighbour). Colour
    classes are boxes: no two of their nodes are dual neighbours.

    Why it is fast: per row and colour we keep the set of nodes that may still join the class
    (near, ``d < l_B``, to every member) as a bit set over nodes. A node's first free colour is
    one bit per colour to read, and colouring it ANDs one packed row of the near matrix into its
    class, so a step costs O(colours + n/8) bytes per row with a fixed number of numpy calls,
    whatever the size. ``dist`` must be symmetric (a metric).
    """
    orders = np.asarray(orders, np.int64)
    n_rows, n = orders.shape
    sizes = np.asarray(sizes)
    colour = np.full((n_rows, n), -1, np.int64)
    if n_rows == 0 or n == 0:
        return colour
    uniq, row_size = np.unique(sizes, return_inverse=True)
    near = np.stack([np.packbits(dist < l, axis=1) for l in uniq])  # noqa: E741 - l = l_B; [U, n, nbytes]: bit u of row v = d_vu < l
    nbytes = near.shape[2]
    near_flat = near.reshape(-1, nbytes)
    cap = 64
    ok = np.full((n_rows, cap, nbytes), 0xFF, np.uint8)  # bit u of ok[k, c]: u may join class c of row k
    rows = np.arange(n_rows)
    steps = np.ascontiguousarray(orders.T)  # [n, R]: the node each row colours at step t
    near_row = row_size[None, :] * n + steps  # row of near_flat for that node's size
    byte = steps >> 3
    bit = np.uint8(0x80) >> (steps & 7).astype(np.uint8)  # packbits is big-endian within a byte
    colour_at = rows * n + steps  # flat index into colour
    flat_colour = colour.reshape(-1)
    top = -1  # highest colour used in any row
    for t in range(n):
        width = top + 2  # colour top + 1 is empty, hence free, in every row
        if width > cap:
            ok = np.concatenate([ok, np.full((n_rows, cap, nbytes), 0xFF, np.uint8)], axis=1)
            cap *= 2
        c = np.argmax(ok[rows, :width, byte[t]] & bit[t, :, None], axis=1)  # first class the node may join
        ok.reshape(-1, nbytes)[rows * cap + c] &= near_flat[near_row[t]]
        flat_colour[colour_at[t]] = c
        top = max(top, int(c.max()))
    return colour


def compact_box_burning(dist: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Compact-box-burning (Song et al. 2007): grow each box from random candidates.

    A box starts with all uncovered nodes as candidates; a random candidate joins the box and
    every candidate at distance ``>= l_B`` from it is dropped, until no candidate is left.
    """
    n = dist.shape[0]
    labels = np.empty((len(sizes), n), np.int64)
    for k, l in enumerate(sizes):  # noqa: E741 - l = l_B, Song's box size
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
    for k, l in enumerate(sizes):  # noqa: E741 - l = l_B, Song's box size
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
    min_boxes: int = 4,
    fit_on: str = "l_B",
) -> BoxCovering:
    """Cover ``graph`` with boxes at every size and fit ``N_B ~ l_B^(-d_B)``.

    ``method``: ``greedy`` (dual-graph colouring, largest-first; run 0 breaks degree ties by
    node index, exactly ``nx.greedy_color(dual, "largest_first")``, so the counts are never worse
    than networkx's; runs 1.. break ties at random; the minimum over ``restarts`` runs is kept
    per size), ``cbb`` (compact-box-burning, min over
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
        return BoxCovering(
            np.asarray(sizes_),
            np.asarray(counts_),
            list(labels_),
            method,
            nan,
            nan,
            nan,
            False,
            np.zeros(0),
            np.zeros(len(sizes_), bool),
            n,
            diam,
            ncomp,
            restarts,
            seed,
            reason=reason,
            nodes=nodes,
        )

    if n < 3:
        return degenerate(f"graph has {n} nodes; a box-counting dimension needs at least 3")
    if np.isnan(dist).any() or (dist < 0).any():  # any() short of a full boolean pass when clean
        return degenerate("distance matrix has NaN or negative entries")
    finite = np.isfinite(dist)  # only +inf can be non-finite now
    if finite.all():  # connected: skip the dense -> sparse conversion and the masked copies
        ncomp, diameter = 1, float(dist.max())
    else:
        ncomp = int(connected_components(sp.csr_array(finite), directed=False)[0])
        diameter = float(dist[finite].max())
        dist = np.where(finite, dist, diameter + 2.0)  # stands in for inf: farther than any size we cover with
    if sizes is None:
        sizes = default_sizes(diameter, n_sizes, odd_only=(method == "memb"))
    sizes = np.unique(np.asarray(sizes, np.int64))
    if (sizes < 1).any():
        raise ValueError(f"sizes must be >= 1, got {sizes.tolist()}")
    if method == "memb" and (sizes % 2 == 0).any():
        raise ValueError(f"MEMB covers odd sizes l_B = 2 r_B + 1 only, got {sizes.tolist()}")

    rng = np.random.default_rng(seed)
    n_runs = max(1, restarts)
    if method == "greedy":  # all restarts in one pass; restart 0 = networkx's order, so never worse than it
        degrees = dual_degrees(dist, sizes)
        orders = np.concatenate([largest_first_orders(dist, sizes, rng if r else None, degrees) for r in range(n_runs)])
        runs = greedy_colouring(dist, np.tile(sizes, n_runs), orders).reshape(n_runs, len(sizes), n)
    else:
        sampler = compact_box_burning if method == "cbb" else maximum_excluded_mass_burning
        runs = np.stack([sampler(dist, sizes, rng) for _ in range(n_runs)])
    run_counts = np.stack([count_boxes(labels) for labels in runs])  # [runs, sizes]
    best = np.argmin(run_counts, axis=0)  # first minimum: the earliest run wins ties
    best_labels = runs[best, np.arange(len(sizes))]
    best_counts = run_counts[best, np.arange(len(sizes))]
    best_labels = np.stack([relabel(row) for row in best_labels])

    fit = fit_box_counts(sizes, best_counts, l_min=l_min, min_boxes=min_boxes, fit_on=fit_on)
    reason = fit.reason
    if ncomp > 1:
        reason = (reason + "; " if reason else "") + f"graph has {ncomp} components: boxes never span components"
    if np.isnan(fit.dimension):
        reason = reason or "fit failed"
    return BoxCovering(
        sizes,
        best_counts,
        list(best_labels),
        method,
        fit.dimension,
        fit.r2,
        fit.r2_semilog,
        fit.fractal,
        fit.local_slopes,
        fit.used,
        n,
        diameter,
        ncomp,
        restarts,
        seed,
        fit_on=fit_on,
        reason=reason,
        nodes=nodes,
    )


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
