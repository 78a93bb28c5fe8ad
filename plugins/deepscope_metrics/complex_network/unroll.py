"""Explicit weight graphs: a layer's unrolled weight matrix (sparse) and a networkx DiGraph of it.

For users who want to do their own network science on a (small) layer. Conv unrolling uses
index arithmetic (``unfold`` of an index image), never Python loops over positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .geometry import (
    ConvGeometry,
    IntOrSeq,
    conv_geometry,
    conv_output_hw,
    geometry_from_attrs,
    hw_as_2d,
    kernel_as_2d,
    onnx_pads,
)

#: Refuse to build networkx graphs larger than this many links unless told otherwise.
MAX_GRAPH_LINKS = 2_000_000


def conv_unrolled_matrix(
    K: np.ndarray,
    input_hw: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    groups: int = 1,
) -> sp.coo_matrix:
    """The conv's linear map as a sparse ``[C_out·H_out·W_out, C_in·H·W]`` matrix (C, H, W row-major).

    Every kernel tap that lands inside the input is a stored entry, zero weights included,
    so the sparsity pattern is the graph's link structure. Taps on padding are not links.
    """
    geo = conv_geometry(K, stride, padding, dilation, groups)
    K2 = kernel_as_2d(np.asarray(K, dtype=np.float64))
    c_out, cg, kh, kw = K2.shape
    c_in = cg * geo.groups
    hw = hw_as_2d(input_hw)
    ho, wo = conv_output_hw((kh, kw), hw, geo)
    n_in = c_in * hw[0] * hw[1]
    idx = torch.arange(1, n_in + 1, dtype=torch.float64).reshape(1, c_in, *hw)
    pt, pb, pl, pr = geo.pads
    idx = F.pad(idx, (pl, pr, pt, pb))  # padding gets index 0 = "no neuron"
    cols = F.unfold(idx, (kh, kw), dilation=geo.dilation, stride=geo.stride)[0]  # [c_in*kh*kw, L]
    L = ho * wo
    cols = cols.reshape(geo.groups, cg * kh * kw, L).numpy().astype(np.int64)
    group_of = np.arange(c_out) // (c_out // geo.groups)
    src = cols[group_of]  # [c_out, cg*kh*kw, L]
    w = np.broadcast_to(K2.reshape(c_out, -1)[:, :, None], src.shape)
    dst = np.broadcast_to((np.arange(c_out)[:, None, None] * L + np.arange(L)[None, None, :]), src.shape)
    keep = src > 0
    return sp.coo_matrix((w[keep], (dst[keep], src[keep] - 1)), shape=(c_out * L, n_in))


def conv_link_count(kernel_shape: tuple[int, ...], input_hw: IntOrSeq, geo: ConvGeometry) -> int:
    """Links of the unrolled conv (taps inside the input) without building it: ``nnz`` of ``conv_unrolled_matrix``.

    Per axis, the (output position, tap) pairs that land inside the input; the two axes are
    independent, and every (output channel, in-group channel) pair repeats them.
    """
    c_out, cg, kh, kw = kernel_shape
    inside = 1
    for axis, (n, k) in enumerate(zip(hw_as_2d(input_hw), (kh, kw))):
        n_out = conv_output_hw((kh, kw), hw_as_2d(input_hw), geo)[axis]
        pos = (
            np.arange(n_out)[:, None] * geo.stride[axis]
            - geo.pads[2 * axis]
            + np.arange(k)[None, :] * geo.dilation[axis]
        )
        inside *= int(np.count_nonzero((pos >= 0) & (pos < n)))
    return c_out * cg * inside


def _conv_setup(layer: Any) -> tuple[np.ndarray, tuple[int, int], ConvGeometry]:
    """A conv Layer's 2-D kernel, input map size and geometry."""
    W = np.asarray(layer.weights["weight"], dtype=np.float64)
    shape = layer.input_shapes[0] if layer.input_shapes else None
    if shape is None or len(shape) < 3 or any(s is None for s in shape[2:]):
        raise ValueError(f"layer '{layer.name}': conv unrolling needs a known input map size, got {shape}")
    hw = hw_as_2d(tuple(int(s) for s in shape[2:]))
    geo = geometry_from_attrs(W, layer.attrs, hw if W.ndim == 4 else hw[1])
    return kernel_as_2d(W), hw, geo


def layer_link_count(layer: Any) -> int:
    """How many links ``layer_matrix(layer)`` would hold, computed without building it."""
    if layer.kind == "linear":
        return int(np.size(layer.weights["weight"]))
    if layer.kind == "conv":
        K2, hw, geo = _conv_setup(layer)
        return conv_link_count(K2.shape, hw, geo)
    raise ValueError(f"layer '{layer.name}' of kind '{layer.kind}' has no weight graph (linear or conv only)")


