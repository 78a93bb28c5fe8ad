"""Built-in server-side datasets, registered through the ``deepscope`` entry point like any plugin.

``digits``: scikit-learn's 1,797 8x8 handwritten digits (ships with the package, no download),
scaled to [0, 1] and reshaped to the model's input shape (64 features, or 1x8x8 images).
``synthetic``: seeded standard-normal inputs of the model's input shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from deepscope.dtypes import numpy_dtype

from .errors import InvalidInput, shorten
from .model_graph import TensorSpec
from .plugin_api import hookimpl

Batches = Iterator[tuple[np.ndarray, np.ndarray | None]]
SPLITS = ("train", "test", "all")


def _sample_shape(spec: TensorSpec, dynamic_fill: int = 16) -> tuple[int, ...]:
    return tuple(dynamic_fill if d is None or d < 0 else int(d) for d in spec.shape[1:])


def _batched(x: np.ndarray, y: np.ndarray | None, batch_size: int) -> Batches:
    for lo in range(0, len(x), batch_size):
        yield x[lo : lo + batch_size], None if y is None else y[lo : lo + batch_size]


class Digits:
    name = "digits"
    description = "scikit-learn load_digits: 1,797 8x8 images, 10 classes; split train (75%) / test (25%), fixed"

    def batches(
        self, spec: TensorSpec, batch_size: int, limit: int | None, seed: int, split: str
    ) -> tuple[int, Batches]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in SPLITS:
            raise InvalidInput(f"unknown split '{shorten(split)}' for digits; use one of {', '.join(SPLITS)}")
        shape = _sample_shape(spec)
        if math.prod(shape) != 64:
            raise InvalidInput(
                f"dataset 'digits' has 64 features per sample (8x8), but the model input '{spec.name}' "
                f"expects shape {list(shape)}; use a model taking [B, 64] or [B, 1, 8, 8], or send your own data"
            )
        data = load_digits()
        x = (data.data / 16.0).astype(numpy_dtype(spec.dtype) if spec.dtype.startswith("FP") else np.float32)
        y = data.target.astype(np.int64)
        if split != "all":
            x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
            x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
        if limit:
            x, y = x[:limit], y[:limit]
        return len(x), _batched(x.reshape((len(x), *shape)), y, batch_size)


class Synthetic:
    name = "synthetic"
    description = "seeded standard-normal inputs of the model's input shape (1,024 samples unless limited)"
    default_samples = 1024

    def batches(
        self, spec: TensorSpec, batch_size: int, limit: int | None, seed: int, split: str
    ) -> tuple[int, Batches]:
        if not spec.dtype.startswith(("FP", "BF")):
            raise InvalidInput(f"dataset 'synthetic' makes float inputs; model input '{spec.name}' is {spec.dtype}")
        n = limit or self.default_samples
        shape = _sample_shape(spec)
        dtype = numpy_dtype(spec.dtype)

        def generate() -> Batches:
            rng = np.random.default_rng(seed)
            for lo in range(0, n, batch_size):
                yield rng.standard_normal((min(batch_size, n - lo), *shape)).astype(dtype), None

        return n, generate()


@hookimpl
def deepscope_register_datasets(register) -> None:  # the hookspec types it
    register(Digits())
    register(Synthetic())
