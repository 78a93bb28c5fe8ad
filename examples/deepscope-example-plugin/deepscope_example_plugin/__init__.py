"""An example third-party plugin: two small metrics, one streaming over activations, one on weights."""

from __future__ import annotations

import numpy as np

from deepscope_server.plugin_api import Curve, Metric, Needs, Param, hookimpl, unit_view


class ActivationMoments(Metric):
    """Per-unit mean and variance of a layer's output, streamed (memory independent of sample count)."""

    name = "example.activation_moments"
    summary_keys = ("mean_variance",)
    description = "Per-unit mean and variance of each layer's output, accumulated over batches in float64."
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "vector")
    params = (Param("reduce", str, "mean", "how conv/token maps become units", choices=("mean", "flatten")),)

    def start(self) -> None:
        self.count = {layer.name: 0 for layer in self.ctx.layers}
        self.sum: dict[str, np.ndarray] = {}
        self.sumsq: dict[str, np.ndarray] = {}

    def update(self, batch) -> None:  # plugin_api.Batch
        for layer in self.ctx.layers:
            a = unit_view(batch.outputs[layer.name], layer, self.params["reduce"]).astype(np.float64)
            self.count[layer.name] += a.shape[0]
            self.sum[layer.name] = self.sum.get(layer.name, 0.0) + a.sum(axis=0)
            self.sumsq[layer.name] = self.sumsq.get(layer.name, 0.0) + (a * a).sum(axis=0)

    def finish(self):
        results = {}
        for name, n in self.count.items():
            mean = self.sum[name] / n
            var = np.maximum(self.sumsq[name] / n - mean**2, 0.0)
            results[name] = {"mean": mean, "variance": var, "mean_variance": float(var.mean()), "num_samples": n}
        return results


class WeightSpectrum(Metric):
    """Singular values of each weight matrix (no forward pass)."""

    name = "example.weight_spectrum"
    summary_keys = ("spectral_norm",)
    description = "Singular values of each linear/conv weight (conv kernels reshaped to [C_out, -1])."
    needs = Needs.WEIGHTS
    layer_kinds = frozenset({"linear", "conv"})
    result_kinds = ("curve", "scalar")

    def finish(self):
        results = {}
        for layer in self.ctx.layers:
            w = layer.weights["weight"].reshape(layer.weights["weight"].shape[0], -1).astype(np.float64)
            s = np.linalg.svd(w, compute_uv=False)
            results[layer.name] = {
                "spectral_norm": float(s[0]),
                "singular_values": Curve(np.arange(1, len(s) + 1), s, "index", "singular value"),
            }
        return results


@hookimpl
def deepscope_register_metrics(register) -> None:
    register(ActivationMoments)
    register(WeightSpectrum)
