"""Plugin adapter: attraction basins (basins.*).

Lin et al. 2025 (arXiv 2501.02436), reconstructed from the abstract; the computations live in
``deepscope_metrics.basins``. Its own entry point, so ``DEEPSCOPE_PLUGINS=modes`` loads the modes only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepscope_server.plugin_api import Batch, Curve, Layer, Needs, Param, PerLayerMetric, hookimpl, nan_result

from .. import basins as B
from .modes import CITATION, RECONSTRUCTED_NOTE

_BASIN_COMMON = (
    Param("samples", int, 64, "number of the run's data samples (the first ones) to measure", min=1, max=100_000),
    Param("keep_prob", float, 0.5, "a sample is inside its basin while P(label kept) >= this", min=0.0, max=1.0),
    Param("curve_points", int, 8, "noise levels of the accuracy-vs-noise curve on [0, max] (0 = none)", min=0, max=200),
    Param(
        "reference",
        str,
        "label",
        "label: the data's labels (prediction if none); prediction: the model's clean prediction",
        choices=("label", "prediction"),
    ),
    Param(
        "budget_seconds",
        float,
        60.0,
        "time budget: samples, then draws, steps, curve points are reduced (and "
        "reported as 'sampled') until the timed plan fits; 0 = no budget",
        min=0.0,
        max=86_400.0,
    ),
)


class _BasinsBase(PerLayerMetric):
    """A metric of the whole model: keeps the first ``samples`` data rows (``basins.FirstData``), then
    searches their basins; a metric declares ``search(inputs, key, reference)``, the core call."""

    citation = CITATION
    reconstructed = True
    result_kinds = ("scalar", "vector", "curve")
    whole_model = True
    level_label: str  #: the noise level's axis label
    max_param: str  #: the parameter that bounds the level

    def accumulator(self, layer: Layer) -> B.FirstData:
        return B.FirstData(self.params["samples"])

    def feed(self, layer: Layer, acc: B.FirstData, batch: Batch) -> None:
        acc.update(batch.data, batch.labels)

    def _predict(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        wanted = self.ctx.graph.outputs[0].name if self.ctx.graph.outputs else None
        logits = outputs[wanted] if wanted in outputs else next(iter(outputs.values()))
        return B.logits_to_labels(logits)

    def predict(self, inputs: B.Inputs) -> np.ndarray:
        return self._predict(self.ctx.model.run(dict(inputs), capture=()).outputs)

    def predict_with_weights(self, inputs: B.Inputs, weights: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
        return self._predict(self.ctx.model.run_with_weights(dict(inputs), weights, capture=()).outputs)

    def options(self) -> B.Search:
        """The search options from the parameters and the run (progress, cancellation, batch size)."""
        p = self.params
        return B.Search(
            draws=p["draws"],
            steps=p["steps"],
            r_max=p[self.max_param],
            keep_prob=p["keep_prob"],
            curve_points=p["curve_points"],
            seed=self.ctx.seed,
            max_batch_size=self.ctx.max_batch_size,
            budget_seconds=p["budget_seconds"] or math.inf,
            progress=self.ctx.progress,
            cancelled=self.ctx.cancelled,
        )

    def search(self, inputs: B.Inputs, key: str, reference: np.ndarray) -> B.BasinResult:
        raise NotImplementedError

    def measure(self, layer: Layer, acc: B.FirstData) -> dict[str, Any]:
        p = self.params
        out: dict[str, Any] = {f"param_{q.name}": p[q.name] for q in type(self).params}
        out.update({"n_samples": acc.kept, "seed": self.ctx.seed, "sample_indices": np.arange(acc.kept)})
        if self.ctx.model is None:
            return nan_result("no model handle (Needs.MODEL)", "radius_mean", **out)
        if acc.kept == 0:
            return nan_result("no data samples in the run", "radius_mean", **out)
        inputs = acc.inputs()
        names = [s.name for s in self.ctx.graph.inputs]
        key = names[0] if names and names[0] in inputs else next(iter(inputs))
        ref = acc.reference_labels() if p["reference"] == "label" else None
        if ref is not None:
            out["reference_used"] = "label"
        else:
            if p["reference"] == "label":
                self.ctx.warn(f"{self.name}: no labels in the data; using the model's clean predictions")
            ref = B.predict_batched(self.predict, inputs, self.ctx.max_batch_size)
            out["reference_used"] = "prediction"
        result = self.search(inputs, key, ref)
        out.update(B.summarize(result))
        out.update(
            {
                "radius": result.radius,
                "censored": result.censored,
                "resolution": result.resolution,
                "forward_rows": result.forward_rows,
                "forward_calls": result.forward_calls,
                "perturbed_input": key,
                "accuracy_curve": Curve(result.curve_levels, result.curve_accuracy, self.level_label, "accuracy"),
            }
        )
        r = result.radius
        if np.isfinite(r).any():
            grid = np.linspace(0.0, p[self.max_param], 51)
            out["radius_survival"] = Curve(
                grid,
                (r[None, :] >= grid[:, None]).mean(axis=1),
                self.level_label,
                "fraction of samples with radius >= level",
            )
        if result.cancelled:
            out["reason"] = "cancelled"
        return out


class SampleBasins(_BasinsBase):
    name = "basins.sample"
    summary_keys = ("radius_mean", "radius_median", "clean_accuracy")
    description = (
        "Attraction basins in input space: per sample, the largest Gaussian noise level r (relative "
        "to the input's norm) at which it keeps its label with probability >= keep_prob over K draws, "
        "by bisection; mean/median and accuracy-vs-noise curve" + RECONSTRUCTED_NOTE
    )
    needs = Needs.MODEL | Needs.DATA
    params = (
        *_BASIN_COMMON,
        Param("draws", int, 32, "K noise draws per sample (fixed across levels)", min=1, max=10_000),
        Param("steps", int, 10, "bisection steps", min=1, max=40),
        Param("r_max", float, 2.0, "upper end of the bisection bracket (censoring level)", min=1e-12, max=1_000_000),
        Param(
            "noise",
            str,
            "relative",
            "relative: sigma = r*||x||/sqrt(d); absolute: sigma = r",
            choices=("relative", "absolute"),
        ),
    )
    level_label = "noise level r"
    max_param = "r_max"

    def search(self, inputs: B.Inputs, key: str, reference: np.ndarray) -> B.BasinResult:
        relative = self.params["noise"] == "relative"
        return B.sample_basins(self.predict, inputs, reference, self.options(), key=key, relative=relative)


class WeightBasins(_BasinsBase):
    name = "basins.weight"
    summary_keys = ("radius_mean", "radius_median", "clean_accuracy")
    description = (
        "Attraction basins in weight space: per sample, the largest relative layer-normalised weight "
        "noise eta (W + eta*rms(W)*G on the selected linear/conv layers, and the gate matrices "
        "weight_ih/weight_hh of recurrent and the projections of attention layers, each tensor scaled by "
        "its own rms) at which it keeps its label with probability >= keep_prob over K weight draws, by "
        "bisection; mean/median and accuracy-vs-noise curve" + RECONSTRUCTED_NOTE
    )
    needs = Needs.MODEL | Needs.DATA
    layer_kinds = frozenset({"linear", "conv", "recurrent", "attention"})
    params = (
        *_BASIN_COMMON,
        Param("draws", int, 16, "K weight-noise draws (perturbed networks, fixed across levels)", min=1, max=10_000),
        Param(
            "steps", int, 8, "bisection steps (forward calls per round <= draws * min(samples, 2^round))", min=1, max=30
        ),
        Param("eta_max", float, 2.0, "upper end of the bisection bracket (censoring level)", min=1e-12, max=1_000_000),
        Param("perturb_bias", bool, True, "also perturb biases (scaled by the bias's own rms)"),
    )
    level_label = "weight noise eta"
    max_param = "eta_max"

    def search(self, inputs: B.Inputs, key: str, reference: np.ndarray) -> B.BasinResult:
        p = self.params
        weights = {layer.name: _perturbed(layer, p["perturb_bias"]) for layer in self.ctx.layers}
        weights = {name: w for name, w in weights.items() if w}
        if not weights:
            self.ctx.warn(f"{self.name}: no selected layer has weights; nothing is perturbed")
        return B.weight_basins(self.predict_with_weights, self.predict, inputs, reference, weights, self.options())

    def measure(self, layer: Layer, acc: B.FirstData) -> dict[str, Any]:
        return {**super().measure(layer, acc), "perturbed_layers": ",".join(x.name for x in self.ctx.layers)}


def _perturbed(layer: Layer, bias: bool) -> dict[str, np.ndarray]:
    """The tensors basins.weight perturbs: every weight (a recurrent layer's weight_ih_l0, weight_hh_l0, ...,
    an attention layer's in_proj_weight, out_proj.weight) and, with ``bias``, every bias; no norm statistics."""
    return {k: v for k, v in layer.weights.items() if "weight" in k or (bias and "bias" in k)}


METRICS = (SampleBasins, WeightBasins)


@hookimpl
def deepscope_register_metrics(register) -> None:
    for metric in METRICS:
        register(metric)
