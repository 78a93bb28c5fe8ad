"""Node strengths of the weight graph (La Malfa et al.): signed sums of link weights.

Neurons are nodes, weights are directed links, a bias adds to its receiving neuron's
in-strength. Convolutions are unrolled: every (channel, y, x) is a neuron. All sums are
float64; conv sums use torch conv ops (never Python loops over positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ConvGeometry, IntOrSeq, conv_geometry, conv_output_hw, hw_as_2d, kernel_as_2d

MODES = ("code", "graph")


@dataclass(frozen=True)
class Strengths:
    """In-, out- and total strength of one neuron layer (same shape: ``[n]`` or ``[C, H, W]``)."""

    s_in: np.ndarray
    s_out: np.ndarray
    total: np.ndarray


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def combine(s_in: np.ndarray | None, s_out: np.ndarray | None, missing_side_const: float = 1.0) -> Strengths:
    """Total strength = in + out; a missing side (None) counts as ``missing_side_const``.

    The authors' code adds 1 for the side that input/output neurons lack; 0 gives the
    pure graph definition.
    """
    if s_in is None and s_out is None:
        raise ValueError("at least one of s_in / s_out is needed")
    ref = s_in if s_in is not None else s_out
    c = float(missing_side_const)
    s_in = np.full(np.shape(ref), c) if s_in is None else np.asarray(s_in, dtype=np.float64)
    s_out = np.full(np.shape(ref), c) if s_out is None else np.asarray(s_out, dtype=np.float64)
    if s_in.shape != s_out.shape:
        raise ValueError(f"in-strength shape {s_in.shape} != out-strength shape {s_out.shape}")
    return Strengths(s_in, s_out, s_in + s_out)


# ----------------------------------------------------------------------------- dense
def dense_in_strength(W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """In-strength of a Linear layer's outputs: ``Σ_j W[i, j] + b_i`` (W is ``[out, in]``)."""
    s = np.asarray(W, dtype=np.float64).sum(axis=1)
    return s if b is None else s + np.asarray(b, dtype=np.float64)


def dense_out_strength(W_next: np.ndarray) -> np.ndarray:
    """Out-strength of the neurons feeding a Linear layer: ``Σ_k W_next[k, i]``."""
    return np.asarray(W_next, dtype=np.float64).sum(axis=0)


def dense_strengths(
    W: np.ndarray | None,
    b: np.ndarray | None,
    W_next: np.ndarray | None,
    missing_side_const: float = 1.0,
) -> Strengths:
    """Strengths of the neurons between Linear ``W`` (incoming) and ``W_next`` (outgoing).

    ``W=None`` means these are input neurons (no in-side), ``W_next=None`` output neurons.
    """
    s_in = None if W is None else dense_in_strength(W, b)
    s_out = None if W_next is None else dense_out_strength(W_next)
    return combine(s_in, s_out, missing_side_const)


