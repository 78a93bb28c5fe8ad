"""PyTorch backends: torch.export programs (.pt2), TorchScript (.pt) and trusted pickled modules.

.pt2 is the first-class format: every fx node becomes a neutral record (module calls from
``nn_module_stack``, parameters from its ``get_attr`` arguments) for the builder shared with
ONNX (layer_table: one layer per call site, ``layer1.0.relu@1`` for a module's second call), and capture
returns the requested fx nodes as extra outputs of a copy of ``ep.module()``'s graph (one
compiled GraphModule cached per capture set). Returning existing tensors costs nothing beyond
keeping them alive; a node is cloned only when a later in-place op (``relu_``) would overwrite it.

TorchScript: runs, and describes its modules (not call sites: nothing was traced) and parameters;
attention and recurrent modules are one layer each with all their weights. Intermediate capture is refused
(the compiled graph bypasses Python hooks; re-export with torch.export to .pt2).
Pickled modules execute arbitrary code when loaded: only with ``trusted=True``, then captured
through forward hooks (views, cloned only when the model has in-place modules).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.fx as fx

from deepscope.dtypes import kserve_dtype

from ..errors import InvalidInput
from ..model_graph import Layer, ModelGraph, TensorSpec
from . import layer_naming as ln
from . import layer_table as lt
from .base import Backend, CaptureRequest, RunOutput
from .inputs import no_tensor_input, validate_one_input
from .pt2_safety import load_exported_program

_EMPTY_STACK = "_empty_nn_module_stack_from_metadata_hook"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an unavailable explicit CUDA fails."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device '{device}' requested but CUDA is not available; use 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidInput(f"unknown device '{device}'; valid: auto, cpu, cuda[:N]")
    return device


def _kserve(dtype: torch.dtype) -> str:
    try:
        return kserve_dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    except (TypeError, ValueError):
        return str(dtype).replace("torch.", "").upper()


def _shape(t: Any) -> tuple[int | None, ...]:
    """Static dims as ints, symbolic (dynamic) dims as None."""
    return tuple(d if isinstance(d, int) else None for d in t.shape)


def _to_numpy(t: torch.Tensor, inputs: Sequence[np.ndarray]) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    # A capture that is (a view of) a caller's input must not alias it: arrays are owned.
    if any(np.may_share_memory(arr, a) for a in inputs):
        arr = arr.copy()
    return arr


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


def _mutates(user: fx.Node, node: fx.Node) -> bool:
    """True when ``user`` writes in place into ``node`` (e.g. ``aten.relu_(node)``)."""
    schema = getattr(user.target, "_schema", None)
    if schema is None or not schema.is_mutable:
        return False
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            val = user.args[i] if i < len(user.args) else user.kwargs.get(arg.name)
            if val is node:
                return True
    return False


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


@contextlib.contextmanager
def _replaced_parameters(module: torch.nn.Module, weights: Mapping[str, Mapping[str, np.ndarray]]) -> Iterator[None]:
    """Copy new values into the parameters/buffers in place; restore the originals afterwards."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    try:
        with torch.no_grad():
            for lname, items in weights.items():
                for key, arr in items.items():
                    target = tensors[f"{lname}.{key}"]
                    saved.append((target, target.detach().clone()))
                    target.copy_(torch.as_tensor(np.asarray(arr)).to(dtype=target.dtype, device=target.device))
        yield
    finally:
        with torch.no_grad():
            for target, original in reversed(saved):
                target.copy_(original)


class _TorchModuleBackend(Backend):
    """What every torch format shares: ``_run`` on ``self._module``, and weights swapped in place for a run."""

    _module: torch.nn.Module

    def _replaced_weights(
        self, weights: Mapping[str, Mapping[str, np.ndarray]]
    ) -> contextlib.AbstractContextManager[None]:
        return _replaced_parameters(self._module, weights)


