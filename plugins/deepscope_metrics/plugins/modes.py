"""Plugin adapter: neuron transformation modes (modes.*) and attraction basins (basins.*).

Lin et al. 2025 (arXiv 2501.02436), reconstructed from the abstract; the computations live in
``deepscope_metrics.modes`` and ``deepscope_metrics.basins``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepscope_server.plugin_api import (
    WHOLE_MODEL,
    Batch,
    Curve,
    Layer,
    Metric,
    Needs,
    Param,
    PerLayerMetric,
    hookimpl,
    nan_result,
    unit_view,
)

from .. import basins as B
from .. import modes as M

CITATION = "Lin, Zhang, Feng, Zhao 2025, arXiv:2501.02436 (abstracts v1-v4; full text not read)"
_RECON = " (reconstructed from the abstract)"

_PER_POSITION = Param(
    "per_position",
    bool,
    False,
    "conv/token maps: every (channel, position) is a neuron and images are the samples; "
    "default: a channel is one neuron over all (image, position) pairs",
)
_SATURATION = Param(
    "saturation_tol",
    float,
    0.0,
    "count sigma'(h) <= tol * max sigma' as flat (saturated tails of tanh, sigmoid, ...)",
    min=0.0,
    max=0.999,
)
_BINS = Param("bins", int, 20, "histogram bins of the per-neuron distribution", min=2, max=1000)


def _histogram(values: np.ndarray, bins: int, label: str) -> Curve:
    v = values[np.isfinite(values)]
    counts, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    frac = counts / v.size if v.size else np.full(bins, np.nan)
    return Curve(0.5 * (edges[1:] + edges[:-1]), frac, label, "fraction of neurons")


class _ModesBase(PerLayerMetric):
    """Streams each activation layer's (pre, post) pairs into a LayerModeStream; subclasses declare
    ``nan_keys`` and ``_measure(layer, stats)``."""

    citation = CITATION
    needs = Needs.INPUTS | Needs.OUTPUTS
    layer_kinds = frozenset({"activation"})
    reconstructed = True
    uses_region = True  #: needs the function's increasing region
    reservoir_param: str | None = None  #: name of the cap parameter when a row sample is kept
    nan_keys: tuple[str, ...] = ()

    def start(self) -> None:
        for layer in self.ctx.graph.layers:  # say so rather than leave them out silently
            if layer.kind == "recurrent":
                self.ctx.warn(
                    f"{self.name}: the gate activations inside recurrent layer '{layer.name}' "
                    f"({layer.op_type}) are not measured: they are internal to the layer, not captured"
                )
        super().start()

    def accumulator(self, layer: Layer) -> M.LayerModeStream:
        region, reason = None, None
        if self._needs_region():
            try:
                region = M.increasing_region(
                    str(layer.attrs.get("function")), layer.attrs, float(self.params.get("saturation_tol", 0.0))
                )
            except ValueError as exc:
                reason = str(exc)
        cap = int(self.params[self.reservoir_param]) if self.reservoir_param else 0
        warn = self.ctx.warn
        return M.LayerModeStream(
            region, cap, self.ctx.seed, reason, lambda message: warn(f"{self.name}: {layer.name} has {message}")
        )

    def _needs_region(self) -> bool:
        return self.uses_region

    def _view(self, a: np.ndarray, layer: Layer) -> np.ndarray:
        mode = "flatten" if self.params["per_position"] else "positions"
        return unit_view(np.asarray(a), layer, mode)

    def update(self, batch: Batch) -> None:
        for layer in self.measured:
            acc = self.acc[layer.name]
            if acc.reason is not None:
                continue
            if layer.name not in batch.inputs or layer.name not in batch.outputs:
                acc.reason = "pre-activation (layer input) or output not captured for this layer"
                continue
            h, y = batch.inputs[layer.name], batch.outputs[layer.name]
            acc.update(self._view(h, layer), self._view(y, layer), int(h.shape[0]))

    def _common(self, layer: Layer, acc: M.LayerModeStream) -> dict[str, Any]:
        st = acc.stats
        out: dict[str, Any] = {
            "function": str(layer.attrs.get("function", "")),
            "n_samples": st.n if st else 0,
            "n_images": acc.images,
            "n_units": st.n_units if st else 0,
            "per_position": bool(self.params["per_position"]),
        }
        if acc.region is not None:
            out["region_lo"], out["region_hi"] = float(acc.region[0]), float(acc.region[1])
        for p in self.__class__.params:
            out[f"param_{p.name}"] = self.params[p.name]
        return out

    def _degenerate(self, acc: M.LayerModeStream) -> str | None:
        if acc.reason is not None:
            return acc.reason
        if acc.stats is None or acc.stats.n < 2:
            return f"need at least 2 samples to compare orders, got {0 if acc.stats is None else acc.stats.n}"
        return None

    def measure(self, layer: Layer, acc: M.LayerModeStream) -> dict[str, Any]:
        out = self._common(layer, acc)
        reason = self._degenerate(acc)
        if reason is not None:
            return nan_result(reason, *self.nan_keys, **out)
        assert acc.stats is not None  # not degenerate
        return {**out, **self._measure(layer, acc.stats)}

    def _measure(self, layer: Layer, st: M.ModeStats) -> dict[str, Any]:
        raise NotImplementedError


class ModeFractions(_ModesBase):
    name = "modes.fractions"
    summary_keys = ("r_mean", "frac_opt", "frac_npt_alive", "frac_dead")
    description = (
        "Per activation layer, the graded order-preservation score r_mean (headline: mean over neurons of "
        "r_j = 1 - #pairs tied or inverted / #pairs with distinct h, on a capped sample) and the binary "
        "fractions of order-preserving (OPT), non-order-preserving alive (NPT) and dead neurons; region rule "
        "(streams) or rank rule (capped sample). The binary OPT fraction falls to ~0 for ReLU layers once "
        "P is large (one silent sample makes a neuron NPT); r_mean keeps grading them" + _RECON
    )
    params = (
        Param(
            "rule",
            str,
            "region",
            "region: all h where sigma strictly increases; rank: outputs "
            "strictly increase along h (activation-agnostic)",
            choices=("region", "rank"),
        ),
        _PER_POSITION,
        _SATURATION,
        Param(
            "dead_tol",
            float,
            0.0,
            "dead = output range (max - min) over the samples <= this",
            min=0.0,
            max=1_000_000_000,
        ),
        Param(
            "max_rank_samples",
            int,
            1000,
            "reservoir of sample rows kept per layer (rank rule and r_mean)",
            min=2,
            max=100_000,
        ),
    )
    result_kinds = ("scalar", "vector")
    method = """\
