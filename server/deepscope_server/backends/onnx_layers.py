"""How an ONNX model is described: its layer table, in PyTorch layout and names where the exporter left them.

Layers: every node becomes a neutral record for the shared builder (layer_table). For models
from the torch dynamo exporter, nodes carry the torch module path (``pkg.torch.onnx.name_scopes``)
and aten op (``pkg.torch.onnx.class_hierarchy``), so layers get the same call-site names as in
.pt2; weights are converted to PyTorch layout from the operator (Gemm transB/alpha/beta, MatMul
``[in, out]`` -> ``W[out, in]``, LSTM/GRU/RNN gate order) and named after the torch parameter the
exporter recorded (initializer name, or the fx node's ``%p_...`` arguments). The exporter's
default optimiser folds BatchNorm into the preceding Conv: that Conv keeps the conv's name (from
its weight initializer) and says ``bn_folded``. Other ONNX models get one layer per significant
node, named by node name (MatMul + bias Add as one linear layer).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from deepscope.dtypes import kserve_dtype

from ..model_graph import ModelGraph, TensorSpec
from . import layer_naming as ln
from . import layer_table as lt

_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASSES = "pkg.torch.onnx.class_hierarchy"
_FX_NODE = "pkg.torch.onnx.fx_node"
_EMPTY_STACK = "_empty_nn_module_stack_from_metadata_hook"

Identity: Callable[[np.ndarray], np.ndarray] = lambda a: a  # noqa: E731


def _dims(type_proto: onnx.TypeProto) -> tuple[int | None, ...] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim)


def _elem_dtype(type_proto: onnx.TypeProto) -> str:
    try:
        return kserve_dtype(helper.tensor_dtype_to_np_dtype(type_proto.tensor_type.elem_type))
    except (KeyError, ValueError, TypeError):
        return "UNKNOWN"


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _meta(node: onnx.NodeProto) -> tuple[list[str], list[str]] | None:
    props = {p.key: p.value for p in node.metadata_props}
    if _SCOPES not in props or _CLASSES not in props:
        return None
    try:
        scopes, classes = ast.literal_eval(props[_SCOPES]), ast.literal_eval(props[_CLASSES])
    except (ValueError, SyntaxError):
        return None
    if len(scopes) != len(classes) or not scopes:
        return None
    return list(scopes), list(classes)


class _WeightRef:
    """Where a PyTorch-layout weight lives in the ONNX model and how to write it back.

    ``write(W, current)`` returns the initializer's new value with ``W`` (PyTorch layout) in
    place; recurrent gates write a slice, so several weights can share one initializer.
    """

    def __init__(self, initializer: str, write: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.initializer, self.write = initializer, write


def _whole(inverse: Callable[[np.ndarray], np.ndarray] = Identity) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda W, _current: inverse(W)


#: ONNX gate order -> PyTorch gate order (LSTM: iofc -> ifgo; GRU: zrh -> rzn).
_GATES = {"LSTM": (4, (0, 2, 3, 1)), "GRU": (3, (1, 0, 2)), "RNN": (1, (0,))}


def _gate_rows(op: str, hidden: int) -> np.ndarray:
    """Row indices taking ONNX-ordered gate blocks to PyTorch order (its own inverse is argsort)."""
    _, order = _GATES[op]
    return np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in order])


def _recurrent_weights(
    node: onnx.NodeProto, inits: Mapping[str, np.ndarray], layer: int
) -> dict[str, tuple[np.ndarray, _WeightRef]]:
    """PyTorch ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (``_reverse``) of an LSTM/GRU/RNN node."""
    ins = list(node.input) + [""] * 4
    out: dict[str, tuple[np.ndarray, _WeightRef]] = {}
    if ins[1] not in inits or ins[2] not in inits:
        return out
    hidden = int(_attrs(node).get("hidden_size", inits[ins[2]].shape[-1]))
    rows = _gate_rows(node.op_type, hidden)
    gates = len(rows)
    for d in range(inits[ins[1]].shape[0]):
        sfx = f"_l{layer}" + ("_reverse" if d else "")

        def put(key: str, name: str, index: tuple) -> None:  # type: ignore[type-arg]
            def write(W: np.ndarray, current: np.ndarray, index: tuple = index) -> np.ndarray:  # type: ignore[type-arg]
                new = current.copy()
                new[index] = np.asarray(W)[np.argsort(rows)]
                return new

            out[key] = (np.asarray(inits[name][index])[rows].copy(), _WeightRef(name, write))

        put("weight_ih" + sfx, ins[1], (d,))
        put("weight_hh" + sfx, ins[2], (d,))
        if ins[3] in inits:
            put("bias_ih" + sfx, ins[3], (d, slice(0, gates)))
            put("bias_hh" + sfx, ins[3], (d, slice(gates, 2 * gates)))
    return out


def _op_weights(
    node: onnx.NodeProto, inits: Mapping[str, np.ndarray], transposed: Mapping[str, str]
) -> dict[str, tuple[str, np.ndarray, _WeightRef]]:
    """PyTorch-layout weights of one ONNX node by role (weight, bias, ...): (initializer, array, ref).

    ``transposed`` maps outputs of ``Transpose(initializer)`` nodes to the initializer.
    """
    ins = list(node.input) + [""] * 5
    a = _attrs(node)
    w: dict[str, tuple[str, np.ndarray, _WeightRef]] = {}

    def take(key: str, name: str, fwd: Callable = Identity, inv: Callable = Identity) -> None:  # type: ignore[type-arg]
        if name in inits and inits[name].dtype.kind == "f":
            arr = np.asarray(fwd(inits[name]), dtype=inits[name].dtype)
            w[key] = (name, arr, _WeightRef(name, _whole(inv)))

    op = node.op_type
    if op == "Gemm" and not a.get("transA", 0) and ins[1] in inits:
        alpha, beta, trans_b = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)), int(a.get("transB", 0))
        take(
            "weight",
            ins[1],
            (lambda b: alpha * b) if trans_b else (lambda b: alpha * b.T),
            (lambda W: W / alpha) if trans_b else (lambda W: (W / alpha).T),
        )
        c = inits.get(ins[2])
        if c is not None and c.ndim >= 1 and c.size == c.shape[-1]:
            c_shape = c.shape
            take("bias", ins[2], lambda c: beta * c.reshape(-1), lambda b: (b / beta).reshape(c_shape))
    elif op == "MatMul" and ins[1] in transposed:  # MatMul(x, Transpose(W)): W is already [out, in]
        take("weight", transposed[ins[1]])
    elif op == "MatMul" and ins[1] in inits and inits[ins[1]].ndim == 2:
        take("weight", ins[1], lambda b: b.T, lambda W: W.T)
    elif op == "Add" and sum(i in inits for i in ins[:2]) == 1:  # the bias of a MatMul(+Add) Linear
        name = ins[0] if ins[0] in inits else ins[1]
        if inits[name].ndim == 1:
            take("bias", name)
    elif op in ("Conv", "ConvTranspose"):
        take("weight", ins[1])
        take("bias", ins[2])
    elif op == "BatchNormalization":
        for key, name in zip(("weight", "bias", "running_mean", "running_var"), ins[1:5]):
            take(key, name)
    elif op in ("LayerNormalization", "InstanceNormalization", "GroupNormalization"):
        take("weight", ins[1])
        take("bias", ins[2])
    elif op == "Gather" and ins[0] in inits:
        take("weight", ins[0])
    return w


def _op_attrs(kind: str, node: onnx.NodeProto, function: str | None, inits: Mapping[str, np.ndarray]) -> dict[str, Any]:
    a = _attrs(node)
    out: dict[str, Any] = {}
    if kind == "conv":
        k = len(a.get("kernel_shape", [])) or max(len(a.get("strides", [])), 2)
        pads = list(a.get("pads", [0] * (2 * k)))
        begin, end = pads[: len(pads) // 2], pads[len(pads) // 2 :]
        out["stride"] = tuple(int(s) for s in a.get("strides", [1] * k))
        if begin == end:
            out["padding"] = tuple(int(p) for p in begin)
        else:
            out["pads"] = tuple(int(p) for p in pads)  # asymmetric: ONNX order (begins..., ends...)
        if isinstance(a.get("auto_pad"), bytes) and a["auto_pad"] not in (b"NOTSET", b""):
            out["auto_pad"] = a["auto_pad"].decode()
        out["dilation"] = tuple(int(d) for d in a.get("dilations", [1] * k))
        out["groups"] = int(a.get("group", 1))
    elif kind == "norm":
        out["eps"] = float(str(np.float32(a.get("epsilon", 1e-5))))  # 1e-05, not 9.99999974e-06
    elif kind == "pool":
        if "kernel_shape" in a:
            out["kernel_size"] = tuple(int(x) for x in a["kernel_shape"])
            out["stride"] = tuple(int(x) for x in a.get("strides", [1] * len(a["kernel_shape"])))
            pads = list(a.get("pads", [0] * 2 * len(a["kernel_shape"])))
            out["padding"] = tuple(int(p) for p in pads[: len(pads) // 2])
    elif kind == "activation" and function:
        out["function"] = function
        op = node.op_type
        if op == "LeakyRelu":
            out["negative_slope"] = float(a.get("alpha", 0.01))
        elif op == "Elu":
            out["alpha"] = float(a.get("alpha", 1.0))
        elif op == "Gelu":
            ap = a.get("approximate", b"none")
            out["approximate"] = ap.decode() if isinstance(ap, bytes) else str(ap)
        elif op == "Clip":
            ins = list(node.input) + ["", ""]
            lo = float(inits[ins[1]]) if ins[1] in inits else float("-inf")
            hi = float(inits[ins[2]]) if ins[2] in inits else float("inf")
            out["min_val"], out["max_val"] = lo, hi
            if (lo, hi) == (0.0, 6.0):
                out["function"] = "relu6"
    return out


_PARAM_TOKEN = re.compile(r"%([pb]_\w+)")


def _torch_param_keys(node: onnx.NodeProto, path: str) -> list[str]:
    """Parameter names (relative to module ``path``) the torch op behind ``node`` used, from its fx_node text."""
    text = next((p.value for p in node.metadata_props if p.key == _FX_NODE), "")
    mangled = path.replace(".", "_") + "_" if path else ""
    keys = []
    for token in _PARAM_TOKEN.findall(text):
        rest = token[2:]
        if rest.startswith(mangled):
            rest = rest[len(mangled) :]
            keys.append("out_proj." + rest[9:] if rest.startswith("out_proj_") else rest)
    return keys


def _transposed_initializers(model: onnx.ModelProto, inits: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Outputs of ``Transpose`` nodes that swap the axes of a 2-D initializer -> that initializer."""
    return {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Transpose"
        and n.input
        and n.input[0] in inits
        and inits[n.input[0]].ndim == 2
        and list(_attrs(n).get("perm", [1, 0])) == [1, 0]
    }