# ----------------------------------------------------------------------------- conv
def conv_in_strength(
    K: np.ndarray,
    b: np.ndarray | None,
    input_hw: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    groups: int = 1,
    mode: str = "code",
) -> np.ndarray:
    """In-strength of every output neuron of a conv, shape ``[C_out, H_out, W_out]``.

    ``mode="code"``: ``K[o].sum() + b[o]`` at every position (the authors' convention, as if
    padded zeros were neurons). ``mode="graph"``: only taps that land inside the input image
    are links, i.e. ``conv2d(ones(input), K) + b``. Conv1d kernels give ``[C_out, 1, L_out]``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    geo = conv_geometry(K, stride, padding, dilation, groups)
    K2 = kernel_as_2d(K)
    hw = hw_as_2d(input_hw)
    ho, wo = conv_output_hw(K2.shape[2:], hw, geo)
    c_out = K2.shape[0]
    bias = np.zeros(c_out) if b is None else np.asarray(b, dtype=np.float64)
    if mode == "code":
        per_channel = K2.astype(np.float64).reshape(c_out, -1).sum(axis=1) + bias
        return np.broadcast_to(per_channel[:, None, None], (c_out, ho, wo)).copy()
    # Every input channel is the same ones map, so conv(ones, K)[o] = conv(ones_1, Σ_ci K[o, ci]):
    # summing the kernel over its input-channel axis first (which, for grouped convs, already
    # holds only output channel o's own group) leaves one single-channel conv, C_in/groups times
    # fewer multiply-adds.
    k_sum = np.asarray(K2, dtype=np.float64).sum(axis=1, keepdims=True)  # [C_out, 1, kh, kw]
    ones = F.pad(torch.ones(1, 1, *hw, dtype=torch.float64), _torch_pads(geo))
    out = F.conv2d(ones, torch.from_numpy(k_sum), _t(bias), stride=geo.stride, dilation=geo.dilation)
    return out[0].numpy()


def conv_out_strength(
    K: np.ndarray,
    input_hw: IntOrSeq,
    output_hw: IntOrSeq | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    groups: int = 1,
    cotangent: np.ndarray | None = None,
) -> np.ndarray:
    """Out-strength of every input neuron of a conv, shape ``[C_in, H, W]``.

    ``conv_transpose2d(ones(output map), K)`` = the VJP of ``sum(conv(x))``: each input pixel
    sums the kernel taps that read it; taps on padding are dropped (padding is not a neuron).
    ``cotangent`` (``[C_out, H_out, W_out]``) replaces the ones, e.g. to weight output neurons
    (then the full kernel is used; with ones, the kernel summed within each group).
    """
    geo = conv_geometry(K, stride, padding, dilation, groups)
    K2 = kernel_as_2d(K)
    hw = hw_as_2d(input_hw)
    ho, wo = conv_output_hw(K2.shape[2:], hw, geo)
    if output_hw is not None and hw_as_2d(output_hw) != (ho, wo):
        raise ValueError(f"output size {tuple(output_hw)} does not match the conv geometry ({ho}, {wo})")
    pt, pb, pl, pr = geo.pads
    hp, wp = hw[0] + pt + pb, hw[1] + pl + pr
    used_h = (ho - 1) * geo.stride[0] + geo.dilation[0] * (K2.shape[2] - 1) + 1
    used_w = (wo - 1) * geo.stride[1] + geo.dilation[1] * (K2.shape[3] - 1) + 1
    kh, kw = K2.shape[2:]
    if cotangent is None:
        # A ones cotangent is the same map for every output channel, so the kernel can be summed
        # over the output channels of each group first: one single-channel transposed conv
        # giving all C_in maps, C_out/groups times fewer multiply-adds.
        c_out, c_in_g = K2.shape[:2]
        k_sum = np.asarray(K2, dtype=np.float64).reshape(geo.groups, c_out // geo.groups, c_in_g, kh, kw).sum(axis=1)
        g, weight, groups = torch.ones(1, 1, ho, wo, dtype=torch.float64), k_sum.reshape(1, -1, kh, kw), 1
    else:
        g, weight, groups = _t(cotangent).reshape(1, K2.shape[0], ho, wo), np.asarray(K2), geo.groups
    full = F.conv_transpose2d(
        g,
        _t(weight),
        stride=geo.stride,
        dilation=geo.dilation,
        groups=groups,
        output_padding=(hp - used_h, wp - used_w),
    )
    return full[0, :, pt : pt + hw[0], pl : pl + hw[1]].numpy()


def _torch_pads(geo: ConvGeometry) -> tuple[int, int, int, int]:
    pt, pb, pl, pr = geo.pads
    return pl, pr, pt, pb  # F.pad order: last dim first


# ----------------------------------------------------------------------------- extensions
def fold_batchnorm(
    W: np.ndarray,
    b: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm that follows a Linear/Conv into its weights (extension).

    ``y = γ (W x + b − μ) / sqrt(σ² + ε) + β``  ->  ``W' = s W``, ``b' = s (b − μ) + β``,
    ``s = γ / sqrt(σ² + ε)`` per output channel.
    """
    W = np.asarray(W, dtype=np.float64)
    var = np.asarray(running_var, dtype=np.float64)
    scale = (np.ones_like(var) if gamma is None else np.asarray(gamma, dtype=np.float64)) / np.sqrt(var + eps)
    shift = np.zeros_like(var) if beta is None else np.asarray(beta, dtype=np.float64)
    bias = np.zeros(W.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    W_f = W * scale.reshape((-1,) + (1,) * (W.ndim - 1))
    return W_f, scale * (bias - np.asarray(running_mean, dtype=np.float64)) + shift


def layer_fluctuation(strengths: np.ndarray) -> dict[str, float]:
    """Layer fluctuation ``Y_l``: population std (ddof=0) of the layer's node strengths.

    Also the mean, the coefficient of variation ``Y/|mean|`` (extension) and the node count.
    Empty or non-finite input gives NaN (no crash).
    """
    s = np.asarray(strengths, dtype=np.float64).ravel()
    n = int(s.size)
    if n == 0 or not np.all(np.isfinite(s)):
        return {"fluctuation": float("nan"), "mean": float("nan"), "cv": float("nan"), "n_nodes": n}
    mean, std = float(s.mean()), float(s.std(ddof=0))
    cv = std / abs(mean) if mean != 0 else float("nan")
    return {"fluctuation": std, "mean": mean, "cv": cv, "n_nodes": n}