class ExportedProgramBackend(_TorchModuleBackend):
    """A ``torch.export`` program (.pt2): layer table from module metadata, capture as extra graph outputs."""

    format: ClassVar[str] = "pt2"

    def __init__(self, ep: torch.export.ExportedProgram, device: str) -> None:
        self.device = device
        self._module = ep.module().to(device)
        self._graph_src = self._module.graph
        state = dict(self._module.state_dict())
        self.graph, self._layer_nodes, self._placeholders, self._flat_outputs = describe_fx_graph(
            self._graph_src, state, self.format
        )
        self._cache: dict[tuple[tuple[str, str], ...], tuple[fx.GraphModule, list[CaptureRequest]]] = {}

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", trusted: bool = False) -> ExportedProgramBackend:
        """Untrusted archives go through ``pt2_safety`` (no pickle, eval or exec); trusted ones through torch."""
        dev = resolve_device(device)
        if not trusted:
            return cls(load_exported_program(path), dev)
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable archive
            raise InvalidInput(f"cannot load torch.export program '{Path(path).name}': {exc}") from None
        return cls(ep, dev)

    def _capture_module(self, capture: Sequence[CaptureRequest]) -> tuple[fx.GraphModule, list[CaptureRequest]]:
        """A GraphModule returning (outputs..., captured...) for this capture set; cached."""
        reqs = list(dict.fromkeys(capture))
        key = tuple(sorted((r.layer, r.what) for r in reqs))
        if key in self._cache:
            return self._cache[key]
        reqs = [CaptureRequest(layer, what) for layer, what in key]  # type: ignore[arg-type]
        new = fx.Graph()
        val_map: dict[fx.Node, fx.Node] = {}
        new.graph_copy(self._graph_src, val_map)
        extras: list[fx.Node] = []
        cloned: dict[fx.Node, fx.Node] = {}
        for req in reqs:
            nodes = self._layer_nodes[req.layer]
            src = nodes.output if req.what == "output" else nodes.input
            if src is None:
                raise no_tensor_input(req.layer)
            if src not in cloned:
                target = val_map[src]
                if any(_mutates(u, src) for u in src.users):
                    with new.inserting_after(target):
                        target = new.call_function(torch.ops.aten.clone.default, (target,))
                cloned[src] = target
            extras.append(cloned[src])
        new.output(tuple([val_map[n] for n in self._flat_outputs] + extras))
        gm = fx.GraphModule(self._module, new)
        self._cache[key] = (gm, reqs)
        return gm, reqs

    def _run(self, inputs: dict[str, np.ndarray], capture: Sequence[CaptureRequest]) -> RunOutput:
        gm, reqs = self._capture_module(capture)
        tensors = [torch.from_numpy(inputs[p.name]).to(self.device) for p in self._placeholders]
        try:
            with torch.inference_mode():
                result = gm(*tensors)
        except RuntimeError as exc:
            raise InvalidInput(f"model failed on this input: {exc}") from None
        n_out = len(self._flat_outputs)
        given = list(inputs.values())
        outputs = {spec.name: _to_numpy(t, given) for spec, t in zip(self.graph.outputs, result[:n_out])}
        captured = {req: _to_numpy(t, given) for req, t in zip(reqs, result[n_out:])}
        return RunOutput(
            outputs, {CaptureRequest(r.layer, r.what): captured[CaptureRequest(r.layer, r.what)] for r in capture}
        )

    def close(self) -> None:
        self._cache.clear()


# --- TorchScript and pickled modules: layer table from named_modules -------------------------


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


def describe_modules(root: torch.nn.Module, fmt: str) -> tuple[ModelGraph, dict[str, torch.nn.Module]]:
    """A layer table from leaf modules (no shapes: nothing was traced). Inputs chain in definition order."""
    layers: list[Layer] = []
    modules: dict[str, torch.nn.Module] = {}
    first_weight: np.ndarray | None = None
    dtype = "FP32"
    atomic: list[str] = []  # attention modules own their projections (out_proj is a child module)
    for name, m in root.named_modules():
        cls = getattr(m, "original_name", None) or type(m).__name__
        kind = ln.kind_of_class(cls)
        whole = kind in ("attention", "recurrent")
        if not name or any(name.startswith(a + ".") for a in atomic) or cls in ln.SKIPPED_CLASSES:
            continue
        if whole:
            atomic.append(name)
        elif any(True for _ in m.children()):
            continue
        weights = {
            k: v.detach().cpu().numpy().copy()
            for k, v in list(m.named_parameters(recurse=whole)) + list(m.named_buffers(recurse=whole))
            if v.is_floating_point()
        }
        if first_weight is None and "weight" in weights:
            first_weight = weights["weight"]
            dtype = _kserve(next(m.parameters()).dtype)
        layers.append(
            Layer(
                name=name,
                kind=kind,
                op_type=cls,
                inputs=[layers[-1].name] if layers else ["input"],
                weights=weights,
                attrs=_module_attrs(kind, cls, m),
                channel_axis=1 if kind == "conv" else -1,
            )
        )
        modules[name] = m
    # The input shape is unknowable without tracing: shape () means "not checked" (dtype still is).
    return ModelGraph(fmt, [TensorSpec("input", dtype, ())], [TensorSpec("output", dtype, ())], layers), modules


def _run_module(module: Any, arrays: Mapping[str, np.ndarray], device: str) -> torch.Tensor:
    tensors = [torch.from_numpy(a).to(device) for a in arrays.values()]
    try:
        with torch.inference_mode():
            return module(*tensors)
    except RuntimeError as exc:
        raise InvalidInput(f"model failed on this input: {exc}") from None


def _single_output(result: Any) -> dict[str, np.ndarray]:
    if isinstance(result, torch.Tensor):
        return {"output": result.detach().cpu().numpy()}
    flat = [t for t in (result if isinstance(result, (list, tuple)) else [result]) if isinstance(t, torch.Tensor)]
    return {f"output_{i}": t.detach().cpu().numpy() for i, t in enumerate(flat)}