def layer_matrix(layer: Any) -> tuple[sp.coo_matrix, np.ndarray | None]:
    """A Linear/Conv ``Layer``'s unrolled weight matrix ``[n_out, n_in]`` and its per-output-neuron bias."""
    W = np.asarray(layer.weights["weight"], dtype=np.float64)
    b = layer.weights.get("bias")
    if layer.kind == "linear":
        rows, cols = np.indices(W.shape).reshape(2, -1)  # fully connected: zero weights are links too
        M = sp.coo_matrix((W.ravel(), (rows, cols)), shape=W.shape)
        return M, None if b is None else np.asarray(b, dtype=np.float64)
    if layer.kind == "conv":
        K2, hw, geo = _conv_setup(layer)
        M = conv_unrolled_matrix(K2, hw, geo.stride, onnx_pads(geo), geo.dilation, geo.groups)
        n_pos = M.shape[0] // W.shape[0]
        bias = None if b is None else np.repeat(np.asarray(b, dtype=np.float64), n_pos)
        return M, bias
    raise ValueError(f"layer '{layer.name}' of kind '{layer.kind}' has no weight graph (linear or conv only)")


@dataclass(frozen=True)
class WeightGraphCOO:
    """A layer's weight graph as an edge list over integer node ids 0..num_nodes-1.

    Ids run tier by tier: the layer's input neurons, its output neurons, then (optionally) the next
    layer's outputs; ``node_index`` is the position within the tier's flattened (C, H, W) map.
    """

    num_nodes: int
    sources: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    tier_sizes: tuple[int, ...]
    node_layer: list[str]
    node_index: np.ndarray
    node_bias: np.ndarray


def weight_graph_coo(layer: Any, next_layer: Any | None = None, max_links: int = MAX_GRAPH_LINKS) -> WeightGraphCOO:
    """The weight graph of ``layer`` (and optionally ``next_layer``) as an edge list (vectorised)."""
    n_links = sum(layer_link_count(x) for x in (layer, next_layer) if x is not None)
    if n_links > max_links:  # counted first: a capped graph is never built (ResNet-18 convs: 4-29M links)
        raise ValueError(f"weight graph would have {n_links:,} links > max_links {max_links:,}")
    mats = [layer_matrix(layer)]
    if next_layer is not None:
        mats.append(layer_matrix(next_layer))
        if mats[1][0].shape[1] != mats[0][0].shape[0]:
            raise ValueError(
                f"'{next_layer.name}' takes {mats[1][0].shape[1]} inputs but '{layer.name}' has "
                f"{mats[0][0].shape[0]} outputs"
            )
    sizes = (mats[0][0].shape[1], *(M.shape[0] for M, _ in mats))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    names = ["input", layer.name] + ([next_layer.name] if next_layer is not None else [])
    biases = [np.zeros(sizes[0])] + [np.zeros(M.shape[0]) if b is None else np.asarray(b, np.float64) for M, b in mats]
    return WeightGraphCOO(
        num_nodes=int(offsets[-1]),
        sources=np.concatenate([offsets[t] + M.col for t, (M, _) in enumerate(mats)]).astype(np.int64),
        targets=np.concatenate([offsets[t + 1] + M.row for t, (M, _) in enumerate(mats)]).astype(np.int64),
        weights=np.concatenate([M.data for M, _ in mats]).astype(np.float64),
        tier_sizes=sizes,
        node_layer=[name for name, n in zip(names, sizes) for _ in range(n)],
        node_index=np.concatenate([np.arange(n) for n in sizes]).astype(np.int64),
        node_bias=np.concatenate(biases),
    )


def weight_graph(layer: Any, next_layer: Any | None = None, max_links: int = MAX_GRAPH_LINKS) -> nx.DiGraph:
    """The weight graph of ``layer`` (and optionally ``next_layer``) as a networkx DiGraph.

    Nodes are ``(tier, i)``: tier 0 = the layer's input neurons, 1 = its output neurons,
    2 = ``next_layer``'s outputs; ``i`` indexes the flattened (C, H, W) map, which is also
    PyTorch's flatten order, so a conv -> Linear pair links up directly. Edge attribute
    ``weight``; output nodes carry their ``bias`` (in-strength = weighted in-degree + bias).
    Node attribute ``layer`` names the layer that produced the neuron.
    """
    coo = weight_graph_coo(layer, next_layer, max_links)
    tier = np.repeat(np.arange(len(coo.tier_sizes)), coo.tier_sizes)
    keys = list(zip(tier.tolist(), coo.node_index.tolist()))
    G = nx.DiGraph()
    G.add_nodes_from((key, {"layer": coo.node_layer[i], "bias": float(coo.node_bias[i])}) for i, key in enumerate(keys))
    G.add_weighted_edges_from(zip((keys[i] for i in coo.sources), (keys[j] for j in coo.targets), coo.weights.tolist()))
    return G
