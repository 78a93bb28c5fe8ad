"""Complexity metrics against analytic cases and slow direct implementations."""

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from deepscope_metrics.complexity import (
    binary_entropy,
    complexity_at,
    fvu,
    linear_fvu,
    occupancy_entropy,
    pattern_entropy,
    piecewise_fvu_curve,
)
from deepscope_metrics.plugins.complexity import LinearFVU, PatternEntropyMetric, PiecewiseFVU
from deepscope_server.model_graph import Layer
from deepscope_server.testing import make_graph, run_metric

torch.set_num_threads(1)

FC = Layer("fc", "linear", "Gemm")
RELU = Layer("relu", "activation", "Relu", attrs={"function": "relu"})
LAYERS = {"blocks": "layers"}  #: each layer's own input -> output (the default measures blocks between representations)

# For x ~ N(0, 1), y = relu(x): cov(x, y) = 1/2, var y = 1/2 - 1/(2π), so the best affine map
# explains (1/2)² of it: FVU = 1 - 0.25 / (0.5 - 1/(2π)).
RELU_GAUSS_FVU = 1 - 0.25 / (0.5 - 1 / (2 * np.pi))


def _entropy(counts):
    p = np.asarray(list(counts), dtype=float)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------- helpers


def test_small_helpers_hand_computed():
    np.testing.assert_allclose(
        binary_entropy([0.0, 0.5, 1.0, 0.25]), [0.0, np.log(2), 0.0, -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))]
    )
    assert occupancy_entropy(np.array([0, 0, 1, 1, 2, 2, 2, 2])) == pytest.approx(
        -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5))
    )
    y = np.array([[1.0], [2.0], [3.0]])
    assert fvu(y, np.array([[2.0], [2.0], [2.0]])) == pytest.approx(1.0)  # predicting the mean
    assert fvu(y, y) == 0.0
    assert complexity_at(np.array([1, 2, 4]), np.array([0.5, 0.2, 0.05]), 0.1) == (4, pytest.approx(np.log(4)))
    k_star, c = complexity_at(np.array([1, 2]), np.array([0.5, 0.2]), 0.1)
    assert k_star == 0 and np.isnan(c)


# ---------------------------------------------------------------------------- linear FVU


def test_affine_layer_has_zero_fvu_via_adapter():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 12))
    y = x @ rng.standard_normal((12, 7)) + rng.standard_normal(7)
    res = run_metric(LinearFVU, [FC], inputs={"fc": x}, outputs={"fc": y}, params=LAYERS)["fc"]
    assert res["fvu"] < 1e-5 and res["fvu_train"] < 1e-5
    assert res["n_train"] + res["n_test"] == 600 and res["n_samples_seen"] == 600
    assert res["input_units"] == 12 and res["output_units"] == 7


def test_relu_active_everywhere_is_linear_and_has_zero_pattern_entropy():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((500, 9)) + 10.0  # every pre-activation positive
    out = np.maximum(h, 0)
    res = run_metric(LinearFVU, [RELU], inputs={"relu": h}, outputs={"relu": out}, params={"ridge": 0.0, **LAYERS})[
        "relu"
    ]
    assert res["fvu"] < 1e-10
    pat = run_metric(PatternEntropyMetric, [RELU], outputs={"relu": out})["relu"]
    assert pat["unit_entropy_sum"] == 0.0 and pat["joint_entropy"] == 0.0
    assert pat["n_distinct_patterns"] == 1 and pat["always_active_units"] == 9


def test_relu_on_gaussian_matches_analytic_fvu():
    h = np.random.default_rng(2).standard_normal((20000, 3))
    res = linear_fvu(h, np.maximum(h, 0), alpha=0.0)
    assert res["fvu"] == pytest.approx(RELU_GAUSS_FVU, abs=0.015)


def test_wide_output_is_randomly_projected_and_reported():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 5))
    y = x @ rng.standard_normal((5, 60))
    out = run_metric(LinearFVU, [FC], inputs={"fc": x}, outputs={"fc": y}, params={"max_width": 20, **LAYERS})
    res = out["fc"]
    assert res["output_projection"] == "random" and res["input_projection"] == "none"
    assert res["output_units"] == 20 and res["output_units_raw"] == 60
    assert res["fvu"] < 1e-5  # a projection of a linear map is linear
    assert "max_width" in out["__warnings__"]["warnings"]


