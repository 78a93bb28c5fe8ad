"""ONNX runner through onnxruntime; the layer table comes from ``onnx_layers``, loading checks from ``onnx_safety``.

Models stamped with a newer IR version than onnxruntime reads are lowered to the newest it
does (the operator set decides what runs, and onnxruntime checks it).

Capture adds the requested values as graph outputs of a session built for that capture set
(cached); onnxruntime keeps graph outputs through its optimisations, so the remaining graph
is optimised as usual. Loading refuses external data outside the model's directory and
operators from custom domains (which would need custom-op libraries).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..errors import InvalidInput
from .base import Backend, CaptureRequest, RunOutput
from .inputs import no_tensor_input
from .onnx_layers import OnnxDescription
from .onnx_safety import DEFAULT_DOMAINS, check_domains, check_external_data, load_external_data, parse

_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def _ort_session(
    model: onnx.ModelProto, opts: ort.SessionOptions, providers: list[str]
) -> tuple[ort.InferenceSession, int | None]:
    """An onnxruntime session; a model stamped with a newer IR version than onnxruntime reads is lowered.

    IR versions add container features (new types, metadata), not operator semantics: the
    model is re-stamped (in memory) with the newest version onnxruntime names in its refusal and
    loaded again; a feature the lower version lacks, or an unsupported opset, still fails there
    with onnxruntime's own message. Returns the session and the original IR version when lowered.
    """
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers), None
    except Exception as exc:  # ORT raises its own exception types
        found = _IR_TOO_NEW.search(str(exc))
        if not found or model.ir_version <= int(found.group(2)):
            raise
    old, model.ir_version = model.ir_version, int(found.group(2))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=providers), old


class OnnxBackend(Backend):
    """An ONNX model run by onnxruntime, with capture of any layer's input or output."""

    format: ClassVar[str] = "onnx"

    def __init__(self, model: onnx.ModelProto, device: str, name: str = "model", threads: int = 0) -> None:
        self._model = model
        self._threads = threads  # intra-op threads per session (the server's --ort-threads); 0: ORT's default
        self._providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        d = OnnxDescription(model, self.format)
        self._inits, self._types = d.inits, d.types
        self.graph, self._values, self._refs = d.graph, d.values, d.refs
        self._cache: dict[tuple[str, ...], ort.InferenceSession] = {}
        ir_version = model.ir_version
        session = self._session(())
        if model.ir_version != ir_version:
            self.graph.notes.append(
                f"ONNX IR version {ir_version} lowered to {model.ir_version}, the newest "
                "onnxruntime reads (the operator set is unchanged)"
            )
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
        threads: int = 0,
    ) -> OnnxBackend:
        path = Path(path)
        model = parse(path)
        if not model.graph.node and not model.graph.output:
            raise InvalidInput(f"'{path.name}' is not a valid ONNX model: empty graph")
        check_domains(model, DEFAULT_DOMAINS | set(allowed_domains or ()))  # graphs, subgraphs, functions
        load_external_data(model, path.parent)  # every tensor, sparse ones too; only inside path.parent
        if device == "auto":
            import torch  # the server depends on torch; it is the one authority on CUDA presence

            want = (
                "cuda?"
                if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
                else "cpu"
            )
        elif device == "cpu" or device.startswith("cuda"):
            want = device
        else:
            raise InvalidInput(f"unknown device '{device}'; valid: auto, cpu, cuda")
        return cls(model, want, path.stem, threads)

    # --- running ---------------------------------------------------------------------------
    def _session(self, extra: tuple[str, ...]) -> ort.InferenceSession:
        """A session returning the graph outputs and ``extra`` values; cached per ``extra``."""
        if extra in self._cache:
            return self._cache[extra]
        model = self._model
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
        if self._threads:
            opts.intra_op_num_threads = self._threads
        try:
            session, lowered_from = _ort_session(model, opts, self._providers)
        except Exception as exc:  # ORT raises its own exception types
            if "bad_alloc" in str(exc):  # onnxruntime's allocation failed: out of memory, not a bad model
                raise MemoryError(f"onnxruntime ran out of memory loading this model: {exc}") from None
            raise InvalidInput(f"onnxruntime cannot load this model: {exc}") from None
        if lowered_from is not None and model is not self._model:
            self._model.ir_version = model.ir_version  # later sessions (captures, replaced weights) start lowered
        self._cache[extra] = session
        return session

    def _resolve(self, capture: Sequence[CaptureRequest]) -> dict[CaptureRequest, str]:
        """The graph value behind each (checked) request."""
        wanted: dict[CaptureRequest, str] = {}
        for req in capture:
            out_v, in_v = self._values[req.layer]
            value = out_v if req.what == "output" else in_v
            if value is None:
                raise no_tensor_input(req.layer)
            wanted[req] = value
        return wanted

    def _run(self, inputs: dict[str, np.ndarray], capture: Sequence[CaptureRequest]) -> RunOutput:
        wanted = self._resolve(capture)
        out_names = [s.name for s in self.graph.outputs]
        extra = tuple(sorted({v for v in wanted.values() if v not in inputs and v not in out_names}))
        session = self._session(extra)
        names = out_names + list(extra)
        try:
            results = session.run(names, inputs)
        except Exception as exc:
            raise InvalidInput(f"model failed on this input: {exc}") from None
        by_name = dict(zip(names, results))
        captured: dict[CaptureRequest, np.ndarray] = {}
        for req, value in wanted.items():
            if value in inputs:
                captured[req] = inputs[value].copy()
            elif value in by_name and by_name[value] is not None:
                captured[req] = by_name[value]
            else:
                raise InvalidInput(f"capture of layer '{req.layer}' ({req.what}, value '{value}') returned nothing")
        return RunOutput({n: by_name[n] for n in out_names}, captured)

    @contextlib.contextmanager
    def _replaced_weights(self, weights: Mapping[str, Mapping[str, np.ndarray]]) -> Iterator[None]:
        """Run a copy of the model with replaced initializers (back in ONNX layout); its sessions are dropped after."""
        replaced: dict[str, np.ndarray] = {}
        for lname, tensors in weights.items():
            for key, arr in tensors.items():
                ref = self._refs[lname].get(key)
                if ref is None:
                    raise InvalidInput(
                        f"weight '{lname}.{key}' was removed from the ONNX graph by the exporter "
                        "(a constant zero) and cannot be replaced"
                    )
                current = replaced.get(ref.initializer, self._inits[ref.initializer])
                new = ref.write(np.asarray(arr, dtype=current.dtype), current)
                replaced[ref.initializer] = np.ascontiguousarray(new).astype(current.dtype)
        m = onnx.ModelProto()
        m.CopyFrom(self._model)
        for i, t in enumerate(m.graph.initializer):
            if t.name in replaced:
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(replaced[t.name], t.name))
        original, cache = self._model, self._cache
        self._model, self._cache = m, {}
        try:
            yield
        finally:
            self._model, self._cache = original, cache

    def close(self) -> None:
        self._cache.clear()


__all__ = ["DEFAULT_DOMAINS", "OnnxBackend", "check_domains", "check_external_data"]
