"""The cnt.* plugin adapters, driven exactly as the server drives them (run_metric)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepscope_metrics.plugins import cnt
from deepscope_server.model_graph import Layer
from deepscope_server.plugin_api import WHOLE_MODEL, Curve, Table
from deepscope_server.testing import make_graph, run_metric

from .layers import batchnorm, linear

torch.set_num_threads(1)

W1 = np.array([[1.0, 2.0], [3.0, -4.0]])
B1 = np.array([0.5, -1.0])
W2 = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 3.0]])
B2 = np.array([0.0, 1.0, 2.0])


def mlp():
    return make_graph(
        [linear("fc1", W1, B1), Layer("act", "activation", "ReLU", attrs={"function": "relu"}), linear("fc2", W2, B2)],
        input_shape=(None, 2),
    )


def test_registration():
    seen = []
    cnt.deepscope_register_metrics(seen.append)
    names = {m.name for m in seen}
    assert names == {
        "cnt.weight_graph",
        "cnt.link_weights",
        "cnt.node_strength",
        "cnt.layer_fluctuation",
        "cnt.divergence",
        "cnt.neuron_strength",
        "cnt.neuron_activation",
    }
    recon = {m.name for m in seen if m.reconstructed}
    assert recon == {"cnt.neuron_strength", "cnt.neuron_activation"}
    assert all("reconstructed" in m.description for m in seen if m.reconstructed)


def test_node_strength_hand_computed():
    r = run_metric(cnt.NodeStrength, mlp())
    np.testing.assert_allclose(r["fc1"]["in_strength"], [3.5, -2.0])
    np.testing.assert_allclose(r["fc1"]["out_strength"], [3.0, 3.0])
    np.testing.assert_allclose(r["fc1"]["strength"], [6.5, 1.0])
    np.testing.assert_allclose(r["fc2"]["strength"], [2.0 + 1, 2.0 + 1, 5.0 + 1])  # output layer: +1
    assert r["fc1"]["next_layers"] == "fc2" and r["fc2"]["has_out"] is False and r["fc1"]["n_nodes"] == 2
    np.testing.assert_allclose(r[WHOLE_MODEL]["input_strength"], [5.0, -1.0])  # input layer: 1 + Σ_k W1[k, i]
    r0 = run_metric(cnt.NodeStrength, mlp(), params={"missing_side_const": 0.0})
    np.testing.assert_allclose(r0["fc2"]["strength"], [2.0, 2.0, 5.0])


def test_layer_fluctuation():
    r = run_metric(cnt.LayerFluctuation, mlp())
    assert r["fc1"]["fluctuation"] == pytest.approx(2.75)  # std([6.5, 1.0]), ddof=0
    assert r["fc2"]["fluctuation"] == pytest.approx(np.std([3.0, 3.0, 6.0]))
    table = r[WHOLE_MODEL]["fluctuations"]
    assert isinstance(table, Table) and list(table.columns["layer"]) == ["<input>", "fc1", "fc2"]
    assert table.columns["fluctuation"][0] == pytest.approx(3.0)  # std([5, -1])


def test_link_weights_and_degenerate():
    r = run_metric(cnt.LinkWeights, mlp(), params={"bins": 4})
    assert r["fc1"]["n"] == 6 and r["fc1"]["mean"] == pytest.approx(np.mean([1, 2, 3, -4, 0.5, -1]))
    assert isinstance(r["fc1"]["kde"], Curve) and len(r["fc1"]["kde"].x) == 1000
    assert int(np.sum(r["fc1"]["histogram"].columns["count"])) == 6
    flat = make_graph([Layer("c", "linear", "Linear", weights={"weight": np.ones((3, 3))})])
    rc = run_metric(cnt.LinkWeights, flat)
    assert "kde" not in rc["c"] and "equal" in rc["c"]["reason"] and rc["c"]["std"] == 0.0


def test_conv_without_shape_reports_reason():
    g = make_graph([Layer("c", "conv", "Conv2d", weights={"weight": np.ones((2, 1, 3, 3))}, attrs={})])
    r = run_metric(cnt.NodeStrength, g, params={"include_input": False})
    assert np.isnan(r["c"]["strength"]).all() and "input shape" in r["c"]["reason"]


def test_divergence_between_layers():
    rng = np.random.default_rng(0)
    layers = [Layer(f"l{i}", "linear", "Linear", weights={"weight": rng.normal(i, 1, size=(40, 40))}) for i in range(3)]
    r = run_metric(cnt.Divergence, make_graph(layers))
    M = r[WHOLE_MODEL]["matrix"]
    assert M.shape == (3, 3) and np.allclose(M, M.T) and np.all(np.diag(M) == 0)
    assert 0 < M[0, 1] < M[0, 2] <= 1  # farther means shift -> larger JS
    assert r["l0"]["divergence_to_next"] == M[0, 1] and r[WHOLE_MODEL]["layers"] == "l0,l1,l2"
    rj = run_metric(cnt.Divergence, make_graph(layers), params={"method": "jeffreys", "of": "node_strength"})
    assert rj[WHOLE_MODEL]["method"] == "jeffreys" and rj[WHOLE_MODEL]["matrix"].shape == (3, 3)
    # a budget no pair can meet: the matrix is skipped once, naming the parameters to change
    rb = run_metric(cnt.Divergence, make_graph(layers), params={"budget_seconds": 1e-9})
    assert list(rb) == [WHOLE_MODEL] and rb[WHOLE_MODEL]["status"] == "skipped"
    assert (
        "3 layer pairs" in rb[WHOLE_MODEL]["reason"]
        and "raise budget_seconds or lower grid_points" in rb[WHOLE_MODEL]["reason"]
    )


def test_input_dependent_on_real_sequential():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double().eval()
    x = torch.randn(150, 6, dtype=torch.float64)
    captured = {}

    def hook(name):
        def f(module, inp, out):
            captured[name] = (inp[0].detach().numpy().copy(), out.detach().numpy().copy())

        return f

    for i in (0, 1, 2):
        net[i].register_forward_hook(hook(i))
    with torch.no_grad():
        net(x)
    w = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    g = make_graph(
        [
            Layer("fc1", "linear", "Linear", weights={"weight": w["0.weight"], "bias": w["0.bias"]}),
            Layer("t", "activation", "Tanh", attrs={"function": "tanh"}),
            Layer("fc2", "linear", "Linear", weights={"weight": w["2.weight"], "bias": w["2.bias"]}),
        ]
    )
    inputs = {"fc1": captured[0][0], "fc2": captured[2][0]}
    outputs = {"fc1": captured[0][1], "fc2": captured[2][1]}
    r = run_metric(cnt.NeuronStrength, g, inputs=inputs, outputs=outputs, params={"max_samples": 100}, batch_size=32)
    ns = captured[0][1][:100] - w["0.bias"]  # torch's pre-activation minus bias
    assert r["fc1"]["n_samples"] == 100
    np.testing.assert_allclose(r["fc1"]["neuron_mean"], ns.mean(0), atol=1e-10)
    np.testing.assert_allclose(r["fc1"]["neuron_std"], ns.std(0), atol=1e-10)
    assert r["fc1"]["fluctuation_mean"] == pytest.approx(ns.std(1).mean())
    assert isinstance(r["fc1"]["kde"], Curve)
    ra = run_metric(cnt.NeuronActivation, g, inputs=inputs, outputs=outputs, batch_size=32)
    np.testing.assert_allclose(ra["fc1"]["neuron_mean"], captured[1][1].mean(0), atol=1e-10)  # tanh output
    assert ra["fc1"]["activation"] == "tanh" and ra["fc2"]["activation"].startswith("identity")
    assert ra["fc1"]["n_samples"] == 150
    # the layer inputs are not needed: NS is the output minus the bias
    rf = run_metric(cnt.NeuronStrength, g, outputs=outputs)
    np.testing.assert_allclose(rf["fc2"]["neuron_mean"], (captured[2][1] - w["2.bias"]).mean(0), atol=1e-10)


def test_input_dependent_conv_with_bn_fold():
    torch.manual_seed(1)
    conv, bn = torch.nn.Conv2d(2, 3, 3, padding=1).double().eval(), torch.nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    x = torch.randn(20, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        out = conv(x)
        y = torch.relu(bn(out)).numpy()
    g = make_graph(
        [
            Layer(
                "c",
                "conv",
                "Conv2d",
                weights={"weight": conv.weight.detach().numpy(), "bias": conv.bias.detach().numpy()},
                attrs={"stride": 1, "padding": 1},
                input_shapes=[(None, 2, 5, 5)],
                channel_axis=1,
            ),
            batchnorm("bn", bn),
            Layer("r", "activation", "ReLU", attrs={"function": "relu"}),
        ]
    )
    r = run_metric(cnt.NeuronActivation, g, outputs={"c": out.numpy()}, select=["c"])
    np.testing.assert_allclose(r["c"]["neuron_mean"], y.reshape(20, -1).mean(0), atol=1e-10)
    s = run_metric(cnt.NeuronStrength, g, outputs={"c": out.numpy()}, select=["c"])  # BN scale x (W a), no shift
    ns = (out - conv.bias[:, None, None]) * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None, None]
    np.testing.assert_allclose(s["c"]["neuron_mean"], ns.detach().reshape(20, -1).mean(0).numpy(), atol=1e-10)
    assert r["c"]["n_neurons"] == 75


def test_embedding_skipped_with_warning_and_nan_weights_reported():
    g = make_graph(
        [
            Layer("emb", "embedding", "Embedding", weights={"weight": np.ones((10, 4))}),
            Layer("fc", "linear", "Linear", weights={"weight": np.array([[np.nan, 1.0]])}, input_shapes=[(None, 2)]),
        ]
    )
    r = run_metric(cnt.LayerFluctuation, g, params={"include_input": False})
    assert "emb" not in r and "embedding 'emb' skipped" in r["__warnings__"]["warnings"]
    assert np.isnan(r["fc"]["fluctuation"]) and "non-finite" in r["fc"]["reason"]


def test_weight_graph_edge_list_matches_hand_graph():
    """Oracle: the hand-written 2-2-3 network; node ids run input, fc1 outputs, fc2 outputs."""
    r = run_metric(cnt.WeightGraph, mlp(), select=["fc1"], params={"include_next": True})["fc1"]
    g = r["graph"]
    assert g.num_nodes == 2 + 2 + 3 and r["n_links"] == 4 + 6
    edges = {(int(s), int(t)): w for s, t, w in zip(g.sources, g.targets, g.weights)}
    for i in range(2):
        for j in range(2):
            assert edges[(j, 2 + i)] == W1[i, j]  # input j -> fc1 neuron i
    for k in range(3):
        for i in range(2):
            assert edges[(2 + i, 4 + k)] == W2[k, i]  # fc1 neuron i -> fc2 neuron k
    np.testing.assert_array_equal(g.nodes["bias"], [0, 0, *B1, *B2])
    assert list(g.nodes["layer"]) == ["input"] * 2 + ["fc1"] * 2 + ["fc2"] * 3


def test_weight_graph_in_strength_equals_node_strength_for_conv():
    """Weighted in-degree + bias of the conv graph's output nodes = cnt.node_strength's 'graph'-mode in-strength."""
    rng = np.random.default_rng(0)
    K, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    conv = Layer(
        "conv",
        "conv",
        "Conv2d",
        weights={"weight": K, "bias": b},
        input_shapes=[(None, 2, 5, 5)],
        output_shapes=[(None, 3, 3, 3)],
        attrs={"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1},
        channel_axis=1,
    )
    g = run_metric(cnt.WeightGraph, make_graph([conv], input_shape=(None, 2, 5, 5)))["conv"]["graph"]
    n_in = 2 * 5 * 5
    indeg = np.bincount(g.targets - n_in, weights=g.weights, minlength=27)
    strength = run_metric(
        cnt.NodeStrength,
        make_graph([conv], input_shape=(None, 2, 5, 5)),
        params={"mode": "graph", "missing_side_const": 0.0, "include_input": False},
    )["conv"]
    np.testing.assert_allclose(indeg + g.nodes["bias"][n_in:], strength["in_strength"], rtol=1e-10, atol=1e-12)
