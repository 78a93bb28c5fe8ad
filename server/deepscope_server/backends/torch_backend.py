"""PyTorch runners: torch.export programs (.pt2), TorchScript (.pt) and trusted pickled modules.

Loading untrusted .pt2 goes through ``pt2_safety``; the layer table comes from ``torch_layers``;
this module runs and captures. .pt2 capture returns the requested fx nodes as extra outputs of a
copy of ``ep.module()``'s graph (one compiled GraphModule cached per capture set). Returning
existing tensors costs nothing beyond keeping them alive; a node is cloned only when a later
in-place op (``relu_``) would overwrite it.

TorchScript runs, but intermediate capture is refused (the compiled graph bypasses Python hooks;
re-export with torch.export to .pt2). Pickled modules execute arbitrary code when loaded: only
with ``trusted=True``, then captured through forward hooks (views, cloned only when the model
has in-place modules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.fx as fx

from ..errors import InvalidInput
from .base import Backend, CaptureRequest, RunOutput
from .inputs import no_tensor_input, validate_one_input
from .pt2_safety import load_exported_program
from .torch_layers import describe_fx_graph, describe_modules


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an unavailable explicit CUDA fails."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device '{device}' requested but CUDA is not available; use 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidInput(f"unknown device '{device}'; valid: auto, cpu, cuda[:N]")
    return device


def _to_numpy(t: torch.Tensor, inputs: Sequence[np.ndarray]) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    # A capture that is (a view of) a caller's input must not alias it: arrays are owned.
    if any(np.may_share_memory(arr, a) for a in inputs):
        arr = arr.copy()
    return arr


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
        except Exception as exc:  # any failure here means an unreadable archive
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
        except Exception as exc:
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
        except Exception as exc:
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