def test_reservoir_cap_and_pca_reduction_are_reported():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 30))
    y = np.tanh(x @ rng.standard_normal((30, 40)))
    res = run_metric(
        LinearFVU, [FC], inputs={"fc": x}, outputs={"fc": y}, params={"max_samples": 100, "pca_dim": 10, **LAYERS}
    )["fc"]
    assert res["n_samples_seen"] == 500 and res["reservoir_size"] == 100 and res["n_samples"] == 100
    assert res["input_dim"] == 10 and res["output_dim"] == 10
    assert 0 < res["input_pca_variance"] < 1 and 0 < res["output_pca_variance"] < 1


def test_regression_degenerate_cases_give_nan_and_reason():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 4))
    res = run_metric(LinearFVU, [FC], inputs={"fc": x}, outputs={"fc": np.zeros((50, 3))}, params=LAYERS)["fc"]
    assert np.isnan(res["fvu"]) and "constant" in res["reason"]
    res = run_metric(LinearFVU, [FC], outputs={"fc": x}, params=LAYERS)["fc"]  # input not captured
    assert np.isnan(res["fvu"]) and "captured" in res["reason"]
    res = run_metric(LinearFVU, [FC], outputs={"fc": x})["fc"]  # block input -> fc: model input not given
    assert np.isnan(res["fvu"]) and "input -> fc" in res["reason"]
    res = run_metric(LinearFVU, [FC], inputs={"fc": x[:3]}, outputs={"fc": x[:3]}, params=LAYERS)["fc"]  # too few
    assert np.isnan(res["fvu"]) and "samples" in res["reason"]
    # strided conv with reduce="positions": input and output positions differ
    conv = Layer("conv", "conv", "Conv", channel_axis=1)
    xin, yout = rng.standard_normal((10, 2, 8, 8)), rng.standard_normal((10, 3, 4, 4))
    for metric in (LinearFVU, PiecewiseFVU):
        res = run_metric(
            metric, [conv], inputs={"conv": xin}, outputs={"conv": yout}, params={"reduce": "positions", **LAYERS}
        )["conv"]
        assert "reason" in res and "row counts" in res["reason"]
    # with the default mean reduction the same layer is measured
    res = run_metric(LinearFVU, [conv], inputs={"conv": xin}, outputs={"conv": yout}, params=LAYERS)["conv"]
    assert res["input_units"] == 2 and res["output_units"] == 3 and np.isfinite(res["fvu"])


# ------------------------------------------------------------------------- piecewise FVU


def _digits_relu():
    x = load_digits().data[:1200] / 16.0
    w = np.random.default_rng(6).standard_normal((64, 20))
    return x, np.maximum(x @ w - 1.0, 0.0)


def test_training_fvu_is_monotone_and_held_out_curve_is_reported_separately():
    x, y = _digits_relu()
    res = piecewise_fvu_curve(x, y, k_max=12, rows_per_dim=1.0, seed=0)
    assert list(res["k"]) == list(range(1, len(res["k"]) + 1)) and len(res["k"]) >= 4
    assert np.all(np.diff(res["fvu_train"]) <= 1e-12)  # nested least-squares pieces: by construction
    assert res["fvu_train"][-1] < 0.5 * res["fvu_train"][0]
    assert res["fvu_test"].shape == res["fvu_train"].shape and np.all(np.isfinite(res["fvu_test"]))
    # K = 1 is the least-squares linear fit
    assert res["fvu_train"][0] == pytest.approx(linear_fvu(x, y, alpha=0.0)["fvu_train"], rel=1e-9)
    assert res["min_cluster_rows"] == 65  # rows_per_dim x (64 dims + 1): every piece is overdetermined
    assert res["smallest_piece_rows"] >= 65


