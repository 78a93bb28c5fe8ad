"""What a run is given, checked once for every backend (``Backend.run``): inputs, capture requests, weights.

Inputs against ``graph.inputs`` (names, dtype, static dims); capture requests against the layer
table; replaced weights against each layer's weights (name and PyTorch-layout shape).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from deepscope.dtypes import kserve_dtype

from ..errors import InvalidInput, near_matches
from ..errors import unknown as unknown_name
from ..model_graph import ModelGraph, TensorSpec

if TYPE_CHECKING:
    from .base import CaptureRequest


def format_shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _dtype_name(arr: np.ndarray) -> str:
    try:
        return kserve_dtype(arr.dtype)
    except ValueError:
        return str(arr.dtype)


def validate_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check every input is present, known, of the declared dtype and matching static dims.

    Never casts: a float64 batch for an FP32 model is refused, so silent precision or range
    changes cannot happen server-side (the SDK casts explicitly). Returns C-contiguous arrays.
    """
    names = [s.name for s in specs]
    unknown = [k for k in inputs if k not in names]
    if unknown:
        raise unknown_name("input", unknown[0], names, hint=f"; model inputs: {', '.join(names)}", field="inputs")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in inputs:
            raise InvalidInput(f"missing input '{spec.name}': expected {spec.dtype} {format_shape(spec.shape)}")
        arr = np.asarray(inputs[spec.name])
        shape_ok = (
            len(arr.shape) == len(spec.shape) and all(d is None or d == a for d, a in zip(spec.shape, arr.shape))
            if spec.shape is not None
            else True
        )
        if _dtype_name(arr) != spec.dtype or not shape_ok:
            raise InvalidInput(
                f"input '{spec.name}': expected {spec.dtype} {format_shape(spec.shape)}, "
                f"got {_dtype_name(arr)} {format_shape(arr.shape)}"
            )
        out[spec.name] = np.ascontiguousarray(arr)
    return out


def validate_one_input(spec: TensorSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One input of ``spec``'s dtype, any name and shape: for formats that record neither (TorchScript, pickles)."""
    if len(inputs) != 1:
        raise InvalidInput(f"this model takes exactly one input, got {len(inputs)}: {', '.join(inputs)}")
    ((name, arr),) = inputs.items()
    return validate_inputs([TensorSpec(name, spec.dtype, tuple([None] * np.ndim(arr)))], {name: arr})


def check_capture(graph: ModelGraph, capture: Sequence[CaptureRequest]) -> None:
    """Every request names a layer of the table (NotFound with near matches) and asks for its output or input."""
    for req in capture:
        graph.layer(req.layer)
        if req.what not in ("output", "input"):
            raise InvalidInput(f"capture of '{req.layer}': what must be 'output' or 'input', got '{req.what}'")


def no_tensor_input(layer: str) -> InvalidInput:
    """The error for capturing the input of a layer that reads no tensor (an embedding's indices...)."""
    return InvalidInput(f"layer '{layer}' has no tensor input to capture")


def check_weights(graph: ModelGraph, weights: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Every replaced tensor names an existing layer weight and keeps its (PyTorch-layout) shape."""
    for lname, tensors in weights.items():
        layer = graph.layer(lname)
        for key, arr in tensors.items():
            if key not in layer.weights:
                raise InvalidInput(
                    f"layer '{lname}' has no weight '{key}'{near_matches(key, layer.weights)}; "
                    f"weights: {', '.join(layer.weights) or 'none'}"
                )
            if tuple(np.shape(arr)) != layer.weights[key].shape:
                raise InvalidInput(
                    f"weight '{lname}.{key}': expected shape {list(layer.weights[key].shape)} "
                    f"(PyTorch layout), got {list(np.shape(arr))}"
                )
