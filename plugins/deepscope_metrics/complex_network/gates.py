"""Dense blocks of recurrent and attention layers: each gate / projection as a bipartite layer.

A recurrent or attention layer is not one weight matrix but several, applied to different
inputs and combined nonlinearly (gates multiply, attention takes a softmax). The weight graph
of such a layer is therefore split into its dense blocks, each a bipartite layer
``W[out, in]`` (+ bias) of its own, in PyTorch layout (backends already reorder ONNX gates):

- LSTM (gates i, f, g, o), GRU (r, z, n), RNN (one block ``h``): ``weight_ih_l{k}`` gives
  the blocks ``ih.<gate>`` (input x -> gate), ``weight_hh_l{k}`` the blocks ``hh.<gate>``
  (previous hidden state h -> gate), each with its own bias rows (``bias_ih``/``bias_hh``).
  Deeper layers and reverse directions add the parameter suffix: ``ih_l1.i``,
  ``hh_l0_reverse.f``.
- MultiheadAttention: ``q``, ``k``, ``v`` (rows of ``in_proj_weight``, or
  ``q/k/v_proj_weight`` when key/value sizes differ) and ``out`` (``out_proj``).

The gates' nonlinear coupling (GRU: ``r`` multiplies ``hh.n``) is not a link, so the blocks are
reported side by side, never chained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .distributions import flat_links
from .strength import Strengths, combine, layer_fluctuation
from .unroll import WeightGraphCOO

GATED = frozenset({"recurrent", "attention"})
#: gate names in PyTorch's row order, by the number of gate blocks stacked in weight_ih.
_GATE_NAMES = {4: ("i", "f", "g", "o"), 3: ("r", "z", "n"), 1: ("h",)}
_RECURRENT_KEY = re.compile(r"^weight_(ih|hh)(_l\d+(?:_reverse)?)$")


@dataclass(frozen=True)
class Block:
    """One dense block: ``W[out, in]`` and its bias; ``source`` names the input neurons it reads."""

    key: str  #: ``ih.i``, ``hh_l1.f``, ``q``, ``out`` ...
    W: np.ndarray
    b: np.ndarray | None
    #: the input neurons read: ``x`` (the layer's input), ``x_l1`` (layer 1's input: layer 0's output), ``h``,
    #: ``h_l0_reverse``... (each direction's previous hidden state); ``query``/``key``/``value``/``heads`` (attention)
    source: str


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _recurrent_blocks(layer: Any) -> list[Block]:
    w = layer.weights
    found = [(m.group(1), m.group(2), k) for k in w if (m := _RECURRENT_KEY.match(k))]
    if not found:
        raise ValueError(
            f"recurrent layer '{layer.name}' has no weight_ih_l*/weight_hh_l* weights "
            f"(weights: {', '.join(w) or 'none'})"
        )
    parts = {"ih": 0, "hh": 1}
    found.sort(key=lambda t: (parts[t[0]], t[1]))  # all ih blocks, then all hh blocks, each by layer
    blocks: list[Block] = []
    for part, sfx, key in found:
        W = _f64(w[key])
        hh = w.get(f"weight_hh{sfx}")
        hidden = int(np.shape(hh)[1]) if hh is not None else None
        if not hidden or W.shape[0] % hidden or W.shape[0] // hidden not in _GATE_NAMES:
            raise ValueError(
                f"recurrent layer '{layer.name}': cannot split {key} {list(W.shape)} into gates (hidden size {hidden})"
            )
        names = _GATE_NAMES[W.shape[0] // hidden]
        bias = w.get(f"bias_{part}{sfx}")
        tag = f"{part}{'' if sfx == '_l0' else sfx}"
        depth = sfx.removesuffix("_reverse")  # both directions of a layer read the same input
        source = ("x" + ("" if depth == "_l0" else depth)) if part == "ih" else ("h" + ("" if sfx == "_l0" else sfx))
        for g, name in enumerate(names):
            rows = slice(g * hidden, (g + 1) * hidden)
            blocks.append(Block(f"{tag}.{name}", W[rows], None if bias is None else _f64(bias)[rows], source))
    return blocks


def _attention_blocks(layer: Any) -> list[Block]:
    w = layer.weights
    bias = w.get("in_proj_bias")
    blocks: list[Block] = []
    if w.get("in_proj_weight") is not None:
        W = _f64(w["in_proj_weight"])
        e = W.shape[0] // 3
        mats = [W[i * e : (i + 1) * e] for i in range(3)]
    elif all(w.get(f"{p}_proj_weight") is not None for p in "qkv"):
        mats = [_f64(w[f"{p}_proj_weight"]) for p in "qkv"]
    else:
        raise ValueError(
            f"attention layer '{layer.name}' has neither in_proj_weight nor q/k/v_proj_weight "
            f"(weights: {', '.join(w) or 'none'})"
        )
    offset = 0
    for name, source, W in zip("qkv", ("query", "key", "value"), mats):
        b = None if bias is None else _f64(bias)[offset : offset + W.shape[0]]
        blocks.append(Block(name, W, b, source))
        offset += W.shape[0]
    if w.get("out_proj.weight") is not None:
        b = w.get("out_proj.bias")
        blocks.append(Block("out", _f64(w["out_proj.weight"]), None if b is None else _f64(b), "heads"))
    return blocks


def dense_blocks(layer: Any) -> list[Block]:
    """The dense blocks of a recurrent or attention ``Layer`` (see the module docstring for keys)."""
    if layer.kind == "recurrent":
        return _recurrent_blocks(layer)
    if layer.kind == "attention":
        return _attention_blocks(layer)
    raise ValueError(f"layer '{layer.name}' of kind '{layer.kind}' has no gate/projection blocks")


def block_weights(blocks: list[Block]) -> tuple[np.ndarray, np.ndarray | None]:
    """All the blocks' weights and all their biases (None when none has one), each flat."""
    biases = [b.b.ravel() for b in blocks if b.b is not None]
    return np.concatenate([b.W.ravel() for b in blocks]), np.concatenate(biases) if biases else None


