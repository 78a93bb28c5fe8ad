"""Format-independent rules that make a layer mean the same thing in ONNX, .pt2 and TorchScript.

Both the ONNX backend (from the dynamo exporter's node metadata) and the torch backends (from
``nn_module_stack``) see the same information: for every operation, the module path it ran in
and the aten operator. These helpers turn that into identical layer names, kinds and
channel axes, so ``fc1`` or ``layer1.0.conv1`` or ``layer1.0.relu_1`` is one layer everywhere.

Naming rule (applied by layer_table): one layer per *call* of a leaf module (a module with no
called submodule), named by its path; the N-th repeated call of the same module is
``<path>@N`` (torch.export's own spelling), so a ReLU reused twice in a ResNet block gives
``layer1.0.relu`` and ``layer1.0.relu@1``. Module classes that are no-ops in eval (Dropout,
Identity) are skipped. Activation functions called functionally inside a non-leaf module
(``F.relu`` in a residual block, ``activation="gelu"`` in TransformerEncoderLayer) become layers
named ``<parent>.<function>``, with ``_1``, ``_2``... for later occurrences in the same parent or
on a clash with a module name. A module exported on its own (``nn.Linear``) is one layer named
after its class in snake case (``linear``, ``lstm``, ``conv2d``).
"""

from __future__ import annotations

from collections.abc import Iterable

#: torch module class name -> layer kind.
_KIND_BY_CLASS = {
    "Linear": "linear",
    "LazyLinear": "linear",
    "NonDynamicallyQuantizableLinear": "linear",
    "Bilinear": "linear",
    "Conv1d": "conv",
    "Conv2d": "conv",
    "Conv3d": "conv",
    "ConvTranspose1d": "conv",
    "ConvTranspose2d": "conv",
    "ConvTranspose3d": "conv",
    "MultiheadAttention": "attention",
    "BatchNorm1d": "norm",
    "BatchNorm2d": "norm",
    "BatchNorm3d": "norm",
    "LayerNorm": "norm",
    "GroupNorm": "norm",
    "InstanceNorm1d": "norm",
    "InstanceNorm2d": "norm",
    "InstanceNorm3d": "norm",
    "RMSNorm": "norm",
    "LocalResponseNorm": "norm",
    "MaxPool1d": "pool",
    "MaxPool2d": "pool",
    "MaxPool3d": "pool",
    "AvgPool1d": "pool",
    "AvgPool2d": "pool",
    "AvgPool3d": "pool",
    "AdaptiveAvgPool1d": "pool",
    "AdaptiveAvgPool2d": "pool",
    "AdaptiveAvgPool3d": "pool",
    "AdaptiveMaxPool1d": "pool",
    "AdaptiveMaxPool2d": "pool",
    "LPPool2d": "pool",
    "Embedding": "embedding",
    "EmbeddingBag": "embedding",
    "LSTM": "recurrent",
    "GRU": "recurrent",
    "RNN": "recurrent",
}

#: aten operator base name -> the layer kind the operator implies on its own (custom or bare modules).
KIND_BY_ATEN = {
    "linear": "linear",
    "addmm": "linear",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "convolution": "conv",
    "conv_transpose1d": "conv",
    "conv_transpose2d": "conv",
    "conv_transpose3d": "conv",
    "batch_norm": "norm",
    "_native_batch_norm_legit_no_training": "norm",
    "layer_norm": "norm",
    "group_norm": "norm",
    "instance_norm": "norm",
    "rms_norm": "norm",
    "max_pool1d": "pool",
    "max_pool2d": "pool",
    "max_pool3d": "pool",
    "avg_pool1d": "pool",
    "avg_pool2d": "pool",
    "avg_pool3d": "pool",
    "adaptive_avg_pool1d": "pool",
    "adaptive_avg_pool2d": "pool",
    "adaptive_max_pool1d": "pool",
    "adaptive_max_pool2d": "pool",
    "embedding": "embedding",
    "lstm": "recurrent",
    "gru": "recurrent",
    "rnn_tanh": "recurrent",
    "rnn_relu": "recurrent",
    "scaled_dot_product_attention": "attention",
}

#: torch activation module class name -> ACTIVATION_FUNCTIONS entry.
ACTIVATION_BY_CLASS = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "Hardtanh": "hardtanh",
    "GELU": "gelu",
    "SiLU": "silu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "LeakyReLU": "leaky_relu",
    "ELU": "elu",
    "Softplus": "softplus",
}

