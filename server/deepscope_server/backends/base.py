"""The one small interface every model format implements (after Polygraphy's runners)."""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from ..errors import InvalidInput
from ..model_graph import ModelGraph, TensorSpec
from .inputs import check_capture, check_weights, validate_inputs

CaptureWhat = Literal["output", "input"]
#: Model inputs by input name.
Inputs = Mapping[str, np.ndarray]
#: Replacement weights by layer, then by key (``{"fc1": {"weight": W}}``), in PyTorch layout.
LayerWeights = Mapping[str, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class CaptureRequest:
    """Capture a layer's output, or its (first) input, which is the pre-activation for activation layers."""

    layer: str
    what: CaptureWhat = "output"


@dataclass
class RunOutput:
    """Model outputs by output name and captured tensors by request. Arrays are owned (safe to keep)."""

    outputs: dict[str, np.ndarray]
    captured: dict[CaptureRequest, np.ndarray] = field(default_factory=dict)


_Run = TypeVar("_Run", bound=Callable[..., RunOutput])


def _fits_but_batch(specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]) -> int | None:
    """The common batch of inputs that match their specs in every dimension but the first, else None."""
    sizes = set()
    for spec in specs:
        a = arrays.get(spec.name)
        if a is None or a.ndim != len(spec.shape) or a.ndim == 0:
            return None
        if any(d is not None and d != n for d, n in zip(spec.shape[1:], a.shape[1:])):
            return None
        sizes.add(a.shape[0])
    return sizes.pop() if len(sizes) == 1 else None


def _trim(name: str, parts: list[tuple[int, np.ndarray]], batch: int) -> np.ndarray:
    if any(a.ndim == 0 or a.shape[0] != batch for _, a in parts):
        raise InvalidInput(
            f"the model fixes its batch size at {batch}, and '{name}' has no batch axis first "
            f"(shape {list(parts[0][1].shape)}), so the data cannot be split into batches of {batch}; "
            f"send exactly {batch} rows, or re-export with a dynamic batch (dynamic_shapes)"
        )
    return np.concatenate([a[:n] for n, a in parts], axis=0)


def static_batch(method: _Run) -> _Run:
    """Run data of any batch size on a model whose export fixed the batch (``graph.static_batch``).

    The data is split into batches of that size, the last one padded by repeating its last row;
    outputs and captures are concatenated with the padding rows dropped, so no padding reaches
    a result. Inputs of the right size, or that do not fit otherwise, go straight through
    (validation then reports the mismatch).
    """

    @functools.wraps(method)
    def run(self: Backend, inputs: Mapping[str, np.ndarray], *args: Any, **kwargs: Any) -> RunOutput:
        batch = self.graph.static_batch
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        n = _fits_but_batch(self.graph.inputs, arrays) if batch else None
        if not batch or n is None or n == batch or n == 0:
            return method(self, inputs, *args, **kwargs)
        chunks: list[tuple[int, RunOutput]] = []
        for lo in range(0, n, batch):
            part = {}
            for k, a in arrays.items():
                rows = a[lo : lo + batch]
                if len(rows) < batch:
                    rows = np.concatenate([rows, np.repeat(rows[-1:], batch - len(rows), axis=0)])
                part[k] = np.ascontiguousarray(rows)
            chunks.append((min(batch, n - lo), method(self, part, *args, **kwargs)))
        first = chunks[0][1]
        return RunOutput(
            {k: _trim(k, [(m, c.outputs[k]) for m, c in chunks], batch) for k in first.outputs},
            {r: _trim(f"{r.layer} ({r.what})", [(m, c.captured[r]) for m, c in chunks], batch) for r in first.captured},
        )

    return run  # type: ignore[return-value]


class Backend(abc.ABC):
    """A loaded model that can describe itself and run batches with capture.

    ``run`` and ``run_with_weights`` are templates (after Polygraphy's ``infer``/``infer_impl``):
    they check inputs, capture requests and replaced weights once, for every format, and each
    format writes only ``_run`` (validated arrays, checked requests) and ``_replaced_weights``.
    ``_run`` returns every requested capture or raises naming the missing one. A proxy whose
    model runs elsewhere (the sandbox) overrides ``run`` itself; the backend behind it checks.
    Safe to call from one thread at a time (the service serialises calls per model).
    """

    format: ClassVar[str]
    graph: ModelGraph
    device: str
    #: Why this format cannot capture intermediate values ('' when it can); refused before anything runs.
    capture_refused: ClassVar[str] = ""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path, *, device: str = "auto", trusted: bool = False) -> Backend:
        """Load the model at ``path``. ``trusted`` allows formats that can execute code (server-side files only)."""

    @static_batch
    def run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        """Run one batch; the model is in eval mode."""
        if capture and self.capture_refused:
            check_capture(self.graph, capture)
            raise InvalidInput(self.capture_refused)
        arrays = self._validate_inputs(inputs)
        check_capture(self.graph, capture)
        return self._run(arrays, capture)

    def run_with_weights(
        self, inputs: Inputs, weights: LayerWeights, capture: Sequence[CaptureRequest] = ()
    ) -> RunOutput:
        """Run with some layers' weights temporarily replaced ({layer: {"weight": W, ...}}, PyTorch layout)."""
        check_weights(self.graph, weights)
        with self._replaced_weights(weights):
            return self.run(inputs, capture)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    # --- what each format writes ------------------------------------------------------------
    def _validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """C-contiguous arrays by input name, checked against ``graph.inputs``."""
        return validate_inputs(self.graph.inputs, inputs)

    def _run(self, inputs: dict[str, np.ndarray], capture: Sequence[CaptureRequest]) -> RunOutput:
        """Run one batch of validated inputs, capturing checked requests."""
        raise NotImplementedError(f"{type(self).__name__} runs through its own run()")

    def _replaced_weights(
        self, weights: Mapping[str, Mapping[str, np.ndarray]]
    ) -> contextlib.AbstractContextManager[None]:
        """Make ``_run`` use these (checked) weights until the context exits."""
        raise NotImplementedError(f"{type(self).__name__} runs through its own run_with_weights()")