**Headline: the graded score.** A neuron is OPT only if it preserves the order of *every* pair of the P
samples, so one silent sample makes a ReLU neuron NPT and the OPT fraction falls to ~0 on ~1000
samples for most trained ReLU layers, carrying little information. `r_mean` is the mean over the
layer's neurons of r_j = 1 - (#pairs tied or inverted) / (#pairs with distinct h) on the capped
reservoir (`max_rank_samples`), for ReLU exactly 1 - k_j (k_j - 1) / (P (P - 1)) with k_j silent
samples; it is graded where the fraction saturates. The binary fractions are still reported:
region rule (exact, streamed, needs the function's name) or rank rule (any function, on the
reservoir).
"""
    reservoir_param = "max_rank_samples"
    nan_keys = ("r_mean", "frac_opt", "frac_npt_alive", "frac_dead")

    def _needs_region(self) -> bool:
        return self.params["rule"] == "region"

    def _measure(self, layer: Layer, st: M.ModeStats) -> dict[str, Any]:
        dead = st.dead(self.params["dead_tol"])
        out: dict[str, Any] = {"rule": self.params["rule"]}
        h, y = st.reservoir.sample()
        opt = st.region_opt() if self.params["rule"] == "region" else M.rank_rule_opt(h, y)
        out["n_rank_samples"] = int(h.shape[0])
        r = M.graded_scores(h, y)[0]
        out["r_mean"] = float(np.nanmean(r)) if np.isfinite(r).any() else math.nan
        codes = M.classify_modes(opt, dead)
        out.update(M.mode_fractions(codes))
        out["modes"] = codes
        out["mode_codes"] = M.MODE_CODES
        return out


class GradedScore(_ModesBase):
    name = "modes.graded"
    summary_keys = ("r_mean", "r_median", "frac_r_one")
    description = (
        "Distribution over neurons of the graded order-preservation score r_j = 1 - (#sample "
        "pairs tied or inverted by sigma) / (#pairs with distinct pre-activation), on a capped sample" + _RECON
    )
    params = (
        _PER_POSITION,
        Param("max_samples", int, 1000, "reservoir of sample rows kept per layer", min=2, max=100_000),
        _BINS,
    )
    result_kinds = ("scalar", "vector", "curve")
    uses_region = False
    reservoir_param = "max_samples"
    nan_keys = ("r_mean", "r_median")

    def _measure(self, layer: Layer, st: M.ModeStats) -> dict[str, Any]:
        h, y = st.reservoir.sample()
        r, bad, distinct = M.graded_scores(h, y)
        ok = np.isfinite(r)
        return {
            "n_rank_samples": int(h.shape[0]),
            "r": r,
            "r_mean": float(r[ok].mean()) if ok.any() else math.nan,
            "r_median": float(np.median(r[ok])) if ok.any() else math.nan,
            "frac_r_one": float(np.mean(r[ok] == 1.0)) if ok.any() else math.nan,
            "n_undefined": int((~ok).sum()),
            "histogram": _histogram(r, self.params["bins"], "r_j"),
        }


class ActivationRates(_ModesBase):
    name = "modes.activation_rates"
    summary_keys = ("rate_mean", "frac_always", "frac_never")
    description = (
        "Per neuron, the fraction of samples whose pre-activation lies where sigma is strictly "
        "increasing (ReLU: h > 0), and its distribution over the layer (streams)" + _RECON
    )
    params = (_PER_POSITION, _SATURATION, _BINS)
    result_kinds = ("scalar", "vector", "curve")
    nan_keys = ("rate_mean",)

    def _degenerate(self, acc: M.LayerModeStream) -> str | None:
        if acc.reason is not None:
            return acc.reason
        return "no samples" if acc.stats is None or acc.stats.n == 0 else None

    def _measure(self, layer: Layer, st: M.ModeStats) -> dict[str, Any]:
        rates = st.activation_rates()
        return {
            "rates": rates,
            "rate_mean": float(rates.mean()),
            "rate_median": float(np.median(rates)),
            "frac_always": float(np.mean(rates == 1.0)),
            "frac_never": float(np.mean(rates == 0.0)),
            "histogram": _histogram(rates, self.params["bins"], "activation rate"),
        }


_LATER = " (reconstructed: named in the later version of the paper, definition assumed; see docs/metrics.md)"


class RankProbability(_ModesBase):
    name = "modes.rank_probability"
    summary_keys = ("rank_displacement_mean", "spearman_mean", "diagonal_mass")
    description = (
        "Rank Probability Distribution: each sample's normalised rank among the samples by pre-activation (u) "
        "and by output (v), pooled over the layer's neurons as P(v | u) on a bins x bins grid (the identity "
        "for order-preserving neurons), with the mean rank displacement E|u - v|, the mean Spearman "
        "correlation of h and y and the diagonal mass P(u, v in the same bin), on a capped sample" + _LATER
    )
    params = (
        _PER_POSITION,
        Param("max_samples", int, 1000, "reservoir of sample rows kept per layer", min=2, max=100_000),
        Param("bins", int, 20, "rank bins per axis of the distribution", min=2, max=200),
    )
    result_kinds = ("scalar", "vector", "matrix")
    method = """\
