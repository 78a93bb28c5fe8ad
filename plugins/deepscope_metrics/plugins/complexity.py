"""Plugin adapter: complexity.* metrics (Janik & Witaszczyk 2020; dimension.* is ``plugins/dimension.py``).

Thin wrappers: batches are reduced to ``[rows, units]`` with ``plugin_api.unit_view`` and fed
to the streaming accumulators; the numbers come from ``deepscope_metrics.complexity``,
``.dimension`` and ``.fits``.

The regression metrics (``complexity.linear_fvu``, ``complexity.piecewise``) measure blocks: the map
from one selected representation to the next (``blocks``), which a metric can do on its own because
a batch carries every selected layer's output (and, with ``Needs.DATA``, the model input); no server
change is involved.

``reduce`` (every metric here, default ``"mean"``) says how conv ``[B, C, H, W]`` and token
``[B, T, C]`` maps become ``[rows, units]``: ``mean`` averages over positions (one row per
sample, channel = unit); ``positions`` makes every (sample, position) a row (for the regression
metrics only on layers whose input and output have the same positions, e.g. activations and
1×1 convs); ``flatten`` makes every element a unit (one row per sample).
"""

from __future__ import annotations

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

from ..complexity import PatternEntropy, linear_fvu, piecewise_complexity
from ..streaming import PairedRows

CITATION = "R. A. Janik, P. Witaszczyk, Complexity for deep neural networks and other characteristics of deep feature representations, arXiv:2006.04791 (2020)"

REDUCE = Param(
    "reduce",
    str,
    "mean",
    "conv/token maps -> [rows, units]: mean over positions, positions as rows, or flatten (element = unit)",
    choices=("mean", "positions", "flatten"),
)


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"parameter '{name}' expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"parameter '{name}' needs at least one number")
    return values


# --------------------------------------------------------------------- regression metrics

#: The boundary name that stands for the model's (first) input in ``blocks``.
MODEL_INPUT = "input"

BLOCKS = Param(
    "blocks",
    str,
    "representations",
    "which maps are measured: 'representations' = model input -> output of the first selected activation "
    "layer -> the next one ... (one Linear/Conv+activation or residual block each; all selected layers when "
    "none is an activation); 'consecutive' = model input -> every selected layer's output in turn; 'layers' = "
    "each layer's own input -> output; or boundaries in order, e.g. "
    "'input,relu1,relu2' ('input' = the model input, always flattened; the others selected layers)",
)


def block_boundaries(spec: str, layers: list[Layer]) -> list[tuple[str, str]] | None:
    """``(start, end)`` boundary pairs for the ``blocks`` parameter; None for per-layer mode.

    Raises ValueError naming the boundaries that are not selected layers.
    """
    spec = spec.strip()
    if spec == "layers":
        return None
    names = [layer.name for layer in layers]
    if spec in ("representations", "consecutive"):
        acts = [layer.name for layer in layers if layer.kind == "activation"]
        chain = [MODEL_INPUT, *(acts if acts and spec == "representations" else names)]
    else:
        chain = [b.strip() for b in spec.split(",") if b.strip()]
        unknown = [b for b in chain if b != MODEL_INPUT and b not in names]
        if unknown or len(chain) < 2:
            what = f"{', '.join(unknown)} are not selected layers" if unknown else f"{spec!r} needs two boundaries"
            raise ValueError(
                f"parameter 'blocks': {what}; give 'representations', 'layers' or boundaries "
                f"from: {MODEL_INPUT}, {', '.join(names)}"
            )
    return list(zip(chain[:-1], chain[1:]))


