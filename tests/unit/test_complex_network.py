"""Complex-network metrics (La Malfa et al.) against independent oracles.

Oracles: an explicit networkx graph built with plain Python loops over every kernel tap,
hand-computed cases, analytic values, and torch's own modules (fuse_conv_bn_eval, forward).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from deepscope_metrics.complex_network import (
    DegenerateDistribution,
    conv_in_strength,
    conv_out_strength,
    conv_unrolled_matrix,
    dense_strengths,
    divergence_matrix,
    fold_batchnorm,
    jeffreys_divergence,
    js_divergence,
    kde_curve,
    layer_fluctuation,
    link_weight_summary,
    neuron_layer_strengths,
    weight_graph,
)
from deepscope_metrics.complex_network.geometry import conv_geometry
from deepscope_metrics.complex_network.unroll import conv_link_count, weight_graph_coo
from deepscope_server.model_graph import Layer
from deepscope_server.testing import make_graph

from .layers import batchnorm, conv2d, linear

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the slow oracle
def oracle_conv_graph(K, b, c_in, H, W, stride, pads, dilation, groups, with_padding_nodes=False):
    """Explicit unrolled conv graph, one Python loop iteration per link (independent of torch)."""
    c_out, cg, kh, kw = K.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pads, dilation
    ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    G = nx.DiGraph()
    for c in range(c_in):
        for y in range(H):
            for x in range(W):
                G.add_node(("in", c, y, x))
    for o in range(c_out):
        g = o // (c_out // groups)
        for i in range(ho):
            for j in range(wo):
                G.add_node(("out", o, i, j), bias=0.0 if b is None else float(b[o]))
                for cl in range(cg):
                    c = g * cg + cl
                    for ky in range(kh):
                        for kx in range(kw):
                            y, x = i * sh - pt + ky * dh, j * sw - pl + kx * dw
                            inside = 0 <= y < H and 0 <= x < W
                            if inside:
                                G.add_edge(("in", c, y, x), ("out", o, i, j), weight=float(K[o, cl, ky, kx]))
                            elif with_padding_nodes:
                                G.add_edge(("pad", c, y, x), ("out", o, i, j), weight=float(K[o, cl, ky, kx]))
    return G, ho, wo


def oracle_in(G, c_out, ho, wo):
    return np.array(
        [
            [
                [G.in_degree(("out", o, i, j), weight="weight") + G.nodes[("out", o, i, j)]["bias"] for j in range(wo)]
                for i in range(ho)
            ]
            for o in range(c_out)
        ]
    )


def oracle_out(G, c_in, H, W):
    return np.array(
        [[[G.out_degree(("in", c, y, x), weight="weight") for x in range(W)] for y in range(H)] for c in range(c_in)]
    )


CONV_CASES = [  # c_in, c_out, k, H, W, stride, pads(t,b,l,r), dilation, groups
    (2, 3, (3, 3), 5, 6, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 4, (3, 3), 7, 7, (2, 2), (1, 1, 1, 1), (1, 1), 2),
    (3, 3, (3, 2), 9, 8, (2, 3), (2, 2, 1, 1), (2, 1), 3),
    (4, 2, (2, 2), 6, 5, (1, 2), (0, 1, 1, 0), (2, 2), 2),  # asymmetric (ONNX-style) pads
    (1, 2, (1, 3), 1, 10, (1, 2), (0, 0, 2, 2), (1, 2), 1),  # a Conv1d as height 1
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_strengths_match_explicit_graph(case):
    c_in, c_out, k, H, W, stride, pads, dil, groups = case
    rng = np.random.default_rng(1)
    K = rng.normal(size=(c_out, c_in // groups, *k))
    b = rng.normal(size=c_out)
    onnx = (pads[0], pads[2], pads[1], pads[3])
    G, ho, wo = oracle_conv_graph(K, b, c_in, H, W, stride, pads, dil, groups)
    graph_in = conv_in_strength(K, b, (H, W), stride, onnx, dil, groups, mode="graph")
    np.testing.assert_allclose(graph_in, oracle_in(G, c_out, ho, wo), atol=1e-10)
    out = conv_out_strength(K, (H, W), (ho, wo), stride, onnx, dil, groups)
    np.testing.assert_allclose(out, oracle_out(G, c_in, H, W), atol=1e-10)
    # code mode = every tap counts, as if padded zeros were neurons
    Gp, _, _ = oracle_conv_graph(K, b, c_in, H, W, stride, pads, dil, groups, with_padding_nodes=True)
    code_in = conv_in_strength(K, b, (H, W), stride, onnx, dil, groups, mode="code")
    np.testing.assert_allclose(code_in, oracle_in(Gp, c_out, ho, wo), atol=1e-10)
    # invariant (graph mode): Σ out-strength of inputs = Σ (in-strength − bias) of outputs
    assert out.sum() == pytest.approx((graph_in - b[:, None, None]).sum(), abs=1e-9)
    # the sparse unrolled matrix has exactly the oracle's links
    M = conv_unrolled_matrix(K, (H, W), stride, onnx, dil, groups).tocsr()
    order_in = [("in", c, y, x) for c in range(c_in) for y in range(H) for x in range(W)]
    order_out = [("out", o, i, j) for o in range(c_out) for i in range(ho) for j in range(wo)]
    dense = nx.to_numpy_array(G, nodelist=order_in + order_out, weight="weight")[: len(order_in), len(order_in) :]
    np.testing.assert_allclose(M.toarray(), dense.T, atol=1e-12)
    assert M.nnz == G.number_of_edges()
    # the link count used to refuse capped graphs is the oracle's, without building anything
    assert conv_link_count(K.shape, (H, W), conv_geometry(K, stride, onnx, dil, groups)) == G.number_of_edges()


def test_conv1d_kernel_and_torch_same_padding():
    torch.manual_seed(2)
    conv = torch.nn.Conv1d(2, 3, 4, padding="same", dilation=2, bias=True).double()
    K, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    out = conv_out_strength(K, 11, padding="same", dilation=2)
    x = torch.zeros(1, 2, 11, dtype=torch.float64, requires_grad=True)
    conv(x).sum().backward()  # torch's own VJP of sum(conv(x)) as the oracle
    np.testing.assert_allclose(out[:, 0, :], x.grad[0].numpy(), atol=1e-12)
    ones = torch.ones(1, 2, 11, dtype=torch.float64)
    np.testing.assert_allclose(
        conv_in_strength(K, b, 11, padding="same", dilation=2, mode="graph")[:, 0, :],
        conv(ones)[0].detach().numpy(),
        atol=1e-12,
    )


def test_dense_hand_computed():
    W = np.array([[1.0, 2.0], [3.0, -4.0]])  # [out=2, in=2]
    b = np.array([0.5, -1.0])
    W_next = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 3.0]])  # [3, 2]
    s = dense_strengths(W, b, W_next)
    np.testing.assert_allclose(s.s_in, [3.5, -2.0])
    np.testing.assert_allclose(s.s_out, [3.0, 3.0])
    np.testing.assert_allclose(s.total, [6.5, 1.0])
    # input neurons (no in-side) and output neurons (no out-side): the authors' +1, or 0
    np.testing.assert_allclose(dense_strengths(None, None, W).total, [5.0, -1.0])
    np.testing.assert_allclose(dense_strengths(W, b, None, missing_side_const=0.0).total, [3.5, -2.0])
    f = layer_fluctuation(np.array([1.0, 2.0, 3.0, 4.0]))
    assert f["fluctuation"] == pytest.approx(np.sqrt(1.25)) and f["mean"] == 2.5 and f["n_nodes"] == 4
    assert f["cv"] == pytest.approx(np.sqrt(1.25) / 2.5)
    assert np.isnan(layer_fluctuation(np.array([]))["fluctuation"])


def test_weight_graph_dense_and_conv_next():
    rng = np.random.default_rng(3)
    K, b = rng.normal(size=(2, 1, 2, 2)), rng.normal(size=2)
    conv = conv2d("c", K, b, (None, 1, 3, 3), (None, 2, 2, 2), attrs={"stride": (1, 1), "padding": (0, 0)})
    W2 = rng.normal(size=(3, 8))
    lin = Layer("l", "linear", "Linear", weights={"weight": W2})
    G = weight_graph(conv, lin)
    assert G.number_of_edges() == 2 * 4 * 4 + 3 * 8
    # output neuron (o=1, i=1, j=0) is flat index 1*4 + 1*2 + 0 = 6 (PyTorch C,H,W flatten)
    # input flat 3 = (y=1, x=0) reaches output (1, 1, 0) through tap (0, 0)
    assert G[(0, 3)][(1, 6)]["weight"] == pytest.approx(K[1, 0, 0, 0])
    # input flat 4 = (1, 1) reaches output (1, 0, 0) = flat 4 through tap (1, 1)
    assert G[(0, 4)][(1, 4)]["weight"] == pytest.approx(K[1, 0, 1, 1])
    assert not G.has_edge((0, 0), (1, 7))  # (0, 0) is outside the window of output (1, 1, 1)
    assert G.nodes[(1, 6)]["bias"] == pytest.approx(b[1])
    assert G[(1, 6)][(2, 2)]["weight"] == pytest.approx(W2[2, 6])
    s_out = np.array([G.out_degree((1, i), weight="weight") for i in range(8)])
    np.testing.assert_allclose(s_out, W2.sum(0))


def test_capped_weight_graph_is_refused_with_its_link_count():
    """ResNet-18's layer4 conv (512->512 3x3 on 4x4): 26,214,400 links; refused by count, not by building it."""
    shape = (None, 512, 4, 4)
    conv = conv2d("c", np.zeros((512, 512, 3, 3)), None, shape, shape, attrs={"stride": (1, 1), "padding": (1, 1)})
    with pytest.raises(ValueError, match="26,214,400 links > max_links 2,000,000"):
        weight_graph_coo(conv, max_links=2_000_000)
    # 4x4 map, 3x3 taps, padding 1: 36 (position, tap) pairs fall on padding of the 144
    assert conv_link_count((512, 512, 3, 3), (4, 4), conv_geometry(np.zeros((1, 1, 3, 3)), 1, 1)) == 512 * 512 * 100


