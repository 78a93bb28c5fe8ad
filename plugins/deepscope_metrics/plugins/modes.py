"""Plugin adapter: neuron transformation modes (modes.*).

Lin et al. 2025 (arXiv 2501.02436), reconstructed from the abstract; the computations live in
``deepscope_metrics.modes``. The same paper's attraction basins are the ``basins`` family
(``plugins/basins.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deepscope_server.plugin_api import (
    Batch,
    Curve,
    Layer,
    Needs,
    Param,
    PerLayerMetric,
    hookimpl,
    nan_result,
    unit_view,
)

from .. import modes as M

CITATION = "Lin, Zhang, Feng, Zhao 2025, arXiv:2501.02436 (abstracts v1-v4; full text not read)"
RECONSTRUCTED_NOTE = " (reconstructed from the abstract)"

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

    def feed(self, layer: Layer, acc: M.LayerModeStream, batch: Batch) -> None:
        """The layer's (pre-activation, output) pairs."""
        if acc.reason is not None:
            return
        if layer.name not in batch.inputs or layer.name not in batch.outputs:
            acc.reason = "pre-activation (layer input) or output not captured for this layer"
            return
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
        "P is large (one silent sample makes a neuron NPT); r_mean keeps grading them" + RECONSTRUCTED_NOTE
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
        "pairs tied or inverted by sigma) / (#pairs with distinct pre-activation), on a capped sample"
        + RECONSTRUCTED_NOTE
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
        "increasing (ReLU: h > 0), and its distribution over the layer (streams)" + RECONSTRUCTED_NOTE
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


METRICS = (ModeFractions, GradedScore, ActivationRates, RankProbability, LinearSubstitution)


@hookimpl
def deepscope_register_metrics(register) -> None:
    for metric in METRICS:
        register(metric)