class _DescribedModuleBackend(_TorchModuleBackend):
    """Formats described from ``named_modules``: one input, whose name and shape were never recorded."""

    def _validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return validate_one_input(self.graph.inputs[0], inputs)


class TorchScriptBackend(_DescribedModuleBackend):
    """TorchScript (.pt): runs and describes modules; intermediate capture is refused."""

    format: ClassVar[str] = "torchscript"
    capture_refused: ClassVar[str] = (
        "TorchScript models cannot capture intermediate activations (the compiled graph bypasses "
        "hooks); export the model with torch.export (torch.export.save -> .pt2) or to ONNX instead"
    )

    def __init__(self, module: torch.jit.ScriptModule, device: str) -> None:
        self.device = device
        self._module = module.eval()
        self.graph, self._modules = describe_modules(self._module, self.format)

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", trusted: bool = False) -> TorchScriptBackend:
        dev = resolve_device(device)
        try:
            module = torch.jit.load(str(path), map_location=dev)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"cannot load TorchScript model '{Path(path).name}': {exc}") from None
        return cls(module, dev)

    def _run(self, inputs: dict[str, np.ndarray], capture: Sequence[CaptureRequest]) -> RunOutput:
        return RunOutput(_single_output(_run_module(self._module, inputs, self.device)))


class PickledModuleBackend(_DescribedModuleBackend):
    """A full ``torch.save(model)`` pickle, loaded only when trusted; capture through forward hooks."""

    format: ClassVar[str] = "torch_pickle"

    def __init__(self, module: torch.nn.Module, device: str) -> None:
        self.device = device
        self._module = module.to(device).eval()
        self.graph, self._modules = describe_modules(self._module, self.format)
        # Views are safe only if nothing writes in place later; any inplace module -> copy captures.
        self._copy = any(getattr(m, "inplace", False) for m in self._module.modules())

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", trusted: bool = False) -> PickledModuleBackend:
        if not trusted:
            raise InvalidInput(
                "pickled PyTorch modules can execute code when loaded and are refused; export the model "
                "with torch.export (.pt2) or to ONNX (server-side trusted files may be loaded with trusted=True)"
            )
        dev = resolve_device(device)
        try:
            module = torch.load(str(path), map_location=dev, weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"cannot load pickled model '{Path(path).name}': {exc}") from None
        if not isinstance(module, torch.nn.Module):
            raise InvalidInput(f"pickle holds a {type(module).__name__}, not a torch.nn.Module")
        return cls(module, dev)

    def _run(self, inputs: dict[str, np.ndarray], capture: Sequence[CaptureRequest]) -> RunOutput:
        store: dict[CaptureRequest, torch.Tensor] = {}
        handles = []

        def hook_for(reqs: list[CaptureRequest]):  # type: ignore[no-untyped-def]
            def hook(_m, args, output):  # type: ignore[no-untyped-def]
                for req in reqs:
                    t = output if req.what == "output" else (args[0] if args else None)
                    if isinstance(t, (tuple, list)):
                        t = t[0]
                    if isinstance(t, torch.Tensor):
                        store[req] = t.detach().clone() if self._copy else t.detach()

            return hook

        def pre_hook_for(reqs: list[CaptureRequest]):  # type: ignore[no-untyped-def]
            def hook(_m, args):  # type: ignore[no-untyped-def]
                for req in reqs:
                    if args and isinstance(args[0], torch.Tensor):
                        store[req] = args[0].detach().clone() if self._copy else args[0].detach()

            return hook

        by_layer: dict[str, list[CaptureRequest]] = {}
        for req in dict.fromkeys(capture):
            by_layer.setdefault(req.layer, []).append(req)
        try:
            for lname, reqs in by_layer.items():
                m = self._modules[lname]
                outs = [r for r in reqs if r.what == "output"]
                ins = [r for r in reqs if r.what == "input"]
                if outs:
                    handles.append(m.register_forward_hook(hook_for(outs)))
                if ins:  # before the module runs: an in-place module would overwrite its input
                    handles.append(m.register_forward_pre_hook(pre_hook_for(ins)))
            result = _run_module(self._module, inputs, self.device)
        finally:
            for h in handles:
                h.remove()
        missing = [r for r in capture if r not in store]
        if missing:
            raise InvalidInput(f"layer '{missing[0].layer}' did not run or produced no tensor {missing[0].what}")
        given = list(inputs.values())
        return RunOutput(_single_output(result), {r: _to_numpy(store[r], given) for r in capture})


__all__ = [
    "ExportedProgramBackend",
    "PickledModuleBackend",
    "TorchScriptBackend",
    "describe_fx_graph",
    "resolve_device",
]