def block_sample(block: Block) -> np.ndarray:
    """One block's link weights: its weights and bias as one flat sample."""
    return flat_links(block.W, block.b)


def block_link_columns(blocks: list[Block]) -> dict[str, Any]:
    """Per-block columns of the link weights: block key, count, mean and std (population)."""
    samples = [block_sample(b) for b in blocks]
    return {
        "block": [b.key for b in blocks],
        "n": np.array([v.size for v in samples]),
        "mean": np.array([v.mean() for v in samples]),
        "std": np.array([v.std() for v in samples]),
    }


@dataclass(frozen=True)
class BlockStrengths:
    """Strengths of every block, concatenated in block order; ``offsets`` delimit the blocks."""

    s_in: np.ndarray  #: in-strength of each block's output (gate) neurons: sum_j W[i, j] + b_i
    s_in_inputs: np.ndarray  #: out-strength of each block's input neurons: sum_i W[i, j]
    out_offsets: np.ndarray  #: block k's output neurons are s_in[out_offsets[k]:out_offsets[k + 1]]
    in_offsets: np.ndarray  #: block k's input neurons are s_in_inputs[in_offsets[k]:in_offsets[k + 1]]


def block_strengths(blocks: list[Block]) -> BlockStrengths:
    """Node strengths of each block as its own bipartite layer (see ``strength.dense_in_strength``)."""
    s_in = [b.W.sum(axis=1) + (0.0 if b.b is None else b.b) for b in blocks]
    s_inputs = [b.W.sum(axis=0) for b in blocks]
    return BlockStrengths(
        np.concatenate(s_in),
        np.concatenate(s_inputs),
        np.concatenate([[0], np.cumsum([s.size for s in s_in])]).astype(np.int64),
        np.concatenate([[0], np.cumsum([s.size for s in s_inputs])]).astype(np.int64),
    )


