"""Plugin adapter for the fractal family: SS_rate, feature-graph d_B, spectrum exponent, correlation dimension.

Declarations on PerLayerMetric: each metric names its accumulator, core call and result keys; the
streaming state and computations live in deepscope_metrics.fractal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from deepscope_server.plugin_api import (
    Curve,
    Graph,
    Layer,
    Needs,
    Param,
    PerLayerMetric,
    Table,
    cross_layer,
    hookimpl,
    nan_result,
    unit_view,
)

from ..fractal.box_covering import METHODS, box_covering
from ..fractal.correlation import (
    DELTA_FLOOR,
    NORMALISATIONS,
    REDUCTIONS,
    authors_correlation_dimension,
    correlation_dimension,
    dimension_fluctuation,
    l2_rows,
    reduce_dimension,
    umap_available,
)
from ..fractal.feature_graph import EPSILON_MODES, PairDistanceAccumulator, feature_graph
from ..fractal.spectrum import EigenvalueSource, power_law_mle
from ..fractal.ss_rate import VARIANTS, SSRateStream
from ..streaming import FirstRows

DING = "Ding et al. 2025, Self-similarity Analysis in Deep Neural Networks, arXiv:2507.17785"
SONG = "Song, Havlin, Makse 2005 (Nature 433:392) and 2007 (J. Stat. Mech. P03006)"
SPECTRUM_VARIANTS = ("authors", "channel_mean")


def _channels_last(layer: Layer, a: np.ndarray) -> np.ndarray:
    """``[B, H*W*C]``: every element, channels fastest - the authors' ``permute(0, 2, 1)`` order, so
    even a randomized PCA sees the same columns as theirs."""
    if a.ndim <= 2:
        return a.reshape(a.shape[0], -1)
    return np.moveaxis(a, layer.channel_axis % a.ndim, -1).reshape(a.shape[0], -1)


def _across_layers(
    results: dict[str, dict[str, Any]],
    key: str,
    what: str,
    nan_key: str,
    stat: Callable[[np.ndarray], dict[str, float]],
) -> dict[str, Any]:
    """The whole-model block: ``stat`` of ``key`` over the layers where it is finite (at least 2; ``stat``
    returns {} when it is undefined), else NaN under ``nan_key`` saying why."""
    values, whole = cross_layer(results, key)
    ok = values[np.isfinite(values)]
    out = stat(ok) if ok.size >= 2 else {}
    return (
        {**whole, **out}
        if out
        else nan_result(f"{ok.size} layers with a finite {key}: {what} needs 2", nan_key, **whole)
    )


def _spread(gammas: np.ndarray) -> dict[str, float]:
    """sigma_gamma: the population std of the layers' exponents (the authors' fluctuation)."""
    return {"sigma_gamma": float(gammas.std()), "gamma_mean": float(gammas.mean())}


def _relative_range(dims: np.ndarray) -> dict[str, float]:
    """Delta = (max - min) / mean of the layers' dimensions; undefined at mean 0."""
    return {"delta": float((dims.max() - dims.min()) / dims.mean())} if dims.mean() != 0 else {}


class SSRateMetric(PerLayerMetric):
    name = "fractal.ss_rate"
    summary_keys = ("ss_rate", "ss_rate_std", "zero_variance_fraction")
    description = (
        "SS_rate of each layer's feature network (one node per unit, node feature = unit output on a "
        "batch of B inputs, spatial/token axes averaged), computed as the authors' sfm_loss_d_v2.py does, in "
        "float64 and in its order of operations (a pair is below a threshold when sigmoid(theta - d) > 0.5, "
        "thresholds not clamped to the distance range); mean and std over consecutive batches of B samples "
        "(remainder dropped). 0 = strongly self-similar."
    )
    citation = DING
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "curve")
    params = (
        Param("batch_size", int, 64, "B: samples per feature network (paper default 64)", min=2, max=4096),
        Param("n_thresholds", int, 256, "S: thresholds on the geometric grid", min=2, max=65_536),
        Param(
            "variant",
            str,
            "code",
            "N_theta formula ('code' = sfm_loss_d_v2.py, the one that reproduces the paper's tables)",
            choices=VARIANTS,
        ),
    )

    def accumulator(self, layer: Layer) -> SSRateStream:
        return SSRateStream(self.params["batch_size"], self.params["n_thresholds"])

    def measure(self, layer: Layer, stream: SSRateStream) -> dict[str, Any]:
        B, S = self.params["batch_size"], self.params["n_thresholds"]
        short = stream.use_short_batch()  # fewer samples than B: use what there is
        if short:
            self.ctx.warn(f"{layer.name}: only {short} samples (< batch_size {B}); one smaller batch used")
        tally = stream.tally
        res: dict[str, Any] = {
            "n_samples": stream.n_seen,
            "batch_size": B,
            "n_thresholds": S,
            "variant": self.params["variant"],
            "n_batches": tally.n_batches,
            "n_batches_valid": tally.n_good,
            "n_samples_dropped": stream.n_pending,
            "n_nodes": tally.n_nodes,
            **tally.summary(),
        }
        if tally.n_good:
            s = res.pop("s")
            res["n_theta"] = Curve(s, res["n_theta"], "s_k", "N_theta (mean over batches)")
            res["y"] = Curve(s, res["y"], "s_k", "ln N_theta / ln D")
        return res


