"""What plugin authors import: hook markers, hookspecs, the Metric base class and its data types.

A plugin is a module with ``@hookimpl`` functions, registered under the ``deepscope``
entry-point group::

    from deepscope_server.plugin_api import Metric, Needs, Param, hookimpl

    class MeanActivation(Metric):
        name = "demo.mean_activation"
        description = "Mean of each layer's output over all samples."
        needs = Needs.OUTPUTS
        params = (Param("absolute", bool, False, "average |a| instead of a"),)

        def start(self):
            self.sums = {layer.name: 0.0 for layer in self.ctx.layers}
            self.count = 0

        def update(self, batch):
            for name, a in batch.outputs.items():
                self.sums[name] += float((abs(a) if self.params["absolute"] else a).sum())
            self.count += len(next(iter(batch.outputs.values())))

        def finish(self):
            return {name: {"mean": s / self.count} for name, s in self.sums.items()}

    @hookimpl
    def deepscope_register_metrics(register):
        register(MeanActivation)

Contract: ``start()`` once, ``update(batch)`` once per batch (memory must be bounded by the
metric's statistics, not by the number of samples), ``finish()`` returns
``{layer_name: {key: value}}`` (use ``WHOLE_MODEL`` as the layer for model-level values).
Values may be: int/float/bool, str, numpy arrays (vector/matrix/tensor), ``Curve``, ``Table`` or ``Graph``.
Weight-only metrics (``needs = Needs.WEIGHTS``) get no ``update`` calls and no forward pass runs.
Optionally, ``merge(other)`` folds another instance's state in (see ``Metric.merge``).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import pluggy

from deepscope.text import shorten
from deepscope.values import Curve  # one class for plugins and the SDK: y(x) with axis labels

from .backends.base import CaptureRequest, RunOutput
from .model_graph import ACTIVATION_FUNCTIONS, LAYER_KINDS, Layer, ModelGraph, TensorSpec

PROJECT = "deepscope"
ENTRY_POINT_GROUP = "deepscope"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The layer key for results that belong to the whole model (e.g. a spread across layers).
WHOLE_MODEL = ""

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "Batch",
    "CaptureRequest",
    "Context",
    "Curve",
    "Dataset",
    "Graph",
    "LAYER_KINDS",
    "Layer",
    "Metric",
    "MetricTimeout",
    "ModelGraph",
    "ModelHandle",
    "Needs",
    "Param",
    "PerLayerMetric",
    "RunCancelled",
    "RunOutput",
    "Table",
    "TensorSpec",
    "WHOLE_MODEL",
    "hookimpl",
    "cross_layer",
    "hookspec",
    "nan_result",
    "unit_view",
    "validate_params",
]


class MetricTimeout(BaseException):
    """Raised inside a metric call that is past its time limit (by ``ctx.check()``, or injected into a
    thread-hosted metric). A BaseException, like KeyboardInterrupt, so ``except Exception`` in plugin
    code does not swallow it; the server turns it into the "exceeded the metric time limit" failure.
    """


class RunCancelled(Exception):
    """Raised inside the run (and by ``ctx.check()``) once the client cancelled or the run's deadline passed."""


class Needs(enum.Flag):
    """What a metric needs from a run; the runner provides exactly this and nothing more."""

    WEIGHTS = enum.auto()  #: layer parameters (always available; alone means no forward pass)
    OUTPUTS = enum.auto()  #: each selected layer's output, per batch
    INPUTS = enum.auto()  #: each selected layer's input (pre-activation for activation layers)
    DATA = enum.auto()  #: the model inputs and labels of each batch
    MODEL = enum.auto()  #: a ModelHandle to run the model again (perturbations, basins)