#: aten operator base name (``aten.relu_.default`` -> ``relu_``) -> activation function.
ACTIVATION_BY_ATEN = {
    "relu": "relu",
    "relu_": "relu",
    "relu6": "relu6",
    "hardtanh": "hardtanh",
    "hardtanh_": "hardtanh",
    "gelu": "gelu",
    "gelu_": "gelu",
    "silu": "silu",
    "silu_": "silu",
    "tanh": "tanh",
    "tanh_": "tanh",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "leaky_relu": "leaky_relu",
    "leaky_relu_": "leaky_relu",
    "elu": "elu",
    "elu_": "elu",
    "softplus": "softplus",
}

#: Module classes that do nothing in eval mode: not layers (capture would be a copy of their input).
SKIPPED_CLASSES = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity"})

#: Kinds whose rank-3 output is channels-first (N, C, L) rather than tokens (B, T, C).
_CHANNELS_FIRST_CLASSES = frozenset(
    {
        "Conv1d",
        "ConvTranspose1d",
        "BatchNorm1d",
        "InstanceNorm1d",
        "MaxPool1d",
        "AvgPool1d",
        "AdaptiveAvgPool1d",
        "AdaptiveMaxPool1d",
        "GroupNorm",
    }
)


def short_class(qualname: str) -> str:
    """``torch.nn.modules.conv.Conv2d`` -> ``Conv2d``."""
    return qualname.rsplit(".", 1)[-1]


def aten_base(target: str) -> str:
    """``aten.relu_.default`` / ``torch.ops.aten.relu_.default`` -> ``relu_``."""
    parts = str(target).split(".")
    if "aten" in parts:
        i = parts.index("aten")
        if i + 1 < len(parts):
            return parts[i + 1]
    return parts[-1]


def kind_of_class(cls_name: str) -> str:
    if cls_name in ACTIVATION_BY_CLASS:
        return "activation"
    return _KIND_BY_CLASS.get(cls_name, "other")


def leaf_paths(stacks: Iterable[tuple[str, ...]]) -> set[str]:
    """Module paths that never appear as the parent of another called module."""
    stacks = [s for s in stacks if s]
    parents = {p for s in stacks for p in s[:-1]}
    return {s[-1] for s in stacks} - parents


class FunctionalNamer:
    """Names functional activations ``<parent>.<fn>``, ``<parent>.<fn>_1``... avoiding module names."""

    def __init__(self, taken: Iterable[str]) -> None:
        self.taken = set(taken)
        self.counts: dict[str, int] = {}

    def name(self, parent: str, function: str) -> str:
        base = f"{parent}.{function}" if parent else function
        while True:
            k = self.counts.get(base, 0)
            self.counts[base] = k + 1
            candidate = base if k == 0 else f"{base}_{k}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate


def channel_axis(kind: str, cls_name: str, rank: int | None, inputs_channels_first: bool) -> int:
    """1 for NC... feature maps (and activations/norm/pool applied to them), -1 for dense/token outputs."""
    if rank is None or rank <= 2:
        return -1
    if rank >= 4:
        return 1
    if kind == "conv" or cls_name in _CHANNELS_FIRST_CLASSES:
        return 1
    if kind in ("linear", "attention", "embedding", "recurrent") or cls_name in ("LayerNorm", "RMSNorm"):
        return -1
    return 1 if inputs_channels_first else -1


#: ONNX op_type -> layer kind, for ONNX models without torch metadata.
KIND_BY_ONNX_OP = {
    "Gemm": "linear",
    "MatMul": "linear",
    "Conv": "conv",
    "ConvTranspose": "conv",
    "BatchNormalization": "norm",
    "LayerNormalization": "norm",
    "InstanceNormalization": "norm",
    "GroupNormalization": "norm",
    "LpNormalization": "norm",
    "MaxPool": "pool",
    "AveragePool": "pool",
    "GlobalAveragePool": "pool",
    "GlobalMaxPool": "pool",
    "LpPool": "pool",
    "Gather": "embedding",
    "Attention": "attention",
    "MultiHeadAttention": "attention",
    "Flatten": "other",
    "Softmax": "other",
    "LSTM": "recurrent",
    "GRU": "recurrent",
    "RNN": "recurrent",
}

#: ONNX op_type -> activation function.
ACTIVATION_BY_ONNX_OP = {
    "Relu": "relu",
    "Gelu": "gelu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "LeakyRelu": "leaky_relu",
    "Elu": "elu",
    "Softplus": "softplus",
    "Clip": "hardtanh",
}