class BoxDimensionMetric(PerLayerMetric):
    name = "fractal.box_dimension"
    summary_keys = ("d_B", "r2", "fractal")
    description = (
        "(extension beyond the paper) Box-counting fractal dimension d_B of each layer's explicit feature "
        "network G_M: nodes = units, d_ij = ||F_i - F_j||/sqrt(n) over all samples, edges d_ij <= eps "
        "(eps = largest Euclidean-MST edge by default), hop distances, box covering (Song l_B convention), "
        "log-log fit with R^2, local slopes, the (l_B, N_B) table and a not-fractal flag."
    )
    citation = f"{DING}; {SONG}"
    extension = True
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "vector", "table", "curve")
    params = (
        Param("epsilon", str, "mst", "edge threshold rule", choices=EPSILON_MODES),
        Param("epsilon_quantile", float, 0.1, "pair-distance quantile when epsilon='quantile'", min=0.0, max=1.0),
        Param("method", str, "greedy", "box-covering algorithm", choices=METHODS),
        Param("restarts", int, 3, "randomised runs; the fewest boxes per size are kept", min=1, max=100),
        Param("n_sizes", int, 12, "points of the geometric l_B grid", min=3, max=256),
        Param("l_min", float, 2.0, "smallest l_B entering the fit", min=1.0, max=1_000_000),
        Param("fit_on", str, "l_B", "abscissa of the fit", choices=("l_B", "l_B-1")),
        Param("include_graph", bool, True, "also return G_M itself (edges weighted by d_ij): run.graph(...)"),
    )

    def accumulator(self, layer: Layer) -> PairDistanceAccumulator:
        return PairDistanceAccumulator()

    def measure(self, layer: Layer, acc: PairDistanceAccumulator) -> dict[str, Any]:
        p = self.params
        res: dict[str, Any] = {
            "n_samples": acc.n,
            "method": p["method"],
            "epsilon_mode": p["epsilon"],
            "fit_on": p["fit_on"],
            "seed": self.ctx.seed,
            "fractal": False,
        }
        if acc.nonfinite or acc.gram is None:
            n_nodes = 0 if acc.gram is None else acc.gram.shape[0]
            reason = "NaN/inf activations" if acc.nonfinite else "no samples"
            return nan_result(reason, "d_B", "r2", **res, n_nodes=n_nodes)
        res["n_nodes"] = acc.gram.shape[0]
        dist = acc.distances()
        fg = feature_graph(dist, p["epsilon"], p["epsilon_quantile"])
        res.update(epsilon=fg.epsilon, n_edges=fg.n_edges)
        if fg.adjacency is None:
            return nan_result(fg.reason, "d_B", "r2", **res)
        if p["include_graph"]:
            edges = sp.triu(fg.adjacency, k=1).tocoo()
            res["graph"] = Graph(
                dist.shape[0],
                edges.row.astype(np.int64),
                edges.col.astype(np.int64),
                dist[edges.row, edges.col],
                directed=False,
                nodes={"unit": np.arange(dist.shape[0])},
            )
        bc = box_covering(
            fg.adjacency,
            method=p["method"],
            seed=self.ctx.seed,
            restarts=p["restarts"],
            n_sizes=p["n_sizes"],
            l_min=p["l_min"],
            fit_on=p["fit_on"],
        )
        res.update(
            d_B=bc.dimension,
            r2=bc.r2,
            r2_semilog=bc.r2_semilog,
            fractal=bc.fractal,
            local_slopes=np.asarray(bc.local_slopes),
            diameter=bc.diameter,
            n_components=bc.n_components,
            restarts=p["restarts"],
            boxes=Table({"l_B": bc.sizes, "l_B_minus_1": bc.sizes_minus_one, "N_B": bc.counts, "in_fit": bc.fit_mask}),
            n_boxes=Curve(bc.sizes.astype(float), bc.counts.astype(float), "l_B", "N_B"),
        )
        if bc.reason:
            res["reason"] = bc.reason
        return res