def test_link_weights_and_kde():
    W = np.array([[1.0, 2.0], [3.0, 4.0]])
    s = link_weight_summary(W, np.array([5.0]), bins=5)
    assert s["n"] == 5 and s["mean"] == 3.0 and s["std"] == pytest.approx(np.sqrt(2.0)) and s["q0.5"] == 3.0
    assert list(s["hist_counts"]) == [1, 1, 1, 1, 1] and s["n_biases"] == 1
    x, y = kde_curve(np.random.default_rng(0).normal(size=4000))
    assert len(x) == 1000 and x[0] < -3 and x[-1] > 3
    h = 4000 ** (-1 / 5)  # Scott factor; the KDE of N(0,1) estimates N(0, 1 + h²)
    np.testing.assert_allclose(y[np.argmin(abs(x))], stats.norm(0, np.sqrt(1 + h * h)).pdf(0), atol=0.04)
    assert np.trapezoid(y, x) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(DegenerateDistribution):
        kde_curve(np.ones(10))


def test_divergences():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 3000), rng.normal(1, 1, 3000)
    # analytic JS (bits) of N(0,1) vs N(1,1) by numerical integration of the true densities
    p, q = stats.norm(0, 1).pdf, stats.norm(1, 1).pdf

    def integrand(x):
        m = 0.5 * (p(x) + q(x))
        return 0.5 * (p(x) * np.log2(p(x) / m) + q(x) * np.log2(q(x) / m))

    truth = integrate.quad(integrand, -12, 13)[0]
    assert js_divergence(a, b) == pytest.approx(truth, abs=0.02)
    assert js_divergence(a, rng.normal(0, 1, 3000)) < 0.01
    assert js_divergence(a, rng.normal(50, 1, 3000)) == pytest.approx(1.0, abs=1e-6)
    assert jeffreys_divergence(a, a) == 0.0
    assert jeffreys_divergence(a, b) == pytest.approx(jeffreys_divergence(b, a))
    # far apart: a KDE underflows to 0 on the grid -> inf; the matrix replaces it by max finite + 1
    far = rng.normal(1e4, 1, 3000)
    assert jeffreys_divergence(a, far) == np.inf
    M = divergence_matrix([a, b, far], method="jeffreys")
    assert M[0, 2] == M[2, 0] == M[1, 2] == pytest.approx(M[0, 1] + 1)
    M2 = divergence_matrix([a, np.ones(5)])
    assert np.isnan(M2[0, 1]) and np.isnan(M2[1, 1])


