"""Rank Probability Distribution and Linear Substitution Map (Lin et al., later version): closed forms,
brute-force loops over samples, and the graded headline of modes.fractions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepscope_metrics import modes as M
from deepscope_metrics.plugins import modes as P
from deepscope_server.plugin_api import WHOLE_MODEL, Layer
from deepscope_server.testing import run_metric

# For h ~ N(0, 1), y = relu(h): cov(h, y) = 1/2, var y = 1/2 - 1/(2π), so a linear substitute
# explains (1/2)² / var y of it.
RELU_GAUSS_FVU = 1 - 0.25 / (0.5 - 1 / (2 * np.pi))


def act(name: str = "act", function: str = "relu", channel_axis: int = -1) -> Layer:
    return Layer(name, "activation", function, attrs={"function": function}, channel_axis=channel_axis)


def relu(h: np.ndarray, name: str = "act") -> dict:
    return {"inputs": {name: h}, "outputs": {name: np.maximum(h, 0.0)}}


# ------------------------------------------------------------------------- rank probability


def test_order_preserving_neurons_keep_every_rank():
    h = np.random.default_rng(0).standard_normal((300, 5))
    res = run_metric(
        P.RankProbability, [act(function="tanh")], inputs={"act": h}, outputs={"act": np.tanh(h)}, params={"bins": 10}
    )["act"]
    assert res["rank_displacement_mean"] == 0.0 and res["spearman_mean"] == pytest.approx(1.0)
    assert res["diagonal_mass"] == pytest.approx(1.0)
    np.testing.assert_allclose(res["rank_probability"], np.eye(10))


def _relu_ranks_brute(h: np.ndarray) -> tuple[list[float], list[float]]:
    """(u, v) per sample of one ReLU neuron by a loop: the k silent samples share their average output rank."""
    p, k = len(h), int((h <= 0).sum())
    u, v = [], []
    for position in range(p):  # position = rank by h (0-based), distinct h
        u.append(position / (p - 1))
        v.append(((k - 1) / 2 if position < k else position) / (p - 1))
    return u, v


def test_relu_displacement_and_distribution_match_a_loop_over_samples():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((200, 4)) + np.array([-1.0, -0.3, 0.2, 1.0])
    res = M.rank_probability(h, np.maximum(h, 0), bins=4)
    pairs = [_relu_ranks_brute(h[:, j]) for j in range(4)]
    expected = [np.mean(np.abs(np.subtract(u, v))) for u, v in pairs]
    np.testing.assert_allclose(res["rank_displacement"], expected, rtol=1e-12)
    assert res["rank_displacement_mean"] == pytest.approx(np.mean(expected))
    np.testing.assert_allclose(res["spearman"], [np.corrcoef(u, v)[0, 1] for u, v in pairs], rtol=1e-12)
    joint = np.zeros((4, 4))
    for u, v in pairs:
        for a, b in zip(u, v):
            joint[min(int(a * 4), 3), min(int(b * 4), 3)] += 1
    np.testing.assert_allclose(res["joint"], joint / joint.sum())
    np.testing.assert_allclose(res["conditional"], joint / joint.sum(axis=1, keepdims=True))
    assert res["diagonal_mass"] == pytest.approx(np.trace(joint) / joint.sum())


def test_dead_and_constant_neurons_are_not_measured():
    h = np.random.default_rng(2).standard_normal((50, 3))
    h[:, 1] = -1 - np.abs(h[:, 1])  # dead: relu output 0 everywhere
    res = M.rank_probability(h, np.maximum(h, 0))
    assert res["n_measured"] == 2 and math.isnan(res["rank_displacement"][1])
    one = run_metric(P.RankProbability, [act()], **relu(-np.ones((30, 2))))["act"]
    assert math.isnan(one["rank_displacement_mean"]) and "dead" in one["reason"]


# ---------------------------------------------------------------------- linear substitution


def test_streamed_substitution_equals_direct_least_squares_per_neuron():
    rng = np.random.default_rng(3)
    h = rng.standard_normal((777, 6)) * 3 + 5 * rng.standard_normal(6)  # offsets test the streamed merge
    y = np.tanh(h / 4)
    res = run_metric(P.LinearSubstitution, [act(function="tanh")], inputs={"act": h}, outputs={"act": y}, batch_size=50)
    lay = res["act"]
    sse_total = sst_total = 0.0
    for j in range(6):
        a, b = np.polyfit(h[:, j], y[:, j], 1)
        sse = float(((y[:, j] - (a * h[:, j] + b)) ** 2).sum())
        sst = float(((y[:, j] - y[:, j].mean()) ** 2).sum())
        assert lay["slope"][j] == pytest.approx(a, rel=1e-9) and lay["intercept"][j] == pytest.approx(b, abs=1e-9)
        assert lay["substitution_fvu"][j] == pytest.approx(sse / sst, rel=1e-7, abs=1e-12)
        sse_total, sst_total = sse_total + sse, sst_total + sst
    assert lay["fvu_pooled"] == pytest.approx(sse_total / sst_total, rel=1e-7)
    assert res[WHOLE_MODEL]["map"].y[0] == pytest.approx(lay["fvu_pooled"])


def test_relu_substitution_closed_forms():
    rng = np.random.default_rng(4)
    h = rng.standard_normal((40000, 2))
    h[:, 1] += 20  # always active: relu is the identity there
    res = run_metric(P.LinearSubstitution, [act()], **relu(h), batch_size=4096)["act"]
    assert res["substitution_fvu"][0] == pytest.approx(RELU_GAUSS_FVU, abs=0.01)
    assert res["substitution_fvu"][1] < 1e-12 and res["slope"][1] == pytest.approx(1.0)
    assert res["frac_linear"] == 0.5


def test_substitution_map_over_depth_and_dead_layers():
    rng = np.random.default_rng(5)
    h1, h2 = rng.standard_normal((300, 3)) + 3, rng.standard_normal((300, 3))
    layers = [act("a1"), act("a2"), act("a3")]
    data = {
        "inputs": {"a1": h1, "a2": h2, "a3": -np.ones((300, 3))},
        "outputs": {"a1": np.maximum(h1, 0), "a2": np.maximum(h2, 0), "a3": np.zeros((300, 3))},
    }
    res = run_metric(P.LinearSubstitution, layers, **data)
    curve = res[WHOLE_MODEL]["map"]
    assert list(curve.x) == [1, 2, 3] and res[WHOLE_MODEL]["layers"] == "a1,a2,a3"
    assert curve.y[0] < curve.y[1] and math.isnan(curve.y[2])  # mostly active < half active; a3 dead
    assert "dead" in res["a3"]["reason"] and res["a3"]["n_dead_or_constant"] == 3


# -------------------------------------------------------------------- graded headline


def test_fractions_headline_is_the_graded_score_with_its_relu_closed_form():
    """ReLU, distinct h, k_j silent samples: r_j = 1 - k_j(k_j - 1) / (P(P - 1)), while OPT = 0 for all."""
    rng = np.random.default_rng(6)
    p = 400
    h = rng.standard_normal((p, 8)) + np.linspace(0.5, 2.0, 8)
    res = run_metric(P.ModeFractions, [act()], **relu(h), params={"max_rank_samples": p})["act"]
    k = (h <= 0).sum(axis=0)
    assert np.all(k > 0) and res["frac_opt"] == 0.0  # the binary fraction saturates...
    expected = np.mean(1 - k * (k - 1) / (p * (p - 1)))
    assert res["r_mean"] == pytest.approx(expected, rel=1e-12)  # ...the graded score does not
    assert 0.9 < res["r_mean"] < 1.0