@dataclass(frozen=True)
class GatedNeurons:
    """A recurrent/attention layer's neuron layer: the output neurons of all its blocks.

    ``strengths`` is in the shape ``walk.NeuronLayer.strengths`` has: the in-strengths of the
    gate neurons, no out-side (gates combine nonlinearly: no weighted out-links), so the total
    is ``s_in + missing_side_const``.
    """

    blocks: list[Block]
    block: BlockStrengths
    strengths: Strengths


def gated_neurons(layer: Any, missing_side_const: float = 1.0) -> GatedNeurons:
    blocks = dense_blocks(layer)
    bs = block_strengths(blocks)
    return GatedNeurons(blocks, bs, combine(bs.s_in, None, missing_side_const))


def block_table(g: GatedNeurons) -> dict[str, Any]:
    """Per-block columns: size, strength means, fluctuation (population std) and cv of the block's neurons."""
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "block",
            "source",
            "n_in",
            "n_out",
            "in_strength_mean",
            "strength_mean",
            "fluctuation",
            "cv",
            "input_out_strength_mean",
        )
    }
    o, i = g.block.out_offsets, g.block.in_offsets
    for k, b in enumerate(g.blocks):
        f = layer_fluctuation(g.strengths.total[o[k] : o[k + 1]])
        cols["block"].append(b.key)
        cols["source"].append(b.source)
        cols["n_in"].append(int(b.W.shape[1]))
        cols["n_out"].append(int(b.W.shape[0]))
        cols["in_strength_mean"].append(float(g.block.s_in[o[k] : o[k + 1]].mean()))
        cols["strength_mean"].append(f["mean"])
        cols["fluctuation"].append(f["fluctuation"])
        cols["cv"].append(f["cv"])
        cols["input_out_strength_mean"].append(float(g.block.s_in_inputs[i[k] : i[k + 1]].mean()))
    return cols


def blocks_graph_coo(layer_name: str, blocks: list[Block], max_links: int) -> WeightGraphCOO:
    """The blocks' weight graph: input tiers (one per distinct ``source``), then each block's outputs.

    Node ``layer`` labels are ``input.<source>`` for input neurons and ``<layer>.<block>`` for a
    block's output neurons; links carry the weights, output nodes their bias.
    """
    n_links = sum(b.W.size for b in blocks)
    if n_links > max_links:
        raise ValueError(f"weight graph would have {n_links:,} links > max_links {max_links:,}")
    sources: dict[str, int] = {}
    for b in blocks:
        if sources.setdefault(b.source, b.W.shape[1]) != b.W.shape[1]:
            raise ValueError(f"'{layer_name}': blocks reading '{b.source}' disagree on its size")
    sizes = [*sources.values(), *(b.W.shape[0] for b in blocks)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    start = dict(zip(sources, offsets))
    src, dst, wts = [], [], []
    for k, b in enumerate(blocks):
        rows, cols = np.indices(b.W.shape).reshape(2, -1)  # fully connected: zero weights are links too
        src.append(start[b.source] + cols)
        dst.append(offsets[len(sources) + k] + rows)
        wts.append(b.W.ravel())
    labels = [f"input.{s}" for s in sources] + [f"{layer_name}.{b.key}" for b in blocks]
    bias = [np.zeros(n) for n in sources.values()] + [np.zeros(b.W.shape[0]) if b.b is None else b.b for b in blocks]
    return WeightGraphCOO(
        num_nodes=int(offsets[-1]),
        sources=np.concatenate(src).astype(np.int64),
        targets=np.concatenate(dst).astype(np.int64),
        weights=np.concatenate(wts),
        tier_sizes=tuple(sizes),
        node_layer=[name for name, n in zip(labels, sizes) for _ in range(n)],
        node_index=np.concatenate([np.arange(n) for n in sizes]).astype(np.int64),
        node_bias=np.concatenate(bias).astype(np.float64),
    )


__all__ = [
    "GATED",
    "Block",
    "BlockStrengths",
    "GatedNeurons",
    "block_link_columns",
    "block_sample",
    "block_strengths",
    "block_table",
    "block_weights",
    "blocks_graph_coo",
    "dense_blocks",
    "gated_neurons",
]
