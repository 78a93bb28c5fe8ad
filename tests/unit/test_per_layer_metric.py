"""PerLayerMetric and the streaming cores the built-in adapters declare on it, against numpy oracles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepscope_metrics.basins import FirstData
from deepscope_metrics.fractal.ss_rate import SSRateStream, ss_rate_batches
from deepscope_metrics.streaming import FirstRows, PairedRows, random_projection
from deepscope_server.plugin_api import WHOLE_MODEL, Layer, Needs, PerLayerMetric, cross_layer, nan_result
from deepscope_server.testing import run_metric

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"


def _doc_example() -> dict:
    """The PerLayerMetric example of docs/writing-a-plugin.md, executed as written."""
    section = DOC.read_text().split("### Per-layer metrics")[1]
    namespace: dict = {}
    exec(section.split("```python")[1].split("```")[0], namespace)
    return namespace


def test_doc_example_streams_per_layer_and_summarises_across_layers():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(100, 3)) * [1.0, 2.0, 3.0], rng.normal(size=(1, 3))
    layers = [Layer("a", "linear", "Linear"), Layer("b", "linear", "Linear")]
    res = run_metric(_doc_example()["UnitVariance"], layers, outputs={"a": a, "b": b}, batch_size=16)
    assert res["a"]["variance"] == pytest.approx(a.var(axis=0).mean(), rel=1e-12)
    assert np.isnan(res["b"]["variance"]) and res["b"]["reason"] == "1 samples: need 2"
    assert res[WHOLE_MODEL]["n_layers"] == 1 and res[WHOLE_MODEL]["spread"] == 0.0
    assert list(res[WHOLE_MODEL]["layers"].columns["layer"]) == ["a", "b"]


def test_nan_result_and_cross_layer():
    r = nan_result("why", "x", "y", n=3)
    assert r["n"] == 3 and np.isnan(r["x"]) and np.isnan(r["y"]) and r["reason"] == "why"
    values, whole = cross_layer({"a": {"x": 1.0}, "b": {"x": float("nan")}, WHOLE_MODEL: {"x": 9.0}}, "x")
    assert values.shape == (2,) and values[0] == 1.0 and whole["n_layers"] == 1


@pytest.mark.parametrize("chunk", [1, 5, 13, 64])
def test_ss_rate_stream_is_independent_of_the_batching(chunk):
    """Oracle: ss_rate_batches on the whole array (consecutive batches of B, remainder dropped)."""
    x = np.random.default_rng(1).normal(size=(101, 6))
    stream = SSRateStream(batch_size=8, n_thresholds=16)
    for lo in range(0, len(x), chunk):
        stream.update(x[lo : lo + chunk])
    direct = np.array([r.value for r in ss_rate_batches(x, 8, 16)])
    summary = stream.tally.summary()
    assert stream.tally.n_batches == 12 and stream.n_pending == 101 - 96 and stream.use_short_batch() == 0
    assert summary["ss_rate"] == pytest.approx(direct.mean(), abs=1e-12)
    assert summary["ss_rate_std"] == pytest.approx(direct.std(), abs=1e-9)


def test_first_rows_keeps_the_first_rows_within_both_caps():
    x = np.arange(60.0).reshape(20, 3)
    warnings: list[str] = []
    rows = FirstRows(max_samples=10, max_values=21, warn=warnings.append)
    for lo in range(0, 20, 4):
        rows.update(x[lo : lo + 4])
    np.testing.assert_array_equal(rows.stacked(), x[:7])  # 21 values // 3 per row
    assert rows.n_seen == 20 and warnings == ["3 values per sample; max_values=21 keeps 7 samples"]
    assert FirstRows(5).stacked().shape == (0, 0)


class _WeightNorm(PerLayerMetric):
    """Weights only: no accumulator, ``measure(layer, None)`` per layer; ``combine`` relates each layer to the next."""

    name = "test.weight_norm"
    description = "Frobenius norm of each layer's weight and its ratio to the next layer's."
    needs = Needs.WEIGHTS

    def measure(self, layer, acc):
        assert acc is None
        return {"norm": float(np.linalg.norm(layer.weights["weight"]))}

    def combine(self, results):
        names = list(results)
        for a, b in zip(names, names[1:]):
            results[a]["ratio_to_next"] = results[a]["norm"] / results[b]["norm"]
        return results


def test_weight_only_metric_measures_each_layer_and_combine_relates_layers():
    rng = np.random.default_rng(2)
    w = [rng.normal(size=(4, 3)), rng.normal(size=(2, 4))]
    layers = [Layer(f"fc{i}", "linear", "Linear", weights={"weight": x}) for i, x in enumerate(w)]
    res = run_metric(_WeightNorm, layers)
    assert set(res) == {"fc0", "fc1"}
    assert res["fc0"]["norm"] == pytest.approx(np.sqrt((w[0] ** 2).sum()), rel=1e-12)
    assert res["fc0"]["ratio_to_next"] == pytest.approx(np.sqrt((w[0] ** 2).sum() / (w[1] ** 2).sum()), rel=1e-12)
    assert "ratio_to_next" not in res["fc1"]


class _Sums:
    def __init__(self):
        self.n, self.total = 0, 0.0

    def update(self, rows):
        self.n += rows.shape[0]
        self.total += float(rows.sum())


class _Gain(PerLayerMetric):
    """``feed`` folds more than the layer's output into its accumulator: here output minus input."""

    name = "test.gain"
    description = "Mean of output minus input per layer."
    needs = Needs.INPUTS | Needs.OUTPUTS

    def accumulator(self, layer):
        return _Sums()

    def feed(self, layer, acc, batch):
        acc.update(batch.outputs[layer.name] - batch.inputs[layer.name])

    def measure(self, layer, acc):
        return {"gain": acc.total / (acc.n * 3), "n": acc.n}


