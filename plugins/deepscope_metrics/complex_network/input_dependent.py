"""Input-dependent strengths (La Malfa et al. 2209.05488 / 2404.11172; reconstructed from abstracts).

Per sampled input x: ``NeuronsStrength_i(x) = Σ_j W[i, j] a_j^(l-1)(x)`` (the pre-activation
without bias) and ``NeuronsActivation_i(x) = φ(NS_i(x) + b_i)``. Distributions are streamed:
exact float64 moments per neuron, per-sample fluctuation moments, and a seeded fixed-size
uniform sample of values for the KDE, so memory does not grow with the number of inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..streaming import merge_moments
from .geometry import ConvGeometry, kernel_as_2d


def activation_function(name: str | None, attrs: dict[str, Any] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The numpy form of an activation named as in ``ACTIVATION_FUNCTIONS`` (None = identity)."""
    a = attrs or {}
    if name is None:
        return lambda z: z
    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "relu": lambda z: np.maximum(z, 0.0),
        "relu6": lambda z: np.clip(z, 0.0, 6.0),
        "hardtanh": lambda z: np.clip(z, a.get("min_val", -1.0), a.get("max_val", 1.0)),
        "gelu": lambda z: torch.nn.functional.gelu(torch.as_tensor(z)).numpy(),
        "silu": lambda z: z / (1.0 + np.exp(-z)),
        "tanh": np.tanh,
        "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
        "leaky_relu": lambda z: np.where(z > 0, z, a.get("negative_slope", 0.01) * z),
        "elu": lambda z: np.where(z > 0, z, a.get("alpha", 1.0) * np.expm1(np.minimum(z, 0.0))),
        "softplus": lambda z: torch.nn.functional.softplus(torch.as_tensor(z), beta=a.get("beta", 1.0)).numpy(),
    }
    if name not in table:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(table)}")
    return table[name]


