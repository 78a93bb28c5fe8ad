"""Analysis results as Python objects: numpy arrays, curves, tables, and tidy pandas frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .tensors import from_proto
from .v1 import introspection_pb2 as pb
from .values import Curve as Curve  # re-exported: the SDK's results hold Curves

if TYPE_CHECKING:  # optional extras: imported where used
    import networkx
    import pandas
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class GraphData:
    """A result graph as an edge list; ``to_networkx()`` for your own network science."""

    num_nodes: int
    sources: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None
    directed: bool
    nodes: dict[str, Any]

    def to_networkx(self) -> networkx.Graph:
        """A networkx (Di)Graph: nodes 0..num_nodes-1 with the node columns as attributes, edge ``weight``."""
        try:
            import networkx as nx
        except ImportError:
            raise ImportError("graphs need networkx: pip install 'deepscope[graphs]'") from None
        graph = nx.DiGraph() if self.directed else nx.Graph()
        columns = {k: list(v) for k, v in self.nodes.items()}
        graph.add_nodes_from((i, {k: _plain(v[i]) for k, v in columns.items()}) for i in range(self.num_nodes))
        if self.weights is None:
            graph.add_edges_from(zip(self.sources.tolist(), self.targets.tolist()))
        else:
            graph.add_weighted_edges_from(zip(self.sources.tolist(), self.targets.tolist(), self.weights.tolist()))
        return graph


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _decode_table(table: pb.Table) -> dict[str, Any]:
    return {
        col.name: (from_proto(col.numbers) if col.WhichOneof("values") == "numbers" else list(col.strings.values))
        for col in table.columns
    }


def decode_item(item: pb.ResultItem) -> Any:
    """A ResultItem as float / bool / str / numpy array / Curve / dict of columns / GraphData."""
    kind = item.WhichOneof("value")
    if kind == "scalar":
        return item.scalar
    if kind == "flag":
        return item.flag
    if kind == "text":
        return item.text
    if kind == "tensor":
        return from_proto(item.tensor)
    if kind == "curve":
        c = item.curve
        return Curve(from_proto(c.x), from_proto(c.y), c.x_label, c.y_label)
    if kind == "table":
        return _decode_table(item.table)
    if kind == "graph":
        g = item.graph
        return GraphData(
            int(g.num_nodes),
            from_proto(g.sources),
            from_proto(g.targets),
            from_proto(g.weights) if g.HasField("weights") else None,
            g.directed,
            _decode_table(g.nodes),
        )
    return None


STATUS_NAMES = {v: k.removeprefix("RUN_STATUS_").lower() for k, v in pb.RunStatus.items()}


def run_status_name(status: int) -> str:
    """ "completed", "failed", ... for a RunStatus value."""
    return STATUS_NAMES.get(status, "unspecified")


#: Result keys that count things or echo parameters rather than measure the model.
BOOKKEEPING_PREFIXES = ("n_", "num_", "param_")


@dataclass
class Run:
    """A finished (or fetched) analysis run."""

    info: pb.RunInfo
    results: list[pb.MetricResult] = field(default_factory=list)
    #: metric -> headline scalar keys, as the metric declared them (filled by the Client)
    summary_keys: dict[str, list[str]] = field(default_factory=dict)
    #: progress milestones seen while the run streamed (deepscope.progress.ProgressEvent); empty for fetched runs
    events: list[Any] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        """completed, failed, cancelled, interrupted or running."""
        return STATUS_NAMES.get(self.info.status, "unknown")

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r.metric for r in self.results))

    @property
    def failures(self) -> dict[tuple[str, str, int], str]:
        """(metric, layer, checkpoint) -> error for every failed result."""
        return {(r.metric, r.layer, r.checkpoint): r.error for r in self.results if r.status == "failed"}

    @property
    def skipped(self) -> dict[str, str]:
        """metric -> why it did not run (e.g. no layer of a kind it measures)."""
        return {r.metric: r.error for r in self.results if r.status == "skipped"}

    def result(self, metric: str, layer: str = "", checkpoint: int = 0) -> dict[str, Any]:
        """One metric's values for one layer ("" = whole model) as numpy arrays / curves / scalars.

        A skipped result that carries values returns them (its error says why the headline is missing).
        """
        for r in self.results:
            if r.metric == metric and r.layer == layer and r.checkpoint == checkpoint:
                if r.status == "failed" or (r.status != "ok" and not r.items):
                    raise RuntimeError(f"{metric} on '{layer}' {r.status}: {r.error}")
                return {item.key: decode_item(item) for item in r.items}
        have = sorted({r.layer for r in self.results if r.metric == metric})
        raise KeyError(
            f"no result for metric '{metric}' layer '{layer}' checkpoint {checkpoint}; layers with results: {have}"
        )

    def graph(self, metric: str, layer: str = "", key: str | None = None, checkpoint: int = 0) -> networkx.Graph:
        """A graph result as a networkx graph (the first graph value unless ``key`` names one)."""
        values = self.result(metric, layer, checkpoint)
        graphs = {k: v for k, v in values.items() if isinstance(v, GraphData)}
        if not graphs:
            raise KeyError(f"{metric} on '{layer}' returned no graph")
        return graphs[key].to_networkx() if key else next(iter(graphs.values())).to_networkx()

    def headline_keys(self, metric: str, limit: int = 4) -> list[str]:
        """The scalar keys to show for a metric: its declared summary keys, else the non-bookkeeping scalars."""
        scalars: list[str] = []
        params: set[str] = set()
        for r in self.results:
            if r.metric == metric and r.status == "ok":
                params |= set(r.params)
                scalars += [i.key for i in r.items if i.WhichOneof("value") == "scalar" and i.key not in scalars]
        declared = [k for k in self.summary_keys.get(metric, []) if k in scalars]
        if declared:
            return declared[:limit]
        plain = [k for k in scalars if k not in params and k != "seed" and not k.startswith(BOOKKEEPING_PREFIXES)]
        return plain[:limit]

    def layers(self, metric: str) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.results if r.metric == metric))

    def to_pandas(self, scalars_only: bool = False) -> pandas.DataFrame:
        """Tidy table: run, checkpoint, metric, layer, key, kind, value (arrays/curves as objects)."""
        import pandas as pd

        rows = []
        for r in self.results:
            if r.status != "ok":
                rows.append((self.id, r.checkpoint, r.metric, r.layer, "error", "error", r.error))
                continue
            for item in r.items:
                kind = item.WhichOneof("value")
                if scalars_only and kind != "scalar":
                    continue
                rows.append((self.id, r.checkpoint, r.metric, r.layer, item.key, kind, decode_item(item)))
        return pd.DataFrame(rows, columns=["run", "checkpoint", "metric", "layer", "key", "kind", "value"])

    def plot(self, metric: str) -> Figure:
        """The same figure the HTML report shows for ``metric``."""
        from .plots import plot_metric

        return plot_metric(self, metric)

    def report(self, path: str) -> str:
        """Write a self-contained HTML report; returns the path."""
        from .report import write_report

        return str(write_report(self, path))

    def summary(self) -> pandas.DataFrame:
        """Scalars only, one row per (checkpoint, metric, layer), one column per key."""
        frame = self.to_pandas(scalars_only=True)
        frame = frame[frame["kind"] == "scalar"]
        if frame.empty:
            return frame
        frame = frame.assign(value=frame["value"].astype(float))
        return frame.pivot_table(
            index=["checkpoint", "metric", "layer"], columns="key", values="value", aggfunc="first"
        )
