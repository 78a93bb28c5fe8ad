"""Test a metric on numpy arrays without a server: ``run_metric(MyMetric, layers, outputs=...)``.

It drives the same start -> update(batch)... -> finish contract as the server, in batches, with
parameters validated the same way, so a metric that passes here behaves the same in a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .model_graph import Layer, ModelGraph, TensorSpec
from .plugin_api import Batch, Context, Metric, ModelHandle, Needs, validate_params

__all__ = ["make_graph", "run_metric", "validate_params"]


def make_graph(layers: Sequence[Layer], input_shape: tuple[int | None, ...] = (None,)) -> ModelGraph:
    """A ModelGraph around hand-made layers, chained in order unless their ``inputs`` are set."""
    previous = "input"
    for layer in layers:
        if not layer.inputs:
            layer.inputs = [previous]
        previous = layer.name
    return ModelGraph(
        format="test",
        inputs=[TensorSpec("input", "FP32", input_shape)],
        outputs=[TensorSpec("output", "FP32", (None,))],
        layers=list(layers),
    )


def run_metric(
    metric: type[Metric],
    layers: Sequence[Layer] | ModelGraph,
    *,
    outputs: Mapping[str, np.ndarray] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    params: Mapping[str, Any] | None = None,
    select: Sequence[str] | None = None,
    model: ModelHandle | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run ``metric`` over whole-dataset arrays split into batches; return ``finish()``'s results.

    ``outputs``/``inputs`` map layer names to arrays ``[N, ...]``; ``select`` limits the layers
    (default: every layer the metric applies to). Warnings land under the ``"__warnings__"`` key.
    """
    graph = layers if isinstance(layers, ModelGraph) else make_graph(list(layers))
    chosen = graph.select(select) if select else graph.layers
    chosen = [layer for layer in chosen if metric.applies_to(layer)]
    ctx = Context(params=validate_params(metric, params), layers=chosen, graph=graph, model=model, seed=seed)
    instance = metric(ctx)
    instance.start()
    if metric.needs & ~Needs.WEIGHTS:
        groups = [g for g in (outputs, inputs, data) if g]
        n = next(iter(groups[0].values())).shape[0] if groups else 0
        names = {layer.name for layer in chosen}
        for index, lo in enumerate(range(0, n, batch_size)):
            sl = slice(lo, lo + batch_size)
            instance.update(
                Batch(
                    index=index,
                    outputs={k: v[sl] for k, v in (outputs or {}).items() if k in names},
                    inputs={k: v[sl] for k, v in (inputs or {}).items() if k in names},
                    data={k: v[sl] for k, v in (data or {}).items()},
                    labels=None if labels is None else labels[sl],
                )
            )
    results = instance.finish()
    if ctx.warnings:
        results = {**results, "__warnings__": {"warnings": "\n".join(ctx.warnings)}}
    return results