def _blobs_piecewise(k, n_per=150, dim=3, seed=0):
    """Data in k far-apart blobs, and an output that is a different affine map of the input on each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 40
    x = np.concatenate([c + rng.standard_normal((n_per, dim)) for c in centres])
    maps = rng.standard_normal((k, dim, 2)) * 3
    shifts = rng.standard_normal((k, 2)) * 3
    y = np.concatenate([x[i * n_per : (i + 1) * n_per] @ maps[i] + shifts[i] for i in range(k)])
    return x, y


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_exactly_k_piecewise_linear_map_gives_k(k):
    """With eps below what any K-1 pieces leave (here 1e-6 of the linear FVU), K* is exactly K."""
    x, y = _blobs_piecewise(k, seed=k)
    res = run_metric(
        PiecewiseFVU,
        make_graph([Layer("out", "linear", "Gemm")]),
        data={"input": x},
        outputs={"out": y},
        params={"k_max": 8, "eps": 1e-6},
    )["out"]
    assert res["block_start"] == "input" and res["block_end"] == "out"
    assert res["k_star"] == k and res["complexity"] == pytest.approx(np.log(k))
    curve = res["fvu_k"].y
    assert curve[k - 1] < 1e-12  # exact from K pieces on ...
    assert k == 1 or curve[k - 2] > 1e-6  # ... and not before
    assert res["occupancy_entropy"] == pytest.approx(np.log(k), abs=0.05)  # equal blobs, one piece each


def test_relative_and_absolute_eps():
    k, curve = np.arange(1, 5), np.array([0.2, 0.12, 0.09, 0.04])
    assert complexity_at(k, curve, 0.5, relative=True) == (3, pytest.approx(np.log(3)))  # 0.09 <= 0.1
    assert complexity_at(k, curve, 0.1) == (3, pytest.approx(np.log(3)))
    assert complexity_at(k, curve, 0.1, relative=True) == (0, pytest.approx(np.nan, nan_ok=True))
    assert complexity_at(k, curve * 7, 0.5, relative=True)[0] == 3  # relative: invariant to scale


def test_one_dimensional_relu_needs_two_pieces():
    """2-means on symmetric 1-D data splits near 0, where relu is affine on each side."""
    h = np.random.default_rng(7).standard_normal((4000, 1))
    res = run_metric(
        PiecewiseFVU,
        [RELU],
        inputs={"relu": h},
        outputs={"relu": np.maximum(h, 0)},
        params={"eps": 0.1, "k_max": 8, **LAYERS},
    )["relu"]
    assert res["fvu_linear"] == pytest.approx(RELU_GAUSS_FVU, abs=0.03)
    assert res["fvu_k"].y[1] < 0.2 * res["fvu_linear"]
    assert res["k_star"] == 2 and res["complexity"] == pytest.approx(np.log(2))
    assert res["occupancy_entropy"] == pytest.approx(np.log(2), abs=0.02)
    eps_curve = dict(zip(res["complexity_eps"].x, res["complexity_eps"].y))
    assert eps_curve[0.9] == pytest.approx(np.log(2)) and eps_curve[0.1] == pytest.approx(np.log(2))


def test_affine_layer_has_zero_piecewise_complexity_and_unreachable_eps_is_reported():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((800, 4))
    y = x @ rng.standard_normal((4, 3))
    res = run_metric(PiecewiseFVU, [FC], inputs={"fc": x}, outputs={"fc": y}, params={"k_max": 4, **LAYERS})["fc"]
    assert res["k_star"] == 1 and res["complexity"] == 0.0 and res["fvu_linear"] < 1e-20
    z = rng.standard_normal((800, 3))  # output unrelated to the input: no piece count halves the FVU
    res = run_metric(PiecewiseFVU, [FC], inputs={"fc": x}, outputs={"fc": z}, params={"k_max": 4, **LAYERS})["fc"]
    assert res["k_star"] == 0 and np.isnan(res["complexity"]) and "reason" in res


def _mlp_graph():
    layers = [
        Layer("fc1", "linear", "Gemm"),
        Layer("relu1", "activation", "Relu", attrs={"function": "relu"}),
        Layer("fc2", "linear", "Gemm"),
        Layer("relu2", "activation", "Relu", attrs={"function": "relu"}),
    ]
    return make_graph(layers)


def test_default_blocks_map_one_representation_to_the_next():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((600, 6))
    w1, w2 = rng.standard_normal((6, 8)), rng.standard_normal((8, 5))
    h1 = x @ w1
    r1 = np.maximum(h1, 0)
    h2 = r1 @ w2
    r2 = np.maximum(h2, 0)
    acts = dict(
        outputs={"fc1": h1, "relu1": r1, "fc2": h2, "relu2": r2},
        inputs={"fc1": x, "relu1": h1, "fc2": r1, "relu2": h2},
        data={"input": x},
    )
    res = run_metric(LinearFVU, _mlp_graph(), params={"ridge": 0.0}, **acts)
    assert set(res) - {"__warnings__"} == {"relu1", "relu2"}  # blocks end at the activations' outputs
    assert res["relu1"]["block_start"] == "input" and res["relu2"]["block_start"] == "relu1"
    # the same as regressing the representations directly
    assert res["relu1"]["fvu"] == pytest.approx(linear_fvu(x, r1, alpha=0.0)["fvu"], rel=1e-12)
    assert res["relu2"]["fvu"] == pytest.approx(linear_fvu(r1, r2, alpha=0.0)["fvu"], rel=1e-12)
    # explicit boundaries: input -> relu2 spans both blocks
    res = run_metric(LinearFVU, _mlp_graph(), params={"ridge": 0.0, "blocks": "input, relu2"}, **acts)
    assert set(res) - {"__warnings__"} == {"relu2"} and res["relu2"]["block_start"] == "input"
    assert res["relu2"]["fvu"] == pytest.approx(linear_fvu(x, r2, alpha=0.0)["fvu"], rel=1e-12)
    # the old per-layer view: fc2's own input -> output is linear
    res = run_metric(LinearFVU, _mlp_graph(), params={"ridge": 0.0, **LAYERS}, **acts)
    assert res["fc2"]["fvu"] < 1e-20 and res["fc2"]["block_start"] == "fc2 (input)"
    # consecutive: every selected layer's output is a boundary
    res = run_metric(LinearFVU, _mlp_graph(), params={"ridge": 0.0, "blocks": "consecutive"}, **acts)
    assert [res[n]["block_start"] for n in ("fc1", "relu1", "fc2", "relu2")] == ["input", "fc1", "relu1", "fc2"]
    assert res["fc2"]["fvu"] < 1e-20  # relu1 -> fc2 is the Linear alone
    with pytest.raises(ValueError, match="relu9 are not selected layers.*input, fc1, relu1"):
        run_metric(LinearFVU, _mlp_graph(), params={"blocks": "input,relu9"}, **acts)


def test_conv_blocks_use_the_flattened_model_input():
    rng = np.random.default_rng(14)
    images = rng.standard_normal((300, 1, 4, 4))
    conv = Layer("conv", "conv", "Conv", channel_axis=1)
    feats = np.maximum(images * 2.0 - 0.5, 0).repeat(2, axis=1)  # 2 channels, a ReLU of each pixel
    res = run_metric(
        PiecewiseFVU,
        make_graph([conv]),
        data={"input": images},
        outputs={"conv": feats},
        params={"reduce": "flatten", "k_max": 4},
    )["conv"]
    assert res["input_units"] == 16 and res["output_units"] == 32 and res["block_start"] == "input"
    assert 0 < res["fvu_linear"] < 1 and np.all(np.diff(res["fvu_k"].y) <= 1e-12)


# ------------------------------------------------------------------------ pattern entropy


def test_unit_active_on_half_the_samples_contributes_ln2():
    rng = np.random.default_rng(9)
    a = rng.uniform(1, 2, size=(64, 4))
    a[::2, 0] = 0.0  # unit 0 active on exactly half the samples, the rest always active
    res = pattern_entropy(a)
    assert res["unit_entropy_sum"] == pytest.approx(np.log(2), abs=1e-12)
    np.testing.assert_allclose(res["unit_entropy"], [np.log(2), 0, 0, 0], atol=1e-12)
    assert res["joint_entropy"] == pytest.approx(np.log(2)) and res["n_distinct_patterns"] == 2


def test_pattern_entropy_matches_direct_count_over_batches_and_scales():
    rng = np.random.default_rng(10)
    h = rng.standard_normal((700, 7)) + np.linspace(-1, 1, 7)
    res = run_metric(PatternEntropyMetric, [FC], outputs={"fc": h}, params={"unit_order": "index"}, batch_size=33)["fc"]
    rows = [tuple(r) for r in (h > 0).astype(int)]
    assert res["joint_entropy"] == pytest.approx(_entropy(Counter(rows).values()), abs=1e-12)
    assert res["n_distinct_patterns"] == len(set(rows))
    rates = (h > 0).mean(axis=0)
    direct_units = sum(-(p * np.log(p) + (1 - p) * np.log(1 - p)) for p in rates)
    assert res["unit_entropy_sum"] == pytest.approx(direct_units, abs=1e-12)
    curve = res["entropy_vs_units"]
    assert list(curve.x) == [1, 2, 4, 7]
    for m, value in zip(curve.x.astype(int), curve.y):
        assert value == pytest.approx(_entropy(Counter(r[:m] for r in rows).values()), abs=1e-12)
    assert res["joint_entropy"] <= res["unit_entropy_sum"] + 1e-12  # subadditivity
    assert res["n_samples"] == 700 and res["n_units"] == 7


def test_pattern_entropy_random_unit_order_and_threshold():
    rng = np.random.default_rng(11)
    h = rng.standard_normal((300, 40))
    res = pattern_entropy(h, threshold=0.5, unit_order="random", seed=3)
    assert res["scale_joint_entropy"][-1] == pytest.approx(res["joint_entropy"])
    assert np.all(np.diff(res["scale_joint_entropy"]) >= -1e-12)  # nested subsets: entropy grows
    rates = (h > 0.5).mean(axis=0)
    np.testing.assert_allclose(res["activation_rate"], rates)
    assert res["saturated"] and res["joint_entropy"] == pytest.approx(np.log(300))


def test_pattern_entropy_conv_reduce_modes_and_warning():
    maps = np.random.default_rng(12).standard_normal((20, 3, 2, 2))
    conv = Layer("conv", "conv", "Conv", channel_axis=1)
    pos = run_metric(PatternEntropyMetric, [conv], outputs={"conv": maps}, params={"reduce": "positions"})["conv"]
    assert pos["n_samples"] == 80 and pos["n_units"] == 3
    flat = run_metric(PatternEntropyMetric, [conv], outputs={"conv": maps}, params={"reduce": "flatten"})["conv"]
    assert flat["n_samples"] == 20 and flat["n_units"] == 12
    sig = Layer("sig", "activation", "Sigmoid", attrs={"function": "sigmoid"})
    out = run_metric(PatternEntropyMetric, [sig], outputs={"sig": 1 / (1 + np.exp(-maps[:, :, 0, 0]))})
    assert out["sig"]["joint_entropy"] == 0.0 and "positive everywhere" in out["__warnings__"]["warnings"]


def test_small_samples_reduce_the_block_input_so_pieces_fit_and_say_so():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((64, 40))  # 48 training rows, 40 input dims: one piece would not even fit
    y = np.maximum(x[:, :3] @ rng.standard_normal((3, 6)), 0)
    res = piecewise_fvu_curve(x, y, k_max=8)
    assert res["input_dim"] == 48 // (4 * 3) - 1 == 3  # min_pieces x rows_per_dim x (dims + 1) <= rows
    assert res["input_pca_variance"] < 1 and "PCA-reduced to 3 dims" in res["warning"]
    assert res["min_cluster_rows"] == 12 and len(res["k"]) >= 3
    assert res["smallest_piece_rows"] >= 12
    assert piecewise_fvu_curve(x, y, k_max=8, min_pieces=1)["input_dim"] == 40  # opt-out: no reduction


def test_lopsided_two_means_split_falls_back_to_a_median_split():
    rng = np.random.default_rng(16)
    x = np.concatenate([rng.standard_normal((400, 2)), 60 + rng.standard_normal((6, 2))])  # 6 far outliers
    y = np.abs(x[:, :1])
    res = piecewise_fvu_curve(x, y, k_max=4, min_cluster_size=30, test_fraction=0.25)
    # 2-means would cut the outliers off (a piece far below 30 rows); the median split keeps going
    assert list(res["k"]) == [1, 2, 3, 4] and res["smallest_piece_rows"] >= 30
    assert np.all(np.diff(res["fvu_train"]) <= 1e-12)
