"""Neuron transformation modes: oracles are hand-built layers, closed forms and brute-force pair loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from deepscope_metrics import modes as M
from deepscope_metrics.plugins import modes as P
from deepscope_metrics.streaming import ReservoirSampler
from deepscope_server.plugin_api import Layer
from deepscope_server.testing import run_metric

torch.set_num_threads(1)


def act_layer(name: str = "act", function: str = "relu", channel_axis: int = -1, **attrs) -> Layer:
    return Layer(name, "activation", function, attrs={"function": function, **attrs}, channel_axis=channel_axis)


def relu_data(h: np.ndarray) -> dict:
    return {"inputs": {"act": h}, "outputs": {"act": np.maximum(h, 0.0)}}


def brute_force_r(h: np.ndarray, y: np.ndarray) -> float:
    """r over all pairs with distinct h, counting tied-or-inverted outputs, by direct enumeration."""
    bad = distinct = 0
    for a, b in itertools.combinations(range(len(h)), 2):
        if h[a] == h[b]:
            continue
        distinct += 1
        lo, hi = (a, b) if h[a] < h[b] else (b, a)
        bad += y[lo] >= y[hi]
    return 1 - bad / distinct if distinct else math.nan


# ------------------------------------------------------------------ increasing regions


def test_regions_match_known_thresholds():
    assert M.increasing_region("relu") == (0.0, math.inf)
    assert M.increasing_region("relu6") == (0.0, 6.0)
    assert M.increasing_region("hardtanh") == (-1.0, 1.0)
    assert M.increasing_region("hardtanh", {"min_val": -2.0, "max_val": 3.0}) == (-2.0, 3.0)
    # GELU / SiLU minima quoted in METRICS.md
    assert M.increasing_region("gelu")[0] == pytest.approx(-0.7518, abs=1e-4)
    assert M.increasing_region("silu")[0] == pytest.approx(-1.2785, abs=1e-4)
    for f in ("tanh", "sigmoid", "leaky_relu", "elu", "softplus"):
        assert M.increasing_region(f) == (-math.inf, math.inf)
    assert M.increasing_region("leaky_relu", {"negative_slope": 0.0}) == (0.0, math.inf)


@pytest.mark.parametrize("function", ["gelu", "silu"])
def test_gelu_silu_region_edge_is_the_minimum_of_sigma(function):
    lo, _ = M.increasing_region(function)
    x = np.linspace(-4, 2, 600001)
    y = M.activate(function, x)
    assert x[np.argmin(y)] == pytest.approx(lo, abs=1e-4)
    # sigma decreases left of the edge and increases right of it
    assert M.activate(function, lo - 0.1) > M.activate(function, lo)
    assert M.activate(function, lo + 0.1) > M.activate(function, lo)


def test_activations_match_torch():
    h = np.linspace(-8, 8, 801)
    t = torch.tensor(h)
    pairs = {
        "relu": torch.relu(t),
        "relu6": torch.nn.functional.relu6(t),
        "hardtanh": torch.nn.functional.hardtanh(t),
        "gelu": torch.nn.functional.gelu(t),
        "silu": torch.nn.functional.silu(t),
        "tanh": torch.tanh(t),
        "sigmoid": torch.sigmoid(t),
        "leaky_relu": torch.nn.functional.leaky_relu(t),
        "elu": torch.nn.functional.elu(t),
        "softplus": torch.nn.functional.softplus(t),
    }
    for f, ref in pairs.items():
        np.testing.assert_allclose(M.activate(f, h), ref.numpy(), atol=1e-12, err_msg=f)


def test_saturation_tolerance_closed_forms():
    tau = 0.1
    # tanh' = 1 - tanh^2 > tau  <=>  |h| < atanh(sqrt(1 - tau))
    lo, hi = M.increasing_region("tanh", saturation_tol=tau)
    assert hi == pytest.approx(math.atanh(math.sqrt(1 - tau)), rel=1e-8) and lo == pytest.approx(-hi, rel=1e-8)
    # sigmoid' = s(1-s) > tau/4  <=>  s in ((1 -+ sqrt(1-tau))/2)
    lo, hi = M.increasing_region("sigmoid", saturation_tol=tau)
    s = (1 + math.sqrt(1 - tau)) / 2
    assert hi == pytest.approx(math.log(s / (1 - s)), rel=1e-8)
    # softplus' = sigmoid(h) > tau  <=>  h > logit(tau); no upper bound
    lo, hi = M.increasing_region("softplus", saturation_tol=tau)
    assert lo == pytest.approx(math.log(tau / (1 - tau)), rel=1e-8) and hi == math.inf
    # ELU' = e^h on h < 0 > tau  <=>  h > ln(tau)
    assert M.increasing_region("elu", saturation_tol=tau)[0] == pytest.approx(math.log(tau), rel=1e-8)
    assert M.increasing_region("leaky_relu", saturation_tol=tau) == (0.0, math.inf)
    assert M.increasing_region("relu", saturation_tol=tau) == (0.0, math.inf)


# ------------------------------------------------------------------ pure functions vs brute force


def test_graded_and_rank_rule_match_brute_force_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(25):
        p, n = int(rng.integers(2, 30)), int(rng.integers(1, 4))
        h = rng.integers(-3, 4, (p, n)).astype(float)  # many ties in h
        y = rng.integers(-2, 3, (p, n)).astype(float)  # arbitrary (non-monotone) outputs, ties in y
        r, bad, distinct = M.graded_scores(h, y)
        for j in range(n):
            np.testing.assert_equal(r[j], brute_force_r(h[:, j], y[:, j]))
            order_kept = all(
                (y[a, j] < y[b, j]) if h[a, j] < h[b, j] else (y[a, j] > y[b, j])
                for a, b in itertools.combinations(range(p), 2)
                if h[a, j] != h[b, j]
            )
            assert M.rank_rule_opt(h, y)[j] == order_kept


def test_graded_score_matches_kendall_tau_without_ties():
    # Without ties, bad pairs = discordant pairs, so r = (1 + tau) / 2.
    rng = np.random.default_rng(2)
    h, y = rng.normal(size=(300, 3)), rng.normal(size=(300, 3))
    r, _, _ = M.graded_scores(h, y)
    for j in range(3):
        assert r[j] == pytest.approx((1 + stats.kendalltau(h[:, j], y[:, j]).statistic) / 2, abs=1e-12)


def test_reservoir_is_uniform_and_bounded():
    counts = np.zeros(100)
    for rep in range(400):
        res = ReservoirSampler(10, seed=rep)
        for lo in range(0, 100, 7):
            rows = np.arange(lo, min(lo + 7, 100), dtype=float)[:, None]
            res.update(rows, rows)
        h, y = res.sample()
        assert h.shape == (10, 1) and np.array_equal(h, y) and len(set(h[:, 0])) == 10
        counts[h[:, 0].astype(int)] += 1
    # each row kept with probability 10/100: 40 expected per row over 400 repetitions
    assert stats.chisquare(counts).pvalue > 1e-3


# ------------------------------------------------------------------ metrics on constructed layers


def test_large_positive_biases_make_every_neuron_opt():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    w = rng.normal(size=(5, 8))
    h = x @ w + 50.0  # pre-activations far inside ReLU's increasing region
    for rule in ("region", "rank"):
        res = run_metric(P.ModeFractions, [act_layer()], **relu_data(h), params={"rule": rule})["act"]
        assert res["frac_opt"] == 1.0 and res["frac_dead"] == 0.0 and res["n_samples"] == 200
    g = run_metric(P.GradedScore, [act_layer()], **relu_data(h))["act"]
    np.testing.assert_array_equal(g["r"], np.ones(8))


def test_dead_and_partially_active_units():
    rng = np.random.default_rng(0)
    p = 120
    h = np.empty((p, 4))
    h[:, 0] = rng.uniform(1, 2, p)  # always active: OPT
    h[:, 1] = -rng.uniform(1, 2, p)  # never active: dead
    active = np.zeros(p, bool)
    active[rng.choice(p, 30, replace=False)] = True
    h[:, 2] = np.where(active, rng.uniform(1, 2, p), -rng.uniform(1, 2, p))  # active on a known subset
    h[:, 3] = rng.uniform(1, 2, p)
    h[5, 3] = -1.0  # one sample in the flat piece
    res = run_metric(P.ModeFractions, [act_layer()], **relu_data(h), batch_size=16)["act"]
    np.testing.assert_array_equal(res["modes"], [M.OPT, M.DEAD, M.NPT_ALIVE, M.NPT_ALIVE])
    assert (res["n_opt"], res["n_npt_alive"], res["n_dead"]) == (1, 2, 1)
    assert res["frac_npt_alive"] == 0.5
    rates = run_metric(P.ActivationRates, [act_layer()], **relu_data(h), batch_size=16)["act"]["rates"]
    np.testing.assert_allclose(rates, [1.0, 0.0, 30 / p, (p - 1) / p])
    # Rank rule: a single sample tied at 0 loses no pairwise order, so unit 3 is OPT there.
    rank = run_metric(P.ModeFractions, [act_layer()], **relu_data(h), params={"rule": "rank"})["act"]
    np.testing.assert_array_equal(rank["modes"], [M.OPT, M.DEAD, M.NPT_ALIVE, M.OPT])


def test_relu_graded_closed_form():
    # ReLU maps the k samples with h <= 0 to 0: their k(k-1)/2 pairs become ties, every other
    # pair keeps its strict order, and all P(P-1)/2 pairs have distinct h (continuous data), so
    # r = 1 - k(k-1)/(P(P-1)).
    rng = np.random.default_rng(5)
    p, n = 400, 16
    h = rng.normal(loc=rng.normal(size=n), size=(p, n))
    k = (h <= 0).sum(axis=0)
    res = run_metric(P.GradedScore, [act_layer()], **relu_data(h), params={"max_samples": p}, batch_size=50)["act"]
    np.testing.assert_allclose(res["r"], 1 - k * (k - 1) / (p * (p - 1)), rtol=0, atol=1e-12)
    assert res["n_rank_samples"] == p


def test_invariance_to_positive_rescaling_of_weights_and_bias():
    rng = np.random.default_rng(6)
    x, w, b = rng.normal(size=(150, 6)), rng.normal(size=(6, 10)), rng.normal(size=10)
    for metric, key, params in (
        (P.ModeFractions, "modes", {}),
        (P.ModeFractions, "modes", {"rule": "rank"}),
        (P.GradedScore, "r", {}),
        (P.ActivationRates, "rates", {}),
    ):
        base = run_metric(metric, [act_layer()], **relu_data(x @ w + b), params=params)["act"][key]
        for c in (0.01, 3.7, 1000.0):
            scaled = run_metric(metric, [act_layer()], **relu_data(x @ (c * w) + c * b), params=params)["act"][key]
            np.testing.assert_allclose(scaled, base, rtol=1e-12)


@pytest.mark.parametrize("rule", ["region", "rank"])
def test_opt_fraction_never_increases_with_more_samples(rule):
    rng = np.random.default_rng(7)
    h = rng.normal(loc=1.5, size=(400, 64))
    fracs = [
        run_metric(P.ModeFractions, [act_layer()], **relu_data(h[:m]), params={"rule": rule, "max_rank_samples": 400})[
            "act"
        ]["frac_opt"]
        for m in (5, 20, 50, 100, 200, 400)
    ]
    assert all(a >= b for a, b in zip(fracs, fracs[1:])) and fracs[0] > fracs[-1]


def test_region_opt_implies_rank_opt_for_gelu():
    rng = np.random.default_rng(8)
    h = rng.normal(loc=rng.uniform(-1, 3, 40), size=(60, 40))
    data = {"inputs": {"act": h}, "outputs": {"act": M.activate("gelu", h)}}
    layer = [act_layer(function="gelu")]
    region = run_metric(P.ModeFractions, layer, **data)["act"]["modes"]
    rank = run_metric(P.ModeFractions, layer, **data, params={"rule": "rank"})["act"]["modes"]
    assert np.all(rank[region == M.OPT] == M.OPT)
    # region-OPT GELU units are exactly those with every h above the minimum
    np.testing.assert_array_equal(region == M.OPT, h.min(axis=0) > -0.75179)


def test_conv_channel_is_one_neuron_over_images_and_positions():
    rng = np.random.default_rng(9)
    h = rng.uniform(0.5, 1.0, size=(6, 3, 4, 5))  # [B, C, H, W]
    h[2, 1, 3, 0] = -1.0  # channel 1 leaves the increasing region at one (image, position)
    h[:, 2] = -0.5  # channel 2 dead
    layer = [act_layer(channel_axis=1)]
    res = run_metric(P.ModeFractions, layer, **relu_data(h), batch_size=4)["act"]
    np.testing.assert_array_equal(res["modes"], [M.OPT, M.NPT_ALIVE, M.DEAD])
    assert res["n_samples"] == 6 * 4 * 5 and res["n_images"] == 6 and res["n_units"] == 3
    per = run_metric(P.ModeFractions, layer, **relu_data(h), params={"per_position": True})["act"]
    modes = per["modes"].reshape(3, 4, 5)  # flatten order of [C, H, W]
    assert modes[1, 3, 0] == M.NPT_ALIVE and (modes[1] == M.OPT).sum() == 19
    assert (modes[0] == M.OPT).all() and (modes[2] == M.DEAD).all() and per["n_samples"] == 6


def test_rank_sample_is_capped_and_reported():
    rng = np.random.default_rng(10)
    h = rng.normal(size=(500, 4))
    res = run_metric(P.GradedScore, [act_layer()], **relu_data(h), params={"max_samples": 64}, batch_size=30)["act"]
    assert res["n_rank_samples"] == 64 and res["n_samples"] == 500 and np.isfinite(res["r"]).all()


def test_streaming_does_not_depend_on_batch_size():
    rng = np.random.default_rng(11)
    h = rng.normal(loc=0.8, size=(257, 32))
    a = run_metric(P.ActivationRates, [act_layer()], **relu_data(h), batch_size=1)["act"]
    b = run_metric(P.ActivationRates, [act_layer()], **relu_data(h), batch_size=1000)["act"]
    np.testing.assert_array_equal(a["rates"], b["rates"])
    np.testing.assert_array_equal(a["rates"], (h > 0).mean(axis=0))


def test_degenerate_inputs_give_nan_and_reason():
    one = run_metric(P.ModeFractions, [act_layer()], **relu_data(np.ones((1, 3))))["act"]
    assert math.isnan(one["frac_opt"]) and "2 samples" in one["reason"]
    unknown = act_layer(function="mish")
    h = np.random.default_rng(0).normal(size=(20, 3))
    data = {"inputs": {"act": h}, "outputs": {"act": h * np.tanh(np.log1p(np.exp(h)))}}
    res = run_metric(P.ModeFractions, [unknown], **data)["act"]
    assert math.isnan(res["frac_opt"]) and "rank rule" in res["reason"]
    rank = run_metric(P.ModeFractions, [unknown], **data, params={"rule": "rank"})["act"]
    assert rank["n_opt"] + rank["n_npt_alive"] + rank["n_dead"] == 3


def test_metadata_and_registration():
    from deepscope_metrics.plugins import basins

    for module, family in ((P, "modes"), (basins, "basins")):
        registered = []
        module.deepscope_register_metrics(registered.append)
        assert registered and {m.name.split(".")[0] for m in registered} == {family}
        for m in registered:
            assert m.reconstructed and "(reconstructed" in m.description
    assert P.ModeFractions.summary_keys[0] == "r_mean"  # the graded score is the family's headline


def test_each_builtin_entry_point_registers_exactly_its_family():
    """``DEEPSCOPE_PLUGINS=modes`` means the modes and nothing else (basins.* ships apart)."""
    from importlib import metadata

    points = [ep for ep in metadata.entry_points(group="deepscope") if ep.dist and ep.dist.name == "deepscope-metrics"]
    assert {"modes", "basins", "complexity", "dimension"} <= {ep.name for ep in points}
    for ep in points:
        registered = []
        ep.load().deepscope_register_metrics(registered.append)
        assert registered and {m.name.split(".")[0] for m in registered} == {ep.name}, ep.name


# ------------------------------------------------------------------ a real torch model


def test_small_torch_model_with_hooks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 10),
        torch.nn.GELU(),
        torch.nn.Linear(10, 3),
    )
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.0, 5.0, -5.0, 0.0]))  # channel 1 mostly off, 2 mostly on
    model.eval()
    captured: dict[str, list] = {"relu_in": [], "relu_out": [], "gelu_in": [], "gelu_out": []}

    def hook(prefix):
        def fn(module, args, output):
            captured[f"{prefix}_in"].append(args[0].detach().clone())
            captured[f"{prefix}_out"].append(output.detach().clone())

        return fn

    model[2].register_forward_hook(hook("relu"))
    model[5].register_forward_hook(hook("gelu"))
    x = torch.randn(40, 1, 8, 8)
    with torch.no_grad():
        model(x)
    cat = {k: torch.cat(v).double().numpy() for k, v in captured.items()}
    layers = [act_layer("relu", "relu", channel_axis=1), act_layer("gelu", "gelu")]
    inputs = {"relu": cat["relu_in"], "gelu": cat["gelu_in"]}
    outputs = {"relu": cat["relu_out"], "gelu": cat["gelu_out"]}
    res = run_metric(P.ModeFractions, layers, inputs=inputs, outputs=outputs, batch_size=16)
    # independent oracle: per channel over (image, position)
    hmin = cat["relu_in"].min(axis=(0, 2, 3))
    hmax = cat["relu_in"].max(axis=(0, 2, 3))
    expect = np.where(hmax <= 0, M.DEAD, np.where(hmin > 0, M.OPT, M.NPT_ALIVE))
    np.testing.assert_array_equal(res["relu"]["modes"], expect)
    expect_gelu = np.where(cat["gelu_in"].min(axis=0) > -0.75179, M.OPT, M.NPT_ALIVE)
    np.testing.assert_array_equal(res["gelu"]["modes"], expect_gelu)
    # graded score of the GELU layer against direct pair enumeration on its 40 samples
    g = run_metric(P.GradedScore, layers, inputs=inputs, outputs=outputs, select=["gelu"])["gelu"]
    expected_r = [brute_force_r(cat["gelu_in"][:, j], cat["gelu_out"][:, j]) for j in range(10)]
    np.testing.assert_allclose(g["r"], expected_r, rtol=0, atol=1e-12)
    rates = run_metric(P.ActivationRates, layers, inputs=inputs, outputs=outputs, select=["relu"])["relu"]["rates"]
    np.testing.assert_allclose(rates, (cat["relu_in"] > 0).mean(axis=(0, 2, 3)))