def test_feed_gets_the_whole_batch():
    rng = np.random.default_rng(3)
    h, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    res = run_metric(_Gain, [Layer("act", "activation", "ReLU")], outputs={"act": y}, inputs={"act": h}, batch_size=7)
    assert res["act"]["n"] == 50 and res["act"]["gain"] == pytest.approx((y - h).mean(), rel=1e-12)


class _LabelBalance(PerLayerMetric):
    """``whole_model``: one part, the model, fed every batch; its result lands under WHOLE_MODEL."""

    name = "test.label_balance"
    description = "Fraction of positive labels in the run."
    needs = Needs.DATA
    whole_model = True

    def accumulator(self, layer):
        assert layer.name == WHOLE_MODEL
        return _Sums()

    def feed(self, layer, acc, batch):
        acc.update(batch.labels.reshape(-1, 1))

    def measure(self, layer, acc):
        return {"positive": acc.total / acc.n}


def test_whole_model_metric_has_one_result_under_the_whole_model_key():
    labels = np.random.default_rng(4).integers(0, 2, size=37)
    x = np.zeros((37, 2))
    res = run_metric(_LabelBalance, [Layer("fc", "linear", "Linear")], data={"input": x}, labels=labels, batch_size=8)
    assert set(res) == {WHOLE_MODEL} and res[WHOLE_MODEL]["positive"] == pytest.approx(labels.mean(), rel=1e-12)


def test_paired_rows_keeps_aligned_rows_and_projects_wide_sides():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 10)), rng.normal(size=(30, 3))
    warnings: list[str] = []
    pairs = PairedRows(capacity=100, max_width=4, seed=7, warn=warnings.append)
    for lo in range(0, 30, 8):
        pairs.update(x[lo : lo + 8], y[lo : lo + 8])
    xs, ys = pairs.sampler.sample()
    np.testing.assert_allclose(xs, x @ random_projection(10, 4, 8), rtol=1e-12)  # input side: seed + 1
    np.testing.assert_array_equal(ys, y)  # narrow enough: untouched
    assert warnings == ["input has 10 units, randomly projected to 4 (max_width)"]
    info = pairs.info()
    assert info["input_units_raw"] == 10 and info["output_units_raw"] == 3 and info["reservoir_size"] == 30
    assert (info["input_projection"], info["output_projection"]) == ("random", "none")
    pairs.update(x[:5], y[:4])  # sides disagree: the block cannot be sampled any more
    pairs.update(x[:5], y[:5])
    assert "different row counts (5 vs 4)" in pairs.reason and pairs.sampler.n_seen == 30


def test_first_data_keeps_the_first_samples_and_their_labels():
    x = np.arange(20.0).reshape(10, 2)
    onehot = np.eye(3)[[0, 2, 1, 1, 0, 2, 2, 0, 1, 0]]
    first = FirstData(samples=7)
    for lo in range(0, 10, 3):
        first.update({"x": x[lo : lo + 3]}, onehot[lo : lo + 3])
    assert first.kept == 7
    np.testing.assert_array_equal(first.inputs()["x"], x[:7])
    np.testing.assert_array_equal(first.reference_labels(), [0, 2, 1, 1, 0, 2, 2])
    unlabelled = FirstData(samples=4)
    unlabelled.update({"x": x[:2]}, onehot[:2])
    unlabelled.update({"x": x[2:4]}, None)
    assert unlabelled.kept == 4 and unlabelled.reference_labels() is None
