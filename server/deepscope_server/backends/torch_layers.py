"""How a torch model is described: its layer table, from an exported graph or from its modules.

.pt2: every fx node becomes a neutral record (module calls from ``nn_module_stack``, parameters
from its ``get_attr`` arguments) for the builder shared with ONNX (layer_table: one layer per call
site, ``layer1.0.relu@1`` for a module's second call). TorchScript and pickled modules: one record
per leaf module in definition order, for the same builder (nothing was traced, so no call sites and
no shapes beyond the rank a module class fixes); attention and recurrent modules are one record
each with all their weights.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.fx as fx

from deepscope.dtypes import kserve_dtype

from ..model_graph import ModelGraph, TensorSpec
from . import layer_naming as ln
from . import layer_table as lt

_EMPTY_STACK = "_empty_nn_module_stack_from_metadata_hook"


def _kserve(dtype: torch.dtype) -> str:
    try:
        return kserve_dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    except (TypeError, ValueError):
        return str(dtype).replace("torch.", "").upper()


def _shape(t: Any) -> tuple[int | None, ...]:
    """Static dims as ints, symbolic (dynamic) dims as None."""
    return tuple(d if isinstance(d, int) else None for d in t.shape)


def _normalised_args(node: fx.Node) -> dict[str, Any]:
    """All schema arguments of an aten node by name, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _tuple(v: Any) -> Any:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else v


def _attrs_from_node(kind: str, node: fx.Node, function: str | None) -> dict[str, Any]:
    """Kind-specific attributes read from the main aten op of a layer."""
    a = _normalised_args(node)
    attrs: dict[str, Any] = {}
    if kind == "conv":
        for key in ("stride", "padding", "dilation", "groups"):
            if key in a:
                attrs[key] = _tuple(a[key])
    elif kind == "norm":
        if "eps" in a:
            attrs["eps"] = float(a["eps"])
    elif kind == "pool":
        for key in ("kernel_size", "stride", "padding", "output_size"):
            if key in a:
                attrs[key] = _tuple(a[key])
    elif kind == "activation" and function:
        attrs["function"] = function
        base = ln.aten_base(node.target)
        if base.startswith("leaky_relu"):
            attrs["negative_slope"] = float(a.get("negative_slope", 0.01))
        elif base.startswith("hardtanh"):
            attrs["min_val"], attrs["max_val"] = float(a.get("min_val", -1.0)), float(a.get("max_val", 1.0))
            if function == "hardtanh" and (attrs["min_val"], attrs["max_val"]) == (0.0, 6.0):
                attrs["function"] = "relu6"
        elif base.startswith("elu"):
            attrs["alpha"] = float(a.get("alpha", 1.0))
        elif base.startswith("softplus"):
            attrs["beta"], attrs["threshold"] = float(a.get("beta", 1.0)), float(a.get("threshold", 20.0))
        elif base.startswith("gelu"):
            attrs["approximate"] = str(a.get("approximate", "none"))
    return attrs


def _flat_nodes(args: Any) -> Iterator[fx.Node]:
    if isinstance(args, fx.Node):
        yield args
    elif isinstance(args, (list, tuple)):
        for a in args:
            yield from _flat_nodes(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _flat_nodes(a)


def _is_tensor_node(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor) and n.op != "get_attr"


class _LayerNodes:
    """Which fx nodes hold a layer's output and input."""

    def __init__(self, output: fx.Node, input: fx.Node | None) -> None:
        self.output, self.input = output, input


def _frames(n: fx.Node) -> tuple[lt.Frame, ...]:
    """The module calls of a node, outermost first; ``path@N`` keys mark the N-th repeated call."""
    frames = []
    for key, (path, cls) in (n.meta.get("nn_module_stack") or {}).items():
        if path == _EMPTY_STACK:
            continue
        call = re.search(r"@(\d+)$", str(key))
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        frames.append(lt.Frame(path, ln.short_class(cls_name), int(call.group(1)) if call else 0))
    return tuple(frames)


def _carries_tensors(n: fx.Node) -> bool:
    """A tensor or a tuple of tensors (an LSTM's results), not a symbolic size."""
    val = n.meta.get("val")
    return isinstance(val, torch.Tensor) or (
        isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val)
    )


