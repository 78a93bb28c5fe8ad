"""Node strengths of a whole neuron layer inside a ModelGraph.

The neuron layer of a weighted layer l is its output (after a directly following eval-mode
BatchNorm, folded in, and a directly following residual Add, whose output neurons then also
receive the other branch's links). Its in-strength comes from W^(l), b^(l); its out-strength
from whatever weighted layers (or residual Adds) its output reaches through activation /
flatten / pool / norm / dropout layers.

The out-strength is computed as the VJP of ``Σ`` (linear part of every reached layer) w.r.t.
the neuron layer, on a surrogate linear network built from the graph: activations are
identities (the weight graph has no nonlinearity), flatten/reshape are permutations in
PyTorch's real (C, H, W) row-major order, AvgPool is its linear map, MaxPool is treated as
AvgPool, BatchNorm after a nonlinearity scales by γ/σ, and a reached residual Add is an
identity link (weight 1). A reached recurrent layer counts its input-to-gate links (every
``ih`` block of its first layer, both directions), a self-attention layer its q, k and v
projections: the neurons' out-links into those blocks (see ``gates``). Layers and graphs are
duck-typed (``deepscope_server`` Layer / ModelGraph).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .gates import GATED, block_weights, dense_blocks
from .geometry import ConvGeometry, geometry_from_attrs, hw_as_2d, kernel_as_2d
from .strength import Strengths, combine, conv_in_strength, dense_in_strength, fold_batchnorm

WEIGHTED = frozenset({"linear", "conv"})
_RESHAPE = ("flatten", "reshape", "view", "squeeze", "unsqueeze")
_ADD = ("add", "iadd", "sum", "residual")
_IDENTITY = ("dropout", "identity", "alphadropout")


@dataclass
class NeuronLayer:
    """Strengths of one neuron layer plus what it took to compute them."""

    layer: str  #: the weighted layer whose output neurons these are ("" for the model input)
    end: str  #: the graph node whose output is the neuron layer
    shape: tuple[int, ...]  #: neuron-layer shape without batch (C, H, W) / (n,) / (T, C)
    strengths: Strengths
    has_in: bool
    has_out: bool
    reached: list[str] = field(default_factory=list)  #: layers receiving out-links
    extensions: list[str] = field(default_factory=list)  #: beyond-the-paper steps used
    warnings: list[str] = field(default_factory=list)


def op_class(layer: Any) -> str:
    """weighted | gated | bn | norm | activation | pool | reshape | add | identity | embedding | unsupported."""
    kind, op = layer.kind, layer.op_type.lower()
    if kind in GATED:
        return "gated"
    if kind in WEIGHTED:
        if "transpose" in op or "weight" not in layer.weights:
            return "unsupported"  # ConvTranspose (other weight layout), weightless MatMul
        return "weighted"
    if kind == "norm":
        return "bn" if "running_mean" in layer.weights and "running_var" in layer.weights else "norm"
    if kind in ("activation", "pool", "embedding"):
        return kind
    if any(op.startswith(k) or op.endswith(k) for k in _RESHAPE):
        return "reshape"
    if any(op == k or op.startswith(k) for k in _ADD):
        return "add"
    if any(op.startswith(k) for k in _IDENTITY):
        return "identity"
    return "unsupported"


def is_merge(layer: Any) -> bool:
    """A residual sum: an Add node, or a non-weighted layer fed by several layers.

    The PyTorch backend folds a functional ``out + identity`` into the consuming layer (e.g.
    the block's final ReLU then has inputs [bn2, skip]), so several inputs mean a sum there.
    """
    cls = op_class(layer)
    return cls == "add" or (cls in ("activation", "identity", "bn", "norm", "pool") and len(layer.inputs) > 1)


def layer_geometry(layer: Any, W: np.ndarray | None = None) -> ConvGeometry:
    """The conv geometry of a Layer, using its input map size for ONNX auto_pad."""
    W = _np(layer.weights["weight"]) if W is None else W
    shape = _known(layer.input_shapes[0]) if layer.input_shapes else None
    return geometry_from_attrs(W, layer.attrs, shape[1:] if shape is not None and len(shape) >= 2 else None)


def _np(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _known(shape: Any) -> tuple[int, ...] | None:
    """A shape without its batch dimension, or None when any other dimension is unknown."""
    if shape is None or len(shape) < 2 or any(s is None for s in shape[1:]):
        return None
    return tuple(int(s) for s in shape[1:])


def bn_scale_shift(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(s, t)`` with ``BN(x) = s·x + t`` in eval mode."""
    w = bn.weights
    var, mean = _np(w["running_var"]), _np(w["running_mean"])
    s = (_np(w["weight"]) if w.get("weight") is not None else np.ones_like(var)) / np.sqrt(
        var + bn.attrs.get("eps", 1e-5)
    )
    t = (_np(w["bias"]) if w.get("bias") is not None else np.zeros_like(var)) - s * mean
    return s, t


def folded_weights(
    graph: Any, layer: Any, fold_norm: bool = True
) -> tuple[np.ndarray, np.ndarray | None, str, list[str]]:
    """``(W, b, end, folded)``: the layer's weights with a directly following BatchNorm folded in.

    Folding happens only when the layer's sole consumer is an eval-mode BatchNorm.
    """
    W = _np(layer.weights["weight"])
    b = layer.weights.get("bias")
    b = None if b is None else _np(b)
    succ = graph.successors(layer.name)
    if fold_norm and len(succ) == 1 and op_class(succ[0]) == "bn":
        bn = succ[0]
        w = bn.weights
        W, b = fold_batchnorm(
            W, b, w.get("weight"), w.get("bias"), w["running_mean"], w["running_var"], bn.attrs.get("eps", 1e-5)
        )
        return W, b, bn.name, [bn.name]
    return W, b, layer.name, []


def folded_layer(graph: Any, layer: Any, fold_norm: bool) -> Any:
    """The layer with a directly following eval-mode BatchNorm folded into its weight and bias (a copy)."""
    W, b, _, folded = folded_weights(graph, layer, fold_norm)
    if not folded:
        return layer
    return dataclasses.replace(layer, weights={**layer.weights, "weight": W, "bias": b})


def link_sample(graph: Any, layer: Any, fold_norm: bool) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """A layer's link weights and biases (a gated layer's: all its blocks'), and the BatchNorms folded in."""
    if layer.kind in GATED:
        return (*block_weights(dense_blocks(layer)), [])
    W, b, _, folded = folded_weights(graph, layer, fold_norm)
    return W, b, folded


def next_weighted(graph: Any, layer: Any) -> Any | None:
    """The next linear/conv layer along a single chain of elementwise layers (activation, norm, flatten)."""
    current = layer
    while True:
        succ = graph.successors(current.name)
        if len(succ) != 1:
            return None
        current = succ[0]
        if current.kind in WEIGHTED:
            return current
        if current.kind not in ("activation", "norm") and current.op_type not in ("Flatten", "Dropout", "Identity"):
            return None


def _layer_in_strength(layer: Any, W: np.ndarray, b: np.ndarray | None, mode: str) -> np.ndarray:
    """In-strength in the layer's output shape (without batch)."""
    if layer.kind == "linear":
        s = dense_in_strength(W, b)
        out = _known(layer.output_shapes[0]) if layer.output_shapes else None
        if out is not None and len(out) > 1 and out[-1] == s.size:
            return np.broadcast_to(s, out).copy()  # per-position Linear (tokens)
        return s
    shape = _known(layer.input_shapes[0]) if layer.input_shapes else None
    if shape is None or len(shape) < 2:
        raise ValueError(f"conv layer '{layer.name}' needs a known input shape, got {layer.input_shapes}")
    geo = layer_geometry(layer, W)
    pt, pb, pl, pr = geo.pads
    s = conv_in_strength(
        kernel_as_2d(W), b, hw_as_2d(shape[1:]), geo.stride, (pt, pl, pb, pr), geo.dilation, geo.groups, mode
    )
    return s[:, 0, :] if W.ndim == 3 else s


def _trace_back_weighted(graph: Any, name: str) -> Any | None:
    """The weighted layer producing ``name`` directly or through one BatchNorm, else None."""
    try:
        node = graph.layer(name)
    except Exception:
        return None
    if op_class(node) == "bn" and node.inputs:
        try:
            node = graph.layer(node.inputs[0])
        except Exception:
            return None
    return node if op_class(node) == "weighted" else None


def _forward_op(layer: Any, v: torch.Tensor, warnings: list[str], extensions: list[str]) -> torch.Tensor | None:
    """The surrogate linear map of a pass-through layer; None when the walk cannot go on."""
    cls = op_class(layer)
    out_shape = _known(layer.output_shapes[0]) if layer.output_shapes else None
    if cls in ("activation", "identity"):
        return v
    if cls == "reshape":
        return v.reshape((1, *out_shape)) if out_shape is not None else v.flatten(1)
    if cls == "bn":
        s, _ = bn_scale_shift(layer)
        extensions.append(
            f"batchnorm '{layer.name}' after a nonlinearity: scale gamma/sigma on the path (shift ignored)"
        )
        return v * torch.as_tensor(s).reshape((1, -1) + (1,) * (v.ndim - 2))
    if cls == "norm":
        warnings.append(f"norm layer '{layer.name}' ({layer.op_type}) is not foldable: treated as identity")
        return v
    if cls == "pool":
        op = layer.op_type.lower()
        a = layer.attrs
        if "max" in op:
            extensions.append(f"max pool '{layer.name}' treated as average pool")
        else:
            extensions.append(f"average pool '{layer.name}' as its linear map")
        spatial = v.ndim - 2
        if "adaptive" in op or "global" in op or "kernel_size" not in a:
            size = out_shape[1:] if out_shape is not None else (1,) * spatial
            return (F.adaptive_avg_pool1d if spatial == 1 else F.adaptive_avg_pool2d)(v, tuple(size))
        k = a["kernel_size"]
        stride = a.get("stride") or k
        kw = dict(
            kernel_size=k,
            stride=stride,
            padding=a.get("padding", 0),
            ceil_mode=bool(a.get("ceil_mode", False)),
            count_include_pad=bool(a.get("count_include_pad", "max" not in op)),
        )
        return F.avg_pool1d(v, **kw) if spatial == 1 else F.avg_pool2d(v, **kw)
    if cls == "embedding":
        warnings.append(f"embedding '{layer.name}' skipped: its out-links are not counted")
        return None
    warnings.append(f"layer '{layer.name}' ({layer.op_type}) is not supported: out-links through it are not counted")
    return None


def _conform(layer: Any, v: torch.Tensor) -> torch.Tensor:
    """Reshape to the layer's recorded input shape when only the view differs (implicit flatten)."""
    want = _known(layer.input_shapes[0]) if layer.input_shapes else None
    if want is not None and tuple(v.shape[1:]) != want and int(np.prod(want)) == v[0].numel():
        return v.reshape((1, *want))
    if layer.kind == "linear" and v.ndim > 2 and v.shape[-1] != layer.weights["weight"].shape[1]:
        return v.flatten(1)  # PyTorch flatten order (C, H, W) row-major
    return v


def _terminal_sum(graph: Any, layer: Any, v: torch.Tensor, fold_norm: bool) -> torch.Tensor:
    """Σ of the linear part (no bias) of a weighted layer applied to ``v``.

    With ``fold_norm`` the links into a layer followed by BatchNorm are the folded weights,
    consistent with that layer's own in-strength.
    """
    W = torch.as_tensor(folded_weights(graph, layer, fold_norm)[0])
    v = _conform(layer, v)
    if layer.kind == "linear":
        return (v @ W.T).sum()
    geo = layer_geometry(layer, W.numpy())
    K2 = torch.as_tensor(kernel_as_2d(W.numpy()))
    x = v if v.ndim == 4 else v.reshape(v.shape[0], v.shape[1], 1, -1)
    pt, pb, pl, pr = geo.pads
    x = F.pad(x, (pl, pr, pt, pb))
    return F.conv2d(x, K2, stride=geo.stride, dilation=geo.dilation, groups=geo.groups).sum()


def _gated_terminal_sum(layer: Any, v: torch.Tensor, n_inputs: int, warnings: list[str]) -> torch.Tensor | None:
    """Σ of the links from ``v`` into the blocks of a recurrent / self-attention layer that read it, else None."""
    try:
        blocks = dense_blocks(layer)
    except ValueError as exc:
        warnings.append(f"{exc}: out-links into it are not counted")
        return None
    reading = (
        [b for b in blocks if b.source == "x"]
        if layer.kind == "recurrent"
        else [b for b in blocks if b.source in ("query", "key", "value")]
    )
    if layer.kind == "attention" and n_inputs > 1:
        warnings.append(
            f"attention '{layer.name}' takes separate query/key/value inputs: out-links into it are not counted"
        )
        return None
    width = reading[0].W.shape[1] if reading else None
    if width is None or v.shape[-1] != width:
        warnings.append(
            f"{layer.kind} layer '{layer.name}' reads {width} features per step, the neuron layer has "
            f"shape {tuple(v.shape[1:])}: out-links into it are not counted"
        )
        return None
    return sum((v @ torch.as_tensor(b.W).T).sum() for b in reading)


def out_strength(
    graph: Any, start: str, shape: tuple[int, ...], fold_norm: bool = True
) -> tuple[np.ndarray | None, list[str], list[str], list[str]]:
    """Out-strength of the neurons of node ``start`` (shape without batch) by a surrogate VJP.

    Returns ``(s_out or None when nothing is reached, reached layers, extensions, warnings)``.
    """
    x = torch.zeros((1, *shape), dtype=torch.float64, requires_grad=True)
    values: dict[str, torch.Tensor] = {start: x}
    total = torch.zeros((), dtype=torch.float64)
    reached: list[str] = []
    extensions: list[str] = []
    warnings: list[str] = []
    names = [layer.name for layer in graph.layers]
    begin = names.index(start) + 1 if start in names else 0
    for layer in graph.layers[begin:]:
        feeding = [values[i] for i in layer.inputs if i in values]
        if not feeding:
            continue
        cls = op_class(layer)
        if cls == "weighted":
            total = total + sum(_terminal_sum(graph, layer, v, fold_norm) for v in feeding)
            reached.append(layer.name)
        elif cls == "gated":
            sums = [_gated_terminal_sum(layer, v, len(layer.inputs), warnings) for v in feeding]
            if any(t is not None for t in sums):
                total = total + sum(t for t in sums if t is not None)
                reached.append(layer.name)
        elif is_merge(layer):
            total = total + sum(v.sum() for v in feeding)
            reached.append(layer.name)
            extensions.append(f"residual sum '{layer.name}': identity links of weight 1")
        else:
            v = feeding[0]
            if len(feeding) > 1:
                warnings.append(
                    f"layer '{layer.name}' takes the neuron layer more than once: only its first input is followed"
                )
            out = _forward_op(layer, v, warnings, extensions)
            if out is not None:
                values[layer.name] = out
    if not reached:
        return None, reached, extensions, warnings
    (grad,) = torch.autograd.grad(total, x)
    return grad[0].numpy(), reached, sorted(set(extensions)), warnings


def neuron_layer_strengths(
    graph: Any, layer: Any, mode: str = "code", missing_side_const: float = 1.0, fold_norm: bool = True
) -> NeuronLayer:
    """Strengths of the output neurons of weighted ``layer`` within ``graph``."""
    W, b, end, folded = folded_weights(graph, layer, fold_norm)
    extensions = [f"batchnorm '{n}' folded into '{layer.name}'" for n in folded]
    s_in = _layer_in_strength(layer, W, b, mode)
    warnings: list[str] = []
    succ = graph.successors(end)
    if len(succ) == 1 and is_merge(succ[0]):
        add = succ[0]
        end = add.name
        extensions.append(f"residual sum '{add.name}': its output neurons also receive the other branch's links")
        for other in add.inputs:
            if other in (layer.name, *folded):
                continue
            src = _trace_back_weighted(graph, other)
            if src is not None:
                W2, b2, _, _ = folded_weights(graph, src, fold_norm)
                s_in = s_in + np.reshape(_layer_in_strength(src, W2, b2, mode), s_in.shape)
            else:
                s_in = s_in + 1.0  # identity (skip) link
    s_out, reached, ext, warn = out_strength(graph, end, s_in.shape, fold_norm)
    return NeuronLayer(
        layer=layer.name,
        end=end,
        shape=tuple(s_in.shape),
        strengths=combine(s_in, s_out, missing_side_const),
        has_in=True,
        has_out=s_out is not None,
        reached=reached,
        extensions=extensions + ext,
        warnings=warnings + warn,
    )


def input_neuron_strengths(graph: Any, missing_side_const: float = 1.0, fold_norm: bool = True) -> NeuronLayer | None:
    """Strengths of the model's (first) input neurons: no in-side, out-links to the first layers."""
    if not graph.inputs:
        return None
    spec = graph.inputs[0]
    shape = _known(spec.shape)
    if shape is None:
        first = [layer for layer in graph.layers if spec.name in layer.inputs]
        shape = _known(first[0].input_shapes[0]) if first and first[0].input_shapes else None
        if shape is None and first and first[0].kind == "linear":
            shape = (int(first[0].weights["weight"].shape[1]),)
    if shape is None:
        return None
    s_out, reached, ext, warn = out_strength(graph, spec.name, shape, fold_norm)
    if s_out is None:
        return None
    return NeuronLayer(
        layer="",
        end=spec.name,
        shape=shape,
        strengths=combine(None, s_out, missing_side_const),
        has_in=False,
        has_out=True,
        reached=reached,
        extensions=ext,
        warnings=warn,
    )
