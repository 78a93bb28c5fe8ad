"""The fractal plugin adapters through run_metric, with oracles: per-batch direct SS_rate, feature
networks built to be a path or a lattice, spectra with a known power law, point sets of known dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepscope_metrics.fractal import ss_rate
from deepscope_metrics.plugins import fractal as P
from deepscope_server.plugin_api import WHOLE_MODEL, Curve, Layer, Table
from deepscope_server.testing import run_metric


def dense(name: str) -> Layer:
    return Layer(name, "linear", "Linear")


def conv(name: str) -> Layer:
    return Layer(name, "conv", "Conv2d", channel_axis=1)


def test_ss_rate_conv_layer_matches_direct_batches():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(150, 12, 3, 3))
    res = run_metric(P.SSRateMetric, [conv("c1")], outputs={"c1": a}, params={"batch_size": 64}, batch_size=25)
    r = res["c1"]
    pooled = a.mean(axis=(2, 3))  # independent reduction: channel = node, spatial mean
    direct = [ss_rate(pooled[lo : lo + 64].T).value for lo in (0, 64)]
    assert r["ss_rate"] == pytest.approx(np.mean(direct), abs=1e-12)
    assert r["ss_rate_std"] == pytest.approx(np.std(direct), abs=1e-12)
    assert (r["n_batches"], r["n_samples"], r["n_samples_dropped"], r["n_nodes"]) == (2, 150, 22, 12)
    assert r["batch_size"] == 64 and r["n_thresholds"] == 256 and r["variant"] == "code"
    assert isinstance(r["n_theta"], Curve) and r["n_theta"].y[0] == 12


def test_ss_rate_degenerate_layers():
    rng = np.random.default_rng(1)
    outputs = {"two": rng.normal(size=(64, 2)), "nan": rng.normal(size=(64, 5)), "dead": np.zeros((64, 6))}
    outputs["nan"][3, 1] = np.nan
    res = run_metric(P.SSRateMetric, [dense(n) for n in outputs], outputs=outputs)
    for name, needle in [("two", "at least 3"), ("nan", "NaN/inf"), ("dead", "identical")]:
        assert math.isnan(res[name]["ss_rate"]) and needle in res[name]["reason"]
    assert res["dead"]["zero_variance_fraction"] == 1.0


def test_ss_rate_fewer_samples_than_batch_warns():
    res = run_metric(P.SSRateMetric, [dense("h")], outputs={"h": np.random.default_rng(2).normal(size=(20, 7))})
    assert np.isfinite(res["h"]["ss_rate"]) and "only 20 samples" in res["__warnings__"]["warnings"]


def test_box_dimension_of_a_path_and_a_lattice_feature_network():
    rng = np.random.default_rng(3)
    n = 400
    # units on a line: F_i = i * v, so d_ij ~ |i - j|, the MST eps joins neighbours -> G_M is a path
    v = rng.normal(size=n)
    line = np.outer(np.arange(60.0), v).T  # [samples, units]
    # units on a 12 x 12 grid: F_i = x_i v + y_i w with orthogonal v, w of equal norm -> a lattice
    q, _ = np.linalg.qr(rng.normal(size=(n, 2)))
    xs, ys = np.meshgrid(np.arange(12.0), np.arange(12.0))
    grid = (np.outer(xs.ravel(), q[:, 0]) + np.outer(ys.ravel(), q[:, 1])).T
    res = run_metric(P.BoxDimensionMetric, [dense("line"), dense("grid")], outputs={"line": line, "grid": grid})
    r = res["line"]
    assert r["n_edges"] == 59 and r["n_nodes"] == 60 and r["diameter"] == 59
    assert r["d_B"] == pytest.approx(1.0, abs=0.08) and r["fractal"]
    assert isinstance(r["boxes"], Table) and r["boxes"].columns["N_B"][0] == 60
    g = res["grid"]
    assert g["n_edges"] == 2 * 12 * 11 and g["diameter"] == 22
    assert 1.4 < g["d_B"] < 2.05  # 12 x 12 lattice: biased low by the boundary (see box-covering tests)


def test_box_dimension_degenerate():
    outputs = {
        "same": np.ones((30, 5)),
        "nan": np.full((30, 5), np.nan),
        "two": np.random.default_rng(4).normal(size=(30, 2)),
    }
    res = run_metric(P.BoxDimensionMetric, [dense(n) for n in outputs], outputs=outputs)
    assert "identical" in res["same"]["reason"]
    assert "NaN/inf" in res["nan"]["reason"]
    assert "at least 3" in res["two"]["reason"]
    assert all(math.isnan(r["d_B"]) and not r["fractal"] for r in res.values())


def pareto_layer(rng, gamma: float, units: int = 150, n: int = 12000) -> np.ndarray:
    """Activations whose covariance eigenvalues are a Pareto(gamma) sample (random rotation)."""
    lam = (1 - rng.random(units)) ** (-1 / (gamma - 1))
    q, _ = np.linalg.qr(rng.normal(size=(units, units)))
    return (rng.normal(size=(n, units)) * np.sqrt(lam)) @ q.T


def test_spectrum_exponent_recovers_power_law_and_sigma():
    rng = np.random.default_rng(5)
    outputs = {"a": pareto_layer(rng, 2.0), "b": pareto_layer(rng, 3.0)}
    res = run_metric(P.SpectrumExponentMetric, [dense("a"), dense("b")], outputs=outputs, batch_size=1000)
    # MLE standard error (gamma - 1)/sqrt(n_tail) ~ 0.1-0.2 for 150 eigenvalues, plus sampling noise
    # of the covariance (n/units = 80)
    assert res["a"]["gamma"] == pytest.approx(2.0, abs=0.35)
    assert res["b"]["gamma"] == pytest.approx(3.0, abs=0.5)
    whole = res[WHOLE_MODEL]
    assert whole["sigma_gamma"] == pytest.approx(abs(res["a"]["gamma"] - res["b"]["gamma"]) / 2, abs=1e-12)
    assert res["a"]["n_samples"] == 12000 and res["a"]["n_units"] == 150


def test_spectrum_streaming_matches_one_shot_covariance():
    from deepscope_metrics.streaming import StreamingCovariance  # what the spectrum metric streams into

    x = np.random.default_rng(6).normal(loc=1e4, size=(1000, 7))  # large offset: cancellation check
    acc = StreamingCovariance()
    for lo in range(0, 1000, 33):
        acc.update(x[lo : lo + 33])
    np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_spectrum_degenerate():
    outputs = {"one": np.random.default_rng(7).normal(size=(50, 1)), "nan": np.full((50, 4), np.inf)}
    res = run_metric(P.SpectrumExponentMetric, [dense("one"), dense("nan")], outputs=outputs)
    assert "need at least" in res["one"]["reason"] and "NaN/inf" in res["nan"]["reason"]
    assert math.isnan(res[WHOLE_MODEL]["sigma_gamma"]) and "reason" in res[WHOLE_MODEL]


def test_gp_correlation_dimension_of_known_sets_and_delta():
    rng = np.random.default_rng(8)
    n = 1500
    line = np.zeros((n, 10))
    line[:, 0] = rng.random(n)
    plane = np.zeros((n, 10))
    plane[:, :2] = rng.random((n, 2))
    res = run_metric(
        P.CorrelationDimensionGPMetric,
        [dense("line"), dense("plane")],
        outputs={"line": line, "plane": plane},
        params={"normalise": "none"},
        batch_size=256,
    )
    assert res["line"]["n_samples_used"] == 1000 and res["line"]["n_samples"] == 1500  # capped
    # small radii (<= 5 % of pairs) keep edge effects small: measured 1.00 and 1.93
    assert res["line"]["dimension"] == pytest.approx(1.0, abs=0.1)
    assert res["plane"]["dimension"] == pytest.approx(2.0, abs=0.15)
    d1, d2 = res["line"]["dimension"], res["plane"]["dimension"]
    assert res[WHOLE_MODEL]["delta"] == pytest.approx((d2 - d1) / ((d1 + d2) / 2), abs=1e-12)


def test_gp_correlation_dimension_degenerate():
    res = run_metric(P.CorrelationDimensionGPMetric, [dense("c")], outputs={"c": np.ones((40, 3))})
    assert math.isnan(res["c"]["dimension"]) and "reason" in res["c"]
    assert math.isnan(res[WHOLE_MODEL]["delta"])


def test_correlation_dimension_flattens_reports_its_reduction_and_caps_memory():
    rng = np.random.default_rng(9)
    conv_maps = rng.normal(size=(200, 3, 4, 4))
    tokens = rng.normal(size=(200, 5, 6))
    layers = [conv("c"), Layer("t", "linear", "Linear", channel_axis=-1)]
    res = run_metric(
        P.CorrelationDimensionMetric,
        layers,
        outputs={"c": conv_maps, "t": tokens},
        params={"reduction": "pca", "max_values": 4800},
        batch_size=64,
    )
    assert res["c"]["n_features"] == 48 and res["t"]["n_features"] == 30  # every element, not channel means
    assert res["c"]["reduction"] == "pca" and res["c"]["n_components"] == 50
    assert res["c"]["n_samples_used"] == 100 and res["c"]["n_samples"] == 200  # 4800 values / 48 per sample
    assert res["t"]["n_samples_used"] == 160
    assert "c: 48 values per sample; max_values=4800 keeps 100 samples" in res["__warnings__"]["warnings"]
    assert np.isfinite(res["c"]["dimension"]) and res["c"]["dimension"] >= 0
    assert isinstance(res["c"]["correlation_sum"], Curve) and res["c"]["correlation_sum"].x.size == 40


def test_correlation_dimension_umap_without_umap_learn_is_a_clear_error():
    from deepscope_metrics.fractal.correlation import umap_available

    if umap_available():
        pytest.skip("umap-learn is installed here")
    with pytest.raises(ValueError, match=r"deepscope-metrics\[umap\]"):
        run_metric(
            P.CorrelationDimensionMetric, [dense("h")], outputs={"h": np.ones((10, 3))}, params={"reduction": "umap"}
        )


def test_registered_through_the_entry_point():
    from deepscope_server.plugins import load_registry

    reg = load_registry(allow={"fractal"})
    names = {
        "fractal.ss_rate",
        "fractal.box_dimension",
        "fractal.spectrum_exponent",
        "fractal.correlation_dimension",
        "fractal.correlation_dimension_gp",
    }
    assert names <= set(reg.metrics), reg.errors
    assert reg.metrics["fractal.box_dimension"].cls.extension
    assert reg.metrics["fractal.correlation_dimension_gp"].cls.extension
    assert not reg.metrics["fractal.correlation_dimension"].cls.extension
    assert "extension beyond the paper" in reg.metrics["fractal.box_dimension"].cls.description


def test_ss_rate_mean_and_std_over_many_batches_with_constant_state():
    """Oracle: ss_rate() on each batch of B, then numpy mean/std; the metric keeps only O(S) sums."""
    from deepscope_metrics.fractal.ss_rate import SSRateTally, ss_rate

    rng = np.random.default_rng(7)
    a = rng.normal(size=(8 * 200, 10)) * rng.uniform(0.1, 3.0, size=10)
    params = {"batch_size": 8, "n_thresholds": 16}
    res = run_metric(P.SSRateMetric, [dense("h")], outputs={"h": a}, params=params, batch_size=50)["h"]
    direct = np.array([ss_rate(a[lo : lo + 8].T, 16).value for lo in range(0, len(a), 8)])
    assert res["n_batches"] == 200
    assert res["ss_rate"] == pytest.approx(direct.mean(), abs=1e-12)
    assert res["ss_rate_std"] == pytest.approx(direct.std(), abs=1e-9)
    tally = SSRateTally()
    for lo in range(0, len(a), 8):
        tally.add(ss_rate(a[lo : lo + 8].T, 16))
    assert all(np.size(v) in (1, 16) for v in tally.sums.values())  # no per-batch storage
