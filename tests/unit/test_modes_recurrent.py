"""modes.* / basins.weight around recurrent layers: gates perturbed, internal gate activations reported."""

from __future__ import annotations

import numpy as np
from torch import nn

from deepscope_metrics.plugins import basins as PB
from deepscope_metrics.plugins import modes as P
from deepscope_server.plugin_api import Layer
from deepscope_server.testing import make_graph, run_metric


def _lstm_layer() -> Layer:
    weights = {k: v.detach().numpy() for k, v in nn.LSTM(3, 2).named_parameters()}
    return Layer("rnn", "recurrent", "LSTM", weights=weights, input_shapes=[(None, 4, 3)], output_shapes=[(None, 4, 2)])


def test_basins_weight_perturbs_every_gate_matrix_and_no_norm_statistics() -> None:
    assert PB.WeightBasins.applies_to(_lstm_layer())
    assert set(PB._perturbed(_lstm_layer(), bias=True)) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    assert set(PB._perturbed(_lstm_layer(), bias=False)) == {"weight_ih_l0", "weight_hh_l0"}
    mha = {k: v.detach().numpy() for k, v in nn.MultiheadAttention(4, 2).named_parameters()}
    attn = Layer("attn", "attention", "MultiheadAttention", weights=mha)
    assert PB.WeightBasins.applies_to(attn)
    assert set(PB._perturbed(attn, bias=False)) == {"in_proj_weight", "out_proj.weight"}
    bn = Layer(
        "bn",
        "norm",
        "BatchNorm2d",
        weights={"weight": np.ones(2), "bias": np.zeros(2), "running_mean": np.zeros(2), "running_var": np.ones(2)},
    )
    assert not PB.WeightBasins.applies_to(bn)


def test_mode_metrics_say_the_gates_inside_a_recurrent_layer_are_not_measured() -> None:
    relu = Layer("relu", "activation", "ReLU", attrs={"function": "relu"}, output_shapes=[(None, 2)])
    graph = make_graph([_lstm_layer(), relu])
    h = np.random.default_rng(0).normal(size=(16, 2))
    for metric in (P.ModeFractions, P.ActivationRates, P.GradedScore):
        r = run_metric(metric, graph, inputs={"relu": h}, outputs={"relu": np.maximum(h, 0)})
        assert "rnn" not in r and "relu" in r
        assert "recurrent layer 'rnn' (LSTM) are not measured" in r["__warnings__"]["warnings"], metric.name
