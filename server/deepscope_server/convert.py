"""Domain objects <-> protobuf messages (layer table, metric descriptions, parameters, results)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepscope import times
from deepscope.dtypes import kserve_dtype
from deepscope.tensors import to_proto
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import tensor_pb2 as tpb
from deepscope.values import from_value, to_value

from .model_graph import Layer, ModelGraph, TensorSpec
from .plugin_api import Curve, Graph, Needs, Param, Table
from .plugins import MetricEntry


def shape_proto(shape: tuple[int | None, ...]) -> tpb.Shape:
    return tpb.Shape(dims=[-1 if d is None else int(d) for d in shape])


def spec_proto(spec: TensorSpec) -> tpb.TensorSpec:
    return tpb.TensorSpec(name=spec.name, dtype=spec.dtype, shape=shape_proto(spec.shape))


def _json(value: object) -> str:
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def layer_proto(layer: Layer) -> pb.LayerInfo:
    return pb.LayerInfo(
        name=layer.name,
        kind=layer.kind,
        op_type=layer.op_type,
        inputs=layer.inputs,
        input_shapes=[shape_proto(s) for s in layer.input_shapes],
        output_shapes=[shape_proto(s) for s in layer.output_shapes],
        params=[pb.ParamInfo(name=k, dtype=kserve_dtype(v.dtype), shape=v.shape) for k, v in layer.weights.items()],
        attrs={k: _json(v) for k, v in layer.attrs.items()},
        channel_axis=layer.channel_axis,
    )


def model_info_proto(
    model_id: str, name: str, fmt: str, size: int, created_at: str, source: str, graph: ModelGraph
) -> pb.ModelInfo:
    info = pb.ModelInfo(
        id=model_id,
        name=name,
        format=fmt,
        size_bytes=size,
        source=source,
        inputs=[spec_proto(s) for s in graph.inputs],
        outputs=[spec_proto(s) for s in graph.outputs],
        num_layers=len(graph.layers),
        num_params=sum(layer.num_params for layer in graph.layers),
    )
    times.set_iso(info.created_time, created_at)
    return info


# ---------------------------------------------------------------- parameters


def value_proto(value: Any) -> pb.Value:
    """A parameter value on the wire; anything that is not bool/int/float goes as text."""
    try:
        return to_value(value)
    except TypeError:
        return pb.Value(text=str(value))


value_from_proto = from_value


def param_spec_proto(param: Param) -> pb.ParamSpec:
    spec = pb.ParamSpec(
        name=param.name,
        type=param.type.__name__,
        default=value_proto(param.default),
        description=param.description,
        choices=[value_proto(c) for c in param.choices or ()],
    )
    if param.min is not None:
        spec.min = float(param.min)
    if param.max is not None:
        spec.max = float(param.max)
    return spec


def needs_names(needs: Needs) -> list[str]:
    return [flag.name.lower() for flag in Needs if flag in needs]


#: Plugins describe results in Python terms; the wire names them by the ResultItem field that holds them.
_WIRE_RESULT_KINDS = {"vector": "tensor", "matrix": "tensor", "array": "tensor", "string": "text", "bool": "flag"}


def wire_result_kinds(kinds: Sequence[str]) -> list[str]:
    """``result_kinds`` as ResultItem ``value`` field names (scalar, tensor, curve, table, text, graph, flag)."""
    return list(dict.fromkeys(_WIRE_RESULT_KINDS.get(kind, kind) for kind in kinds))


def metric_info_proto(entry: MetricEntry) -> pb.MetricInfo:
    cls = entry.cls
    return pb.MetricInfo(
        name=cls.name,
        description=cls.description,
        citation=cls.citation,
        params=[param_spec_proto(p) for p in cls.params],
        needs=needs_names(cls.needs),
        layer_kinds=sorted(cls.layer_kinds or ()),
        result_kinds=wire_result_kinds(cls.result_kinds),
        plugin=entry.plugin,
        plugin_version=entry.version,
        reconstructed=bool(cls.reconstructed),
        extension=bool(cls.extension),
        summary_keys=list(cls.summary_keys),
    )


# ---------------------------------------------------------------- results


class MalformedResult(ValueError):
    """A metric returned something that is not a valid result."""


def _numeric_tensor(values: Any, what: str) -> tpb.Tensor:
    array = np.asarray(values)
    if array.dtype == object or array.dtype.kind in "USV":
        raise MalformedResult(f"{what}: expected numbers, got dtype {array.dtype}")
    if array.dtype.kind == "c":
        raise MalformedResult(f"{what}: complex values are not supported")
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float64)
    return to_proto(array)


def item_proto(key: str, value: Any) -> pb.ResultItem:
    """One result value as a typed ResultItem; MalformedResult for anything else."""
    if not isinstance(key, str) or not key:
        raise MalformedResult(f"result keys must be non-empty strings, got {key!r}")
    if isinstance(value, (bool, np.bool_)):
        return pb.ResultItem(key=key, flag=bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return pb.ResultItem(key=key, scalar=float(value))
    if isinstance(value, str):
        return pb.ResultItem(key=key, text=value)
    if isinstance(value, Curve):
        x, y = np.asarray(value.x), np.asarray(value.y)
        if x.shape != y.shape or x.ndim != 1:
            raise MalformedResult(f"curve '{key}': x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
        return pb.ResultItem(
            key=key,
            curve=pb.Curve(
                x=_numeric_tensor(x, key), y=_numeric_tensor(y, key), x_label=value.x_label, y_label=value.y_label
            ),
        )
    if isinstance(value, Table):
        return pb.ResultItem(key=key, table=_table_proto(key, value.columns))
    if isinstance(value, Graph):
        return pb.ResultItem(key=key, graph=_graph_proto(key, value))
    if isinstance(value, (np.ndarray, list, tuple)):
        return pb.ResultItem(key=key, tensor=_numeric_tensor(value, f"result '{key}'"))
    raise MalformedResult(f"result '{key}' has unsupported type {type(value).__name__}")


def _graph_proto(key: str, graph: Graph) -> pb.Graph:
    sources, targets = np.asarray(graph.sources, np.int64), np.asarray(graph.targets, np.int64)
    if sources.shape != targets.shape or sources.ndim != 1:
        raise MalformedResult(f"graph '{key}': sources and targets must be 1-D of equal length")
    if sources.size and (min(sources.min(), targets.min()) < 0 or max(sources.max(), targets.max()) >= graph.num_nodes):
        raise MalformedResult(f"graph '{key}': node ids must lie in [0, {graph.num_nodes})")
    message = pb.Graph(
        num_nodes=graph.num_nodes, sources=to_proto(sources), targets=to_proto(targets), directed=graph.directed
    )
    if graph.weights is not None:
        weights = np.asarray(graph.weights, np.float64)
        if weights.shape != sources.shape:
            raise MalformedResult(f"graph '{key}': {weights.size} weights for {sources.size} edges")
        message.weights.CopyFrom(to_proto(weights))
    if graph.nodes:
        table = _table_proto(key, graph.nodes)
        rows = [
            len(c.strings.values) if c.WhichOneof("values") == "strings" else int(np.prod(c.numbers.shape))
            for c in table.columns
        ]
        if any(n != graph.num_nodes for n in rows):
            raise MalformedResult(f"graph '{key}': node columns must have num_nodes = {graph.num_nodes} rows")
        message.nodes.CopyFrom(table)
    return message


def _table_proto(key: str, columns_in: Mapping[str, Any]) -> pb.Table:
    """Equal-length columns: all-string columns as strings, anything else as a numeric tensor."""
    columns, length = [], None
    for name, col in columns_in.items():
        col_list = list(col) if not isinstance(col, np.ndarray) else col
        n = len(col_list)
        if length is not None and n != length:
            raise MalformedResult(f"table '{key}': column '{name}' has {n} rows, expected {length}")
        length = n
        if n and all(isinstance(v, str) for v in col_list):
            columns.append(pb.Column(name=str(name), strings=pb.StringList(values=list(col_list))))
        else:
            columns.append(pb.Column(name=str(name), numbers=_numeric_tensor(col_list, f"table '{key}'")))
    return pb.Table(columns=columns)


def result_items(values: Any) -> list[pb.ResultItem]:
    if not isinstance(values, Mapping):
        raise MalformedResult(f"each layer's results must be a dict of key -> value, got {type(values).__name__}")
    return [item_proto(k, v) for k, v in values.items()]