@dataclass(frozen=True)
class Param:
    """A metric parameter: its type, default and allowed values. ``validate`` coerces and checks."""

    name: str
    type: type
    default: Any
    description: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    def validate(self, value: Any) -> Any:
        """Return the value coerced to ``type``; raise ValueError saying what would be valid."""
        if self.type is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, (bool, np.bool_)) and not (isinstance(value, int) and value in (0, 1)):
                raise ValueError(f"parameter '{self.name}' expects a bool, got {shorten(repr(value))}")
            value = bool(value)
        elif self.type in (int, float):
            if isinstance(value, bool):
                raise ValueError(f"parameter '{self.name}' expects {self.type.__name__}, got a bool")
            try:
                coerced = self.type(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"parameter '{self.name}' expects {self.type.__name__}, got {shorten(repr(value))}"
                ) from None
            if self.type is int and float(value) != coerced:
                raise ValueError(f"parameter '{self.name}' expects an integer, got {value!r}")
            if self.type is float and not np.isfinite(coerced):
                raise ValueError(f"parameter '{self.name}' must be finite, got {value!r}")
            value = coerced
            if self.min is not None and value < self.min:
                raise ValueError(f"parameter '{self.name}' must be >= {self.min}, got {value}")
            if self.max is not None and value > self.max:
                raise ValueError(f"parameter '{self.name}' must be <= {self.max}, got {value}")
        elif self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"parameter '{self.name}' expects a string, got {shorten(repr(value))}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}; got {shorten(repr(value))}"
            )
        return value


@dataclass(frozen=True)
class Table:
    """A small result table: column name -> equal-length 1-D array or list."""

    columns: Mapping[str, Sequence[Any] | np.ndarray]


@dataclass(frozen=True)
class Graph:
    """A result graph as an edge list: the SDK turns it into a networkx graph (``run.graph(...)``).

    ``nodes`` holds optional per-node columns (each of length ``num_nodes``), e.g. the layer a
    neuron belongs to and its bias.
    """

    num_nodes: int
    sources: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None = None
    directed: bool = True
    nodes: Mapping[str, Sequence[Any] | np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_sparse(cls, matrix: Any, directed: bool = True, **nodes: Sequence[Any] | np.ndarray) -> Graph:
        """From a square scipy.sparse adjacency (entry [i, j] = weight of i -> j); undirected keeps i < j."""
        import scipy.sparse as sp

        coo = sp.coo_array(matrix)
        keep = np.ones(coo.nnz, bool) if directed else coo.row < coo.col
        return cls(
            coo.shape[0],
            coo.row[keep].astype(np.int64),
            coo.col[keep].astype(np.int64),
            np.asarray(coo.data[keep], np.float64),
            directed,
            nodes,
        )


@dataclass
class Batch:
    """One batch as a metric sees it; only the fields its ``needs`` asked for are filled."""

    index: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  #: layer inputs (pre-activations)
    data: dict[str, np.ndarray] = field(default_factory=dict)  #: model inputs
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        for group in (self.data, self.outputs, self.inputs):
            for a in group.values():
                return int(a.shape[0])
        return 0


class ModelHandle(Protocol):
    """Runs the model again from inside a metric (for perturbation metrics). Eval mode, no grad."""

    graph: ModelGraph

    def run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest] = ()) -> RunOutput: ...

    def run_with_weights(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, Mapping[str, np.ndarray]],
        capture: Sequence[CaptureRequest] = (),
    ) -> RunOutput: ...


@dataclass
class Context:
    """Everything a metric instance gets from the run."""

    params: dict[str, Any]  #: validated parameters, defaults filled in
    layers: list[Layer]  #: the selected layers this metric applies to, in graph order
    graph: ModelGraph  #: the whole model, for cross-layer metrics
    model: ModelHandle | None = None  #: set when the metric needs Needs.MODEL
    seed: int = 0
    max_batch_size: int = 256  #: batch size to use when re-running the model
    progress: Callable[[float, str], None] = lambda fraction, message: None
    cancelled: Callable[[], bool] = lambda: False
    warnings: list[str] = field(default_factory=list)
    #: time.monotonic() by which the current call must return; set by the server before each call.
    deadline: float = math.inf

    def warn(self, message: str) -> None:
        """Attach a warning to the metric's results (shown in reports)."""
        self.warnings.append(message)

    def check(self) -> None:
        """Stop here if the call must stop: call it in long loops (cheap: a clock read).

        Raises MetricTimeout past the call's time limit and RunCancelled once the run was
        cancelled. Under ``--metric-isolation thread`` this is how a metric over its limit stops
        instead of running on in the server (a worker process is simply killed).
        """
        if time.monotonic() > self.deadline:
            raise MetricTimeout("the metric's time limit has passed")
        if self.cancelled():
            raise RunCancelled("run cancelled")