**Reconstruction.** The later version of Lin et al. (arXiv 2501.02436 v3/v4) names a *Rank Probability
Distribution* (RPD) that quantifies a layer's nonlinearity through the neurons' transformation modes;
its full definition was not read. Assumed here: for each neuron j and the P samples of the capped
reservoir, every sample's rank by pre-activation h_j and by output y_j, normalised to u, v in [0, 1]
(ties share their average rank); the RPD is the distribution of (u, v) pooled over the layer's
measured neurons (varying h and y; dead neurons are excluded and counted by modes.fractions), shown
as `rank_probability` = P(v bin | u bin) on a `bins` x `bins` grid and `joint`. An order-preserving
neuron gives the identity; a ReLU neuron silent on k samples maps the k lowest input ranks to the
one tied output rank (k - 1) / (2 (P - 1)). Scalars: `rank_displacement_mean` = mean over neurons of
E|u - v| (0 iff every measured neuron preserves order), `spearman_mean` (mean Spearman correlation
of h and y), `diagonal_mass` = P(u, v in the same bin). Conv neurons are channels over (image,
position) pairs unless `per_position`.
"""
    uses_region = False
    reservoir_param = "max_samples"
    nan_keys = ("rank_displacement_mean", "spearman_mean", "diagonal_mass")

    def _measure(self, layer: Layer, st: M.ModeStats) -> dict[str, Any]:
        h, y = st.reservoir.sample()
        res = M.rank_probability(h, y, self.params["bins"])
        res["rank_probability"] = res.pop("conditional")
        res["n_rank_samples"] = int(h.shape[0])
        if not res["n_measured"]:
            res["reason"] = "every neuron is dead or has a constant pre-activation over the samples"
        return res


class LinearSubstitution(_ModesBase):
    name = "modes.linear_substitution"
    summary_keys = ("fvu_pooled", "frac_linear", "fvu_median")
    description = (
        "Linear Substitution Map: every neuron's activation replaced by its best affine map of its "
        "pre-activation (least squares over all samples, streamed): per neuron the substitution error "
        "1 - corr(h, y)^2, per layer the output variance lost when all are linearised (fvu_pooled), the "
        "fraction of neurons that are linear on the data, and a whole-model curve over depth" + _LATER
    )
    params = (
        _PER_POSITION,
        Param(
            "linear_tol",
            float,
            1e-9,
            "a neuron counts as linear when its substitution error is <= this",
            min=0.0,
            max=1.0,
        ),
        _BINS,
    )
    result_kinds = ("scalar", "vector", "curve")
    method = """\
