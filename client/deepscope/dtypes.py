"""KServe v2 dtype strings <-> numpy dtypes (shared by client and server)."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .text import shorten

#: Wire dtype string -> numpy dtype (little-endian).
NUMPY_BY_KSERVE: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
KSERVE_BY_NUMPY: dict[np.dtype, str] = {
    dt.newbyteorder("=") if dt.byteorder == "<" else dt: k for k, dt in NUMPY_BY_KSERVE.items()
}


def numpy_dtype(kserve: str) -> np.dtype:
    """The numpy dtype for a wire dtype string; ValueError listing the valid ones otherwise."""
    try:
        return NUMPY_BY_KSERVE[kserve.upper()]
    except KeyError:
        raise ValueError(f"unsupported dtype '{shorten(kserve)}'; supported: {', '.join(NUMPY_BY_KSERVE)}") from None


def kserve_dtype(dtype: np.dtype | type) -> str:
    """The wire dtype string for a numpy dtype; ValueError for unsupported ones (e.g. complex, object)."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    for name, candidate in NUMPY_BY_KSERVE.items():
        if candidate == dt:
            return name
    raise ValueError(f"unsupported numpy dtype {dt}; supported: {', '.join(NUMPY_BY_KSERVE)}")