def _onnx_op_kind(node: onnx.NodeProto, inits: Mapping[str, np.ndarray], transposed: Mapping[str, str]) -> str | None:
    """The layer kind a node implies on its own; MatMul and Gather only with a constant weight."""
    op = node.op_type
    if op in ln.ACTIVATION_BY_ONNX_OP:
        return "activation"
    const_b = len(node.input) > 1 and (
        node.input[1] in transposed or (node.input[1] in inits and inits[node.input[1]].ndim == 2)
    )
    if op == "MatMul" and not const_b:
        return None
    if op == "Gather" and (not node.input or node.input[0] not in inits):
        return None
    kind = ln.KIND_BY_ONNX_OP.get(op)
    return None if kind == "other" else kind


class OnnxDescription:
    """An ONNX model's layer table, the graph values behind each layer (for capture) and where each weight lives."""

    def __init__(self, model: onnx.ModelProto, fmt: str = "onnx") -> None:
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self._consts: dict[str, Any] = {}
        self._const_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
        for node in model.graph.node:  # graph order: a cast's constant input is seen before the cast
            if node.op_type == "Constant" and node.attribute:
                value = onnx.helper.get_attribute_value(node.attribute[0])  # value (a tensor), value_float, ...
                self._consts[node.output[0]] = (
                    numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
                )
            elif node.op_type in ("Cast", "CastLike") and node.input and node.input[0] in self._consts:
                # the unoptimised exporter wraps Clip bounds as CastLike(Constant(value_float), x)
                self._consts[node.output[0]] = self._consts[node.input[0]]
        self.types = self._value_types(model)
        self._input_names = {vi.name for vi in model.graph.input} - set(self.inits)
        self.graph, self.values, self.refs = self._describe(model, fmt)

    @staticmethod
    def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # inference is best effort (e.g. > 2 GiB models)
            inferred = model
        g = inferred.graph
        return {vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}

    def _is_float(self, value: str) -> bool:
        t = self.types.get(value)
        return t is not None and _elem_dtype(t) in ("FP32", "FP64", "FP16", "BF16")

    def _is_data(self, value: str) -> bool:
        """A float tensor or model input: what layers pass on (not weights, constants or shape arithmetic)."""
        if not value or value in self.inits or value in self._const_outputs:
            return False
        return self._is_float(value) or value in self._input_names

    def _shape(self, value: str) -> tuple[int | None, ...]:
        t = self.types.get(value)
        dims = _dims(t) if t is not None else None
        return dims if dims is not None else ()

    def _records(self, model: onnx.ModelProto) -> list[lt.OpRecord]:
        """One neutral record per node: torch module calls from the dynamo exporter's metadata, else one per node."""
        nodes = [n for n in model.graph.node if n.op_type != "Constant" and any(n.output)]  # no output: no data flow
        metas = {id(n): _meta(n) for n in nodes}
        use_meta = sum(m is not None for m in metas.values()) >= 0.5 * len(nodes) > 0
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in nodes:
            for v in n.input:
                consumers.setdefault(v, []).append(n)
        recurrent_seen: dict[tuple[str, str], int] = {}
        transposed = self._transposed = _transposed_initializers(model, self.inits)
        taken: set[str] = set()
        matmul_frame: dict[str, tuple[lt.Frame, ...]] = {}
        records = []
        for i, n in enumerate(nodes):
            op_kind = _onnx_op_kind(n, self.inits, transposed)
            function = ln.ACTIVATION_BY_ONNX_OP.get(n.op_type)
            meta = metas[id(n)] if use_meta else None
            source = n.name or f"{n.op_type}_{i}"
            stack: tuple[lt.Frame, ...] = ()
            if meta is not None and meta[0][0] != _EMPTY_STACK:
                scopes, classes = meta
                stack = tuple(lt.Frame(p, ln.short_class(c), None) for p, c in zip(scopes[:-1], classes[:-1]))
                source = scopes[-1]
                function = ln.ACTIVATION_BY_ATEN.get(ln.aten_base(classes[-1]))
            elif use_meta:
                function = None
            elif op_kind is not None:  # no torch metadata: every significant node is a layer of its own
                name = source
                while name in taken:
                    name += "_"
                taken.add(name)
                stack = (lt.Frame(name, "", 0),)
                if op_kind == "linear" and n.op_type == "MatMul":
                    matmul_frame[n.output[0]] = stack
            elif (
                n.op_type == "Add"
                and any(v in matmul_frame for v in n.input)
                and any(v in self.inits and self.inits[v].ndim == 1 for v in n.input)
            ):
                stack = matmul_frame[next(v for v in n.input if v in matmul_frame)]  # MatMul + bias: one Linear
            path = stack[-1].path if stack else ""
            attrs: dict[str, Any] = {}
            folded = op_kind == "conv" and bool(stack) and ln.kind_of_class(stack[-1].cls) == "norm"
            if folded:  # BatchNorm folded into this Conv by the exporter's optimiser: name it after the conv
                w_name = n.input[1] if len(n.input) > 1 else ""
                conv_path = w_name[: -len(".weight")] if w_name.endswith(".weight") else path
                rank = self.inits[w_name].ndim if w_name in self.inits else 4
                stack = stack[:-1] + (lt.Frame(conv_path, f"Conv{max(rank - 2, 1)}d", None),)
                attrs.update(bn_folded=True, folded_norm=path)
            weights = self._record_weights(n, path, op_kind, folded, consumers, recurrent_seen, source)
            attrs.update(_op_attrs(op_kind, n, function, {**self.inits, **self._consts}) if op_kind else {})
            records.append(
                lt.OpRecord(
                    id=n.name or f"{n.op_type}_{i}",
                    op_type=n.op_type,
                    stack=stack,
                    inputs=[v for v in n.input if self._is_data(v)],
                    reads=[v for v in n.input if v and not self._is_data(v) and v not in self.inits],
                    outputs=[v for v in n.output if v],
                    op_kind=op_kind,
                    function=function,
                    source=source,
                    weights=weights,
                    attrs=attrs,
                )
            )
        return records

    def _record_weights(
        self,
        n: onnx.NodeProto,
        path: str,
        op_kind: str | None,
        folded: bool,
        consumers: Mapping[str, list[onnx.NodeProto]],
        recurrent_seen: dict[tuple[str, str], int],
        source: str,
    ) -> dict[str, lt.Weight]:
        """A node's weights in PyTorch layout, keyed by torch parameter name where the exporter left it."""
        if n.op_type in _GATES:
            k = recurrent_seen.get((path, source), 0)
            recurrent_seen[(path, source)] = k + 1
            return {key: lt.Weight(arr, ref) for key, (arr, ref) in _recurrent_weights(n, self.inits, k).items()}
        roles = _op_weights(n, self.inits, self._transposed)
        torch_keys = [] if folded else _torch_param_keys(n, path)
        prefix = path + "." if path else ""
        out: dict[str, lt.Weight] = {}
        for role, (init, arr, ref) in roles.items():
            if not folded and prefix and init.startswith(prefix):
                key = init  # the exporter kept the parameter's name
            else:
                key = next((k for k in torch_keys if k.endswith(role)), role)
            out[key] = lt.Weight(arr.copy(), ref)
        if prefix and not folded:  # parameters the exporter kept by name and layout, whatever reads them (Slice...)
            for v in n.input:
                if v.startswith(prefix) and v not in out and v in self.inits and self.inits[v].dtype.kind == "f":
                    out[v] = lt.Weight(self.inits[v].copy(), _WeightRef(v, _whole()))
        # A zero bias the optimiser dropped: report the torch parameter (zeros), not writable.
        bias_key = next((k for k in torch_keys if k.endswith("bias")), None)
        weight = next((w for k, w in out.items() if k.endswith("weight")), None)
        feeds_bias_add = any(
            c.op_type == "Add" and any(i in self.inits for i in c.input) for o in n.output for c in consumers.get(o, [])
        )
        if (
            op_kind in ("linear", "conv")
            and bias_key
            and weight is not None
            and not feeds_bias_add
            and not any(k.endswith("bias") for k in out)
        ):
            out[bias_key] = lt.Weight(np.zeros(weight.array.shape[0], weight.array.dtype), None)
        return out

    def _describe(
        self, model: onnx.ModelProto, fmt: str
    ) -> tuple[ModelGraph, dict[str, tuple[str, str | None]], dict[str, dict[str, _WeightRef]]]:
        g = model.graph
        init_names = set(self.inits)
        graph_inputs = [vi for vi in g.input if vi.name not in init_names]
        input_names = {vi.name for vi in graph_inputs}
        values = {v for n in g.node for v in n.output} | input_names
        shapes = {v: self._shape(v) for v in values if v in input_names or self._is_float(v)}
        table = lt.build_layer_table(
            self._records(model),
            [vi.name for vi in graph_inputs],
            [vi.name for vi in g.output],
            shapes,
            class_op_type=False,
        )
        in_specs = [TensorSpec(vi.name, _elem_dtype(vi.type), _dims(vi.type) or ()) for vi in graph_inputs]
        out_specs = [
            TensorSpec(vi.name, _elem_dtype(vi.type), _dims(self.types.get(vi.name, vi.type)) or ()) for vi in g.output
        ]
        layer_values = {name: (v.output, v.input) for name, v in table.values.items()}
        return ModelGraph(fmt, in_specs, out_specs, table.layers), layer_values, table.refs
