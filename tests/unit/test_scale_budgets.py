"""Issue 15: the restructured metrics equal slow references, and budgets shrink plans honestly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
from sklearn.cluster import KMeans

from deepscope_metrics import basins as B
from deepscope_metrics.complexity import affine_fit, linear_fvu, piecewise_fvu_curve, two_means
from deepscope_metrics.plugins import basins as PB
from deepscope_server.plugin_api import WHOLE_MODEL
from deepscope_server.testing import run_metric

from .test_basins import LinearHandle, gaussian_problem


def _ridge_reference(x, y, alpha):
    """The textbook primal ridge, solved densely: what affine_fit computed before issue 15."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    lam = alpha * x.shape[0] * float((xc * xc).sum() / (x.shape[0] * x.shape[1]))
    w = scipy.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
    return w, my - mx @ w


@pytest.mark.parametrize("n, d", [(12, 40), (60, 8)])  # dual (n < d) and primal forms
def test_affine_fit_equals_dense_primal_ridge(n, d):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, 3))
    w, b = affine_fit(x, y, alpha=1e-2)
    w_ref, b_ref = _ridge_reference(x, y, 1e-2)
    np.testing.assert_allclose(w, w_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b, b_ref, rtol=1e-7, atol=1e-9)


def test_two_means_finds_sklearns_partition_on_separated_data():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 1, (70, 5)), rng.normal(3, 1, (50, 5))])
    labels, cents = two_means(x, seed=0)
    km = KMeans(2, n_init=3, random_state=0).fit(x)
    same = labels == km.labels_
    assert same.all() or (~same).all()  # the same partition, up to naming
    order = [0, 1] if same.all() else [1, 0]
    np.testing.assert_allclose(cents, km.cluster_centers_[order], atol=1e-9)
    assert two_means(np.ones((10, 2))) is None  # nothing to split


def test_piecewise_and_linear_fvu_warn_when_rows_do_not_exceed_dims():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 64))  # 48 training rows against 64 dims (issue 15's ResNet case)
    y = np.maximum(x @ rng.standard_normal((64, 8)), 0)
    res = linear_fvu(x, y)
    assert res["n_train"] == 48 and res["input_dim"] == 64
    assert "48 training rows for 64 input dimensions" in res["warning"]
    assert "warning" not in linear_fvu(rng.standard_normal((400, 5)), rng.standard_normal((400, 2)))
    # piecewise: one cluster of 48 rows in 64 dims is underdetermined from K = 1 on
    res = piecewise_fvu_curve(x, y, k_max=1)
    assert res["underdetermined_from_k"] == 1 and "64" in res["warning"]
    res = piecewise_fvu_curve(rng.standard_normal((400, 3)), rng.standard_normal((400, 2)), k_max=2)
    assert "underdetermined_from_k" not in res and "warning" not in res


def test_fit_budget_shrinks_in_order_and_refuses_the_impossible():
    want = B.SearchPlan(samples=64, draws=32, steps=10, curve_points=8)
    cost = lambda q: q.rows() * 1e-3  # noqa: E731 - 1 ms per forward row
    assert cost(want) > 30
    plan = B.fit_budget(want, cost, 30.0)
    assert cost(plan) <= 30 and plan.samples < 64 and plan.steps == 10  # samples go first...
    assert B.fit_budget(want, cost, 1e9) == want
    tight = B.fit_budget(want, cost, cost(B.MIN_PLAN) + 1e-9)
    assert (tight.samples, tight.draws, tight.steps) == (8, 4, 5)  # ...down to the floor, never below
    assert cost(tight) <= cost(B.MIN_PLAN) + 1e-9
    assert B.fit_budget(want, cost, cost(B.MIN_PLAN) / 2) is None
    assert "samples: 16 of 64" in B.describe_plan(B.SearchPlan(16, 32, 10, 8), want, 0)


def test_budgeted_basins_keep_their_semantics_and_say_what_was_sampled():
    """A reduced search equals an unbudgeted search of the reduced plan; over budget says so once."""
    n, d = 40, 5
    w, b, x = gaussian_problem(n, d, 0)
    handle = LinearHandle(w, b)
    ref = np.argmax(x @ w.T + b, axis=1)
    want = B.SearchPlan(n, 16, 8, 4)
    small = B.SearchPlan(8, 4, 6, 2)

    def predict(inputs):
        return B.logits_to_labels(handle.run(inputs).outputs["output"])

    slow = B.sample_basins(predict, {"input": x[:8]}, ref[:8], B.Search(draws=4, steps=6, curve_points=2), key="input")
    # a cost function in "rows" makes the planner deterministic: the small plan is what fits
    budget = small.rows()
    plan = B.fit_budget(want, lambda q: float(q.rows()), budget)
    assert plan is not None and plan.rows() <= budget
    fast = B.sample_basins(
        predict,
        {"input": x[: plan.samples]},
        ref[: plan.samples],
        B.Search(draws=plan.draws, steps=plan.steps, curve_points=plan.curve_points),
        key="input",
    )
    if plan == small:
        np.testing.assert_array_equal(fast.radius, slow.radius)
    # over budget (any measured time exceeds 1e-12 s): nothing searched, one reason naming the parameter
    res = run_metric(
        PB.SampleBasins, handle.graph, data={"input": x}, model=handle, params={"samples": n, "budget_seconds": 1e-12}
    )[WHOLE_MODEL]
    assert math.isnan(res["radius_mean"]) and "budget_seconds" in res["reason"]
    res = run_metric(
        PB.WeightBasins, handle.graph, data={"input": x}, model=handle, params={"samples": n, "budget_seconds": 1e-12}
    )[WHOLE_MODEL]
    assert math.isnan(res["radius_mean"]) and "budget_seconds" in res["reason"]


def test_pattern_entropy_of_position_averaged_conv_relu_is_skipped_not_zero():
    from deepscope_metrics.plugins.complexity import PatternEntropyMetric
    from deepscope_server.model_graph import Layer

    relu = Layer("relu", "activation", "Relu", channel_axis=1, attrs={"function": "relu"})
    a = np.maximum(np.random.default_rng(0).standard_normal((40, 6, 5, 5)), 0)
    res = run_metric(PatternEntropyMetric, [relu], outputs={"relu": a})["relu"]
    assert res["status"] == "skipped" and "reduce='positions'" in res["reason"]
    res = run_metric(PatternEntropyMetric, [relu], outputs={"relu": a}, params={"reduce": "positions"})["relu"]
    assert "status" not in res and res["joint_entropy"] > 0
