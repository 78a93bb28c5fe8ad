"""Plugin adapter for the fractal family: SS_rate, feature-graph d_B, spectrum exponent, correlation dimension.

Thin: buffering per layer and result packing; the computations live in deepscope_metrics.fractal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from deepscope_server.plugin_api import (
    WHOLE_MODEL,
    Batch,
    Curve,
    Graph,
    Metric,
    Needs,
    Param,
    Table,
    hookimpl,
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
from ..fractal.spectrum import power_law_mle, top_eigenvalues
from ..fractal.ss_rate import VARIANTS, ss_rate
from ..streaming import StreamingCovariance

DING = "Ding et al. 2025, Self-similarity Analysis in Deep Neural Networks, arXiv:2507.17785"
SONG = "Song, Havlin, Makse 2005 (Nature 433:392) and 2007 (J. Stat. Mech. P03006)"
NAN = float("nan")
SPECTRUM_VARIANTS = ("authors", "channel_mean")


def _units(metric: Metric, name: str, a: np.ndarray) -> np.ndarray:
    """``[B, units]`` float64 view of a layer output (spatial/token axes averaged)."""
    return np.asarray(unit_view(a, metric._layers[name], "mean"), np.float64)


def _flatten_channel_last(metric: Metric, name: str, a: np.ndarray) -> np.ndarray:
    """``[B, H*W*C]``: every element, channels fastest - the authors' ``permute(0, 2, 1)`` order, so
    even a randomized PCA sees the same columns as theirs."""
    if a.ndim <= 2:
        return a.reshape(a.shape[0], -1)
    return np.moveaxis(a, metric._layers[name].channel_axis % a.ndim, -1).reshape(a.shape[0], -1)


class _PerLayer(Metric):
    def start(self) -> None:
        self._layers = {layer.name: layer for layer in self.ctx.layers}


class _Accumulating(_PerLayer):
    """Streams each layer's ``[B, units]`` outputs into one ``accumulator()`` per layer (``self.acc``)."""

    accumulator: Any  # a class with update(units) whose instances hold the layer's statistics

    def start(self) -> None:
        super().start()
        self.acc = {n: self.accumulator() for n in self._layers}

    def update(self, batch: Batch) -> None:
        for name, a in batch.outputs.items():
            if name in self.acc:
                self.acc[name].update(_units(self, name, a))


class _SSRateTally:
    """Running sums over per-batch SS_rate results: memory O(S) per layer, whatever the sample count."""

    def __init__(self) -> None:
        self.n_batches = 0
        self.n_good = 0
        self.n_nodes = 0
        self.reasons: set[str] = set()
        self.sums: dict[str, Any] = {}  # value, value^2, zero_variance_fraction, tz, tv, n_theta, y
        self.s: np.ndarray | None = None
        self.bad_zv = [0.0, 0]  # sum and count of zero-variance fractions of invalid batches

    def add(self, r: Any) -> None:
        self.n_batches += 1
        self.n_nodes = self.n_nodes or r.n_nodes
        if r.reason:
            self.reasons.add(r.reason)
        if not np.isfinite(r.value):
            if np.isfinite(r.zero_variance_fraction):
                self.bad_zv = [self.bad_zv[0] + r.zero_variance_fraction, self.bad_zv[1] + 1]
            return
        self.n_good += 1
        self.s = r.s if self.s is None else self.s
        for key, value in (
            ("value", r.value),
            ("value2", r.value**2),
            ("zv", r.zero_variance_fraction),
            ("tz", r.tz),
            ("tv", r.tv),
            ("n_theta", np.asarray(r.n_theta, np.float64)),
            ("y", np.asarray(r.y, np.float64)),
        ):
            self.sums[key] = self.sums.get(key, 0.0) + value

    def mean(self, key: str) -> Any:
        return self.sums[key] / self.n_good


