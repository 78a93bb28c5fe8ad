"""The plugin API's optional merge(): dimension.effective fed two halves and merged finishes like one
instance fed everything; mergeable() refuses PCA-projected layers, whose merge would not be exact."""

import numpy as np

from deepscope_metrics.plugins.dimension import EffectiveDimension
from deepscope_server.model_graph import Layer
from deepscope_server.plugin_api import Batch, Context, Metric
from deepscope_server.testing import make_graph, validate_params


def _fed(layers: list[Layer], x: np.ndarray, batches: range, params: dict) -> EffectiveDimension:
    ctx = Context(params=validate_params(EffectiveDimension, params), layers=layers, graph=make_graph(layers))
    metric = EffectiveDimension(ctx)
    metric.start()
    for i in batches:
        metric.update(Batch(index=i, outputs={"fc": x[16 * i : 16 * (i + 1)]}))
    return metric


def _dense(width: int) -> Layer:
    return Layer("fc", "dense", "Gemm", output_shapes=[(None, width)])


def test_dimension_effective_merged_halves_finish_like_one_pass():
    x = np.random.default_rng(0).standard_normal((160, 24)) @ np.diag(np.linspace(3, 0.1, 24))
    layers = [_dense(24)]
    merged = _fed(layers, x, range(0, 3), {})
    merged.merge(_fed(layers, x, range(3, 10), {}))
    got, want = merged.finish()["fc"], _fed(layers, x, range(10), {}).finish()["fc"]
    for key in ("d_eff", "participation_ratio", "rank", "n_samples", "spectrum_exponent"):
        assert np.isclose(got[key], want[key], rtol=1e-9), key
    np.testing.assert_allclose(got["spectrum"].y, want["spectrum"].y, rtol=1e-9, atol=1e-12)


def test_mergeable_says_when_the_merge_is_exact():
    defaults = validate_params(EffectiveDimension, {})
    assert EffectiveDimension.mergeable(defaults, [_dense(24)])
    assert not EffectiveDimension.mergeable({**defaults, "max_dim": 8}, [_dense(24)])  # PCA picked per part
    assert EffectiveDimension.mergeable({**defaults, "max_dim": 8, "projection": "random"}, [_dense(24)])
    assert not EffectiveDimension.mergeable(defaults, [Layer("fc", "dense", "Gemm", output_shapes=[(None, None)])])
    assert not Metric.mergeable({}, [])  # no merge defined: runs whole
