"""What a metric worker is sent: ModelGraph.restricted keeps the layer table, withholds other layers' weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from deepscope_server.model_graph import Layer, ModelGraph, TensorSpec, WithheldWeights


def _graph() -> ModelGraph:
    rng = np.random.default_rng(0)
    layers = [
        Layer("fc1", "linear", "Linear", ["x"], weights={"weight": rng.random((3, 4)), "bias": rng.random(3)}),
        Layer("act", "activation", "ReLU", ["fc1"], attrs={"function": "relu"}),
        Layer("fc2", "linear", "Linear", ["act"], weights={"weight": rng.random((2, 3))}),
    ]
    return ModelGraph("pt2", [TensorSpec("x", "FP32", (None, 4))], [TensorSpec("y", "FP32", (None, 2))], layers)


def test_restricted_graph_travels_without_other_layers_weights() -> None:
    full = _graph()
    sent = pickle.loads(pickle.dumps(full.restricted(["fc1"])))  # as a worker receives it
    assert [(x.name, x.kind, x.inputs) for x in sent.layers] == [(x.name, x.kind, x.inputs) for x in full.layers]
    np.testing.assert_array_equal(sent.layer("fc1").weights["weight"], full.layer("fc1").weights["weight"])
    assert sent.layer("act").weights == {}  # nothing to withhold
    withheld = sent.layer("fc2").weights
    assert isinstance(withheld, WithheldWeights)
    assert len(pickle.dumps(full.restricted(["fc1"]))) < len(pickle.dumps(full))
    # unbound: a loud error, never an empty mapping (.get would otherwise answer None)
    with pytest.raises(LookupError, match="weights of layer 'fc2' were not sent"):
        withheld.get("weight")
    asked: list[str] = []
    sent.bind_withheld(lambda name: asked.append(name) or dict(full.layer(name).weights))
    np.testing.assert_array_equal(withheld["weight"], full.layer("fc2").weights["weight"])
    assert "bias" not in withheld and sent.layer("fc2").num_params == 6 and asked == ["fc2"]  # fetched once
