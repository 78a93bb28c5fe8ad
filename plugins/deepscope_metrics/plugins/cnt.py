"""Plugin adapter: complex-network metrics of the weight graph (La Malfa et al.).

Thin: parameters in, ``deepscope_metrics.complex_network`` does the work, results out.

Cost (each metric's description ends with its own "Cost:" line; figures for ResNet-18 at
3x112², 21 conv/linear layers, 11.7M weights, 256 samples, in process, load average ~9 on 2 cores):
- weight_graph: linear in links; a layer over ``max_links`` is counted, not built, and skipped
  naming ``max_links`` (ResNet-18: 3 of 21 layers are under the 2M default; <1 s in all).
- link_weights: linear in weights (binned KDE, O(bins) per grid point); ~0.5 s a 2.4M-weight layer.
- node_strength / layer_fluctuation: one single-channel conv of a ones map per layer; ~1.5 s.
- divergence: linear in weights for the KDEs, then layers² / 2 pairs x 2 KDE evaluations
  (~0.05 s each at 1000 grid points); ``budget_seconds`` extrapolates from the first pair and
  skips the whole matrix, naming ``budget_seconds`` and ``grid_points``, when it cannot fit.
- neuron_strength / neuron_activation: linear in samples x output neurons (streamed moments)
  plus the reservoir (``reservoir`` values, one KDE); ~10-20 s for 256 samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deepscope_server.plugin_api import (
    WHOLE_MODEL,
    Curve,
    Graph,
    Layer,
    Needs,
    Param,
    PerLayerMetric,
    Table,
    hookimpl,
    nan_result,
)

from ..complex_network import (
    DegenerateDistribution,
    NeuronStrengthStream,
    OverBudget,
    StreamingDistribution,
    activation_function,
    divergence_matrix,
    flat_links,
    input_neuron_strengths,
    kde_curve,
    layer_fluctuation,
    link_weight_summary,
    neuron_layer_strengths,
)
from ..complex_network.gates import (
    GATED,
    GatedNeurons,
    block_link_columns,
    block_table,
    blocks_graph_coo,
    dense_blocks,
    gated_neurons,
)
from ..complex_network.unroll import weight_graph_coo
from ..complex_network.walk import WEIGHTED, bn_scale_shift, folded_layer, folded_weights, link_sample, next_weighted

CITATION = (
    "La Malfa, Hu, Kuhnert, Nicosia et al., Characterizing Learning Dynamics of Deep Neural Networks via "
    "Complex Networks, ICTAI 2021 (arXiv 2110.02628); arXiv 2209.05488; arXiv 2404.11172"
)
DENSE_KINDS = WEIGHTED | {"embedding"}  # embeddings are accepted only to be skipped with a warning
KINDS = DENSE_KINDS | GATED
GATES_DOC = (
    " Recurrent (LSTM, GRU, RNN) and attention layers are split into their dense blocks, each a "
    "bipartite layer of its own (PyTorch layout whatever the format): ih.<gate> (input x -> gate) and "
    "hh.<gate> (hidden h -> gate) with LSTM gates i,f,g,o, GRU r,z,n, RNN h (ih_l1.i, hh_l0_reverse.f "
    "for deeper layers and reverse directions); attention q, k, v (in_proj rows) and out (out_proj). "
    "One result per layer, per-block rows in its 'blocks' table."
)


def _weighted(metric: PerLayerMetric, gated: bool = False) -> list[Any]:
    """The selected linear/conv (and, if ``gated``, recurrent/attention) layers in graph order.

    Selected embeddings are skipped with a warning.
    """
    for layer in metric.ctx.layers:
        if layer.kind == "embedding":
            metric.ctx.warn(f"{metric.name}: embedding '{layer.name}' skipped (a lookup table, not a weight graph)")
    kinds = (WEIGHTED | GATED) if gated else WEIGHTED
    return [layer for layer in metric.ctx.layers if layer.kind in kinds]


P_GRID = Param("grid_points", int, 1000, "KDE grid points over [min, max]", min=10, max=100_000)
P_MODE = Param(
    "mode",
    str,
    "code",
    "conv in-strength: 'code' = K.sum()+b everywhere (authors); 'graph' = only taps inside the image",
    choices=("code", "graph"),
)
P_CONST = Param(
    "missing_side_const",
    float,
    1.0,
    "added for the side input/output neurons lack (authors: 1; 0 = pure graph definition)",
    min=-1_000_000,
    max=1_000_000,
)
P_FOLD = Param(
    "fold_norm", bool, True, "fold a directly following eval-mode BatchNorm into the layer (extension beyond the paper)"
)


def _kde(sample: np.ndarray, grid_points: int, x_label: str) -> dict[str, Any]:
    """``{"kde": the sample's Gaussian KDE curve}``, or ``{"reason": why there is none}`` (a degenerate sample)."""
    try:
        x, y = kde_curve(sample, grid_points)
    except DegenerateDistribution as exc:
        return {"reason": str(exc)}
    return {"kde": Curve(x, y, x_label, "density")}


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class _WeightMetric(PerLayerMetric):
    """A metric of the weight graph: each selected linear/conv/recurrent/attention layer measured from
    its weights alone (no accumulator, no forward pass)."""

    citation = CITATION
    needs = Needs.WEIGHTS
    layer_kinds = KINDS

    def measured_layers(self) -> list[Any]:
        return _weighted(self, gated=True)


class _StrengthBase(_WeightMetric):
    """Shared: strengths of each selected layer's output neurons within the model graph."""

    result_kinds = ("vector", "scalar", "string")

    def _neuron_layer(self, layer: Layer) -> Any:
        """The layer's neuron layer (``NeuronLayer`` or, for a gated layer, ``GatedNeurons``); raises when unsupported."""
        p = self.params
        if layer.kind in GATED:
            return gated_neurons(layer, p["missing_side_const"])
        nl = neuron_layer_strengths(self.ctx.graph, layer, p["mode"], p["missing_side_const"], p["fold_norm"])
        for w in nl.warnings:
            self.ctx.warn(f"{self.name} {layer.name}: {w}")
        return nl

    def _input(self) -> Any | None:
        """The model input's neurons, when ``include_input`` and the input shape is known."""
        if not self.params["include_input"]:
            return None
        return input_neuron_strengths(self.ctx.graph, self.params["missing_side_const"], self.params["fold_norm"])

    def _echo(self, nl: Any) -> dict[str, Any]:
        p = self.params
        if isinstance(nl, GatedNeurons):
            return {
                "missing_side_const": p["missing_side_const"],
                "n_nodes": int(nl.strengths.total.size),
                "has_in": True,
                "has_out": False,
                "blocks": Table(block_table(nl)),
                "input_out_strength": nl.block.s_in_inputs,
            }
        return {
            "mode": p["mode"],
            "missing_side_const": p["missing_side_const"],
            "fold_norm": p["fold_norm"],
            "n_nodes": int(nl.strengths.total.size),
            "shape": [int(d) for d in nl.shape],
            "has_in": nl.has_in,
            "has_out": nl.has_out,
            "neuron_layer_end": nl.end,
            "next_layers": ",".join(nl.reached),
            "extensions": "; ".join(nl.extensions),
        }


class WeightGraph(_WeightMetric):
    """The layer's weight graph itself, for the user's own network science (``run.graph(...)`` in the SDK)."""

    name = "cnt.weight_graph"
    description = (
        "The weight graph of each linear/conv layer as an edge list (conv maps unrolled, PyTorch's "
        "C,H,W neuron order): nodes are the layer's input then output neurons (then, with "
        "include_next, the next weighted layer's outputs), edges carry the weights, output nodes "
        "their bias. The SDK returns it as a networkx DiGraph." + GATES_DOC + " A gated layer's "
        "graph has one input tier per block source (node layer 'input.x', 'input.h', 'input.query'...) "
        "and one output tier per block ('<layer>.ih.i'...); include_next does not apply to it. With "
        "fold_norm, a directly following eval-mode BatchNorm is folded in, as the ONNX exporter's "
        "optimiser does, so every format gives the same graph. Cost: linear in links (conv: C_out x "
        "C_in/groups x taps inside the map); a layer over max_links is counted, never built, and "
        "skipped naming max_links."
    )
    result_kinds = ("graph", "scalar")
    params = (
        Param(
            "include_next",
            bool,
            False,
            "append the next linear/conv layer when only activations, norms or a "
            "flatten lie between (their own transforms are not links)",
        ),
        Param("max_links", int, 2_000_000, "refuse layers with more links than this", min=1, max=20_000_000),
        P_FOLD,
    )
    summary_keys = ("n_nodes", "n_links")

    def measure(self, layer: Layer, acc: None) -> dict[str, Any]:
        try:
            return self._graph(layer)
        except Exception as exc:  # unsupported layer or too many links: report, never crash the run
            capped = "max_links" in str(exc)  # the graph exists, it is just over the cap: say so and how
            return {
                "status": "skipped",
                "reason": f"capped: {exc}; raise the max_links parameter (at most 20,000,000) to get it"
                if capped
                else _reason(exc),
            }

    def _graph(self, layer: Layer) -> dict[str, Any]:
        p, graph = self.params, self.ctx.graph
        if layer.kind in GATED:
            if p["include_next"]:
                self.ctx.warn(f"{self.name}: include_next does not apply to {layer.kind} '{layer.name}'")
            blocks = dense_blocks(layer)
            coo = blocks_graph_coo(layer.name, blocks, p["max_links"])
            return {**_graph_result(coo), "blocks": ",".join(b.key for b in blocks)}
        nxt = next_weighted(graph, layer) if p["include_next"] else None
        if p["include_next"] and nxt is None:
            self.ctx.warn(f"{self.name}: no single next linear/conv layer after '{layer.name}'")
        fold = p["fold_norm"]
        following = None if nxt is None else folded_layer(graph, nxt, fold)
        return _graph_result(weight_graph_coo(folded_layer(graph, layer, fold), following, p["max_links"]))


def _graph_result(coo: Any) -> dict[str, Any]:
    return {
        "graph": Graph(
            coo.num_nodes,
            coo.sources,
            coo.targets,
            coo.weights,
            True,
            {"layer": coo.node_layer, "index": coo.node_index, "bias": coo.node_bias},
        ),
        "n_nodes": coo.num_nodes,
        "n_links": int(coo.sources.size),
    }


class LinkWeights(_WeightMetric):
    name = "cnt.link_weights"
    description = (
        "Distribution of a layer's link weights (all weights and biases): summary statistics, "
        "histogram and Gaussian KDE (Scott bandwidth)." + GATES_DOC + " A gated layer's distribution "
        "pools all its blocks; 'blocks' gives each block's n, mean and std. Cost: linear in weights; "
        "the KDE is scipy's, evaluated by bins of 0.1 bandwidth (equal to the direct sum to ~1e-12), "
        "so grid_points adds O(grid_points), not O(weights x grid_points)."
    )
    result_kinds = ("scalar", "table", "curve")
    params = (
        Param("bins", int, 50, "histogram bins", min=1, max=10_000),
        P_GRID,
        P_FOLD,
    )
    summary_keys = ("mean", "std", "n")

    def measure(self, layer: Layer, acc: None) -> dict[str, Any]:
        p = self.params
        try:
            W, b, folded = link_sample(self.ctx.graph, layer, p["fold_norm"])
        except ValueError as exc:  # a gated layer whose blocks cannot be split: report, never crash the run
            return nan_result(_reason(exc), "mean")
        s = link_weight_summary(W, b, bins=p["bins"])
        counts, edges = s.pop("hist_counts"), s.pop("hist_edges")
        r: dict[str, Any] = {
            **s,
            "histogram": Table({"bin_left": edges[:-1], "bin_right": edges[1:], "count": counts}),
            "bins": p["bins"],
            "grid_points": p["grid_points"],
        }
        if folded:
            r["extensions"] = f"batchnorm {', '.join(folded)} folded (extension beyond the paper)"
        if layer.kind in GATED:
            r["blocks"] = Table(block_link_columns(dense_blocks(layer)))
        return {**r, **_kde(flat_links(W, b), p["grid_points"], "link weight")}


_STRENGTH_COST = (
    " Cost: per layer one single-channel conv of a ones map (in-strength) and one backward pass "
    "of the linear surrogate network (out-strength), linear in neurons; no edge list is built."
)
_INCLUDE_INPUT = Param("include_input", bool, True, "also report the model input neurons")


class NodeStrength(_StrengthBase):
    name = "cnt.node_strength"
    description = (
        "Node strength of each layer's output neurons in the weight graph: signed in-strength "
        "(incoming weights + bias) and out-strength (weights to the next layer; into a recurrent layer "
        "its input gates ih.*, into self-attention its q, k, v), per neuron "
        "(conv maps unrolled, C*H*W neurons). BatchNorm folding, pooling and residual links are "
        "extensions beyond the paper, listed under 'extensions'." + GATES_DOC + " For a gated layer the "
        "neurons are all blocks' output (gate) neurons, concatenated in 'blocks' order: in_strength = "
        "row sums + bias; gates combine nonlinearly, so there are no out-links (out_strength = "
        "missing_side_const); input_out_strength = each block's column sums (its input neurons' "
        "out-strengths), concatenated." + _STRENGTH_COST
    )
    params = (P_MODE, P_CONST, P_FOLD, _INCLUDE_INPUT)
    summary_keys = ("strength_mean", "in_strength_mean", "out_strength_mean", "n_nodes")

    def measure(self, layer: Layer, acc: None) -> dict[str, Any]:
        try:
            nl = self._neuron_layer(layer)
        except Exception as exc:  # degenerate/unsupported layer: report, never crash the run
            return {"strength": np.array([np.nan]), "reason": _reason(exc)}
        st = nl.strengths
        return {
            "strength": st.total.ravel(),
            "in_strength": st.s_in.ravel(),
            "out_strength": st.s_out.ravel(),
            "strength_mean": float(st.total.mean()),
            "in_strength_mean": float(st.s_in.mean()),
            "out_strength_mean": float(st.s_out.mean()),
            **self._echo(nl),
        }

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        inp = self._input()
        if inp is None:
            return None
        return {
            "input_strength": inp.strengths.total.ravel(),
            "input_out_strength": inp.strengths.s_out.ravel(),
            "input_shape": [int(d) for d in inp.shape],
            "input_n_nodes": int(inp.strengths.total.size),
            "missing_side_const": self.params["missing_side_const"],
        }


class LayerFluctuation(_StrengthBase):
    name = "cnt.layer_fluctuation"
    description = (
        "Layer fluctuation Y_l: population std (ddof=0) of the node strengths of each neuron layer; "
        "also the mean and the coefficient of variation (cv, an extension beyond the paper)."
        + GATES_DOC
        + " A gated layer's Y_l is over all its gate neurons; 'blocks' gives each block's own."
        + _STRENGTH_COST
    )
    params = (P_MODE, P_CONST, P_FOLD, _INCLUDE_INPUT)
    result_kinds = ("scalar", "table", "curve")
    summary_keys = ("fluctuation", "cv", "n_nodes")

    def measure(self, layer: Layer, acc: None) -> dict[str, Any]:
        try:
            nl = self._neuron_layer(layer)
        except Exception as exc:  # degenerate/unsupported layer: report, never crash the run
            return nan_result(_reason(exc), "fluctuation")
        f = layer_fluctuation(nl.strengths.total)
        res = {**f, **self._echo(nl)}
        if not np.isfinite(f["fluctuation"]):
            res["reason"] = "non-finite or empty strengths"
        return res

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """Y_l over depth, the model input first (when included); layers that failed are left out."""
        inp = self._input()
        rows = {} if inp is None else {"<input>": layer_fluctuation(inp.strengths.total)}
        rows.update((name, r) for name, r in results.items() if "cv" in r)
        if not rows:
            return None
        fl = np.array([r["fluctuation"] for r in rows.values()])
        return {
            "fluctuations": Table(
                {
                    "layer": list(rows),
                    "fluctuation": fl,
                    "cv": np.array([r["cv"] for r in rows.values()]),
                    "n_nodes": np.array([r["n_nodes"] for r in rows.values()]),
                }
            ),
            "fluctuation_curve": Curve(np.arange(len(fl), dtype=float), fl, "neuron layer", "Y_l"),
        }


class Divergence(_StrengthBase):
    name = "cnt.divergence"
    description = (
        "Divergence between the layers' distributions of link weights or node strengths: "
        "Jensen-Shannon (default, base 2, in [0, 1]) or the authors' Jeffreys (symmetric KL on a "
        "shared KDE grid, no dx, inf -> max finite + 1)." + GATES_DOC + " A gated layer is one "
        "distribution: all its blocks' link weights, or all its gate neurons' strengths. Cost: one KDE "
        "per layer (linear in its weights), then layers^2/2 pairs of KDE evaluations on grid_points "
        "points; the first pair is timed and, if all pairs would pass budget_seconds, the matrix is "
        "skipped with a reason naming budget_seconds and grid_points."
    )
    params = (
        Param("of", str, "link_weights", "which distribution", choices=("link_weights", "node_strength")),
        Param("method", str, "js", "js or jeffreys", choices=("js", "jeffreys")),
        P_GRID,
        P_MODE,
        P_CONST,
        P_FOLD,
        Param(
            "budget_seconds",
            float,
            120.0,
            "time budget for the pairs, extrapolated from the first; over it the "
            "matrix is skipped with a reason; 0 = no budget",
            min=0.0,
            max=86_400.0,
        ),
    )
    result_kinds = ("matrix", "table", "scalar")
    summary_keys = ("divergence_to_next",)

    def measure(self, layer: Layer, acc: None) -> dict[str, Any]:
        """The layer's distribution as ``{"sample": values}``; ``{}`` when it cannot be had (left out)."""
        if self.params["of"] == "node_strength":
            try:
                return {"sample": self._neuron_layer(layer).strengths.total.ravel()}
            except Exception:  # as in cnt.node_strength, which reports why
                return {}
        try:
            W, b, _ = link_sample(self.ctx.graph, layer, self.params["fold_norm"])
        except ValueError as exc:
            self.ctx.warn(f"{self.name}: '{layer.name}' left out: {exc}")
            return {}
        return {"sample": flat_links(W, b)}

    def combine(self, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Every pair of layers compared: the matrix under WHOLE_MODEL, each layer's divergence to the next."""
        p = self.params
        names = [name for name, r in results.items() if "sample" in r]
        if len(names) < 2:
            return {WHOLE_MODEL: nan_result(f"need at least 2 layers, got {len(names)}", "divergence")}
        samples = [results[name]["sample"] for name in names]
        try:
            M = divergence_matrix(
                samples, p["method"], p["grid_points"], budget_seconds=p["budget_seconds"] or math.inf
            )
        except OverBudget as exc:
            return {WHOLE_MODEL: {"status": "skipped", "reason": f"over budget: {exc}"}}
        i, j = np.triu_indices(len(names), 1)
        out: dict[str, dict[str, Any]] = {
            WHOLE_MODEL: {
                "matrix": M,
                "layers": ",".join(names),
                "of": p["of"],
                "method": p["method"],
                "grid_points": p["grid_points"],
                "pairs": Table(
                    {"layer_a": [names[k] for k in i], "layer_b": [names[k] for k in j], "divergence": M[i, j]}
                ),
            }
        }
        for k in range(len(names) - 1):
            out[names[k]] = {"divergence_to_next": float(M[k, k + 1]), "next_layer": names[k + 1]}
        return out


class _InputDependent(PerLayerMetric):
    """Streams NS(x) = W a^(l-1)(x) (or φ(NS + b)) of each selected layer over sampled inputs.

    NS is read off the layer's own output (minus its bias, times a folded BatchNorm's scale), which
    is W a exactly: recomputing the conv from the layer's input in float64 cost a second forward
    pass (~100 s for ResNet-18 at 112², 256 samples) and the input capture doubled the transfer.
    """

    citation = CITATION
    needs = Needs.OUTPUTS
    layer_kinds = DENSE_KINDS  # not recurrent/attention: their blocks' inputs (h_{t-1}, heads) are not captured
    reconstructed = True
    result_kinds = ("scalar", "vector", "curve")
    params = (
        Param("max_samples", int, 1000, "inputs used (the first ones of the run, in order)", min=1, max=100_000),
        Param("reservoir", int, 100_000, "values kept (uniform, seeded) for the KDE", min=100, max=10_000_000),
        P_GRID,
        P_FOLD,
    )
    summary_keys = ("mean", "std", "fluctuation_mean", "n_samples")
    activated: bool = False

    def measured_layers(self) -> list[Any]:
        return _weighted(self)

    def accumulator(self, layer: Layer) -> NeuronStrengthStream:
        _, b, end, _ = folded_weights(self.ctx.graph, layer, self.params["fold_norm"])
        succ = self.ctx.graph.successors(end)
        act = succ[0] if len(succ) == 1 and succ[0].kind == "activation" else None
        if self.activated and act is not None and len(act.inputs) > 1:
            self.ctx.warn(
                f"{self.name} {layer.name}: '{act.name}' also adds a residual input; phi(NS + b) leaves that skip term out"
            )
        fn = self.functions[layer.name] = act.attrs.get("function") if act is not None else None
        phi = activation_function(fn, act.attrs if act is not None else None)
        k = [m.name for m in self.measured].index(layer.name)
        return NeuronStrengthStream(
            self.params["max_samples"],
            StreamingDistribution(self.params["reservoir"], self.ctx.seed + k),
            bias=layer.weights.get("bias"),
            scale=None if end == layer.name else bn_scale_shift(self.ctx.graph.layer(end))[0],
            phi=phi if self.activated else None,
            b=b,
        )

    def start(self) -> None:
        self.functions: dict[str, str | None] = {}
        super().start()

    def rows(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        return a  # the whole output: NS is per neuron, per position

    def measure(self, layer: Layer, stream: NeuronStrengthStream) -> dict[str, Any]:
        r = stream.acc.result()
        sample = r.pop("sample", None)
        r.update(
            max_samples=self.params["max_samples"],
            seed=self.ctx.seed,
            grid_points=self.params["grid_points"],
            sample_indices=f"0..{r['n_samples'] - 1} (run order)" if r["n_samples"] else "",
            fold_norm=self.params["fold_norm"],
        )
        if self.activated:
            r["activation"] = self.functions[layer.name] or "identity (no activation layer follows)"
        if r["n_samples"] == 0:
            return nan_result("no layer outputs were received", "mean", **r)
        return {**r, **_kde(sample, self.params["grid_points"], "value")}


_DENSE_ONLY = (
    " Linear and conv layers only: a recurrent gate also reads h_{t-1} and an attention output "
    "projection the heads, which are not captured, so those layers are not measured. NS is the "
    "layer's captured output minus its bias (times a folded BatchNorm's scale). Cost: linear in "
    "samples (up to max_samples) x output neurons, plus one KDE of the reservoir values."
)


class NeuronStrength(_InputDependent):
    name = "cnt.neuron_strength"
    description = (
        "(reconstructed from the abstract) Input-dependent neuron strength NS_i(x) = sum_j W[i,j] "
        "a_j(x) (pre-activation without bias) over sampled inputs: KDE, mean, std, per-neuron "
        "moments and the input-dependent fluctuation (std over neurons per input)." + _DENSE_ONLY
    )


class NeuronActivation(_InputDependent):
    name = "cnt.neuron_activation"
    description = (
        "(reconstructed from the abstract) Input-dependent neuron activation phi(NS_i(x) + b_i) "
        "over sampled inputs, phi = the activation layer following the layer: KDE, mean, std, "
        "per-neuron moments and the input-dependent fluctuation." + _DENSE_ONLY
    )
    activated = True


METRICS = (WeightGraph, LinkWeights, NodeStrength, LayerFluctuation, Divergence, NeuronStrength, NeuronActivation)


@hookimpl
def deepscope_register_metrics(register: Any) -> None:
    for metric in METRICS:
        register(metric)