class SSRateMetric(_PerLayer):
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

    def start(self) -> None:
        super().start()
        self.buffers: dict[str, list[np.ndarray]] = {n: [] for n in self._layers}
        self.buffered = {n: 0 for n in self._layers}
        self.tallies = {n: _SSRateTally() for n in self._layers}
        self.seen = {n: 0 for n in self._layers}

    def update(self, batch: Batch) -> None:
        B = self.params["batch_size"]
        for name, a in batch.outputs.items():
            if name not in self._layers:
                continue
            u = _units(self, name, a)
            self.seen[name] += u.shape[0]
            self.buffers[name].append(u)
            self.buffered[name] += u.shape[0]
            if self.buffered[name] >= B:
                rows = np.concatenate(self.buffers[name])
                full = (rows.shape[0] // B) * B
                for lo in range(0, full, B):
                    self.tallies[name].add(ss_rate(rows[lo : lo + B].T, self.params["n_thresholds"]))
                self.buffers[name] = [rows[full:]]
                self.buffered[name] = rows.shape[0] - full

    def finish(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        B, S = self.params["batch_size"], self.params["n_thresholds"]
        for name in self._layers:
            tally = self.tallies[name]
            if not tally.n_batches and self.buffered[name] > 0:  # fewer samples than B: use what there is
                rows = np.concatenate(self.buffers[name])
                self.ctx.warn(f"{name}: only {rows.shape[0]} samples (< batch_size {B}); one smaller batch used")
                tally.add(ss_rate(rows.T, S))
                self.buffered[name] = 0
            res: dict[str, Any] = {
                "n_samples": self.seen[name],
                "batch_size": B,
                "n_thresholds": S,
                "variant": self.params["variant"],
                "n_batches": tally.n_batches,
                "n_batches_valid": tally.n_good,
                "n_samples_dropped": self.buffered[name],
                "n_nodes": tally.n_nodes,
            }
            if tally.n_good:
                mean = tally.mean("value")
                res.update(
                    ss_rate=float(mean),
                    ss_rate_std=float(np.sqrt(max(tally.mean("value2") - mean**2, 0.0))),
                    zero_variance_fraction=float(tally.mean("zv")),
                    tz_mean=float(tally.mean("tz")),
                    tv_mean=float(tally.mean("tv")),
                    n_theta=Curve(tally.s, tally.mean("n_theta"), "s_k", "N_theta (mean over batches)"),
                    y=Curve(tally.s, tally.mean("y"), "s_k", "ln N_theta / ln D"),
                )
                if tally.reasons:
                    res["reason"] = f"{tally.n_batches - tally.n_good} batches skipped: " + "; ".join(
                        sorted(tally.reasons)
                    )
            else:
                zv_sum, zv_count = tally.bad_zv
                res.update(
                    ss_rate=NAN,
                    ss_rate_std=NAN,
                    zero_variance_fraction=zv_sum / zv_count if zv_count else NAN,
                    reason="; ".join(sorted(tally.reasons) or ["no samples"]),
                )
            out[name] = res
        return out


class BoxDimensionMetric(_Accumulating):
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

    accumulator = PairDistanceAccumulator

    def finish(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        p = self.params
        for name, acc in self.acc.items():
            res: dict[str, Any] = {
                "n_samples": acc.n,
                "method": p["method"],
                "epsilon_mode": p["epsilon"],
                "fit_on": p["fit_on"],
                "seed": self.ctx.seed,
            }
            nan_res = dict(d_B=NAN, r2=NAN, fractal=False)
            if acc.nonfinite or acc.gram is None:
                out[name] = {
                    **res,
                    **nan_res,
                    "n_nodes": 0 if acc.gram is None else acc.gram.shape[0],
                    "reason": "NaN/inf activations" if acc.nonfinite else "no samples",
                }
                continue
            res["n_nodes"] = acc.gram.shape[0]
            dist = acc.distances()
            fg = feature_graph(dist, p["epsilon"], p["epsilon_quantile"])
            res.update(epsilon=fg.epsilon, n_edges=fg.n_edges)
            if fg.adjacency is None:
                out[name] = {**res, **nan_res, "reason": fg.reason}
                continue
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
                boxes=Table(
                    {"l_B": bc.sizes, "l_B_minus_1": bc.sizes_minus_one, "N_B": bc.counts, "in_fit": bc.fit_mask}
                ),
                n_boxes=Curve(bc.sizes.astype(float), bc.counts.astype(float), "l_B", "N_B"),
            )
            if bc.reason:
                res["reason"] = bc.reason
            out[name] = res
        return out


class _SpectrumSamples:
    """One layer's eigenvalue source: a streamed covariance up to ``max_dim`` features, else the first
    rows (for the top eigenvalues from their Gram matrix), at most ``max_samples`` x ``max_values``."""

    def __init__(self, max_dim: int, max_samples: int, max_values: int) -> None:
        self.max_dim, self.max_samples, self.max_values = max_dim, max_samples, max_values
        self.cov = StreamingCovariance()
        self.rows: list[np.ndarray] = []
        self.n_rows = 0
        self.n_seen = 0
        self.width = 0
        self.nonfinite = False

    def update(self, u: np.ndarray) -> None:
        self.n_seen += u.shape[0]
        self.width = u.shape[1]
        if self.width <= self.max_dim:
            if np.isfinite(u).all():
                self.cov.update(u)
            else:  # the result is NaN; the bad rows are not counted as used
                self.nonfinite = True
            return
        room = min(self.max_samples, self.max_values // self.width) - self.n_rows
        if room > 0:
            kept = np.asarray(u[:room])
            self.nonfinite |= not np.isfinite(kept).all()
            self.rows.append(kept)
            self.n_rows += kept.shape[0]

    @property
    def n_used(self) -> int:
        return self.cov.n if self.width <= self.max_dim else self.n_rows

    def eigenvalues(self) -> np.ndarray:
        if self.width <= self.max_dim:
            return np.linalg.eigvalsh(self.cov.covariance())
        return top_eigenvalues(np.concatenate(self.rows), self.max_dim)


class SpectrumExponentMetric(_PerLayer):
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

    def start(self) -> None:
        super().start()
        p = self.params
        self.acc = {n: _SpectrumSamples(p["max_dim"], p["max_samples"], p["max_values"]) for n in self._layers}

    def update(self, batch: Batch) -> None:
        flat = self.params["variant"] == "authors"
        for name, a in batch.outputs.items():
            if name in self.acc and a.shape[0] > 0:
                u = _flatten_channel_last(self, name, a) if flat else unit_view(a, self._layers[name], "mean")
                self.acc[name].update(np.asarray(u, np.float64))

    def finish(self) -> dict[str, dict[str, Any]]:
        p = self.params
        out: dict[str, dict[str, Any]] = {}
        for name, acc in self.acc.items():
            res: dict[str, Any] = {
                "n_samples": acc.n_seen,
                "n_samples_used": acc.n_used,
                "n_units": acc.width,
                "variant": p["variant"],
                "min_tail": p["min_tail"],
                "pca_reduced": acc.width > p["max_dim"],
            }
            if acc.nonfinite or acc.n_used < 2:
                out[name] = {
                    **res,
                    "gamma": NAN,
                    "reason": "NaN/inf activations" if acc.nonfinite else f"{acc.n_used} samples: need at least 2",
                }
                continue
            fit = power_law_mle(acc.eigenvalues(), min_tail=p["min_tail"], min_values=p["min_values"])
            res.update(gamma=fit.gamma, lambda_min=fit.xmin, n_tail=fit.n_tail, ks=fit.ks, n_eigenvalues=fit.n_values)
            if fit.reason:
                res["reason"] = fit.reason
            out[name] = res
        names = list(out)
        gammas = np.array([out[n]["gamma"] for n in names], float)
        ok = np.isfinite(gammas)
        whole: dict[str, Any] = {"n_layers": int(ok.sum()), "layers": Table({"layer": names, "gamma": gammas})}
        if ok.sum() >= 2:
            whole.update(sigma_gamma=float(gammas[ok].std()), gamma_mean=float(gammas[ok].mean()))
        else:
            whole.update(sigma_gamma=NAN, reason=f"{int(ok.sum())} layers with a finite gamma: sigma needs 2")
        out[WHOLE_MODEL] = whole
        return out


class _FirstSamples(_PerLayer):
    """Keeps each layer's first ``max_samples`` rows of ``rows(name, a)``, at most ``max_values`` numbers."""

    def rows(self, name: str, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def start(self) -> None:
        super().start()
        self.kept: dict[str, list[np.ndarray]] = {n: [] for n in self._layers}
        self.count = {n: 0 for n in self._layers}
        self.seen = {n: 0 for n in self._layers}
        self.capped: set[str] = set()

    def update(self, batch: Batch) -> None:
        for name, a in batch.outputs.items():
            if name not in self.kept:
                continue
            self.seen[name] += a.shape[0]
            cap = self.params["max_samples"]
            room = cap - self.count[name]
            if room > 0 and a.shape[0] > 0:
                u = self.rows(name, a[:room])
                width = max(u.shape[1], 1)
                limit = self.params.get("max_values")
                if limit is not None and (self.count[name] + u.shape[0]) * width > limit:
                    u = u[: max(limit // width - self.count[name], 0)]
                    if name not in self.capped:
                        self.capped.add(name)
                        self.ctx.warn(
                            f"{name}: {width} values per sample; max_values={limit} keeps {limit // width} samples"
                        )
                self.kept[name].append(u)
                self.count[name] += u.shape[0]

    def stacked(self, name: str) -> np.ndarray:
        parts = self.kept[name]
        return np.concatenate(parts) if parts else np.zeros((0, 0))


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

    def rows(self, name: str, a: np.ndarray) -> np.ndarray:
        return _flatten_channel_last(self, name, a)

    def finish(self) -> dict[str, dict[str, Any]]:
        p = self.params
        out: dict[str, dict[str, Any]] = {}
        for name in self.kept:
            x = self.stacked(name)
            res: dict[str, Any] = {
                "n_samples": self.seen[name],
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
            out[name] = res
        names = list(out)
        dims = np.array([out[n]["dimension"] for n in names], float)
        delta, used_layers, reason = dimension_fluctuation(dims)
        whole: dict[str, Any] = {
            "delta": delta,
            "n_layers": used_layers,
            "delta_floor": DELTA_FLOOR,
            "layers": Table({"layer": names, "dimension": dims}),
        }
        if reason:
            whole["reason"] = reason
        out[WHOLE_MODEL] = whole
        return out


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

    def rows(self, name: str, a: np.ndarray) -> np.ndarray:
        return _units(self, name, a)

    def finish(self) -> dict[str, dict[str, Any]]:
        p = self.params
        out: dict[str, dict[str, Any]] = {}
        for name in self.kept:
            x = self.stacked(name)
            cd = correlation_dimension(x, p["n_radii"], (p["quantile_low"], p["quantile_high"]), p["normalise"])
            res: dict[str, Any] = {
                "dimension": cd.dimension,
                "r2": cd.r2,
                "n_samples": self.seen[name],
                "n_samples_used": cd.n_samples,
                "n_units": cd.n_features,
                "normalise": p["normalise"],
            }
            if cd.radii.size:
                res["correlation_sum"] = Curve(cd.radii, cd.c, "r", "C(r)")
            if cd.reason:
                res["reason"] = cd.reason
            out[name] = res
        dims = np.array([r["dimension"] for r in out.values()], float)
        ok = dims[np.isfinite(dims)]
        whole: dict[str, Any] = {"n_layers": int(ok.size), "layers": Table({"layer": list(out), "dimension": dims})}
        if ok.size >= 2 and ok.mean() != 0:
            whole["delta"] = float((ok.max() - ok.min()) / ok.mean())
        else:
            whole.update(delta=NAN, reason=f"{ok.size} layers with a finite dimension: Delta needs 2")
        out[WHOLE_MODEL] = whole
        return out


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
