"""Convolution geometry: turn the many spellings of stride/padding/dilation into one 2-D form.

Conv1d is handled as a 2-D convolution over a height-1 map, so every function downstream
only deals with ``[C, H, W]`` maps and ``K[C_out, C_in/groups, kh, kw]`` kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IntOrSeq = int | Sequence[int]


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution's hyper-parameters; ``pads`` = (top, bottom, left, right), zero padding."""

    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int


def _pair(value: IntOrSeq, one_d: bool, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return (1, int(value)) if one_d else (int(value), int(value))
    vals = tuple(int(v) for v in value)
    if one_d and len(vals) == 1:
        return 1, vals[0]
    if not one_d and len(vals) == 1:
        return vals[0], vals[0]
    if not one_d and len(vals) == 2:
        return vals[0], vals[1]
    raise ValueError(f"{name} must be an int or {'1' if one_d else '2'} ints, got {value!r}")


def kernel_as_2d(K: np.ndarray) -> np.ndarray:
    """``K[C_out, C_in/g, k]`` (Conv1d) -> ``K[C_out, C_in/g, 1, k]``; 4-D kernels pass through."""
    K = np.asarray(K)
    if K.ndim == 3:
        return K[:, :, None, :]
    if K.ndim != 4:
        raise ValueError(f"conv kernel must be 3-D (Conv1d) or 4-D (Conv2d), got shape {K.shape}")
    return K


def hw_as_2d(hw: IntOrSeq) -> tuple[int, int]:
    """A map size ``(H, W)``, ``(L,)`` or ``L`` as ``(H, W)`` (1-D maps get H = 1)."""
    if isinstance(hw, (int, np.integer)):
        return 1, int(hw)
    vals = tuple(int(v) for v in hw)
    if len(vals) == 1:
        return 1, vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise ValueError(f"map size must be (H, W) or (L,), got {hw!r}")


def conv_geometry(
    K: np.ndarray,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    groups: int = 1,
) -> ConvGeometry:
    """Normalise conv hyper-parameters for kernel ``K`` (3-D for Conv1d, 4-D for Conv2d).

    ``padding`` may be an int, (ph, pw), PyTorch's ``"same"``/``"valid"``, or 4 ints in ONNX
    order (h_begin, w_begin, h_end, w_end). ``"same"`` pads like PyTorch: the odd pixel goes
    at the end.
    """
    one_d = np.ndim(K) == 3
    K2 = kernel_as_2d(K)
    s = _pair(stride, one_d, "stride")
    d = _pair(dilation, one_d, "dilation")
    kh, kw = K2.shape[2], K2.shape[3]
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            th, tw = d[0] * (kh - 1), d[1] * (kw - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    elif not isinstance(padding, (int, np.integer)) and len(tuple(padding)) == 4 and not one_d:
        hb, wb, he, we = (int(v) for v in padding)
        pads = (hb, he, wb, we)
    elif not isinstance(padding, (int, np.integer)) and len(tuple(padding)) == 2 and one_d:
        b, e = (int(v) for v in padding)  # ONNX 1-D pads (begin, end)
        pads = (0, 0, b, e)
    else:
        ph, pw = _pair(padding, one_d, "padding")
        pads = (ph, ph, pw, pw)
    if min(*s, *d) < 1 or min(pads) < 0:
        raise ValueError(f"invalid conv geometry: stride {s}, dilation {d}, pads {pads}")
    if int(groups) < 1 or K2.shape[0] % int(groups):
        raise ValueError(f"groups={groups} must divide C_out={K2.shape[0]}")
    return ConvGeometry(stride=s, pads=pads, dilation=d, groups=int(groups))


def conv_output_hw(kernel_hw: tuple[int, int], input_hw: tuple[int, int], geo: ConvGeometry) -> tuple[int, int]:
    """Output map size, exactly as PyTorch computes it (floor mode)."""
    out = []
    for i, (k, n) in enumerate(zip(kernel_hw, input_hw)):
        padded = n + geo.pads[2 * i] + geo.pads[2 * i + 1]
        span = geo.dilation[i] * (k - 1) + 1
        if padded < span:
            raise ValueError(f"kernel span {span} exceeds padded input {padded} along axis {i}")
        out.append((padded - span) // geo.stride[i] + 1)
    return out[0], out[1]


def onnx_pads(geo: ConvGeometry) -> tuple[int, int, int, int]:
    """The 2-D pads in ONNX order (h_begin, w_begin, h_end, w_end), to pass back as ``padding``."""
    pt, pb, pl, pr = geo.pads
    return pt, pl, pb, pr


def geometry_from_attrs(K: np.ndarray, attrs: dict[str, Any], input_hw: IntOrSeq | None = None) -> ConvGeometry:
    """Build the geometry from a conv Layer's ``attrs``.

    Reads ``stride``/``dilation``/``groups`` and either ``padding`` (symmetric) or ``pads``
    (ONNX order, begins then ends); ONNX ``auto_pad`` SAME_UPPER/SAME_LOWER needs ``input_hw``.
    """
    padding: Any = attrs.get("pads", attrs.get("padding", 0))
    auto = str(attrs.get("auto_pad", "")).upper()
    if auto == "VALID":
        padding = 0
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        if input_hw is None:
            raise ValueError(f"auto_pad={auto} needs the input map size")
        one_d = np.ndim(K) == 3
        K2 = kernel_as_2d(K)
        s = _pair(attrs.get("stride", 1), one_d, "stride")
        d = _pair(attrs.get("dilation", 1), one_d, "dilation")
        begins, ends = [], []
        for n, k, st, dl in zip(hw_as_2d(input_hw), K2.shape[2:], s, d):
            total = max((-(-n // st) - 1) * st + dl * (k - 1) + 1 - n, 0)
            small = total // 2
            begins.append(small if auto == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        padding = (begins[1], ends[1]) if one_d else (begins[0], begins[1], ends[0], ends[1])
    return conv_geometry(
        K,
        stride=attrs.get("stride", 1),
        padding=padding,
        dilation=attrs.get("dilation", 1),
        groups=attrs.get("groups", 1),
    )