def _op_record(n: fx.Node, state: Mapping[str, torch.Tensor]) -> lt.OpRecord:
    base = ln.aten_base(n.target)
    fn = ln.ACTIVATION_BY_ATEN.get(base) if _is_tensor_node(n) else None
    op_kind = "activation" if fn else ln.KIND_BY_ATEN.get(base)
    args = list(_flat_nodes((n.args, n.kwargs)))
    weights = {
        a.target: lt.Weight(state[a.target].detach().cpu().numpy().copy())
        for a in args
        if a.op == "get_attr" and a.target in state and state[a.target].is_floating_point()
    }
    return lt.OpRecord(
        id=n.name,
        op_type=base,
        stack=_frames(n),
        inputs=[a.name for a in args if a.op != "get_attr" and _carries_tensors(a)],
        outputs=[n.name],
        op_kind=op_kind,
        function=fn,
        source=n.name,
        weights=weights,
        attrs=_attrs_from_node(op_kind, n, fn) if op_kind else {},
    )


def describe_fx_graph(
    graph: fx.Graph, state: Mapping[str, torch.Tensor], fmt: str
) -> tuple[ModelGraph, dict[str, _LayerNodes], list[fx.Node], list[fx.Node]]:
    """Layer table from an exported graph's ``nn_module_stack`` (layer_table); also the nodes behind each layer."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    out_node = next(n for n in graph.nodes if n.op == "output")
    flat_outputs = list(_flat_nodes(out_node.args[0]))
    compute = [n for n in graph.nodes if n.op == "call_function"]
    by_name = {n.name: n for n in graph.nodes}
    shapes = {n.name: _shape(n.meta["val"]) for n in placeholders + compute if _is_tensor_node(n)}
    table = lt.build_layer_table(
        [_op_record(n, state) for n in compute],
        [p.name for p in placeholders],
        [n.name for n in flat_outputs],
        shapes,
    )
    layer_nodes = {
        name: _LayerNodes(by_name[v.output], by_name[v.input] if v.input else None) for name, v in table.values.items()
    }
    in_specs = [
        TensorSpec(p.name, _kserve(p.meta["val"].dtype), _shape(p.meta["val"]))
        for p in placeholders
        if isinstance(p.meta.get("val"), torch.Tensor)
    ]
    out_names = ["output"] if len(flat_outputs) == 1 else [f"output_{i}" for i in range(len(flat_outputs))]
    out_specs = [
        TensorSpec(nm, _kserve(n.meta["val"].dtype), _shape(n.meta["val"]))
        for nm, n in zip(out_names, flat_outputs)
        if isinstance(n.meta.get("val"), torch.Tensor)
    ]
    return ModelGraph(fmt, in_specs, out_specs, table.layers), layer_nodes, placeholders, flat_outputs


# --- TorchScript and pickled modules: records from named_modules -------------------------------


def _module_attrs(kind: str, cls: str, m: torch.nn.Module) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if kind == "conv":
        for key in ("stride", "padding", "dilation", "groups"):
            with contextlib.suppress(Exception):
                attrs[key] = _tuple(getattr(m, key))
    elif kind == "norm":
        with contextlib.suppress(Exception):
            attrs["eps"] = float(m.eps)
    elif kind == "activation":
        attrs["function"] = ln.ACTIVATION_BY_CLASS[cls]
        for key in ("negative_slope", "min_val", "max_val", "alpha", "beta", "threshold", "approximate"):
            with contextlib.suppress(Exception):
                val = getattr(m, key)
                if isinstance(val, (int, float, str)):
                    attrs[key] = val
    return attrs


#: Module classes whose output rank the class fixes (ConvNd, 2d/3d norms and pools): N + 2.
_RANK_OF_CLASS = re.compile(r"^(?:Conv(?:Transpose)?([123])d|(?:BatchNorm|InstanceNorm|\w*Pool)([23])d)$")


def _rank_hint(cls: str) -> tuple[None, ...] | None:
    """An output shape of unknown dims whose rank the module class fixes (nothing was traced)."""
    m = _RANK_OF_CLASS.match(cls)
    return (None,) * (int(m.group(1) or m.group(2)) + 2) if m else None


def _ancestry(path: str) -> list[str]:
    """``a.b.c`` -> ``['', 'a', 'a.b', 'a.b.c']``: the module calls around a leaf, outermost first."""
    parts = path.split(".") if path else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def _module_records(root: torch.nn.Module) -> tuple[list[lt.OpRecord], dict[str, torch.nn.Module]]:
    """One record per leaf module (an attention or recurrent module whole), chained in definition order.

    Between two modules an opaque ``forward`` record stands for the untraced code of ``forward()``:
    it wires the layers together without claiming the next module's input shape. Also returns
    the module behind each layer's output value, for forward hooks.
    """
    records: list[lt.OpRecord] = []
    modules: dict[str, torch.nn.Module] = {}
    classes: dict[str, str] = {}
    whole: list[str] = []  # attention and recurrent modules own their children (out_proj is a module)
    for path, m in root.named_modules():
        cls = ln.short_class(getattr(m, "original_name", None) or type(m).__name__)
        classes[path] = cls
        if any(path != w and (not w or path.startswith(w + ".")) for w in whole):
            continue
        kind = ln.kind_of_class(cls)
        atomic = kind in ("attention", "recurrent")
        if atomic:
            whole.append(path)
        elif any(True for _ in m.children()):
            continue
        prefix = path + "." if path else ""
        named = list(m.named_parameters(recurse=atomic)) + list(m.named_buffers(recurse=atomic))
        output = f"{path}:output"
        # what forward() does between two module calls was not traced: an opaque step, not a layer
        glue = lt.OpRecord(
            f"{path}:forward", "forward", (), [records[-1].outputs[0] if records else "input"], [f"{path}:input"]
        )
        records += [
            glue,
            lt.OpRecord(
                id=path,
                op_type=cls,
                stack=tuple(lt.Frame(p, classes[p]) for p in _ancestry(path)),
                inputs=glue.outputs,
                outputs=[output],
                op_kind=None if kind == "other" else kind,
                function=ln.ACTIVATION_BY_CLASS.get(cls),
                source=path,
                weights={
                    prefix + k: lt.Weight(v.detach().cpu().numpy().copy()) for k, v in named if v.is_floating_point()
                },
                attrs=_module_attrs(kind, cls, m),
            ),
        ]
        modules[output] = m
    return records, modules


def describe_modules(root: torch.nn.Module, fmt: str) -> tuple[ModelGraph, dict[str, torch.nn.Module]]:
    """A layer table from leaf modules, through the shared builder; also the module behind each layer.

    Nothing was traced: no call sites (a reused module is one layer), no shapes beyond the rank a
    module class fixes, and inputs chained in definition order.
    """
    records, by_output = _module_records(root)
    shapes = {r.outputs[0]: hint for r in records if r.stack and (hint := _rank_hint(r.stack[-1].cls))}
    table = lt.build_layer_table(records, ["input"], [records[-1].outputs[0]] if records else [], shapes)
    modules = {name: by_output[v.output] for name, v in table.values.items()}
    params = [p for p in root.parameters() if p.is_floating_point()]
    dtype = _kserve(params[0].dtype) if params else "FP32"
    # The input shape is unknowable without tracing: shape () means "not checked" (dtype still is).
    return ModelGraph(fmt, [TensorSpec("input", dtype, ())], [TensorSpec("output", dtype, ())], table.layers), modules