**Reconstruction.** The later version of Lin et al. names a *Linear Substitution Map* (L-Map) that
quantifies how far a layer can be linearised; its full definition was not read. Assumed here: every
neuron's activation sigma is substituted by the affine map of its pre-activation that is best in
least squares over all samples, y ~ a_j h + b_j (streamed exactly with per-neuron moments, no sample
cap). Per neuron: `slope`, `intercept` and the substitution error e_j = SSE_j / SST_j =
1 - corr(h_j, y_j)^2 (0 when sigma acts linearly on the data, e.g. an always-active ReLU; 1 - 1/4 /
(1/2 - 1/(2 pi)) ~ 0.36 for ReLU on symmetric Gaussian h). Per layer: `fvu_pooled` = sum SSE / sum
SST, the fraction of the layer's output variance lost when every neuron is linearised;
`frac_linear` = share of neurons with e_j <= `linear_tol`. Whole model (layer ""): `map`, the
pooled error over the activation layers in depth order, which is the "map" across the network.
"""
    uses_region = False
    nan_keys = ("fvu_pooled", "frac_linear", "fvu_median")

    def _measure(self, layer: Layer, st: M.ModeStats) -> dict[str, Any]:
        res = M.linear_substitution(st.moments)
        err = res["substitution_fvu"]
        ok = np.isfinite(err)
        res.update(
            frac_linear=float(np.mean(err[ok] <= self.params["linear_tol"])) if ok.any() else math.nan,
            fvu_median=float(np.median(err[ok])) if ok.any() else math.nan,
            n_dead_or_constant=int((~ok).sum()),
            histogram=_histogram(err, self.params["bins"], "substitution error"),
        )
        if not ok.any():
            res["reason"] = "every neuron is dead or has a constant pre-activation over the samples"
        return res

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        names = list(results)
        values = np.array([results[n].get("fvu_pooled", math.nan) for n in names], dtype=np.float64)
        if not np.isfinite(values).any():
            return None
        return {  # the map over depth: which layers can be linearised
            "map": Curve(
                np.arange(1, len(names) + 1, dtype=np.float64), values, "activation layer (depth)", "fvu_pooled"
            ),
            "layers": ",".join(names),
            "fvu_pooled_mean": float(np.nanmean(values)),
        }


# ----------------------------------------------------------------------------- basins

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


class _BasinsBase(Metric):
    """Keeps the first ``samples`` data rows, then searches the basins in ``finish``."""

    citation = CITATION
    reconstructed = True
    result_kinds = ("scalar", "vector", "curve")

    def start(self) -> None:
        self.data: dict[str, list[np.ndarray]] = {}
        self.labels: list[np.ndarray] = []
        self.has_labels = True
        self.kept = 0

    def update(self, batch: Batch) -> None:
        take = min(self.params["samples"] - self.kept, batch.size)
        if take <= 0 or not batch.data:
            return
        for key, value in batch.data.items():
            self.data.setdefault(key, []).append(np.array(value[:take]))
        if batch.labels is None:
            self.has_labels = False
        else:
            self.labels.append(np.asarray(batch.labels[:take]))
        self.kept += take

    def _predict(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        wanted = self.ctx.graph.outputs[0].name if self.ctx.graph.outputs else None
        logits = outputs[wanted] if wanted in outputs else next(iter(outputs.values()))
        return B.logits_to_labels(logits)

    def predict(self, inputs: B.Inputs) -> np.ndarray:
        return self._predict(self.ctx.model.run(dict(inputs), capture=()).outputs)

    def predict_with_weights(self, inputs: B.Inputs, weights: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
        return self._predict(self.ctx.model.run_with_weights(dict(inputs), weights, capture=()).outputs)

    def finish(self) -> dict[str, dict[str, Any]]:
        p = self.params
        out: dict[str, Any] = {f"param_{q.name}": p[q.name] for q in self.__class__.params}
        out.update({"n_samples": self.kept, "seed": self.ctx.seed, "sample_indices": np.arange(self.kept)})
        if self.ctx.model is None:
            return {WHOLE_MODEL: {**out, "radius_mean": math.nan, "reason": "no model handle (Needs.MODEL)"}}
        if self.kept == 0:
            return {WHOLE_MODEL: {**out, "radius_mean": math.nan, "reason": "no data samples in the run"}}
        inputs = {k: np.concatenate(v) for k, v in self.data.items()}
        names = [s.name for s in self.ctx.graph.inputs]
        key = names[0] if names and names[0] in inputs else next(iter(inputs))
        if p["reference"] == "label" and self.has_labels and self.labels:
            ref = np.concatenate(self.labels)
            ref = (
                np.argmax(ref, axis=-1)
                if ref.ndim == 2 and ref.shape[1] > 1
                else ref.reshape(self.kept, *ref.shape[1:])
            )
            out["reference_used"] = "label"
        else:
            if p["reference"] == "label":
                self.ctx.warn(f"{self.name}: no labels in the data; using the model's clean predictions")
            ref = B.predict_batched(self.predict, inputs, self.ctx.max_batch_size)
            out["reference_used"] = "prediction"
        result = self._search(inputs, key, ref)
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
        return {WHOLE_MODEL: out}


class SampleBasins(_BasinsBase):
    name = "basins.sample"
    summary_keys = ("radius_mean", "radius_median", "clean_accuracy")
    description = (
        "Attraction basins in input space: per sample, the largest Gaussian noise level r (relative "
        "to the input's norm) at which it keeps its label with probability >= keep_prob over K draws, "
        "by bisection; mean/median and accuracy-vs-noise curve" + _RECON
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

    def _search(self, inputs, key, ref) -> B.BasinResult:
        p = self.params
        return B.sample_basins(
            self.predict,
            inputs,
            ref,
            key=key,
            draws=p["draws"],
            steps=p["steps"],
            r_max=p["r_max"],
            keep_prob=p["keep_prob"],
            relative=p["noise"] == "relative",
            curve_points=p["curve_points"],
            seed=self.ctx.seed,
            max_batch_size=self.ctx.max_batch_size,
            budget_seconds=p["budget_seconds"] or math.inf,
            progress=self.ctx.progress,
            cancelled=self.ctx.cancelled,
        )


class WeightBasins(_BasinsBase):
    name = "basins.weight"
    summary_keys = ("radius_mean", "radius_median", "clean_accuracy")
    description = (
        "Attraction basins in weight space: per sample, the largest relative layer-normalised weight "
        "noise eta (W + eta*rms(W)*G on the selected linear/conv layers, and the gate matrices "
        "weight_ih/weight_hh of recurrent and the projections of attention layers, each tensor scaled by "
        "its own rms) at which it keeps its label with probability >= keep_prob over K weight draws, by "
        "bisection; mean/median and accuracy-vs-noise curve" + _RECON
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

    def _search(self, inputs, key, ref) -> B.BasinResult:
        p = self.params
        weights = {layer.name: _perturbed(layer, p["perturb_bias"]) for layer in self.ctx.layers}
        weights = {name: w for name, w in weights.items() if w}
        if not weights:
            self.ctx.warn(f"{self.name}: no selected layer has weights; nothing is perturbed")
        return B.weight_basins(
            self.predict_with_weights,
            self.predict,
            inputs,
            ref,
            weights,
            draws=p["draws"],
            steps=p["steps"],
            r_max=p["eta_max"],
            keep_prob=p["keep_prob"],
            curve_points=p["curve_points"],
            seed=self.ctx.seed,
            max_batch_size=self.ctx.max_batch_size,
            budget_seconds=p["budget_seconds"] or math.inf,
            progress=self.ctx.progress,
            cancelled=self.ctx.cancelled,
        )

    def finish(self) -> dict[str, dict[str, Any]]:
        results = super().finish()
        results[WHOLE_MODEL]["perturbed_layers"] = ",".join(layer.name for layer in self.ctx.layers)
        return results


def _perturbed(layer: Layer, bias: bool) -> dict[str, np.ndarray]:
    """The tensors basins.weight perturbs: every weight (a recurrent layer's weight_ih_l0, weight_hh_l0, ...,
    an attention layer's in_proj_weight, out_proj.weight) and, with ``bias``, every bias; no norm statistics."""
    return {k: v for k, v in layer.weights.items() if "weight" in k or (bias and "bias" in k)}


METRICS = (ModeFractions, GradedScore, ActivationRates, RankProbability, LinearSubstitution, SampleBasins, WeightBasins)


@hookimpl
def deepscope_register_metrics(register) -> None:
    for metric in METRICS:
        register(metric)