class Metric:
    """Base class for metrics. Subclass it, set the class attributes, override start/update/finish."""

    name: ClassVar[str]  #: "family.metric", e.g. "cnt.node_strength"
    description: ClassVar[str]
    citation: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[Needs] = Needs.OUTPUTS
    layer_kinds: ClassVar[frozenset[str] | None] = None  #: None = any kind
    result_kinds: ClassVar[tuple[str, ...]] = ()  #: e.g. ("scalar", "vector", "curve")
    summary_keys: ClassVar[tuple[str, ...]] = ()  #: headline scalar keys for tables, plots and reports
    reconstructed: ClassVar[bool] = False  #: True when the definition is reconstructed from abstracts
    extension: ClassVar[bool] = False  #: True when the metric goes beyond the cited papers

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # Instances hold the validated values under the name the class declares them by (plugin API v1).
        self.params = ctx.params  # type: ignore[misc,assignment]

    @classmethod
    def applies_to(cls, layer: Layer) -> bool:
        """Whether the metric can measure this layer (default: by ``layer_kinds``)."""
        return cls.layer_kinds is None or layer.kind in cls.layer_kinds

    def start(self) -> None:
        """Set up per-layer accumulators."""

    def update(self, batch: Batch) -> None:
        """Fold one batch into the accumulators. Never keep all batches."""

    def finish(self) -> dict[str, dict[str, Any]]:
        """Return ``{layer_name: {key: value}}``."""
        raise NotImplementedError

    # Optional: metrics whose state is a sum (counts, moments, scatter matrices, reservoirs) define
    # ``merge(self, other)``, which folds the state of ``other`` (same class, params and layers,
    # started and fed the batches that come *after* this instance's batches) into ``self``, so that
    # ``finish()`` returns what one instance fed every batch in order would return. Distributed
    # executors then split a checkpoint's data over several instances (docs/writing-a-plugin.md).
    merge: ClassVar[Callable[[Metric, Metric], None] | None] = None

    @classmethod
    def mergeable(cls, params: Mapping[str, Any], layers: Sequence[Layer]) -> bool:
        """Whether ``merge`` is exact for these parameters and layers (default: whether the class defines it)."""
        return callable(cls.merge)


class LayerAccumulator(Protocol):
    """One layer's streaming state: folds each batch's rows in, holding statistics, not samples."""

    def update(self, rows: np.ndarray) -> None: ...


