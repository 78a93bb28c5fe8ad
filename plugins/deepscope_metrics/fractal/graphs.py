"""Graphs whose box-counting dimension is known analytically, for validating box covering.

- (u,v)-flowers (Rozenfeld, Havlin, ben-Avraham 2007): ``d_B = ln(u+v)/ln u`` for 1 < u <= v;
  u = 1 gives small-world (infinite-dimensional) flowers.
- Sierpinski gasket graphs: ``d_B = ln 3 / ln 2``.
- Paths (``d_B = 1``) and square lattices (``d_B = d``).
"""

from __future__ import annotations

import networkx as nx
import numpy as np


def uv_flower(u: int, v: int, generations: int) -> nx.Graph:
    """The (u,v)-flower after ``generations`` steps, starting from one edge (generation 0).

    Each step replaces every edge by two parallel paths of lengths ``u`` and ``v``; for u = 1
    the length-1 path is the edge itself. Nodes: ``(w-2)/(w-1) w^n + w/(w-1)``, w = u + v.
    """
    if not (1 <= u <= v) or v < 2:
        raise ValueError(f"need 1 <= u <= v and v >= 2, got u={u}, v={v}")
    edges = [(0, 1)]
    n_nodes = 2
    for _ in range(generations):
        new = []
        for a, b in edges:
            for length in (u, v):
                path = [a] + list(range(n_nodes, n_nodes + length - 1)) + [b]
                n_nodes += length - 1
                new += list(zip(path[:-1], path[1:]))
        edges = new
    g = nx.Graph()
    g.add_nodes_from(range(n_nodes))
    g.add_edges_from(edges)
    return g


def uv_flower_dimension(u: int, v: int) -> float:
    """Analytic ``d_B``; ``inf`` for u = 1 (small world, not fractal)."""
    return float("inf") if u == 1 else float(np.log(u + v) / np.log(u))


def sierpinski_gasket(generations: int) -> nx.Graph:
    """Sierpinski gasket graph: generation 0 is a triangle; each generation joins three copies
    at their corners. Nodes: ``3 (3^n + 1) / 2``; diameter ``2^n``."""
    pts = {(0, 0): 0, (1, 0): 1, (0, 1): 2}
    edges = {(0, 1), (0, 2), (1, 2)}
    coords = np.array([(0, 0), (1, 0), (0, 1)])
    for gen in range(generations):
        side = 2**gen
        all_pts: dict[tuple[int, int], int] = {}
        all_edges: set[tuple[int, int]] = set()
        for shift in ((0, 0), (side, 0), (0, side)):
            mapping = {}
            for idx, (x, y) in enumerate(map(tuple, coords)):
                key = (x + shift[0], y + shift[1])
                mapping[idx] = all_pts.setdefault(key, len(all_pts))
            for a, b in edges:
                all_edges.add(tuple(sorted((mapping[a], mapping[b]))))
        pts, edges = all_pts, all_edges
        coords = np.array(sorted(pts, key=pts.get))
    g = nx.Graph()
    g.add_nodes_from(range(len(pts)))
    g.add_edges_from(edges)
    return g


def path(n: int) -> nx.Graph:
    """A path of ``n`` nodes (d_B = 1; the optimal cover has exactly ``ceil(n / l_B)`` boxes)."""
    return nx.path_graph(n)


def lattice(*shape: int) -> nx.Graph:
    """A square lattice (``len(shape)`` dimensions, open boundaries), nodes relabelled 0..N-1."""
    return nx.convert_node_labels_to_integers(nx.grid_graph(dim=list(shape)))
