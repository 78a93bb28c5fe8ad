"""Attraction basins: a numpy linear classifier stands in for the server's ModelHandle.

For logits ``W x + b`` with two classes the decision margin is ``m = w.x + c`` (w = W1 - W0,
c = b1 - b0), and Gaussian noise moves it by a Gaussian amount, which gives closed forms:
- input noise ``delta = r ||x|| / sqrt(d) * g``: P(keep) = Phi(|m| sqrt(d) / (r ||x|| ||w||)), so the
  basin radius at keep probability p is ``r* = |m| sqrt(d) / (||x|| ||w|| z_p)``;
- weight noise ``W + eta rms(W) G``, ``b + eta rms(b) g``: the margin noise has variance
  ``eta^2 * 2 (rms(W)^2 ||x||^2 + rms(b)^2)``, so ``eta* = |m| / (z_p sqrt(2 (rms(W)^2 ||x||^2 + rms(b)^2)))``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from deepscope_metrics import basins as B
from deepscope_metrics.plugins import basins as P
from deepscope_server.backends.base import RunOutput
from deepscope_server.plugin_api import WHOLE_MODEL, Batch, Context, Layer
from deepscope_server.testing import make_graph, run_metric, validate_params


class LinearHandle:
    """A ModelHandle test double: logits = x W^T + b, with per-call weight overrides."""

    def __init__(self, w: np.ndarray, b: np.ndarray, max_rows: int | None = None) -> None:
        self.graph = make_graph([Layer("fc", "linear", "Gemm", weights={"weight": w, "bias": b})])
        self.calls = 0
        self.rows = 0
        self.max_rows = max_rows
        self.largest_batch = 0

    def _forward(self, inputs, w, b) -> RunOutput:
        x = inputs["input"]
        self.calls += 1
        self.rows += len(x)
        self.largest_batch = max(self.largest_batch, len(x))
        return RunOutput(outputs={"output": x.reshape(len(x), -1) @ w.T + b})

    def run(self, inputs, capture=()):
        layer = self.graph.layer("fc")
        return self._forward(inputs, layer.weights["weight"], layer.weights["bias"])

    def run_with_weights(self, inputs, weights, capture=()):
        layer = self.graph.layer("fc")
        new = {**layer.weights, **weights.get("fc", {})}
        return self._forward(inputs, new["weight"], new["bias"])


def gaussian_problem(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, d))
    b = rng.normal(size=2)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) + np.where(y[:, None] == 1, 1.0, -1.0) * (w[1] - w[0]) / np.linalg.norm(w[1] - w[0])
    return w, b, x


def margins(w, b, x):
    return np.abs(x @ (w[1] - w[0]) + (b[1] - b[0]))


def basins(metric, handle: LinearHandle, x: np.ndarray, *, labels=None, batch_size: int = 64, **params) -> dict:
    """``metric``'s whole-model result on ``x`` through ``handle``, with no time budget: the test's
    ``samples``, ``draws`` and ``steps`` decide the work."""
    params = {"budget_seconds": 0, **params}
    out = run_metric(
        metric, handle.graph, data={"input": x}, labels=labels, model=handle, params=params, batch_size=batch_size
    )
    return out[WHOLE_MODEL]


def test_sample_basin_matches_closed_form_in_the_margin():
    n, d, p = 40, 5, 0.9
    w, b, x = gaussian_problem(n, d, 0)
    handle = LinearHandle(w, b)
    res = basins(P.SampleBasins, handle, x, samples=n, draws=400, steps=14, r_max=20.0, keep_prob=p, curve_points=0)
    expected = (
        margins(w, b, x) * math.sqrt(d) / (np.linalg.norm(x, axis=1) * np.linalg.norm(w[1] - w[0]) * stats.norm.ppf(p))
    )
    assert (expected < 20.0).all() and res["n_censored"] == 0 and res["reference_used"] == "prediction"
    ratio = res["radius"] / expected
    # per-sample empirical p-quantile of K=400 normals: ~7% sd; the mean over 40 samples ~1%
    assert np.all(np.abs(ratio - 1) < 0.3)
    assert abs(ratio.mean() - 1) < 0.04
    assert res["radius_median"] == pytest.approx(np.median(res["radius"]))
    assert res["n_samples"] == n and res["resolution"] == pytest.approx(20.0 / 2**15)


def test_accuracy_curve_matches_closed_form():
    n, d = 60, 4
    w, b, x = gaussian_problem(n, d, 1)
    handle = LinearHandle(w, b)
    res = basins(P.SampleBasins, handle, x, samples=n, draws=300, steps=1, r_max=3.0, curve_points=7)
    curve = res["accuracy_curve"]
    m, xn, wn = margins(w, b, x), np.linalg.norm(x, axis=1), np.linalg.norm(w[1] - w[0])
    with np.errstate(divide="ignore"):
        expected = [stats.norm.cdf(m * math.sqrt(d) / (r * xn * wn)).mean() if r > 0 else 1.0 for r in curve.x]
    np.testing.assert_allclose(curve.y, expected, atol=0.02)
    assert curve.y[0] == 1.0


def test_weight_basin_matches_closed_form():
    n, d, p = 12, 4, 0.9
    w, b, x = gaussian_problem(n, d, 2)
    handle = LinearHandle(w, b)
    res = basins(P.WeightBasins, handle, x, samples=n, draws=400, steps=10, eta_max=20.0, keep_prob=p, curve_points=0)
    sw = np.sqrt(np.mean(w**2))
    sb = np.sqrt(np.mean(b**2))
    expected = margins(w, b, x) / (stats.norm.ppf(p) * np.sqrt(2 * (sw**2 * np.sum(x**2, axis=1) + sb**2)))
    assert (expected < 20.0).all() and res["n_censored"] == 0 and res["perturbed_layers"] == "fc"
    # the K weight draws are shared by all samples, so errors correlate: per sample ~7% sd,
    # plus the bisection resolution (half the final bracket)
    assert np.all(np.abs(res["radius"] - expected) <= 0.3 * expected + res["resolution"])
    assert abs(np.median(res["radius"] / expected) - 1) < 0.1
    # forward calls per round are bounded by draws * min(n, 2^round) (+ clean pass, + r_max round)
    bound = 1 + 400 * (1 + sum(min(n, 2**t) for t in range(10)))
    assert handle.calls <= bound


def test_labels_define_reference_and_misclassified_get_zero():
    n, d = 30, 3
    w, b, x = gaussian_problem(n, d, 3)
    pred = np.argmax(x @ w.T + b, axis=1)
    labels = pred.copy()
    labels[:7] = 1 - labels[:7]  # seven samples the model gets wrong
    handle = LinearHandle(w, b)
    res = basins(P.SampleBasins, handle, x, labels=labels, samples=n, draws=8, steps=4, curve_points=3)
    assert res["reference_used"] == "label" and res["n_misclassified"] == 7
    assert np.all(res["radius"][:7] == 0) and np.all(res["radius"][7:] > 0)
    assert res["clean_accuracy"] == pytest.approx(23 / 30) and res["accuracy_curve"].y[0] == pytest.approx(23 / 30)


def test_forward_passes_are_batched_and_bounded():
    n, d, k, steps, points = 50, 6, 20, 5, 4
    w, b, x = gaussian_problem(200, d, 4)
    handle = LinearHandle(w, b)
    res = basins(
        P.SampleBasins,
        handle,
        x,
        batch_size=32,
        samples=n,
        draws=k,
        steps=steps,
        curve_points=points,
        reference="prediction",
    )
    assert res["n_samples"] == n and np.array_equal(res["sample_indices"], np.arange(n))
    assert handle.largest_batch <= 256  # Context.max_batch_size default
    # clean reference + clean check + (points - 1) curve levels + r_max round + steps rounds
    assert handle.rows <= 2 * n + n * k * ((points - 1) + 1 + steps)
    assert res["forward_rows"] <= handle.rows


def test_cancel_and_progress():
    w, b, x = gaussian_problem(20, 3, 5)
    handle = LinearHandle(w, b)
    seen: list[float] = []
    metric = P.SampleBasins
    ctx = Context(
        params=validate_params(metric, {"samples": 20, "draws": 4, "steps": 6, "curve_points": 0}),
        layers=[],
        graph=handle.graph,
        model=handle,
        progress=lambda f, msg: seen.append(f),
        cancelled=lambda: len(seen) >= 3,
    )
    inst = metric(ctx)
    inst.start()
    inst.update(Batch(index=0, data={"input": x}))
    res = inst.finish()[WHOLE_MODEL]
    assert res["reason"] == "cancelled" and np.isnan(res["radius"]).all() and len(seen) == 3
    assert seen == sorted(seen) and 0 < seen[-1] <= 1


def test_no_data_gives_nan_and_reason():
    w, b, _ = gaussian_problem(1, 3, 6)
    handle = LinearHandle(w, b)
    res = run_metric(P.WeightBasins, handle.graph, model=handle)[WHOLE_MODEL]
    assert math.isnan(res["radius_mean"]) and "no data" in res["reason"]


def test_bisect_radii_on_a_known_step_function():
    # keep fraction is 1 below a per-sample threshold and 0 above it: bisection recovers it
    thresholds = np.array([0.3, 1.7, 5.0, 0.0])
    radius, censored = B.bisect_radii(
        lambda idx, level: (level < thresholds[idx]).astype(float),
        np.array([True, True, True, False]),
        r_max=2.0,
        steps=20,
        keep_prob=0.5,
    )
    np.testing.assert_allclose(radius[:2], thresholds[:2], atol=2.0 / 2**20)
    assert radius[2] == 2.0 and censored.tolist() == [False, False, True, False] and radius[3] == 0.0
