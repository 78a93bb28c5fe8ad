"""ONNX backend through onnxruntime.

Layers: for models from the torch dynamo exporter, nodes carry the torch module path
(``pkg.torch.onnx.name_scopes``) and aten op (``pkg.torch.onnx.class_hierarchy``); layers are
then built with the same rules as the .pt2 backend (layer_naming), so names agree across formats,
and weights are the initializers named ``<module>.<param>`` (the exporter keeps them in PyTorch
layout, with explicit Transpose nodes). Other ONNX models get one layer per significant node,
named by node name, with weights converted to PyTorch layout (Gemm transB/alpha/beta, MatMul
``[in, out]`` -> ``W[out, in]``).

Capture adds the requested values as graph outputs of a session built for that capture set
(cached); onnxruntime keeps graph outputs through its optimisations, so the remaining graph
is optimised as usual. Loading refuses external data outside the model's directory and
operators from custom domains (which would need custom-op libraries).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
from deepscope.dtypes import kserve_dtype
from onnx import helper, numpy_helper

from ..errors import InvalidInput, near_matches
from ..model_graph import Layer, ModelGraph, TensorSpec
from . import layer_naming as ln
from .base import Backend, CaptureRequest, RunOutput
from .inputs import validate_inputs
from .onnx_safety import DEFAULT_DOMAINS, check_domains, check_external_data, load_external_data, parse

_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASSES = "pkg.torch.onnx.class_hierarchy"
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
    """Where a PyTorch-layout weight lives in the ONNX model and how to convert it back."""

    def __init__(self, initializer: str, to_onnx: Callable[[np.ndarray], np.ndarray]) -> None:
        self.initializer, self.to_onnx = initializer, to_onnx


def _op_weights(node: onnx.NodeProto, inits: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, _WeightRef]]:
    """PyTorch-layout weights of one ONNX node, with the inverse conversion for run_with_weights."""
    ins = list(node.input) + [""] * 5
    a = _attrs(node)
    w: dict[str, np.ndarray] = {}
    refs: dict[str, _WeightRef] = {}

    def take(key: str, name: str, fwd: Callable = Identity, inv: Callable = Identity) -> None:  # type: ignore[type-arg]
        if name in inits:
            w[key] = np.asarray(fwd(inits[name]), dtype=np.float32 if inits[name].dtype != np.float64 else np.float64)
            refs[key] = _WeightRef(name, inv)

    op = node.op_type
    if op == "Gemm" and not a.get("transA", 0) and ins[1] in inits:
        alpha, beta, trans_b = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)), int(a.get("transB", 0))
        take("weight", ins[1], (lambda b: alpha * b) if trans_b else (lambda b: alpha * b.T),
             (lambda W: W / alpha) if trans_b else (lambda W: (W / alpha).T))
        c = inits.get(ins[2])
        if c is not None and c.ndim >= 1 and c.size == c.shape[-1]:
            c_shape = c.shape
            take("bias", ins[2], lambda c: beta * c.reshape(-1), lambda b: (b / beta).reshape(c_shape))
    elif op == "MatMul" and ins[1] in inits and inits[ins[1]].ndim == 2:
        take("weight", ins[1], lambda b: b.T, lambda W: W.T)
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
    return w, refs


def _op_attrs(kind: str, node: onnx.NodeProto, function: str | None, inits: Mapping[str, np.ndarray]) -> dict[str, Any]:
    a = _attrs(node)
    out: dict[str, Any] = {}
    if kind == "conv":
        k = len(a.get("kernel_shape", [])) or max(len(a.get("strides", [])), 2)
        pads = list(a.get("pads", [0] * (2 * k)))
        begin, end = pads[: len(pads) // 2], pads[len(pads) // 2:]
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


class _Group:
    def __init__(self, name: str, cls: str, function: str | None) -> None:
        self.name, self.cls, self.function = name, cls, function
        self.nodes: list[onnx.NodeProto] = []


class OnnxBackend(Backend):
    """An ONNX model run by onnxruntime, with capture of any layer's input or output."""

    format: ClassVar[str] = "onnx"

    def __init__(self, model: onnx.ModelProto, device: str, name: str = "model") -> None:
        self._model = model
        self._providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self._inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self._consts: dict[str, Any] = {}
        self._const_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
                self._consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self._types = self._value_types(model)
        self.graph, self._values, self._refs = self._describe(model)
        self._cache: dict[tuple[str, ...], ort.InferenceSession] = {}
        session = self._session(())
        actual = session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in actual else "cpu"
        if device.startswith("cuda") and self.device != "cuda" and device != "cuda?":
            raise InvalidInput(f"device '{device}' requested but onnxruntime could not use CUDA (providers: {actual})")

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str = "auto",
        trusted: bool = False,
        allowed_domains: Sequence[str] | None = None,
    ) -> OnnxBackend:
        path = Path(path)
        model = parse(path)
        if not model.graph.node and not model.graph.output:
            raise InvalidInput(f"'{path.name}' is not a valid ONNX model: empty graph")
        check_domains(model, DEFAULT_DOMAINS | set(allowed_domains or ()))  # graphs, subgraphs, functions
        load_external_data(model, path.parent)  # every tensor, sparse ones too; only inside path.parent
        if device == "auto":
            import torch  # the server depends on torch; it is the one authority on CUDA presence

            want = "cuda?" if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        elif device == "cpu" or device.startswith("cuda"):
            want = device
        else:
            raise InvalidInput(f"unknown device '{device}'; valid: auto, cpu, cuda")
        return cls(model, want, path.stem)

    @staticmethod
    def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - inference is best effort (e.g. > 2 GiB models)
            inferred = model
        g = inferred.graph
        return {vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}

    # --- description -----------------------------------------------------------------------
    def _is_float(self, value: str) -> bool:
        t = self._types.get(value)
        return t is not None and _elem_dtype(t) in ("FP32", "FP64", "FP16", "BF16")

    def _shape(self, value: str) -> tuple[int | None, ...]:
        t = self._types.get(value)
        dims = _dims(t) if t is not None else None
        return dims if dims is not None else ()

    def _groups(self, model: onnx.ModelProto) -> list[_Group]:
        """Nodes grouped into layers: torch module paths when the exporter recorded them, else one per node."""
        nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        metas = {id(n): _meta(n) for n in nodes}
        with_meta = [n for n in nodes if metas[id(n)] is not None]
        groups: dict[str, _Group] = {}
        if with_meta and len(with_meta) >= 0.5 * len(nodes):
            stacks = {}
            for n in with_meta:
                scopes, classes = metas[id(n)]  # type: ignore[misc]
                if scopes[0] == _EMPTY_STACK:
                    continue
                stacks[id(n)] = [(p, ln.short_class(c)) for p, c in zip(scopes[:-1], classes[:-1]) if p]
            class_of = {p: c for st in stacks.values() for p, c in st}
            leaves = {p for p in ln.leaf_paths(tuple(p for p, _ in st) for st in stacks.values())
                      if class_of[p] not in ln.SKIPPED_CLASSES}
            namer = ln.FunctionalNamer(leaves)
            fx_names: dict[tuple[str, str], str] = {}
            for n in with_meta:
                if id(n) not in stacks:
                    continue
                st = stacks[id(n)]
                scopes, classes = metas[id(n)]  # type: ignore[misc]
                inner = st[-1][0] if st else ""
                if inner in leaves:
                    groups.setdefault(inner, _Group(inner, class_of[inner], ln.ACTIVATION_BY_CLASS.get(class_of[inner]))).nodes.append(n)
                elif fn := ln.ACTIVATION_BY_ATEN.get(ln.aten_base(classes[-1])):
                    key = (inner, scopes[-1])
                    if key not in fx_names:
                        fx_names[key] = namer.name(inner, fn)
                        groups[fx_names[key]] = _Group(fx_names[key], "", fn)
                    groups[fx_names[key]].nodes.append(n)
            return list(groups.values())
        taken: set[str] = set()
        for i, n in enumerate(nodes):
            op = n.op_type
            if op in ln.ACTIVATION_BY_ONNX_OP:
                fn: str | None = ln.ACTIVATION_BY_ONNX_OP[op]
            elif op in ln.KIND_BY_ONNX_OP:
                fn = None
                if op == "MatMul" and not any(x in self._inits for x in n.input):
                    continue
                if op == "Gather" and n.input[0] not in self._inits:
                    continue
            else:
                continue
            name = n.name or f"{op}_{i}"
            while name in taken:
                name += "_"
            taken.add(name)
            g = _Group(name, "", fn)
            g.nodes.append(n)
            groups[name] = g
        return list(groups.values())

    def _describe(self, model: onnx.ModelProto) -> tuple[ModelGraph, dict[str, tuple[str, str | None]], dict[str, dict[str, _WeightRef]]]:
        g = model.graph
        init_names = set(self._inits)
        graph_inputs = [vi for vi in g.input if vi.name not in init_names]
        graph_outputs = {vi.name for vi in g.output}
        producer = {o: n for n in g.node for o in n.output}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        groups = self._groups(model)
        node_layer = {id(n): grp.name for grp in groups for n in grp.nodes}

        def data_value(v: str) -> bool:
            if not v or v in init_names or v in self._const_outputs:
                return False
            return self._is_float(v) or v in {vi.name for vi in graph_inputs}

        values: dict[str, tuple[str, str | None]] = {}
        ext_inputs: dict[str, list[str]] = {}
        for grp in groups:
            members = {id(n) for n in grp.nodes}
            outs = [o for n in grp.nodes for o in n.output
                    if o and (o in graph_outputs or any(id(c) not in members for c in consumers.get(o, [])))
                    and (self._is_float(o) or o in graph_outputs)]
            ext: list[str] = []
            for n in grp.nodes:
                for v in n.input:
                    if data_value(v) and (v not in producer or id(producer[v]) not in members) and v not in ext:
                        ext.append(v)
            if not outs:
                outs = [grp.nodes[-1].output[0]]
            values[grp.name] = (outs[-1], ext[0] if ext else None)
            ext_inputs[grp.name] = ext

        input_names = {vi.name for vi in graph_inputs}
        cache: dict[str, list[str]] = {}

        def feeders(v: str) -> list[str]:
            if v in cache:
                return cache[v]
            cache[v] = []
            if v in input_names:
                res = [v]
            elif v in producer and id(producer[v]) in node_layer:
                res = [node_layer[id(producer[v])]]
            elif v in producer:
                res = []
                for i in producer[v].input:
                    if i and i not in init_names and i not in self._const_outputs:
                        res += [r for r in feeders(i) if r not in res]
            else:
                res = []
            cache[v] = res
            return res

        layers: list[Layer] = []
        refs: dict[str, dict[str, _WeightRef]] = {}
        channels_first: dict[str, bool] = {}
        for grp in groups:
            kind = "activation" if grp.function else (ln.kind_of_class(grp.cls) if grp.cls else
                                                       ln.KIND_BY_ONNX_OP.get(grp.nodes[0].op_type, "other"))
            prefix = grp.name + "."
            weights: dict[str, np.ndarray] = {}
            wrefs: dict[str, _WeightRef] = {}
            for n in grp.nodes:  # exporter-named parameters: already in PyTorch layout
                for v in n.input:
                    if v in self._inits and v.startswith(prefix) and self._inits[v].dtype.kind == "f":
                        weights[v[len(prefix):]] = self._inits[v].copy()
                        wrefs[v[len(prefix):]] = _WeightRef(v, Identity)
            main = self._main_node(grp, kind)
            if not weights and kind != "activation":
                weights, wrefs = _op_weights(main, self._inits)
            refs[grp.name] = wrefs
            out_v, _ = values[grp.name]
            inputs: list[str] = []
            for v in ext_inputs[grp.name]:
                inputs += [r for r in feeders(v) if r not in inputs and r != grp.name]
            out_shape = self._shape(out_v)
            cf = any(channels_first.get(i, False) for i in inputs)
            axis = ln.channel_axis(kind, grp.cls, len(out_shape) if out_shape else None, cf)
            channels_first[grp.name] = axis == 1
            attrs = _op_attrs(kind, main, grp.function, {**self._inits, **self._consts})
            if grp.cls:
                attrs["torch_class"] = grp.cls
            layers.append(Layer(
                name=grp.name, kind=kind, inputs=inputs,
                op_type=grp.cls if kind == "attention" and grp.cls else main.op_type,
                input_shapes=[self._shape(v) for v in ext_inputs[grp.name]], output_shapes=[out_shape],
                weights=weights, attrs=attrs, channel_axis=axis,
            ))
        in_specs = [TensorSpec(vi.name, _elem_dtype(vi.type), _dims(vi.type) or ()) for vi in graph_inputs]
        out_specs = [TensorSpec(vi.name, _elem_dtype(vi.type), _dims(self._types.get(vi.name, vi.type)) or ())
                     for vi in g.output]
        return ModelGraph(self.format, in_specs, out_specs, layers), values, refs

    @staticmethod
    def _main_node(grp: _Group, kind: str) -> onnx.NodeProto:
        """The node that defines the layer (Conv, Gemm, Relu...), for attributes and op_type."""
        for n in grp.nodes:
            if kind == "activation" and n.op_type in ln.ACTIVATION_BY_ONNX_OP:
                return n
            if kind != "activation" and ln.KIND_BY_ONNX_OP.get(n.op_type) == kind:
                return n
        return grp.nodes[-1]

    # --- running ---------------------------------------------------------------------------
    def _session(self, extra: tuple[str, ...], model: onnx.ModelProto | None = None) -> ort.InferenceSession:
        cacheable = model is None
        if cacheable and extra in self._cache:
            return self._cache[extra]
        model = model if model is not None else self._model
        if extra:
            m = onnx.ModelProto()
            m.CopyFrom(model)
            existing = {o.name for o in m.graph.output}
            for v in extra:
                if v not in existing:
                    t = self._types.get(v)
                    vi = helper.make_value_info(v, t) if t is not None else helper.make_empty_tensor_value_info(v)
                    m.graph.output.append(vi)
            model = m
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        threads = int(os.environ.get("DEEPSCOPE_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(model.SerializeToString(), opts, providers=self._providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise InvalidInput(f"onnxruntime cannot load this model: {exc}") from None
        if cacheable:
            self._cache[extra] = session
        return session

    def _resolve(self, capture: Sequence[CaptureRequest]) -> dict[CaptureRequest, str]:
        wanted: dict[CaptureRequest, str] = {}
        for req in capture:
            self.graph.layer(req.layer)  # NotFound with near matches
            if req.what not in ("output", "input"):
                raise InvalidInput(f"capture of '{req.layer}': what must be 'output' or 'input', got '{req.what}'")
            out_v, in_v = self._values[req.layer]
            value = out_v if req.what == "output" else in_v
            if value is None:
                raise InvalidInput(f"layer '{req.layer}' has no tensor input to capture")
            wanted[req] = value
        return wanted

    def _run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest],
             model: onnx.ModelProto | None = None) -> RunOutput:
        arrays = validate_inputs(self.graph.inputs, inputs)
        wanted = self._resolve(capture)
        out_names = [s.name for s in self.graph.outputs]
        extra = tuple(sorted({v for v in wanted.values() if v not in arrays and v not in out_names}))
        session = self._session(extra, model)
        names = out_names + list(extra)
        try:
            results = session.run(names, arrays)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"model failed on this input: {exc}") from None
        by_name = dict(zip(names, results))
        captured: dict[CaptureRequest, np.ndarray] = {}
        for req, value in wanted.items():
            if value in arrays:
                captured[req] = arrays[value].copy()
            elif value in by_name and by_name[value] is not None:
                captured[req] = by_name[value]
            else:
                raise InvalidInput(f"capture of layer '{req.layer}' ({req.what}, value '{value}') returned nothing")
        return RunOutput({n: by_name[n] for n in out_names}, captured)

    def run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        return self._run(inputs, capture)

    def run_with_weights(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, Mapping[str, np.ndarray]],
        capture: Sequence[CaptureRequest] = (),
    ) -> RunOutput:
        """Rebuild a session with replaced initializers (converted back to ONNX layout); nothing is cached."""
        replaced: dict[str, np.ndarray] = {}
        for lname, tensors in weights.items():
            layer = self.graph.layer(lname)
            for key, arr in tensors.items():
                ref = self._refs[lname].get(key)
                if ref is None:
                    raise InvalidInput(
                        f"layer '{lname}' has no weight '{key}'{near_matches(key, layer.weights)}; "
                        f"weights: {', '.join(layer.weights) or 'none'}"
                    )
                if tuple(np.shape(arr)) != layer.weights[key].shape:
                    raise InvalidInput(
                        f"weight '{lname}.{key}': expected shape {list(layer.weights[key].shape)} "
                        f"(PyTorch layout), got {list(np.shape(arr))}"
                    )
                original = self._inits[ref.initializer]
                replaced[ref.initializer] = np.ascontiguousarray(ref.to_onnx(np.asarray(arr))).astype(original.dtype)
        m = onnx.ModelProto()
        m.CopyFrom(self._model)
        for i, t in enumerate(m.graph.initializer):
            if t.name in replaced:
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(replaced[t.name], t.name))
        return self._run(inputs, capture, model=m)

    def close(self) -> None:
        self._cache.clear()


__all__ = ["DEFAULT_DOMAINS", "OnnxBackend", "check_domains", "check_external_data"]
