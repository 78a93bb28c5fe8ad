"""The format-independent description of a loaded model: its inputs, outputs and layer table.

Backends build a ModelGraph; the service sends it as the layer table, capture uses it to
resolve layer selections, and metric plugins read weights and topology from it.
Weights are always in PyTorch layout (Linear ``W[out, in]``, Conv ``K[C_out, C_in/groups, kh, kw]``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInput, shorten, unknown

#: Layer kinds every backend maps its operators onto.
LAYER_KINDS = ("linear", "conv", "attention", "recurrent", "norm", "activation", "pool", "embedding", "other")

#: Names of activation functions, as stored in ``Layer.attrs["function"]``.
ACTIVATION_FUNCTIONS = (
    "relu",
    "relu6",
    "hardtanh",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "leaky_relu",
    "elu",
    "softplus",
)


@dataclass(frozen=True)
class TensorSpec:
    """Name, KServe dtype string (FP32, INT64, ...) and shape (None for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


class WithheldWeights(Mapping[str, np.ndarray]):
    """The weights of a layer that a restricted graph was sent without (``ModelGraph.restricted``).

    Why: a metric worker is sent the weights of the layers it measures only. A metric that also
    reads another layer's (a BatchNorm to fold, the next layer) gets them on first use through
    ``fetch``, which the worker binds to a request to the server. Unbound, reading them raises
    LookupError naming the layer: never an empty mapping a metric could take for "no weights".
    """

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.fetch: Callable[[str], dict[str, np.ndarray]] | None = None
        self._weights: dict[str, np.ndarray] | None = None

    def _loaded(self) -> dict[str, np.ndarray]:
        if self._weights is None:
            if self.fetch is None:
                raise LookupError(f"the weights of layer '{self.layer}' were not sent with this restricted graph")
            self._weights = self.fetch(self.layer)
        return self._weights

    def __getitem__(self, key: str) -> np.ndarray:
        return self._loaded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __getstate__(self) -> dict[str, object]:
        return {**vars(self), "fetch": None}  # a fetch function is bound where the graph is used


@dataclass
class Layer:
    """One row of the layer table.

    ``attrs`` holds kind-specific facts: for conv ``stride``, ``padding``, ``dilation``, ``groups``
    (tuples / int); for activations ``function`` (one of ACTIVATION_FUNCTIONS) and its arguments
    (``negative_slope``, ``min_val``, ``max_val``, ``alpha``, ``beta``); for norm ``eps``.
    ``channel_axis`` says where the unit ("neuron") axis of the output is: 1 for NCHW/NCL
    maps, -1 for dense and token ([B, T, C]) outputs. In a metric worker, ``weights`` of a layer
    the metric does not measure is a read-only mapping fetched on first use (``WithheldWeights``).
    """

    name: str
    kind: str
    op_type: str
    inputs: list[str] = field(default_factory=list)
    input_shapes: list[tuple[int | None, ...]] = field(default_factory=list)
    output_shapes: list[tuple[int | None, ...]] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    channel_axis: int = -1

    @property
    def num_params(self) -> int:
        return int(sum(w.size for w in self.weights.values()))


def fixed_batch(inputs: Sequence[TensorSpec]) -> int | None:
    """The batch size an export fixed: every input has rank >= 2 and the same static first dimension."""
    firsts = {spec.shape[0] if spec.shape and len(spec.shape) >= 2 else None for spec in inputs}
    if len(firsts) != 1:
        return None
    (first,) = firsts
    return first if isinstance(first, int) and first > 0 else None


@dataclass
class ModelGraph:
    """A model as an ordered (topological) table of layers plus its input/output specs.

    ``static_batch`` is the batch size the export fixed (None when the batch is dynamic):
    backends then split and pad data to it. ``notes`` are facts about how the model was
    adapted on load, for the service to report once (a fixed batch, a lowered ONNX IR version).
    """

    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layers: list[Layer]
    static_batch: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}
        if self.static_batch is None:
            self.static_batch = fixed_batch(self.inputs)
        if self.static_batch is not None and not any("fixes the batch" in n for n in self.notes):
            self.notes.append(
                f"the exported model fixes the batch size at {self.static_batch}: data is split and padded to "
                f"batches of {self.static_batch}; padding rows are dropped before any result"
            )

    def layer(self, name: str) -> Layer:
        try:
            return self._by_name[name]
        except KeyError:
            raise unknown("layer", name, self._by_name) from None

    def successors(self, name: str) -> list[Layer]:
        """Layers that take this layer's output as (one of) their inputs."""
        return [layer for layer in self.layers if name in layer.inputs]

    def predecessors(self, name: str) -> list[Layer]:
        return [self._by_name[i] for i in self.layer(name).inputs if i in self._by_name]

    def bind_inputs(self, tensors: Sequence[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Map named (or one unnamed) tensors onto the model's input names; InvalidInput if they don't fit."""
        names = [spec.name for spec in self.inputs]
        if len(tensors) == 1 and not tensors[0][0] and len(names) == 1:
            return {names[0]: tensors[0][1]}
        bound: dict[str, np.ndarray] = {}
        for name, array in tensors:
            if not name:
                raise InvalidInput(f"the model has {len(names)} inputs ({', '.join(names)}): name every input tensor")
            if name not in names:
                raise InvalidInput(f"unknown model input '{shorten(name)}'; the model's inputs are: {', '.join(names)}")
            bound[name] = array
        missing = [n for n in names if n not in bound]
        if missing:
            raise InvalidInput(f"missing model input(s): {', '.join(missing)}")
        return bound

    def restricted(self, names: Collection[str]) -> ModelGraph:
        """The same layer table with the weights of ``names`` only; other layers' are ``WithheldWeights``.

        What a metric worker is sent: the topology (names, kinds, wiring, shapes, attrs) is small,
        the weights of a large model are not, and most metrics read only their own layers'.
        """
        keep = set(names)
        layers = [
            layer
            if layer.name in keep or (isinstance(layer.weights, dict) and not layer.weights)
            else dataclasses.replace(layer, weights=WithheldWeights(layer.name))
            for layer in self.layers
        ]
        return dataclasses.replace(self, layers=layers, notes=list(self.notes))

    def bind_withheld(self, fetch: Callable[[str], dict[str, np.ndarray]]) -> None:
        """Where this restricted graph is used: withheld weights are fetched on first use with ``fetch(layer)``."""
        for layer in self.layers:
            if isinstance(layer.weights, WithheldWeights):
                layer.weights.fetch = fetch

    def select(self, patterns: Sequence[str]) -> list[Layer]:
        """Resolve layer names, glob patterns (``conv*``) and kinds (``kind:conv``), in graph order.

        Every pattern must match at least one layer, so a typo fails loudly instead of
        silently capturing nothing.
        """
        chosen: set[str] = set()
        for pattern in patterns:
            if pattern.startswith("kind:"):
                kind = pattern[5:]
                if kind not in LAYER_KINDS:
                    raise InvalidInput(f"unknown layer kind '{kind}'; valid kinds: {', '.join(LAYER_KINDS)}")
                hits = {layer.name for layer in self.layers if layer.kind == kind}
            elif any(ch in pattern for ch in "*?["):
                hits = set(fnmatch.filter(self._by_name, pattern))
            else:
                hits = {pattern} if pattern in self._by_name else set()
            if not hits:
                raise unknown("layer", pattern, self._by_name, what="matches no layer", field="layers")
            chosen |= hits
        return [layer for layer in self.layers if layer.name in chosen]
