"""Layer records for unit tests, as the backends describe them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deepscope_server.model_graph import Layer

Shape = tuple[int | None, ...]


def _weights(weight: np.ndarray, bias: np.ndarray | None) -> dict[str, np.ndarray]:
    return {"weight": weight} if bias is None else {"weight": weight, "bias": bias}


def linear(name: str, weight: np.ndarray, bias: np.ndarray | None = None, **kwargs: Any) -> Layer:
    """A Linear layer with ``weight`` as ``W[out, in]`` (the PyTorch layout every backend reports) and
    the flat shapes ``(None, in) -> (None, out)``."""
    out_features, in_features = weight.shape
    shapes = {"input_shapes": [(None, in_features)], "output_shapes": [(None, out_features)]}
    return Layer(name, "linear", "Linear", weights=_weights(weight, bias), **shapes, **kwargs)


def conv2d(
    name: str, kernel: np.ndarray, bias: np.ndarray | None, shape_in: Shape, shape_out: Shape, **kwargs: Any
) -> Layer:
    """A Conv2d layer with ``kernel`` as ``[out, in, kh, kw]``; ``attrs`` (stride, padding, ...) in ``kwargs``."""
    weights = _weights(kernel, bias)
    return Layer(name, "conv", "Conv2d", input_shapes=[shape_in], output_shapes=[shape_out], weights=weights, **kwargs)


def batchnorm(name: str, bn: torch.nn.BatchNorm2d, **kwargs: Any) -> Layer:
    """A BatchNorm2d layer with the module's affine parameters, running statistics and ``eps``."""
    stats = {"running_mean": bn.running_mean, "running_var": bn.running_var}
    weights = {k: v.detach().numpy() for k, v in {"weight": bn.weight, "bias": bn.bias, **stats}.items()}
    return Layer(name, "norm", "BatchNorm2d", weights=weights, attrs={"eps": bn.eps}, **kwargs)