def test_fold_batchnorm_matches_torch_fusion():
    conv, bn = torch.nn.Conv2d(2, 3, 3).double(), torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
    W, b = fold_batchnorm(
        conv.weight.detach().numpy(),
        conv.bias.detach().numpy(),
        bn.weight.detach().numpy(),
        bn.bias.detach().numpy(),
        bn.running_mean.numpy(),
        bn.running_var.numpy(),
        bn.eps,
    )
    np.testing.assert_allclose(W, fused.weight.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(b, fused.bias.detach().numpy(), atol=1e-12)


def _np(t):
    return t.detach().numpy().astype(np.float64)


def test_real_sequential_conv_bn_pool_flatten_dense():
    """conv -> BN -> ReLU -> MaxPool -> Flatten -> Linear -> ReLU -> Linear, layers built by hand."""
    torch.manual_seed(0)
    net = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 2 * 2, 5),
            torch.nn.ReLU(),
            torch.nn.Linear(5, 3),
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2)
    conv, bn, lin1, lin2 = net[0], net[1], net[5], net[7]
    layers = [
        conv2d(
            "conv",
            _np(conv.weight),
            _np(conv.bias),
            (None, 3, 8, 8),
            (None, 4, 4, 4),
            attrs={"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1},
            channel_axis=1,
        ),
        batchnorm("bn", bn, output_shapes=[(None, 4, 4, 4)], channel_axis=1),
        Layer("relu", "activation", "ReLU", attrs={"function": "relu"}, output_shapes=[(None, 4, 4, 4)]),
        Layer("pool", "pool", "MaxPool2d", attrs={"kernel_size": 2, "stride": 2}, output_shapes=[(None, 4, 2, 2)]),
        Layer("flat", "other", "Flatten", output_shapes=[(None, 16)]),
        linear("fc1", _np(lin1.weight), _np(lin1.bias)),
        Layer("relu2", "activation", "ReLU", attrs={"function": "relu"}),
        linear("fc2", _np(lin2.weight), _np(lin2.bias)),
    ]
    graph = make_graph(layers, input_shape=(None, 3, 8, 8))
    nl = neuron_layer_strengths(graph, layers[0], mode="code")
    # in-side: torch's own conv+BN fusion; code mode = kernel sum + bias at every position
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    want_in = (_np(fused.weight).reshape(4, -1).sum(1) + _np(fused.bias))[:, None, None] * np.ones((4, 4, 4))
    np.testing.assert_allclose(nl.strengths.s_in, want_in, atol=1e-10)
    # out-side: 1ᵀ W_fc1 · Flatten · AvgPool(2) written out by hand (each pooled input gets 1/4)
    col = _np(lin1.weight).sum(0).reshape(4, 2, 2)
    want_out = np.repeat(np.repeat(col, 2, axis=1), 2, axis=2) / 4.0
    np.testing.assert_allclose(nl.strengths.s_out, want_out, atol=1e-12)
    assert nl.reached == ["fc1"] and any("max pool" in e for e in nl.extensions)
    assert any("folded" in e for e in nl.extensions)
    # fc1 neurons: in from fc1, out from fc2; fc2 neurons: output layer, +1
    s1 = neuron_layer_strengths(graph, layers[5])
    np.testing.assert_allclose(s1.strengths.total, _np(lin1.weight).sum(1) + _np(lin1.bias) + _np(lin2.weight).sum(0))
    s2 = neuron_layer_strengths(graph, layers[7], missing_side_const=1.0)
    np.testing.assert_allclose(s2.strengths.total, _np(lin2.weight).sum(1) + _np(lin2.bias) + 1.0)
    assert not s2.has_out


def test_residual_identity_links():
    """x -> conv_a -> relu -> conv_b -> add(conv_b, relu) -> relu -> fc; identity skip of weight 1."""
    rng = np.random.default_rng(5)
    Ka, Kb = rng.normal(size=(2, 2, 3, 3)), rng.normal(size=(2, 2, 3, 3))
    ba, bb = rng.normal(size=2), rng.normal(size=2)
    Wfc = rng.normal(size=(3, 2 * 4 * 4))
    attrs = {"stride": 1, "padding": 1}
    shp = (None, 2, 4, 4)
    layers = [
        conv2d("a", Ka, ba, shp, shp, inputs=["input"], attrs=attrs),
        Layer("ra", "activation", "ReLU", inputs=["a"], output_shapes=[shp]),
        conv2d("b", Kb, bb, shp, shp, inputs=["ra"], attrs=attrs),
        Layer("add", "other", "Add", inputs=["b", "ra"], output_shapes=[shp]),
        Layer("r", "activation", "ReLU", inputs=["add"], output_shapes=[shp]),
        Layer("fc", "linear", "Linear", inputs=["r"], input_shapes=[(None, 32)], weights={"weight": Wfc}),
    ]
    graph = make_graph(layers, input_shape=shp)
    # oracle: explicit graph of conv_b plus identity links ra(c,y,x) -> add(c,y,x)
    G, _, _ = oracle_conv_graph(Kb, bb, 2, 4, 4, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    for c in range(2):
        for y in range(4):
            for x in range(4):
                e = G.get_edge_data(("in", c, y, x), ("out", c, y, x), {"weight": 0.0})
                G.add_edge(("in", c, y, x), ("out", c, y, x), weight=e["weight"] + 1.0)  # parallel links add
    na = neuron_layer_strengths(graph, layers[0], mode="graph")
    np.testing.assert_allclose(na.strengths.s_out, oracle_out(G, 2, 4, 4), atol=1e-12)
    assert sorted(na.reached) == ["add", "b"]
    nb = neuron_layer_strengths(graph, layers[2], mode="graph")
    assert nb.end == "add"
    np.testing.assert_allclose(nb.strengths.s_in, oracle_in(G, 2, 4, 4), atol=1e-12)
    np.testing.assert_allclose(nb.strengths.s_out.ravel(), Wfc.sum(0), atol=1e-12)


def test_resnet_scale_layer_strengths():
    rng = np.random.default_rng(6)
    K, b = rng.normal(size=(64, 64, 3, 3)), rng.normal(size=64)
    out = conv_out_strength(K, (56, 56), stride=1, padding=1)
    inn = conv_in_strength(K, b, (56, 56), padding=1, mode="graph")
    assert out.shape == inn.shape == (64, 56, 56)
    # interior pixel: every tap of every output channel reads it once
    assert out[5, 20, 20] == pytest.approx(K[:, 5].sum())


class _TinyResNet(torch.nn.Module):
    """stem conv-bn-relu, one residual block with a functional `+`, global pool, torch.flatten, fc."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.conv1, self.bn1 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4)
        self.conv2, self.bn2 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4)
        self.relu0, self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.ReLU()
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(4, 3)

    def forward(self, x):
        h = self.relu0(self.bn0(self.conv0(x)))
        y = self.relu1(self.bn1(self.conv1(h)))
        y = self.relu2(self.bn2(self.conv2(y)) + h)
        return self.fc(torch.flatten(self.pool(y), 1))


def test_layer_table_from_the_torch_backend_residual_block():
    """Cross-check on the real PyTorch backend's layer table (functional + and flatten are not layers)."""
    from deepscope_server.backends.torch_backend import ExportedProgramBackend

    torch.manual_seed(0)
    net = _TinyResNet().double().eval()
    with torch.no_grad():
        for bn in (net.bn0, net.bn1, net.bn2):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    graph = ExportedProgramBackend(torch.export.export(net, (x,)), "cpu").graph
    by_op = {layer.name: layer for layer in graph.layers}
    conv0, conv1, conv2 = (
        next(layer for layer in graph.layers if layer.name.endswith(n)) for n in ("conv0", "conv1", "conv2")
    )
    assert set(by_op) >= {conv0.name, conv1.name, conv2.name}

    def fused_grad(conv, bn):  # torch's fusion + autograd: out-strength of the conv's inputs
        f = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        z = torch.zeros(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
        f(z).sum().backward()
        return f, z.grad[0].numpy()

    f2, g2 = fused_grad(net.conv2, net.bn2)
    f1, g1 = fused_grad(net.conv1, net.bn1)
    # stem neurons: links into (folded) conv1 plus the identity skip into the residual sum
    n0 = neuron_layer_strengths(graph, conv0, mode="code")
    np.testing.assert_allclose(n0.strengths.s_out, g1 + 1.0, atol=1e-10)
    # block output neurons = the residual sum: folded conv2 (+1 identity) in, fc through the pool out
    n2 = neuron_layer_strengths(graph, conv2, mode="code")
    want_in = _np(f2.weight).reshape(4, -1).sum(1) + _np(f2.bias) + 1.0
    np.testing.assert_allclose(n2.strengths.s_in, want_in[:, None, None] * np.ones((4, 6, 6)), atol=1e-10)
    np.testing.assert_allclose(
        n2.strengths.s_out, np.broadcast_to((_np(net.fc.weight).sum(0) / 36)[:, None, None], (4, 6, 6)), atol=1e-12
    )
    # conv1 neurons feed conv2 only
    n1 = neuron_layer_strengths(graph, conv1, mode="code")
    np.testing.assert_allclose(n1.strengths.s_out, g2, atol=1e-10)


def test_onnx_pads_and_auto_pad_hand_cases():
    from deepscope_metrics.complex_network.geometry import geometry_from_attrs

    K = np.ones((1, 1, 3, 3))
    # SAME_UPPER, stride 2: H=5 -> out 3, total pad 2 = 1+1; W=6 -> out 3, total 1 = 0 begin + 1 end
    geo = geometry_from_attrs(K, {"stride": (2, 2), "auto_pad": "SAME_UPPER"}, (5, 6))
    assert geo.pads == (1, 1, 0, 1)
    assert geometry_from_attrs(K, {"stride": (2, 2), "auto_pad": "SAME_LOWER"}, (5, 6)).pads == (1, 1, 1, 0)
    # explicit ONNX pads (h_begin, w_begin, h_end, w_end) -> (top, bottom, left, right)
    assert geometry_from_attrs(K, {"pads": (0, 1, 2, 3)}).pads == (0, 2, 1, 3)
    # a dense layer's weight graph: every W[i, j] is the link j -> i
    W = np.arange(6.0).reshape(2, 3) - 2
    G = weight_graph(Layer("d", "linear", "Linear", weights={"weight": W, "bias": np.array([1.0, -1.0])}))
    assert G.number_of_nodes() == 5 and G.number_of_edges() == 6
    assert G[(0, 2)][(1, 1)]["weight"] == W[1, 2] and G.nodes[(1, 1)]["bias"] == -1.0
