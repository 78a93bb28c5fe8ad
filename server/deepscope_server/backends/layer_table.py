"""One layer-table builder for every format, from neutral per-operation records.

Each backend describes its graph as a topologically ordered list of ``OpRecord``: what the
operation is, which module calls it ran inside, which values it reads and writes, and the
weights it uses (already in PyTorch layout). ``build_layer_table`` turns that into the
``ModelGraph`` layers, so grouping, naming, ``inputs`` wiring and channel axes are decided in
one place for .pt2, ONNX, TorchScript and pickled modules alike.

Layers are *call sites*, not modules (see layer_naming for the naming rules):

- a leaf module call is one layer named by the module path; a module called again (a ReLU
  reused in a ResNet block) gives one layer per call: ``layer1.0.relu``, ``layer1.0.relu@1``,
  ... (``@N`` is torch.export's own spelling of the N-th repeated call);
- an activation function called outside a leaf module (``F.relu`` in a block) is its own layer
  ``<parent>.<function>`` (``_1``, ``_2``... for later ones);
- a bare module exported on its own (``nn.Linear``) is one layer named after its class.

When a backend cannot tell calls apart (ONNX metadata records the module path, not the call),
the operations of one module path are split into calls by connectivity: operations that feed
each other directly belong to one call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model_graph import Layer
from . import layer_naming as ln


@dataclass(frozen=True)
class Frame:
    """One module call on an operation's stack: module path ('' = root), short class name, call index.

    ``call`` is None when the format does not record which call of the module this is.
    """

    path: str
    cls: str
    call: int | None = 0


@dataclass
class Weight:
    """A weight in PyTorch layout, plus an opaque handle the backend uses to write it back."""

    array: np.ndarray
    ref: Any = None


@dataclass
class OpRecord:
    """One operation of the graph, format-neutral.

    ``op_type`` is the format's operator name (aten base name or ONNX op type); ``op_kind``
    the layer kind the operator implies on its own (``conv`` for a convolution, None for glue
    such as reshapes); ``function`` the activation function when it is one. ``source`` names
    the torch operation it came from: ONNX nodes decomposed from one torch op share it.
    ``weights`` are keyed by full parameter name (``fc.weight``) or, when the name is not
    known, by the key within the layer (``weight``). ``attrs`` are the kind-specific layer
    attributes this operation defines. ``inputs`` are the data values only (tensors a layer
    passes on), so shape arithmetic does not wire layers together.
    """

    id: str
    op_type: str
    stack: tuple[Frame, ...]
    inputs: list[str]
    outputs: list[str]
    op_kind: str | None = None
    function: str | None = None
    source: str = ""
    weights: dict[str, Weight] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)  #: other values read (sizes...): only tie operations into one call


@dataclass
class LayerValues:
    """The graph values holding a layer's output and (first) input, for capture."""

    output: str
    input: str | None


@dataclass
class LayerTable:
    layers: list[Layer]
    values: dict[str, LayerValues]
    refs: dict[str, dict[str, Any]]  #: layer -> weight key -> backend handle


def _snake(cls: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls).lower()


class _Group:
    def __init__(self, name: str, path: str, cls: str, function: str | None) -> None:
        self.name, self.path, self.cls, self.function = name, path, cls, function
        self.ops: list[OpRecord] = []


def _leaves(records: Sequence[OpRecord]) -> tuple[set[str], dict[str, str]]:
    """Leaf module paths (never the parent of another called module), and each path's class."""
    class_of = {f.path: f.cls for r in records for f in r.stack}
    stacks = [tuple(f.path for f in r.stack if f.path) for r in records]
    leaves = {p for p in ln.leaf_paths(stacks) if class_of[p] not in ln.SKIPPED_CLASSES}
    if not leaves and "" in class_of and ln.kind_of_class(class_of[""]) != "other":
        leaves = {""}  # a bare module exported on its own
    return leaves, class_of


