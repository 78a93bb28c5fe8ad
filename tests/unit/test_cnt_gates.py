"""cnt.* on recurrent and attention layers: each gate / projection a dense bipartite block.

Oracles are torch's own modules: ``weight_ih_l0.chunk(4)`` in PyTorch's documented gate order
(LSTM i, f, g, o; GRU r, z, n) and ``in_proj_weight.chunk(3)`` (q, k, v), summed with numpy.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from deepscope_metrics.plugins import cnt
from deepscope_server.model_graph import Layer
from deepscope_server.plugin_api import WHOLE_MODEL
from deepscope_server.testing import make_graph, run_metric

torch.set_num_threads(1)


def _params(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.named_parameters()}


def _graph(module: nn.Module, kind: str, cls: str) -> tuple[object, nn.Linear]:
    head = nn.Linear(5, 3)
    return make_graph(
        [
            Layer("rnn", kind, cls, weights=_params(module), input_shapes=[(None, 7, 4)], output_shapes=[(None, 7, 5)]),
            Layer(
                "head", "linear", "Linear", weights=_params(head), input_shapes=[(None, 5)], output_shapes=[(None, 3)]
            ),
        ],
        input_shape=(None, 7, 4),
    ), head


def _linear_into(fc: nn.Linear, name: str, kind: str, op_type: str, module: nn.Module, steps: int, width: int):
    """``fc`` over ``steps`` tokens feeding the layer ``name`` (``module``'s parameters), whose output
    has ``width`` features per token."""
    tokens_in, tokens, out = (None, steps, fc.in_features), (None, steps, fc.out_features), (None, steps, width)
    return make_graph(
        [
            Layer("fc", "linear", "Linear", weights=_params(fc), input_shapes=[tokens_in], output_shapes=[tokens]),
            Layer(name, kind, op_type, weights=_params(module), input_shapes=[tokens], output_shapes=[out]),
        ],
        input_shape=tokens_in,
    )


def _oracle_blocks(module: nn.Module, gates: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Block key -> (W, b) from torch's own chunks of weight_{ih,hh}_l0 and bias_{ih,hh}_l0."""
    out = {}
    for part in ("ih", "hh"):
        ws = getattr(module, f"weight_{part}_l0").detach().chunk(len(gates))
        bs = getattr(module, f"bias_{part}_l0").detach().chunk(len(gates))
        for g, w, b in zip(gates, ws, bs):
            out[f"{part}.{g}"] = (w.numpy().astype(np.float64), b.numpy().astype(np.float64))
    return out


@pytest.mark.parametrize(("cell", "gates"), [(nn.LSTM, "ifgo"), (nn.GRU, "rzn"), (nn.RNN, "h")])
def test_recurrent_node_strength_is_per_gate_row_sums(cell: type[nn.Module], gates: str) -> None:
    torch.manual_seed(0)
    module = cell(4, 5, batch_first=True)
    graph, _ = _graph(module, "recurrent", cell.__name__)
    oracle = _oracle_blocks(module, gates)
    r = run_metric(cnt.NodeStrength, graph)["rnn"]
    keys = list(r["blocks"].columns["block"])
    assert keys == [f"{p}.{g}" for p in ("ih", "hh") for g in gates]  # all input blocks, then all hidden blocks
    want_in = np.concatenate([oracle[k][0].sum(axis=1) + oracle[k][1] for k in keys])
    want_inputs = np.concatenate([oracle[k][0].sum(axis=0) for k in keys])
    np.testing.assert_allclose(r["in_strength"], want_in, rtol=1e-12)
    np.testing.assert_allclose(r["input_out_strength"], want_inputs, rtol=1e-12)
    np.testing.assert_allclose(r["strength"], want_in + 1.0, rtol=1e-12)  # gates have no weighted out-links
    assert r["has_out"] is False and r["n_nodes"] == 2 * len(gates) * 5
    assert list(r["blocks"].columns["source"]) == ["x"] * len(gates) + ["h"] * len(gates)
    assert list(r["blocks"].columns["n_in"]) == [4] * len(gates) + [5] * len(gates)
    np.testing.assert_allclose(
        r["blocks"].columns["in_strength_mean"],
        [(oracle[k][0].sum(axis=1) + oracle[k][1]).mean() for k in keys],
        rtol=1e-12,
    )


def test_lstm_hand_computed_single_gate_values() -> None:
    """Two inputs, one hidden unit: every block is one row, so strengths are read off the matrices."""
    w_ih = np.array([[1.0, 2.0], [3.0, 4.0], [-1.0, 0.5], [0.0, -2.0]])  # rows i, f, g, o
    w_hh = np.array([[0.5], [-0.5], [2.0], [1.0]])
    b_ih, b_hh = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 0.0, -1.0, 0.0])
    layer = Layer(
        "lstm",
        "recurrent",
        "LSTM",
        weights={"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh},
    )
    r = run_metric(cnt.NodeStrength, make_graph([layer], input_shape=(None, 3, 2)))["lstm"]
    np.testing.assert_allclose(r["in_strength"], [3.1, 7.2, -0.2, -1.6, 1.5, -0.5, 1.0, 1.0])
    f = run_metric(cnt.LayerFluctuation, make_graph([layer], input_shape=(None, 3, 2)))["lstm"]
    assert f["fluctuation"] == pytest.approx(np.std([3.1, 7.2, -0.2, -1.6, 1.5, -0.5, 1.0, 1.0]))
    assert list(f["blocks"].columns["fluctuation"]) == [0.0] * 8  # one neuron per block


def test_deeper_and_bidirectional_layers_are_their_own_blocks() -> None:
    module = nn.GRU(3, 2, num_layers=2, bidirectional=True)
    layer = Layer("gru", "recurrent", "GRU", weights=_params(module))
    r = run_metric(cnt.NodeStrength, make_graph([layer]))["gru"]
    keys = list(r["blocks"].columns["block"])
    assert keys[:3] == ["ih.r", "ih.z", "ih.n"] and "ih_l0_reverse.n" in keys and "hh_l1_reverse.z" in keys
    assert len(keys) == 2 * 2 * 2 * 3  # (ih, hh) x layers x directions x gates
    w = module.weight_ih_l1_reverse.detach().chunk(3)[2].numpy().astype(np.float64)
    b = module.bias_ih_l1_reverse.detach().chunk(3)[2].numpy().astype(np.float64)
    k = keys.index("ih_l1_reverse.n")
    np.testing.assert_allclose(r["in_strength"][2 * k : 2 * k + 2], w.sum(axis=1) + b, rtol=1e-12)
    # layer 1 reads layer 0's two directions: 2 * hidden inputs
    assert r["blocks"].columns["n_in"][k] == 4 and r["blocks"].columns["source"][k] == "x_l1"


def test_attention_projections_are_q_k_v_out_blocks() -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(6, 2)
    layer = Layer("attn", "attention", "MultiheadAttention", weights=_params(mha))
    r = run_metric(cnt.NodeStrength, make_graph([layer]))["attn"]
    assert list(r["blocks"].columns["block"]) == ["q", "k", "v", "out"]
    ws, bs = mha.in_proj_weight.detach().chunk(3), mha.in_proj_bias.detach().chunk(3)
    want = [w.numpy().astype(np.float64).sum(axis=1) + b.numpy() for w, b in zip(ws, bs)]
    want.append(
        mha.out_proj.weight.detach().numpy().astype(np.float64).sum(axis=1) + mha.out_proj.bias.detach().numpy()
    )
    np.testing.assert_allclose(r["in_strength"], np.concatenate(want), rtol=1e-6)


def test_weight_graph_of_lstm_is_the_blocks_bipartite_graphs() -> None:
    """networkx in-degrees of the graph (+ bias) reproduce node_strength; tiers x, h, then one per gate."""
    torch.manual_seed(2)
    module = nn.LSTM(4, 5, batch_first=True)
    graph, _ = _graph(module, "recurrent", "LSTM")
    g = run_metric(cnt.WeightGraph, graph)["rnn"]["graph"]
    assert g.num_nodes == 4 + 5 + 8 * 5 and g.sources.size == 4 * (4 * 5) + 4 * (5 * 5)
    G = nx.DiGraph()
    G.add_nodes_from(range(g.num_nodes))
    G.add_weighted_edges_from(zip(g.sources.tolist(), g.targets.tolist(), g.weights.tolist()))
    layers = np.asarray(g.nodes["layer"])
    assert list(dict.fromkeys(layers)) == ["input.x", "input.h"] + [
        f"rnn.{p}.{c}" for p in ("ih", "hh") for c in "ifgo"
    ]
    outs = np.flatnonzero(~np.char.startswith(layers.astype(str), "input."))
    in_strength = np.array([G.in_degree(int(n), weight="weight") for n in outs]) + np.asarray(g.nodes["bias"])[outs]
    np.testing.assert_allclose(in_strength, run_metric(cnt.NodeStrength, graph)["rnn"]["in_strength"], rtol=1e-9)
    hh_i = np.flatnonzero(layers == "rnn.hh.i")
    assert {layers[s] for s, _ in G.in_edges(int(hh_i[0]))} == {"input.h"}


def test_link_weights_and_divergence_include_the_recurrent_layer() -> None:
    torch.manual_seed(3)
    module = nn.GRU(4, 5, batch_first=True)
    graph, head = _graph(module, "recurrent", "GRU")
    r = run_metric(cnt.LinkWeights, graph)
    every = np.concatenate([p.detach().numpy().ravel() for p in module.parameters()]).astype(np.float64)
    assert r["rnn"]["n"] == every.size and r["rnn"]["mean"] == pytest.approx(every.mean())
    assert r["rnn"]["n_biases"] == 2 * 3 * 5
    blocks = r["rnn"]["blocks"].columns
    z = module.weight_hh_l0.detach().chunk(3)[1].numpy().ravel()
    zb = module.bias_hh_l0.detach().chunk(3)[1].numpy()
    k = list(blocks["block"]).index("hh.z")
    assert blocks["n"][k] == 30 and blocks["mean"][k] == pytest.approx(np.concatenate([z, zb]).mean())
    d = run_metric(cnt.Divergence, graph)
    assert d[WHOLE_MODEL]["layers"] == "rnn,head" and 0 < d["rnn"]["divergence_to_next"] <= 1


def test_broken_recurrent_layer_is_reported_not_crashing() -> None:
    layer = Layer("rnn", "recurrent", "LSTM", weights={"weight_ih_l0": np.ones((8, 3))})  # no weight_hh: no gate split
    for metric in (cnt.NodeStrength, cnt.LayerFluctuation, cnt.LinkWeights, cnt.WeightGraph):
        r = run_metric(metric, make_graph([layer]))["rnn"]
        assert "cannot split weight_ih_l0" in r["reason"], metric.name


def test_input_dependent_metrics_do_not_take_gated_layers() -> None:
    """Their blocks' inputs (h_{t-1}, heads) are not captured: the kinds exclude them, so the plan skips or omits them openly."""
    for metric in (cnt.NeuronStrength, cnt.NeuronActivation):
        assert not metric.applies_to(Layer("rnn", "recurrent", "LSTM"))
        assert "recurrent" in metric.description
    for metric in (cnt.NodeStrength, cnt.LayerFluctuation, cnt.LinkWeights, cnt.WeightGraph, cnt.Divergence):
        assert metric.applies_to(Layer("rnn", "recurrent", "LSTM")) and metric.applies_to(
            Layer("a", "attention", "MHA")
        )
        assert "ih.<gate>" in metric.description


@pytest.mark.parametrize("bidirectional", [False, True])
def test_neurons_feeding_a_recurrent_layer_count_its_input_gate_links(bidirectional: bool) -> None:
    """Out-strength of a Linear feeding an LSTM = column sums of every weight_ih_l0 gate (both directions)."""
    torch.manual_seed(4)
    fc, lstm = nn.Linear(3, 4), nn.LSTM(4, 5, batch_first=True, bidirectional=bidirectional)
    graph = _linear_into(fc, "rnn", "recurrent", "LSTM", lstm, steps=7, width=10 if bidirectional else 5)
    r = run_metric(cnt.NodeStrength, graph)
    cols = lstm.weight_ih_l0.detach().numpy().astype(np.float64).sum(axis=0)
    if bidirectional:
        cols = cols + lstm.weight_ih_l0_reverse.detach().numpy().astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(r["fc"]["out_strength"], np.tile(cols, 7), rtol=1e-9)  # every time step
    assert r["fc"]["next_layers"] == "rnn" and r["fc"]["has_out"] is True
    # the model input feeds fc only: its out-strength is fc's column sums
    np.testing.assert_allclose(
        r[WHOLE_MODEL]["input_out_strength"],
        np.tile(fc.weight.detach().numpy().astype(np.float64).sum(axis=0), 7),
        rtol=1e-6,
    )


def test_neurons_feeding_self_attention_count_q_k_v_links() -> None:
    torch.manual_seed(5)
    fc, mha = nn.Linear(3, 6), nn.MultiheadAttention(6, 2, batch_first=True)
    graph = _linear_into(fc, "attn", "attention", "MultiheadAttention", mha, steps=4, width=6)
    r = run_metric(cnt.NodeStrength, graph)
    cols = mha.in_proj_weight.detach().numpy().astype(np.float64).sum(axis=0)  # q, k and v read the same tokens
    np.testing.assert_allclose(r["fc"]["out_strength"], np.tile(cols, 4), rtol=1e-6)
    # cross-attention (separate inputs) is not guessed: reported, not counted
    graph.layers[1].inputs = ["fc", "input"]
    r = run_metric(cnt.NodeStrength, graph, params={"include_input": False})
    assert r["fc"]["has_out"] is False and "separate query/key/value" in r["__warnings__"]["warnings"]