class _BlockRegression(PerLayerMetric):
    """The regression metrics: each block (a map from one representation to the next, keyed by its
    end layer) streams a capped uniform sample of aligned (input, output) rows (``PairedRows``);
    a metric declares ``regress(x, y)`` on that sample and the keys a block without one gets NaN."""

    needs = Needs.INPUTS | Needs.OUTPUTS | Needs.DATA
    reconstructed = True
    citation = CITATION
    params = (
        BLOCKS,
        REDUCE,
        Param(
            "max_samples",
            int,
            4000,
            "reservoir capacity: rows kept for the regression (uniform sample)",
            min=8,
            max=100_000,
        ),
        Param(
            "max_width",
            int,
            4096,
            "wider inputs/outputs are randomly projected to this many dims before sampling",
            min=1,
            max=16_384,
        ),
        Param(
            "pca_dim",
            int,
            256,
            "input and output are PCA-reduced (fitted on the training split) to at most this",
            min=1,
            max=4096,
        ),
        Param("test_fraction", float, 0.25, "held-out fraction of the sample for scoring", min=0.05, max=0.95),
    )
    nan_keys: tuple[str, ...] = ()  #: the headline keys, NaN when a block cannot be measured
    nan_values: dict[str, Any] = {}  #: other values of such a block

    def start(self) -> None:
        pairs = block_boundaries(self.params["blocks"], self.ctx.layers)
        #: end layer -> (source name, "input" = that layer's own input / "output" / "data" = the model input)
        self.sources: dict[str, tuple[str, str]] = (
            {layer.name: (layer.name, "input") for layer in self.ctx.layers}
            if pairs is None
            else {end: (start, "data" if start == MODEL_INPUT else "output") for start, end in pairs}
        )
        self.by_name = {layer.name: layer for layer in self.ctx.layers}
        super().start()

    def measured_layers(self) -> list[Layer]:
        return [self.by_name[end] for end in self.sources]

    def accumulator(self, layer: Layer) -> PairedRows:
        warn = self.ctx.warn
        return PairedRows(
            self.params["max_samples"],
            self.params["max_width"],
            self.ctx.seed,
            lambda message: warn(f"{self.name}: {layer.name} {message}"),
        )

    def _view(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        return unit_view(a, layer, self.params["reduce"])

    def feed(self, layer: Layer, acc: PairedRows, batch: Batch) -> None:
        """The block's input (the start layer's output, its own input, or the model input) and its output."""
        start, side = self.sources[layer.name]
        if layer.name not in batch.outputs:
            return
        if side == "data":
            model_input = self.ctx.graph.inputs[0].name if self.ctx.graph.inputs else MODEL_INPUT
            a = batch.data.get(model_input)
            # flattened whatever 'reduce' says: averaging an image over its positions would leave ~nothing
            x = None if a is None else np.asarray(a, dtype=np.float64).reshape(len(a), -1)
        else:
            group = batch.inputs if side == "input" else batch.outputs
            x = self._view(self.by_name[start], group[start]) if start in group else None
        if x is not None:
            acc.update(x, self._view(layer, batch.outputs[layer.name]))

    def measure(self, layer: Layer, acc: PairedRows) -> dict[str, Any]:
        p = self.params
        start, side = self.sources[layer.name]
        sample = acc.sampler.sample()
        if acc.reason is not None:
            res = self._nan(f"block {acc.reason} with reduce='{p['reduce']}'; use mean or flatten")
        elif not sample:
            res = self._nan(
                "no input/output captured for this layer"
                if side == "input"
                else f"nothing captured for the block {start} -> {layer.name}"
            )
        else:
            try:
                res = self.regress(*sample)
            except (np.linalg.LinAlgError, ValueError) as exc:
                res = {**self._nan(f"numerical failure: {exc}"), "status": "failed"}
        return {
            **res,
            "block_start": f"{start} (input)" if side == "input" else start,
            "block_end": layer.name,
            **acc.info(),
            **{name: value for name, value in p.items() if name in _ECHOED},
            "seed": int(self.ctx.seed),
        }

    def _nan(self, reason: str) -> dict[str, Any]:
        return nan_result(reason, *self.nan_keys, **self.nan_values)

    def regress(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The block's result from its sampled input rows ``x`` and output rows ``y``."""
        raise NotImplementedError


_ECHOED = frozenset({"blocks", "reduce", "max_samples", "max_width", "pca_dim", "test_fraction", "ridge"})


_BLOCK_METHOD = """\
**Which map.** Janik & Witaszczyk measure the nonlinearity of the map from one hidden representation to
the next. The `blocks` parameter picks those maps: by default the boundaries are the model input
(always flattened) and the outputs of the selected activation layers in graph order, so an MLP gives
input -> relu1 (Linear+ReLU), relu1 -> relu2, ...; a ResNet whose selected activations close its
residual blocks gives one map per block. `blocks=layers` measures each layer's own input -> output
(a lone ReLU, or a Linear with FVU 0: rarely informative); an explicit list such as
`input,relu1,relu3` sets the boundaries (they must be selected layers); `blocks=consecutive` takes
every selected layer's output as a boundary (select representation layers with `--layers` for it to
mean blocks: with every layer selected it again measures lone ReLUs and Linears). Results are keyed by the
block's end layer and echo `block_start` / `block_end`. Conv/token maps become `[rows, units]` by
`reduce`; wide sides are randomly projected to `max_width`, then PCA-reduced to `pca_dim` on the
training split.
"""


_BLOCK_DOC = (
    " The map measured is a block's, from one hidden representation to the next (default: between the "
    "outputs of consecutive selected activation layers, starting at the model input; see 'blocks')."
)


class LinearFVU(_BlockRegression):
    name = "complexity.linear_fvu"
    summary_keys = ("fvu", "fvu_train")
    description = (
        "Fraction of variance of a block's output unexplained by the best affine (ridge) map of its "
        "input, on a held-out split; input/output PCA-reduced to <= pca_dim. 0 = linear on this data."
        + _BLOCK_DOC
        + " (reconstructed from the abstract)"
    )
    result_kinds = ("scalar",)
    method = (
        _BLOCK_METHOD
        + """
**Reconstruction.** Fit the block's output from its input with one ridge affine map (penalty
`ridge` x n x mean input variance, intercept free) on a random `1 - test_fraction` split; `fvu` is
the held-out `sum |y - y_hat|^2 / sum |y - mean y|^2` pooled over output dimensions, `fvu_train` the
same on the fitted rows. Assumed, not read: the ridge penalty, the split and the PCA reduction.
"""
    )
    params = _BlockRegression.params + (
        Param(
            "ridge",
            float,
            1e-3,
            "ridge penalty relative to n x mean input variance (0 = least squares)",
            min=0.0,
            max=1_000_000,
        ),
    )

    nan_keys = ("fvu", "fvu_train")

    def regress(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        p = self.params
        return linear_fvu(
            x, y, test_fraction=p["test_fraction"], alpha=p["ridge"], max_dim=p["pca_dim"], seed=self.ctx.seed
        )


class PiecewiseFVU(_BlockRegression):
    name = "complexity.piecewise"
    summary_keys = ("complexity", "k_star", "fvu_linear")
    description = (
        "Piecewise-linear complexity of a block: FVU(K) of K = 1, 2, 3, ... affine maps on nested clusters of "
        "the block's input (greedy 2-means splits of the worst-fitted cluster, least squares, every map "
        "overdetermined), on the training split so the curve is monotone by construction; C(eps) = ln K*(eps) "
        "with K* the fewest pieces reaching FVU(K) <= eps x FVU(1) (eps relative to the linear FVU by "
        "default), the occupancy entropy at K*, and the held-out FVU(K) reported separately as the "
        "generalisation check." + _BLOCK_DOC + " (reconstructed from the abstract)"
    )
    result_kinds = ("scalar", "vector", "curve")
    method = (
        _BLOCK_METHOD
        + """
**Reconstruction** (the abstract says "complexity quantifies the nonlinearity of the computation",
"entropic", "as a function of scale"; the procedure below is ours). On the training split:

1. K = 1 is the least-squares affine map of the whole block; FVU(1) = `fvu_linear`.
2. Repeatedly split the piece with the largest residual sum of squares in two by 2-means on its
   inputs, and refit both halves by least squares, until `k_max` pieces or no piece can be split
   with both halves keeping `max(min_cluster_size, rows_per_dim x (input dims + 1))` rows.
   K runs 1, 2, 3, ...; the partitions are nested and a child can always reuse its parent's map,
   so the training FVU(K) (`fvu_k`) never increases: the curve is monotone by construction.
   A least-squares fit of pure noise with r rows per parameter keeps an expected training FVU of
   1 - 1/r, so with the default r = 3 overfitting alone does not reach eps = 0.5 (< 2/3). A
   lopsided 2-means split (one side too small) is replaced by a split at the median along the
   2-means direction, so K is limited by the sample, not by the clustering. With few samples
   the block input is PCA-reduced further, to the most dimensions with which `min_pieces` pieces
   fit (reported in `input_dim`, `input_pca_variance` and a warning).
3. `k_star` = the fewest pieces with FVU(K) <= eps x FVU(1) (`eps_mode=relative`, default eps 0.5:
   the pieces needed to remove half of what a linear map leaves unexplained) or FVU(K) <= eps
   (`absolute`); `complexity` = ln K*. A block that is linear on its data (FVU(1) ~ 0) has K* = 1,
   C = 0; a map that is exactly K-piecewise-linear on separable input clusters gives K* = K for
   small eps (tested). `occupancy_entropy` is the Shannon entropy of the piece sizes at K*, and
   `complexity_eps` gives ln K* over `eps_grid`.
4. Held-out rows descend the same splits (nearer centroid) and take their piece's map:
   `fvu_k_test`, `k_best_test` and `fvu_best_test` are the generalisation check, reported apart
   because they need not fall monotonically (pieces overfit). The curve, not only C, is the result:
   `fvu_k_powerlaw_*` fits FVU(K) ~ K^slope.

Why relative eps: on digits-MLP checkpoints (issue 18) the absolute eps = 0.1 was met by K = 1 in 192
of 192 layer x checkpoint cases (C = 0) and eps = 0.02 by no K in 49 (NaN); relative to the linear
FVU the same eps means the same thing in every block. Why the training curve: the held-out FVU(K)
was U-shaped (overfitting pieces), so a K* read from it was unstable.
"""
    )
    params = _BlockRegression.params + (
        Param("k_max", int, 64, "largest number of pieces", min=1, max=4096),
        Param("min_cluster_size", int, 10, "a piece keeps at least this many training rows", min=1, max=100_000),
        Param(
            "rows_per_dim",
            float,
            3.0,
            "and at least rows_per_dim x (input dims + 1) training rows, so its "
            "affine map is overdetermined (pure noise keeps a training FVU of ~1 - 1/rows_per_dim)",
            min=1.0,
            max=1000.0,
        ),
        Param(
            "min_pieces",
            int,
            4,
            "with few samples, PCA-reduce the block input further so that this many pieces fit (1 = never)",
            min=1,
            max=4096,
        ),
        Param(
            "eps",
            float,
            0.5,
            "threshold for the headline C(eps) = ln K*: a fraction of the linear FVU "
            "(eps_mode=relative) or an FVU (absolute)",
            min=0.0,
            max=1.0,
        ),
        Param(
            "eps_mode",
            str,
            "relative",
            "relative: K* reaches FVU <= eps x FVU(1); absolute: FVU <= eps",
            choices=("relative", "absolute"),
        ),
        Param("eps_grid", str, "0.9,0.75,0.5,0.25,0.1", "thresholds for the C(eps) curve (same eps_mode)"),
    )

    def start(self) -> None:
        self.eps_grid = np.asarray(sorted(parse_floats(self.params["eps_grid"], "eps_grid"), reverse=True))
        super().start()

    nan_keys = ("complexity", "fvu_linear", "occupancy_entropy")
    nan_values = {"k_star": 0}

    def regress(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        p = self.params
        c = piecewise_complexity(
            x,
            y,
            eps=p["eps"],
            relative=p["eps_mode"] == "relative",
            eps_grid=self.eps_grid,
            k_max=p["k_max"],
            min_cluster_size=p["min_cluster_size"],
            rows_per_dim=p["rows_per_dim"],
            min_pieces=p["min_pieces"],
            test_fraction=p["test_fraction"],
            max_dim=p["pca_dim"],
            seed=self.ctx.seed,
        )
        if "reason" in c:
            return self._nan(c["reason"])
        k, f_tr, f_te = c["k"], c["fvu_train"], c["fvu_test"]
        out = {
            "complexity": c["complexity"],
            "k_star": c["k_star"],
            "fvu_linear": float(f_tr[0]),
            "fvu_linear_test": float(f_te[0]),
            "occupancy_entropy": c["occupancy_entropy_at_k_star"],
            "eps": p["eps"],
            "eps_mode": p["eps_mode"],
            "fvu_k": Curve(k.astype(np.float64), f_tr, "K (pieces)", "FVU train (monotone)"),
            "fvu_k_test": Curve(k.astype(np.float64), f_te, "K (pieces)", "FVU held-out"),
            "k_best_test": c["k_best_test"],
            "fvu_best_test": c["fvu_best_test"],
            "k": k,
            "occupancy_entropy_k": c["occupancy_entropy"],
            "complexity_eps": Curve(self.eps_grid, c["complexity_eps"], f"eps ({p['eps_mode']})", "ln K*(eps)"),
            **c["fit"].as_dict("fvu_k_powerlaw_"),
            **{key: c[key] for key in _CURVE_ECHOED},
            **{key: p[key] for key in ("k_max", "min_cluster_size", "rows_per_dim", "min_pieces")},
            **{key: c[key] for key in ("warning", "underdetermined_from_k") if key in c},
        }
        if not c["k_star"]:
            what = f"{p['eps']} x FVU(1)" if p["eps_mode"] == "relative" else str(p["eps"])
            out["reason"] = (
                f"no K <= {int(k.max())} reaches training FVU <= {what} (complexity > ln {int(k.max())}); "
                f"K stopped at {int(k.max())} (k_max {p['k_max']}, pieces of >= {c['min_cluster_rows']} "
                f"rows from {c['n_train']}): give more samples, or raise eps or k_max"
            )
        return out


#: What the piecewise curve reports about the sample and its reduction, echoed in the result.
_CURVE_ECHOED = (
    "n_samples",
    "n_train",
    "n_test",
    "input_units",
    "output_units",
    "input_dim",
    "output_dim",
    "input_pca_variance",
    "output_pca_variance",
    "min_cluster_rows",
    "smallest_piece_rows",
)


# ------------------------------------------------------------------------ pattern entropy


class PatternEntropyMetric(PerLayerMetric):
    name = "complexity.pattern_entropy"
    summary_keys = ("joint_entropy", "unit_entropy_sum", "n_distinct_patterns")
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
        Param(
            "threshold",
            float,
            0.0,
            "a unit is active when its output exceeds this",
            min=-1_000_000_000,
            max=1_000_000_000,
        ),
        Param(
            "unit_order",
            str,
            "random",
            "which units form the subsets of the scale curve: a seeded random order or index order",
            choices=("random", "index"),
        ),
    )

    def start(self) -> None:
        super().start()
        self.positional: set[str] = set()  #: layers whose outputs have positions (conv maps, tokens)
        for layer in self.ctx.layers:
            if layer.kind == "activation" and layer.attrs.get("function") in ("sigmoid", "softplus"):
                self.ctx.warn(
                    f"{self.name}: {layer.name} ({layer.attrs['function']}) is positive everywhere; "
                    "patterns at threshold 0 are constant"
                )

    def accumulator(self, layer: Layer) -> PatternEntropy:
        return PatternEntropy(self.params["threshold"], self.params["unit_order"], self.ctx.seed)

    def rows(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        if a.ndim > 2:
            self.positional.add(layer.name)
        return unit_view(a, layer, self.params["reduce"])  # dtype kept: the threshold compares as the model does

    def measure(self, layer: Layer, acc: PatternEntropy) -> dict[str, Any]:
        r = acc.result()
        constant = "n_units" in r and r["n_samples"] > 1 and r["dead_units"] + r["always_active_units"] == r["n_units"]
        if constant and self.params["reduce"] == "mean" and layer.name in self.positional:
            # A conv ReLU averaged over positions is > 0 almost surely: entropy 0 says nothing.
            r.update(
                status="skipped",
                reason="the pattern is the same for every sample: with reduce='mean' "
                "each unit's position-averaged output is always on or always off; use reduce='positions'",
            )
        elif constant:
            r["warning"] = "every unit is always on or always off over these samples: one pattern, entropy 0"
        if "scale_units" in r:
            r["entropy_vs_units"] = Curve(
                r["scale_units"].astype(np.float64),
                r["scale_joint_entropy"],
                "units considered",
                "joint pattern entropy (nats)",
            )
        return {
            **r,
            "reduce": self.params["reduce"],
            "threshold": self.params["threshold"],
            "unit_order": self.params["unit_order"],
            "seed": int(self.ctx.seed),
        }


# ------------------------------------------------------------------------------ dimension


@hookimpl
def deepscope_register_metrics(register) -> None:
    for metric in (LinearFVU, PiecewiseFVU, PatternEntropyMetric):
        register(metric)
