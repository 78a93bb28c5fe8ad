"""Input validation shared by every backend: names, dtype and static dims against ``graph.inputs``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from deepscope.dtypes import kserve_dtype

from ..errors import InvalidInput
from ..errors import unknown as unknown_name
from ..model_graph import TensorSpec


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
