"""Plugin adapter: complexity.* and dimension.* metrics (Janik & Witaszczyk 2020).

Thin wrappers: batches are reduced to ``[rows, units]`` with ``plugin_api.unit_view`` and fed
to the streaming accumulators; the numbers come from ``deepscope_metrics.complexity``,
``.dimension`` and ``.powerlaw``.

``reduce`` (every metric here, default ``"mean"``) says how conv ``[B, C, H, W]`` and token
``[B, T, C]`` maps become ``[rows, units]``: ``mean`` averages over positions (one row per
sample, channel = unit); ``positions`` makes every (sample, position) a row (for the regression
metrics only on layers whose input and output have the same positions, e.g. activations and
1×1 convs); ``flatten`` makes every element a unit (one row per sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepscope_server.plugin_api import Batch, Curve, Metric, Needs, Param, Table, hookimpl, unit_view

from ..complexity import PatternEntropy, complexity_at, linear_fvu, piecewise_fvu_curve
from ..dimension import DEFAULT_TAUS, spectrum_dimensions
from ..powerlaw import fit_power_law
from ..streaming import ReservoirSampler, StreamingCovariance, random_projection

CITATION = "R. A. Janik, P. Witaszczyk, Complexity for deep neural networks and other characteristics of deep feature representations, arXiv:2006.04791 (2020)"
NAN = float("nan")

REDUCE = Param(
    "reduce", str, "mean",
    "conv/token maps -> [rows, units]: mean over positions, positions as rows, or flatten (element = unit)",
    choices=("mean", "positions", "flatten"),
)


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"parameter '{name}' expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"parameter '{name}' needs at least one number")
    return values


# --------------------------------------------------------------------- regression metrics


class _PairedSample(Metric):
    """Shared part of the regression metrics: a capped reservoir of (input, output) rows."""

    needs = Needs.INPUTS | Needs.OUTPUTS
    reconstructed = True
    citation = CITATION
    params = (
        REDUCE,
        Param("max_samples", int, 4000, "reservoir capacity: rows kept for the regression (uniform sample)", min=8,
              max=100_000),
        Param("max_width", int, 4096, "wider inputs/outputs are randomly projected to this many dims before sampling", min=1,
              max=16_384),
        Param("pca_dim", int, 256, "input and output are PCA-reduced (fitted on the training split) to at most this", min=1,
              max=4096),
        Param("test_fraction", float, 0.25, "held-out fraction of the sample for scoring", min=0.05, max=0.95),
        Param("ridge", float, 1e-3, "ridge penalty relative to n x mean input variance (0 = least squares)", min=0.0,
              max=1_000_000),
    )

    def start(self) -> None:
        p = self.params
        self.samplers = {layer.name: ReservoirSampler(p["max_samples"], self.ctx.seed) for layer in self.ctx.layers}
        self.projections: dict[tuple[str, str], Any] = {}
        self.widths: dict[tuple[str, str], int] = {}
        self.reasons: dict[str, str] = {}

    def _project(self, layer: str, side: str, a: np.ndarray) -> np.ndarray:
        key = (layer, side)
        if key not in self.widths:
            self.widths[key] = a.shape[1]
            if a.shape[1] > self.params["max_width"]:
                seed = self.ctx.seed + (1 if side == "input" else 2)
                self.projections[key] = random_projection(a.shape[1], self.params["max_width"], seed)
                self.ctx.warn(f"{self.name}: {layer} {side} has {a.shape[1]} units, randomly projected "
                              f"to {self.params['max_width']} (max_width)")
        proj = self.projections.get(key)
        return a if proj is None else np.asarray(a.astype(np.float64) @ proj)

    def update(self, batch: Batch) -> None:
        for layer in self.ctx.layers:
            name = layer.name
            if name in self.reasons or name not in batch.inputs or name not in batch.outputs:
                continue
            x = unit_view(batch.inputs[name], layer, self.params["reduce"])
            y = unit_view(batch.outputs[name], layer, self.params["reduce"])
            if x.shape[0] != y.shape[0]:
                self.reasons[name] = (f"input and output give different row counts ({x.shape[0]} vs {y.shape[0]}) "
                                      f"with reduce='{self.params['reduce']}'; use mean or flatten")
                continue
            self.samplers[name].update(self._project(name, "input", x), self._project(name, "output", y))

    def _echo(self, name: str) -> dict[str, Any]:
        p, s = self.params, self.samplers[name]
        return {
            "n_samples_seen": int(s.n_seen), "reservoir_size": int(s.n_kept),
            "input_projection": "random" if (name, "input") in self.projections else "none",
            "output_projection": "random" if (name, "output") in self.projections else "none",
            "input_units_raw": int(self.widths.get((name, "input"), 0)),
            "output_units_raw": int(self.widths.get((name, "output"), 0)),
            **{k: p[k] for k in ("reduce", "max_samples", "max_width", "pca_dim", "test_fraction", "ridge")},
            "seed": int(self.ctx.seed),
        }

    def _data(self, name: str) -> tuple[np.ndarray, np.ndarray] | str:
        if name in self.reasons:
            return self.reasons[name]
        sample = self.samplers[name].sample()
        if not sample:
            return "no input/output captured for this layer"
        return sample[0], sample[1]

    def finish(self) -> dict[str, dict[str, Any]]:
        results = {}
        for layer in self.ctx.layers:
            data = self._data(layer.name)
            if isinstance(data, str):
                res = self._nan(data)
            else:
                try:
                    res = self._compute(*data)
                except (np.linalg.LinAlgError, ValueError) as exc:
                    res = {**self._nan(f"numerical failure: {exc}"), "status": "failed"}
            results[layer.name] = {**res, **self._echo(layer.name)}
        return results

    def _nan(self, reason: str) -> dict[str, Any]:
        raise NotImplementedError

    def _compute(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError


class LinearFVU(_PairedSample):
    name = "complexity.linear_fvu"
    summary_keys = ('fvu', 'fvu_train')
    description = (
        "Fraction of variance of the layer's output unexplained by the best affine (ridge) map of its "
        "input, on a held-out split; input/output PCA-reduced to <= pca_dim. 0 = linear on this data. "
        "(reconstructed from the abstract)"
    )
    result_kinds = ("scalar",)

    def _nan(self, reason: str) -> dict[str, Any]:
        return {"fvu": NAN, "fvu_train": NAN, "reason": reason}

    def _compute(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        p = self.params
        return linear_fvu(x, y, test_fraction=p["test_fraction"], alpha=p["ridge"], max_dim=p["pca_dim"],
                          seed=self.ctx.seed)


class PiecewiseFVU(_PairedSample):
    name = "complexity.piecewise"
    summary_keys = ('complexity', 'k_star', 'occupancy_entropy')
    description = (
        "FVU(K) of a piecewise-affine model: K = 1, 2, 4, ... k-means clusters of the layer's input, one "
        "ridge map each, scored on a held-out split; C(eps) = ln K*(eps) with K* the fewest clusters "
        "reaching FVU <= eps, the held-out cluster-occupancy entropy at K*, and a power-law fit of FVU(K). "
        "(reconstructed from the abstract)"
    )
    result_kinds = ("scalar", "vector", "curve")
    params = _PairedSample.params + (
        Param("k_max", int, 64, "largest number of clusters (powers of two up to it)", min=1, max=4096),
        Param("clustering", str, "nested", "nested: split every cluster in two per level (training FVU "
              "non-increasing); kmeans: fresh k-means per K", choices=("nested", "kmeans")),
        Param("min_cluster_size", int, 10, "stop doubling K once clusters would hold fewer training points", min=1,
              max=100_000),
        Param("eps", float, 0.1, "FVU threshold for the headline C(eps) = ln K*", min=0.0, max=1.0),
        Param("eps_grid", str, "0.5,0.2,0.1,0.05,0.02,0.01", "thresholds for the C(eps) curve"),
    )

    def start(self) -> None:
        self.eps_grid = np.asarray(sorted(_floats(self.params["eps_grid"], "eps_grid"), reverse=True))
        super().start()

    def _nan(self, reason: str) -> dict[str, Any]:
        return {"complexity": NAN, "k_star": 0, "occupancy_entropy": NAN, "reason": reason}

    def _compute(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        p = self.params
        c = piecewise_fvu_curve(x, y, k_max=p["k_max"], clustering=p["clustering"],
                                min_cluster_size=p["min_cluster_size"], test_fraction=p["test_fraction"],
                                alpha=p["ridge"], max_dim=p["pca_dim"], seed=self.ctx.seed)
        if "reason" in c:
            return self._nan(c["reason"])
        k, f_te = c["k"], c["fvu_test"]
        k_star, comp = complexity_at(k, f_te, p["eps"])
        grid = np.array([complexity_at(k, f_te, e)[1] for e in self.eps_grid])
        fit = fit_power_law(k, f_te)
        out = {
            "complexity": comp,
            "k_star": k_star,
            "occupancy_entropy": float(c["occupancy_entropy"][np.flatnonzero(k == k_star)[0]]) if k_star else NAN,
            "eps": p["eps"],
            "fvu_k": Curve(k.astype(np.float64), f_te, "K (clusters)", "FVU held-out"),
            "fvu_k_train": Curve(k.astype(np.float64), c["fvu_train"], "K (clusters)", "FVU train"),
            "k": k,
            "occupancy_entropy_k": c["occupancy_entropy"],
            "complexity_eps": Curve(self.eps_grid, grid, "eps", "ln K*(eps)"),
            **fit.as_dict("fvu_k_powerlaw_"),
            **{key: c[key] for key in ("clustering", "n_samples", "n_train", "n_test", "input_units", "output_units",
                                       "input_dim", "output_dim", "input_pca_variance", "output_pca_variance")},
            "k_max": p["k_max"], "min_cluster_size": p["min_cluster_size"],
            **{key: c[key] for key in ("warning", "underdetermined_from_k") if key in c},
        }
        if not k_star:
            out["reason"] = (f"no K <= {int(k.max())} reaches held-out FVU <= {p['eps']} (complexity > ln {int(k.max())}); "
                             "raise k_max or eps")
        return out


# ------------------------------------------------------------------------ pattern entropy


class PatternEntropyMetric(Metric):
    name = "complexity.pattern_entropy"
    summary_keys = ('joint_entropy', 'unit_entropy_sum', 'n_distinct_patterns')
    description = (
        "Entropy (nats) of binary activation patterns (output > threshold; for ReLU-like layers the "
        "pattern of pre-activations > 0): sum over units of H(P(h_i > 0)), joint Shannon entropy of whole "
        "patterns (the linear piece each sample falls in), number of distinct patterns, and joint entropy "
        "vs number of units considered (1, 2, 4, ...). (reconstructed from the abstract)"
    )
    citation = CITATION
    needs = Needs.OUTPUTS
    reconstructed = True
    result_kinds = ("scalar", "vector", "curve")
    params = (
        REDUCE,
        Param("threshold", float, 0.0, "a unit is active when its output exceeds this", min=-1_000_000_000, max=1_000_000_000),
        Param("unit_order", str, "random", "which units form the subsets of the scale curve: a seeded random "
              "order or index order", choices=("random", "index")),
    )

    def start(self) -> None:
        p = self.params
        self.acc = {layer.name: PatternEntropy(p["threshold"], p["unit_order"], self.ctx.seed)
                    for layer in self.ctx.layers}
        self.positional: set[str] = set()  #: layers whose outputs have positions (conv maps, tokens)
        for layer in self.ctx.layers:
            if layer.kind == "activation" and layer.attrs.get("function") in ("sigmoid", "softplus"):
                self.ctx.warn(f"{self.name}: {layer.name} ({layer.attrs['function']}) is positive everywhere; "
                              "patterns at threshold 0 are constant")

    def update(self, batch: Batch) -> None:
        for layer in self.ctx.layers:
            if layer.name in batch.outputs:
                a = batch.outputs[layer.name]
                if a.ndim > 2:
                    self.positional.add(layer.name)
                self.acc[layer.name].update(unit_view(a, layer, self.params["reduce"]))

    def finish(self) -> dict[str, dict[str, Any]]:
        results = {}
        for name, acc in self.acc.items():
            r = acc.result()
            constant = "n_units" in r and r["n_samples"] > 1 and r["dead_units"] + r["always_active_units"] == r["n_units"]
            if constant and self.params["reduce"] == "mean" and name in self.positional:
                # A conv ReLU averaged over positions is > 0 almost surely: entropy 0 says nothing.
                r.update(status="skipped", reason="the pattern is the same for every sample: with reduce='mean' "
                         "each unit's position-averaged output is always on or always off; use reduce='positions'")
            elif constant:
                r["warning"] = "every unit is always on or always off over these samples: one pattern, entropy 0"
            if "scale_units" in r:
                r["entropy_vs_units"] = Curve(r["scale_units"].astype(np.float64), r["scale_joint_entropy"],
                                              "units considered", "joint pattern entropy (nats)")
            results[name] = {**r, "reduce": self.params["reduce"], "threshold": self.params["threshold"],
                             "unit_order": self.params["unit_order"], "seed": int(self.ctx.seed)}
        return results


# ------------------------------------------------------------------------------ dimension


class EffectiveDimension(Metric):
    name = "dimension.effective"
    summary_keys = ('d_eff', 'participation_ratio', 'spectrum_exponent')
    description = (
        "Effective dimension d_eff = exp(-sum p_i ln p_i) over the PCA explained-variance ratios of the "
        "layer's representation (streamed float64 covariance; Gram matrix when units outnumber samples), "
        "plus the participation ratio, components needed per variance fraction tau, and the spectrum's "
        "power-law exponent."
    )
    citation = CITATION
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "vector", "curve", "table")
    params = (
        REDUCE,
        Param("max_dim", int, 1024, "wider layers are projected to this many dims (reported)", min=1, max=8192),
        Param("projection", str, "pca", "projection for wider layers: top principal directions of the first "
              "rows seen, or random", choices=("pca", "random")),
        Param("taus", str, ",".join(map(str, DEFAULT_TAUS)), "variance fractions for the component counts"),
        Param("fit_start", int, 1, "first component index of the spectrum power-law fit", min=1, max=8192),
        Param("fit_stop", int, 0, "last component index of the fit (0 = last non-zero eigenvalue)", min=0,
              max=8192),
    )

    def start(self) -> None:
        taus = _floats(self.params["taus"], "taus")
        if not all(0 < t <= 1 for t in taus):
            raise ValueError(f"parameter 'taus' values must lie in (0, 1], got {taus}")
        self.taus = np.asarray(taus)
        p = self.params
        self.cov = {layer.name: StreamingCovariance(p["max_dim"], p["projection"], self.ctx.seed)
                    for layer in self.ctx.layers}

    def update(self, batch: Batch) -> None:
        for layer in self.ctx.layers:
            if layer.name in batch.outputs:
                self.cov[layer.name].update(unit_view(batch.outputs[layer.name], layer, self.params["reduce"]))

    @classmethod
    def mergeable(cls, params, layers) -> bool:  # noqa: ANN001
        """Exact unless a layer wider than max_dim is PCA-projected (each part would pick its own directions)."""
        def units(layer) -> float:  # noqa: ANN001 - the width unit_view gives, inf when unknown
            shape = layer.output_shapes[0][1:] if layer.output_shapes else ()
            if not shape or None in shape:
                return 1 if not shape else float("inf")
            axis = layer.channel_axis - (layer.channel_axis > 0)
            return int(np.prod(shape)) if params["reduce"] == "flatten" else shape[axis]
        return params["projection"] == "random" or all(units(layer) <= params["max_dim"] for layer in layers)

    def merge(self, other: "EffectiveDimension") -> None:
        """The streamed covariances merge exactly (StreamingCovariance.merge)."""
        for name, cov in self.cov.items():
            cov.merge(other.cov[name])

    def finish(self) -> dict[str, dict[str, Any]]:
        p = self.params
        results = {}
        for name, cov in self.cov.items():
            info = cov.info()
            if info["projection"] != "none":
                self.ctx.warn(f"{self.name}: {name} has {info['n_features']} units, {info['projection']}-projected "
                              f"to {info['dim']} (max_dim); retained variance {info['retained_variance_fraction']:.3f}")
            if cov.n < 2 or not np.isfinite(cov.total_variance()):
                res = {"d_eff": NAN, "participation_ratio": NAN, "reason": f"need at least 2 finite samples, got {cov.n}"}
            else:
                lam = cov.eigenvalues()
                res = spectrum_dimensions(lam, self.taus, p["fit_start"], p["fit_stop"] or None)
                res["n_components"] = Table({"tau": self.taus, "n_components": res["n_components"]})
                res["spectrum"] = Curve(np.arange(1, lam.size + 1, dtype=np.float64), lam,
                                        "component", "covariance eigenvalue")
            results[name] = {**res, **info, "reduce": p["reduce"], "max_dim": p["max_dim"], "seed": int(self.ctx.seed)}
        return results


@hookimpl
def deepscope_register_metrics(register) -> None:
    for metric in (LinearFVU, PiecewiseFVU, PatternEntropyMetric, EffectiveDimension):
        register(metric)