def neuron_strength_dense(W: np.ndarray, a_prev: np.ndarray) -> np.ndarray:
    """``NS[x, i] = Σ_j W[i, j] a_prev[x, j]`` (last axis; token axes pass through), float64."""
    return np.asarray(a_prev, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T


def neuron_strength_conv(K: np.ndarray, a_prev: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Conv pre-activation without bias for a batch ``[B, C_in, H, W]`` (or ``[B, C_in, L]``), float64."""
    x = torch.as_tensor(np.asarray(a_prev, dtype=np.float64))
    one_d = x.ndim == 3
    if one_d:
        x = x[:, :, None, :]
    pt, pb, pl, pr = geo.pads
    out = F.conv2d(
        F.pad(x, (pl, pr, pt, pb)),
        torch.as_tensor(kernel_as_2d(np.asarray(K, dtype=np.float64))),
        stride=geo.stride,
        dilation=geo.dilation,
        groups=geo.groups,
    )
    return (out[:, :, 0, :] if one_d else out).numpy()


class StreamingDistribution:
    """Streams ``[B, neurons...]`` batches into per-neuron moments, per-sample fluctuation and a reservoir.

    The reservoir is a uniform sample without replacement (smallest random keys, seeded) of at
    most ``reservoir`` values, used for KDE curves. Cost: O(values) for the moments, O(reservoir)
    per batch for the sample once it is full.
    """

    def __init__(self, reservoir: int = 100_000, seed: int = 0) -> None:
        self.k = int(reservoir)
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.mean: np.ndarray | None = None  # per neuron
        self.m2: np.ndarray | None = None  # per-neuron centred sum of squares
        self.fl_mean = self.fl_m2 = 0.0
        self.vmin, self.vmax = np.inf, -np.inf
        self.res_vals = np.empty(0)
        self.res_keys = np.empty(0)

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        if v.shape[0] == 0:
            return
        n0, nb = self.n, v.shape[0]
        self.n = n0 + nb
        _, self.mean, self.m2 = merge_moments(
            n0, self.mean, self.m2, nb, v.mean(axis=0), np.square(v - v.mean(axis=0)).sum(axis=0), np.square
        )
        y = v.std(axis=1)  # input-dependent fluctuation of each sample
        _, fm, fm2 = merge_moments(
            n0,
            np.array(self.fl_mean),
            np.array(self.fl_m2),
            nb,
            np.array(y.mean()),
            np.array(np.square(y - y.mean()).sum()),
            np.square,
        )
        self.fl_mean, self.fl_m2 = float(fm), float(fm2)
        self.vmin, self.vmax = min(self.vmin, float(v.min())), max(self.vmax, float(v.max()))
        self._sample(v.ravel())

    def _sample(self, flat: np.ndarray) -> None:
        """Give every value a uniform key and keep the ``k`` smallest, drawing keys only where they can win.

        Once the reservoir is full with largest key ``t``, a new value can enter only with a key
        below ``t``: how many do is Binomial(m, t), which ones a uniform subset, their keys
        Uniform(0, t). Same distribution as a key per value, without m random numbers and an
        argpartition over m values per batch (ResNet-18 at 112²: 160M values per 256 samples).
        """
        if not self.k or not flat.size:
            return
        if self.res_vals.size < self.k:  # still filling: every value is a candidate
            cand, keys = flat, self.rng.random(flat.size)
        else:
            t = float(self.res_keys.max())
            picked = self.rng.choice(flat.size, self.rng.binomial(flat.size, t), replace=False)
            cand, keys = flat[picked], t * self.rng.random(picked.size)
        vals = np.concatenate([self.res_vals, cand])
        allk = np.concatenate([self.res_keys, keys])
        if vals.size > self.k:
            keep = np.argpartition(allk, self.k - 1)[: self.k]
            vals, allk = vals[keep], allk[keep]
        self.res_vals, self.res_keys = vals, allk

    def result(self) -> dict[str, Any]:
        """Means/stds (ddof=0) per neuron and over all values, fluctuation mean/std, sample count."""
        if self.n == 0 or self.mean is None or self.m2 is None:
            return {"n_samples": 0}
        mean, var = self.mean, self.m2 / self.n
        m_all = float(mean.mean())
        v_all = float(var.mean() + np.square(mean - m_all).mean())  # law of total variance
        return {
            "n_samples": self.n,
            "n_neurons": int(mean.size),
            "mean": m_all,
            "std": float(np.sqrt(v_all)),
            "min": self.vmin,
            "max": self.vmax,
            "neuron_mean": mean,
            "neuron_std": np.sqrt(var),
            "fluctuation_mean": self.fl_mean,
            "fluctuation_std": float(np.sqrt(self.fl_m2 / self.n)),
            "sample": self.res_vals,
        }


def per_channel(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Broadcast a per-channel vector onto ``[B, C, ...]`` maps or ``[B, ..., C]`` dense outputs."""
    if like.ndim > 2 and like.shape[1] == v.size and (like.ndim == 4 or like.shape[-1] != v.size):
        return v.reshape((1, -1) + (1,) * (like.ndim - 2))
    return v


class NeuronStrengthStream:
    """One layer's NS(x) = W a(x), or phi(NS + b) when ``phi`` is given, over its first ``max_samples``
    inputs, read off the layer's captured outputs, into a ``StreamingDistribution``.

    NS is the output minus the layer's own bias ``bias``, times a folded BatchNorm's ``scale``; ``b`` is
    the folded bias added before ``phi``.
    """

    def __init__(
        self,
        max_samples: int,
        acc: StreamingDistribution,
        bias: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        phi: Callable[[np.ndarray], np.ndarray] | None = None,
        b: np.ndarray | None = None,
    ) -> None:
        self.max_samples, self.acc = max_samples, acc
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.scale, self.phi, self.b = scale, phi, b
        self.seen = 0

    def update(self, out: np.ndarray) -> None:
        room = self.max_samples - self.seen
        if room <= 0:
            return
        out = np.asarray(out[:room], dtype=np.float64)
        ns = out - (0.0 if self.bias is None else per_channel(self.bias, out))  # = W a
        if self.scale is not None:
            ns = ns * per_channel(self.scale, ns)  # = W_folded a
        if self.phi is not None:
            ns = self.phi(ns + (0.0 if self.b is None else per_channel(self.b, ns)))
        self.acc.update(ns)
        self.seen += len(ns)