class SpectrumExponentMetric(PerLayerMetric):
    name = "fractal.spectrum_exponent"
    summary_keys = ("gamma", "ks")
    description = (
        "Eigenvalue-density exponent gamma (p(lambda) ~ lambda^-gamma; not the rank-plot slope alpha of "
        "lambda_i ~ i^-alpha) of each layer's feature covariance, as the authors' analyze_feature_distribution.py: "
        "conv/token maps flattened to (B, H*W*C) (variant=authors; identical to channel_mean for dense layers), "
        "wider than max_dim features reduced to the top min(max_dim, B/2) principal components, |lambda| > 1e-10, "
        "at least min_values of them, continuous MLE with lambda_min by KS minimisation as powerlaw.Fit; "
        "sigma_gamma = population std of gamma across layers (under the whole-model key)."
    )
    citation = DING
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "table")
    params = (
        Param(
            "variant",
            str,
            "authors",
            "authors = flatten every element (faithful); channel_mean = one unit "
            "per channel, spatial/token axes averaged, covariance streamed over all samples (extension)",
            choices=SPECTRUM_VARIANTS,
        ),
        Param(
            "max_dim",
            int,
            1000,
            "wider layers are PCA-reduced to min(max_dim, samples/2) components",
            min=2,
            max=100_000,
        ),
        Param(
            "max_samples",
            int,
            2000,
            "samples kept per layer when wider than max_dim (the first ones)",
            min=4,
            max=100_000,
        ),
        Param(
            "max_values",
            int,
            32_000_000,
            "cap on samples x features kept per wide layer (memory)",
            min=1000,
            max=1_000_000_000,
        ),
        Param("min_values", int, 50, "fewest eigenvalues above 1e-10 to fit (the authors' guard)", min=2, max=100_000),
        Param("min_tail", int, 2, "fewest eigenvalues in the fitted tail", min=2, max=100_000),
    )

    def accumulator(self, layer: Layer) -> EigenvalueSource:
        p = self.params
        return EigenvalueSource(p["max_dim"], p["max_samples"], p["max_values"])

    def rows(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        flat = _channels_last(layer, a) if self.params["variant"] == "authors" else unit_view(a, layer, "mean")
        return np.asarray(flat, np.float64)

    def measure(self, layer: Layer, acc: EigenvalueSource) -> dict[str, Any]:
        p = self.params
        res: dict[str, Any] = {
            "n_samples": acc.n_seen,
            "n_samples_used": acc.n_used,
            "n_units": acc.width,
            "variant": p["variant"],
            "min_tail": p["min_tail"],
            "pca_reduced": acc.width > p["max_dim"],
        }
        if acc.nonfinite or acc.n_used < 2:
            reason = "NaN/inf activations" if acc.nonfinite else f"{acc.n_used} samples: need at least 2"
            return nan_result(reason, "gamma", **res)
        fit = power_law_mle(acc.eigenvalues(), min_tail=p["min_tail"], min_values=p["min_values"])
        res.update(gamma=fit.gamma, lambda_min=fit.xmin, n_tail=fit.n_tail, ks=fit.ks, n_eigenvalues=fit.n_values)
        if fit.reason:
            res["reason"] = fit.reason
        return res

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return _across_layers(results, "gamma", "sigma", "sigma_gamma", _spread)


class _FirstSamples(PerLayerMetric):
    """Keeps each layer's first ``max_samples`` rows, at most ``max_values`` numbers (``FirstRows``)."""

    def accumulator(self, layer: Layer) -> FirstRows:
        warn = self.ctx.warn
        return FirstRows(
            self.params["max_samples"], self.params.get("max_values"), lambda message: warn(f"{layer.name}: {message}")
        )


class CorrelationDimensionMetric(_FirstSamples):
    name = "fractal.correlation_dimension"
    summary_keys = ("dimension", "slope")
    description = (
        "Correlation dimension of each layer's sample representations as the authors' "
        "analyze_fractal_dimension.py computes it: conv/token maps flattened to (B, H*W*C), each sample "
        "L2-normalised, reduced to n_components dimensions (UMAP where the optional umap-learn is "
        "installed, PCA otherwise; `reduction` in the result says which), C(r) from each sample's "
        "n_neighbors nearest neighbours (itself included) on 40 radii 10^-3..10^0.5, slope of log C vs "
        "log r over the middle half of the radii with C > 0, clipped at 0. Delta = (max - min)/mean over "
        "the layers with a dimension > 0.001 (under the whole-model key)."
    )
    citation = DING
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "curve")
    params = (
        Param(
            "max_samples",
            int,
            3000,
            "cap on samples per layer (the first ones are kept; authors: 3000)",
            min=3,
            max=100_000,
        ),
        Param(
            "max_values",
            int,
            32_000_000,
            "cap on samples x flattened features kept per layer (memory)",
            min=1000,
            max=1_000_000_000,
        ),
        Param("reduction", str, "auto", "dimension reduction: auto = umap if installed, else pca", choices=REDUCTIONS),
        Param("n_components", int, 50, "dimensions after the reduction", min=1, max=10_000),
        Param("umap_neighbors", int, 20, "UMAP n_neighbors", min=2, max=1000),
        Param("umap_min_dist", float, 0.1, "UMAP min_dist", min=0.0, max=10.0),
        Param(
            "n_neighbors",
            int,
            30,
            "nearest neighbours per sample for C(r), the sample itself included",
            min=2,
            max=1000,
        ),
    )

    def start(self) -> None:
        super().start()
        if self.params["reduction"] == "umap" and not umap_available():
            raise ValueError(
                "reduction='umap' needs the optional umap-learn: pip install 'deepscope-metrics[umap]' "
                "(or use reduction=auto or pca)"
            )

    def rows(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        return _channels_last(layer, a)

    def measure(self, layer: Layer, acc: FirstRows) -> dict[str, Any]:
        p = self.params
        x = acc.stacked()
        res: dict[str, Any] = {
            "n_samples": acc.n_seen,
            "n_samples_used": x.shape[0],
            "n_features": x.shape[1],
            "n_components": p["n_components"],
        }
        if x.shape[0] >= 3 and np.isfinite(x).all():
            reduced, used = reduce_dimension(
                l2_rows(x),
                p["n_components"],
                p["reduction"],
                self.ctx.seed,
                p["umap_neighbors"],
                p["umap_min_dist"],
            )
        else:
            reduced, used = x, "none"
        cd = authors_correlation_dimension(reduced, p["n_neighbors"])
        res.update(dimension=cd.dimension, slope=cd.slope, reduction=used, n_neighbors=cd.n_neighbors)
        if cd.c.size:
            res["correlation_sum"] = Curve(cd.radii, cd.c, "r", "C(r)")
            fit = cd.radii[cd.fit_mask]
            if fit.size:
                res.update(fit_r_min=float(fit.min()), fit_r_max=float(fit.max()))
        if cd.reason:
            res["reason"] = cd.reason
        return res

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        dims, whole = cross_layer(results, "dimension")
        delta, whole["n_layers"], reason = dimension_fluctuation(dims)
        whole.update(delta=delta, delta_floor=DELTA_FLOOR)
        if reason:
            whole["reason"] = reason
        return whole


class CorrelationDimensionGPMetric(_FirstSamples):
    name = "fractal.correlation_dimension_gp"
    summary_keys = ("dimension", "r2")
    description = (
        "(extension beyond the paper: deepscope's estimator before it followed the authors' code) "
        "Grassberger-Procaccia correlation dimension over all sample pairs of each layer's representations "
        "(spatial/token axes averaged, normalised) on the first max_samples samples, radii between two "
        "pair-distance quantiles, and Delta = (max - min)/mean across layers (under the whole-model key)."
    )
    citation = DING
    extension = True
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "curve")
    params = (
        Param("max_samples", int, 1000, "cap on samples per layer (the first ones are kept)", min=3, max=10_000),
        Param("normalise", str, "l2", "per-sample normalisation", choices=NORMALISATIONS),
        Param("n_radii", int, 16, "radii on the geometric grid", min=3, max=1024),
        Param("quantile_low", float, 0.001, "smallest radius as a pair-distance quantile", min=0.0, max=1.0),
        Param("quantile_high", float, 0.05, "largest radius as a pair-distance quantile", min=0.0, max=1.0),
    )

    def measure(self, layer: Layer, acc: FirstRows) -> dict[str, Any]:
        p = self.params
        cd = correlation_dimension(acc.stacked(), p["n_radii"], (p["quantile_low"], p["quantile_high"]), p["normalise"])
        res: dict[str, Any] = {
            "dimension": cd.dimension,
            "r2": cd.r2,
            "n_samples": acc.n_seen,
            "n_samples_used": cd.n_samples,
            "n_units": cd.n_features,
            "normalise": p["normalise"],
        }
        if cd.radii.size:
            res["correlation_sum"] = Curve(cd.radii, cd.c, "r", "C(r)")
        if cd.reason:
            res["reason"] = cd.reason
        return res

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return _across_layers(results, "dimension", "Delta", "delta", _relative_range)


@hookimpl
def deepscope_register_metrics(register) -> None:
    for metric in (
        SSRateMetric,
        BoxDimensionMetric,
        SpectrumExponentMetric,
        CorrelationDimensionMetric,
        CorrelationDimensionGPMetric,
    ):
        register(metric)