class PerLayerMetric(Metric):
    """A metric measured layer by layer: one accumulator per measured layer, fed every batch.

    Why: the streaming loop, the ``{layer: result}`` dict and the whole-model block are written once
    here, so a metric declares only what differs: ``measure(layer, acc)`` (the layer's result) and,
    as needed, ``accumulator(layer)`` (its streaming state, an object with ``update(rows)``; none for
    a metric of the weights alone), ``rows(layer, a)`` (what the accumulator is fed; default
    ``unit_view(a, layer, unit_reduce)`` in float64), ``feed(layer, acc, batch)`` (for state fed from
    more than the layer's output: its input, another layer, the model's data), ``measured_layers()``
    and ``summarise(results)`` (the block under ``WHOLE_MODEL``; default none) or ``combine(results)``
    (the whole result, for layer values that depend on other layers). A metric of the whole model
    (``whole_model = True``) measures one part, the model, whose result lands under ``WHOLE_MODEL``.
    """

    unit_reduce: ClassVar[str] = "mean"  #: how ``rows`` reduces an output (see ``unit_view``)
    #: True: the metric measures the model as a whole: one part, a pseudo-layer named WHOLE_MODEL (kind "model").
    whole_model: ClassVar[bool] = False

    def start(self) -> None:
        self.measured = self.measured_layers()
        self.layer_by_name = {layer.name: layer for layer in self.measured}
        self.acc: dict[str, Any] = {layer.name: self.accumulator(layer) for layer in self.measured}

    def measured_layers(self) -> list[Layer]:
        """The layers that get an accumulator and a result, in order (default: every selected layer;
        the model itself when ``whole_model``)."""
        return [Layer(WHOLE_MODEL, "model", "")] if self.whole_model else list(self.ctx.layers)

    def accumulator(self, layer: Layer) -> LayerAccumulator | None:
        """A fresh accumulator for ``layer``; None (default) when its result needs no batches (weights only)."""
        return None

    def rows(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        """The 2-D rows of one batch's output ``a`` that the layer's accumulator gets."""
        return np.asarray(unit_view(a, layer, self.unit_reduce), np.float64)

    def feed(self, layer: Layer, acc: Any, batch: Batch) -> None:
        """Fold one batch into the layer's accumulator (default: ``rows`` of the layer's output, when captured)."""
        if layer.name in batch.outputs:
            acc.update(self.rows(layer, batch.outputs[layer.name]))

    def update(self, batch: Batch) -> None:
        for layer in self.measured:
            acc = self.acc[layer.name]
            if acc is not None:
                self.feed(layer, acc, batch)

    def measure(self, layer: Layer, acc: Any) -> dict[str, Any]:
        """The result of one layer from its accumulator (None for a metric of the weights alone)."""
        raise NotImplementedError

    def summarise(self, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The whole-model result from the per-layer ones (e.g. a spread across layers), or None."""
        return None

    def combine(self, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The metric's ``{layer: result}`` from the measured layers' results: by default those, and
        ``summarise``'s block under ``WHOLE_MODEL`` unless None."""
        whole = self.summarise(results)
        return results if whole is None else {**results, WHOLE_MODEL: whole}

    def finish(self) -> dict[str, dict[str, Any]]:
        return self.combine({layer.name: self.measure(layer, self.acc[layer.name]) for layer in self.measured})


def nan_result(reason: str, *nan_keys: str, **values: Any) -> dict[str, Any]:
    """A result that could not be measured: ``values``, NaN under each of ``nan_keys``, and the reason why."""
    return {**values, **dict.fromkeys(nan_keys, math.nan), "reason": reason}


def cross_layer(results: Mapping[str, Mapping[str, Any]], key: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``key`` of every layer's result (floats, NaN kept) and the start of a whole-model block:
    ``n_layers`` (how many are finite) and a ``layers`` table of the values by layer."""
    names = [name for name in results if name != WHOLE_MODEL]
    values = np.array([results[name][key] for name in names], float)
    return values, {"n_layers": int(np.isfinite(values).sum()), "layers": Table({"layer": names, key: values})}


class Dataset(Protocol):
    """A server-side data source: yields (inputs, labels) batches for the model's first input."""

    name: str
    description: str

    def batches(self, spec: TensorSpec, batch_size: int, limit: int | None, seed: int, split: str) -> tuple[int, Any]:
        """Return (number of samples, iterator of (x, labels-or-None) numpy batches)."""
        ...


class HookSpecs:
    """The hooks a plugin may implement. Each receives a ``register`` callback."""

    @hookspec
    def deepscope_register_metrics(self, register: Callable[[type[Metric]], None]) -> None:
        """Register Metric subclasses: ``register(MyMetric)``."""

    @hookspec
    def deepscope_register_datasets(self, register: Callable[[Dataset], None]) -> None:
        """Register server-side datasets: ``register(dataset)``."""


def validate_params(metric: type[Metric], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and validate; raise ValueError naming unknown or invalid parameters."""
    given = dict(given or {})
    known = {p.name: p for p in metric.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise ValueError(f"unknown parameter(s) {shorten(', '.join(unknown))} for {metric.name}; valid: {valid}")
    try:
        return {name: p.validate(given[name]) if name in given else p.default for name, p in known.items()}
    except ValueError as exc:  # say which metric: one request may configure several
        raise ValueError(f"{metric.name}: {exc}") from None


def unit_view(a: np.ndarray, layer: Layer, reduce: str = "mean") -> np.ndarray:
    """Reshape a layer output ``a[B, ...]`` to a 2-D ``[rows, units]`` array (units = channels/neurons).

    ``reduce="mean"``: average over spatial/token positions -> ``[B, C]``;
    ``"positions"``: every (sample, position) is a row -> ``[B*P, C]``;
    ``"flatten"``: every element is a unit -> ``[B, C*P]``.
    """
    if a.ndim == 1:
        return a.reshape(-1, 1)
    if a.ndim == 2:
        return a
    if reduce == "flatten":
        return a.reshape(a.shape[0], -1)
    axis = layer.channel_axis % a.ndim
    moved = np.moveaxis(a, axis, -1)
    if reduce == "mean":
        return moved.reshape(a.shape[0], -1, moved.shape[-1]).mean(axis=1)
    if reduce == "positions":
        return moved.reshape(-1, moved.shape[-1])
    raise ValueError(f"unknown reduce '{reduce}': use mean, positions or flatten")