def _split_calls(ops: list[OpRecord]) -> list[list[OpRecord]]:
    """Operations of one module path split into calls: connected by direct data edges, in graph order."""
    produced = {v: i for i, r in enumerate(ops) for v in r.outputs}
    parent = list(range(len(ops)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, r in enumerate(ops):
        for v in r.inputs + r.reads:
            if v in produced:
                parent[find(i)] = find(produced[v])
    calls: dict[int, list[OpRecord]] = {}  # dicts keep insertion order: calls come out in graph order
    for i, r in enumerate(ops):
        calls.setdefault(find(i), []).append(r)
    return list(calls.values())


def _group(records: Sequence[OpRecord]) -> list[_Group]:
    """Records grouped into call-site layers, in graph order of each layer's first operation."""
    leaves, class_of = _leaves(records)
    root_name = _snake(class_of[""]) if "" in leaves else None
    namer = ln.FunctionalNamer(leaves | {root_name} if root_name else leaves)
    by_call: dict[tuple[str, int | None], list[OpRecord]] = {}
    functional: dict[tuple[str, str], _Group] = {}
    for r in records:
        frame = next((f for f in reversed(r.stack) if f.path in leaves), None)
        if frame is not None:
            by_call.setdefault((frame.path, frame.call), []).append(r)
        elif r.function:
            parent = next((f.path for f in reversed(r.stack) if f.path), "")
            key = (parent, r.source or r.id)
            if key not in functional:
                functional[key] = _Group(namer.name(parent, r.function), parent, "", r.function)
            functional[key].ops.append(r)
    position = {id(r): i for i, r in enumerate(records)}
    calls: dict[str, list[list[OpRecord]]] = {}
    for (path, call), ops in by_call.items():  # without a recorded call index: split by connectivity
        calls.setdefault(path, []).extend(_split_calls(ops) if call is None else [ops])
    groups = list(functional.values())
    for path, parts in calls.items():
        parts.sort(key=lambda ops: position[id(ops[0])])
        base = root_name if path == "" else path
        for k, ops in enumerate(parts):
            g = _Group(
                base if k == 0 else f"{base}@{k}", path, class_of[path], ln.ACTIVATION_BY_CLASS.get(class_of[path])
            )
            g.ops = ops
            groups.append(g)
    return sorted(groups, key=lambda g: position[id(g.ops[0])])


def _kind(g: _Group) -> str:
    if g.function:
        return "activation"
    by_class = ln.kind_of_class(g.cls) if g.cls else "other"
    if by_class != "other":
        return by_class
    return next((r.op_kind for r in g.ops if r.op_kind), "other")


def _main(g: _Group, kind: str) -> OpRecord:
    """The operation that defines the layer (its convolution, activation...), for attributes."""
    if kind == "activation":
        fns = [r for r in g.ops if r.function] or g.ops
        return next((r for r in fns if r.attrs), fns[0])
    return next((r for r in g.ops if r.op_kind == kind), next((r for r in g.ops if r.weights), g.ops[-1]))


def build_layer_table(
    records: Sequence[OpRecord],
    graph_inputs: Iterable[str],
    graph_outputs: Iterable[str],
    shapes: Mapping[str, tuple[int | None, ...]],
    *,
    class_op_type: bool = True,
) -> LayerTable:
    """Group records into call-site layers, wire their ``inputs`` and compute channel axes.

    ``shapes`` maps every data tensor value (not sizes, tuples or integer index tensors) to its
    shape (None for dynamic dims); ``class_op_type`` reports a
    module layer's op_type as its torch class (Conv2d) rather than the format's operator (Conv).
    """
    graph_inputs, graph_outputs = list(graph_inputs), set(graph_outputs)
    groups = _group(records)
    producer = {v: r for r in records for v in r.outputs}
    consumers: dict[str, list[OpRecord]] = {}
    for r in records:
        for v in r.inputs:
            consumers.setdefault(v, []).append(r)
    layer_of = {id(r): g.name for g in groups for r in g.ops}

    values: dict[str, LayerValues] = {}
    ext_inputs: dict[str, list[str]] = {}
    ext_tensors: dict[str, list[str]] = {}
    for g in groups:
        members = {id(r) for r in g.ops}
        outs = [
            v
            for r in g.ops
            for v in r.outputs
            if v in graph_outputs or any(id(c) not in members for c in consumers.get(v, []))
        ]
        ext: list[str] = []
        for r in g.ops:
            ext += [v for v in r.inputs if v not in ext and (v not in producer or id(producer[v]) not in members)]
        outs = [v for v in outs if v in shapes] or outs
        output = outs[-1] if outs else g.ops[-1].outputs[0]
        tensors = [v for v in ext if v in shapes]  # data tensors, not sizes or tuples
        values[g.name] = LayerValues(output, tensors[0] if tensors else None)
        ext_inputs[g.name] = ext
        ext_tensors[g.name] = tensors

    cache: dict[str, list[str]] = {}
    input_set = set(graph_inputs)

    def feeders(v: str) -> list[str]:
        """The layers (or model inputs) whose outputs reach value ``v`` through non-layer operations."""
        if v in cache:
            return cache[v]
        cache[v] = []
        if v in input_set:
            res = [v]
        elif v in producer and id(producer[v]) in layer_of:
            res = [layer_of[id(producer[v])]]
        elif v in producer:
            res = []
            for i in producer[v].inputs:
                res += [x for x in feeders(i) if x not in res]
        else:
            res = []
        cache[v] = res
        return res

    layers: list[Layer] = []
    refs: dict[str, dict[str, Any]] = {}
    channels_first: dict[str, bool] = {}
    for g in groups:
        kind = _kind(g)
        main = _main(g, kind)
        inputs: list[str] = []
        for v in ext_inputs[g.name]:
            inputs += [x for x in feeders(v) if x not in inputs and x != g.name]
        out_shape = shapes.get(values[g.name].output)
        rank = len(out_shape) if out_shape else None
        axis = ln.channel_axis(kind, g.cls, rank, any(channels_first.get(i, False) for i in inputs))
        channels_first[g.name] = axis == 1
        weights: dict[str, np.ndarray] = {}
        wrefs: dict[str, Any] = {}
        prefix = g.path + "." if g.path else ""
        if kind != "activation" or g.cls:  # functional activations own no parameters
            for r in g.ops:
                for key, w in r.weights.items():
                    local = key[len(prefix) :] if prefix and key.startswith(prefix) else key
                    if local not in weights:
                        weights[local], wrefs[local] = w.array, w.ref
        refs[g.name] = wrefs
        attrs = dict(main.attrs)
        if kind == "activation":
            attrs.setdefault("function", g.function or main.function)
        if g.cls and g.cls != main.op_type and not class_op_type:
            attrs.setdefault("torch_class", g.cls)
        op_type = g.cls if g.cls and (class_op_type or kind in ("attention", "recurrent")) else main.op_type
        layers.append(
            Layer(
                name=g.name,
                kind=kind,
                op_type=op_type,
                inputs=inputs,
                input_shapes=[shapes[v] for v in ext_tensors[g.name]],
                output_shapes=[out_shape if out_shape is not None else ()],
                weights=weights,
                attrs=attrs,
                channel_axis=axis,
            )
        )
    return LayerTable(layers, values, refs)


__all__ = ["Frame", "LayerTable", "LayerValues", "OpRecord", "Weight", "build_layer_table"]
