"""S2-Con, the self-similarity constraint of Ding et al. 2025 as a differentiable torch loss.

Faithful to the authors' ``sfm/sfm_loss_d_v2.py`` and ``engine.py``:

- forward: the hard SS_rate of the feature network (strict counts ``d_ij < theta_k``, decided as the
  code decides them: ``sigmoid(theta_k - d_ij) > 0.5`` in the features' dtype);
- backward (straight-through): as if ``p_k`` were ``hard + D * (soft - soft.detach())`` with
  ``soft_k = mean_pairs sigmoid(sharpness * (theta_k - d_ij))`` - thresholds are constants;
- loss = ``z * alpha * 0.5 * (SS_rate - gamma)^2``;
- gate ``z = 1 - min(|SS - SS_ref| / SS_ref, limit) / limit`` (limit 5 %): the penalty fades
  linearly and is off once SS drifts 5 % from the epoch reference; ``z = 0`` until a reference
  exists (the first epoch only records). The reference is the mean SS of an epoch, refreshed
  every ``reference_every`` epochs (code default 3).

Distances come from ``torch.pdist`` and the backward pass loops over threshold chunks, so memory
is O(P + chunk * P) instead of the reference code's P x B pair differences and S x P sigmoid.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torch import nn


class _StraightThroughCounts(torch.autograd.Function):
    """p_k = #{d < theta_k}/P forward; gradient of ``scale * mean(sigmoid(sharp*(theta_k - d)))``."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, theta: torch.Tensor, scale: float, sharpness: float, chunk: int):
        d_sorted = torch.sort(d.detach()).values
        theta_d = theta.detach().to(d.dtype)
        idx = torch.searchsorted(d_sorted, theta_d, right=False)
        while True:  # the code's count is sigmoid(theta - d) > 0.5: step back over boundary pairs it misses
            inside = torch.sigmoid(theta_d - d_sorted[(idx - 1).clamp(min=0)]) > 0.5
            back = (idx > 0) & ~inside
            if not bool(back.any()):
                break
            idx = idx - back.long()
        p = idx.to(d.dtype) / d.numel()
        ctx.save_for_backward(d, theta)
        ctx.scale, ctx.sharpness, ctx.chunk = scale, sharpness, chunk
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        d, theta = ctx.saved_tensors
        k, grad_d = ctx.sharpness, torch.zeros_like(d)
        for lo in range(0, theta.numel(), ctx.chunk):
            sig = torch.sigmoid(k * (theta[lo : lo + ctx.chunk, None].to(d.dtype) - d[None, :]))
            # d/d(d_ij) sigmoid(k (theta - d)) = -k sig (1 - sig)
            grad_d -= (grad_p[lo : lo + ctx.chunk, None] * sig * (1 - sig)).sum(0) * k
        return grad_d * (ctx.scale / d.numel()), None, None, None, None


def ss_rate_torch(
    features: torch.Tensor, n_thresholds: int = 256, sharpness: float = 1.0, chunk: int = 32
) -> torch.Tensor:
    """Differentiable SS_rate of ``features[D, B]`` (rows = nodes) with the straight-through gradient.

    Returns NaN (no gradient) for degenerate inputs: D < 3, non-finite values, all distances equal.
    """
    D, B = features.shape
    if D < 3 or not torch.isfinite(features).all():
        return features.new_tensor(float("nan"))
    d = torch.pdist(features) / math.sqrt(B)
    tz, tv = float(d.detach().min()), float(d.detach().max())
    if tv == tz:
        return features.new_tensor(float("nan"))
    s = torch.linspace(0.0, 1.0, n_thresholds, dtype=features.dtype, device=features.device)
    theta = (1.0 + tz) * torch.pow((1.0 + tv) / (1.0 + tz), s) - 1.0  # the code's order of operations
    p = _StraightThroughCounts.apply(d, theta, float(D), sharpness, chunk)
    n_theta = D - (D - 1) * torch.log(1 + (D - 1) * p) / math.log(D)
    y = torch.log(n_theta) / math.log(D)
    a, b = math.log(1.0 + tz), math.log(1.0 + tv)
    line = (-torch.log(1 + theta) + a) / (b - a) + 1  # the code's reference line, 1 - s_k up to rounding
    return torch.abs(line - y).sum() * 2 / n_thresholds


def node_features(activation: torch.Tensor, channel_axis: int = 1) -> torch.Tensor:
    """``[B, ...]`` layer output -> ``[units, B]``: units on ``channel_axis``, other axes averaged.

    For ``[B, C]`` and ``[B, C, H, W]`` use the default; for tokens ``[B, T, C]`` use ``-1``.
    """
    if activation.dim() == 2:
        return activation.transpose(0, 1)
    moved = torch.movedim(activation, channel_axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1).mean(dim=2).transpose(0, 1)


class S2ConLoss(nn.Module):
    """The S2-Con penalty for one hooked layer per step; add its output to the task loss.

    ``loss = s2con(activation)`` -> ``z * weight * 0.5 * (SS - target)^2`` (0-dim tensor);
    ``s2con.end_epoch()`` after each epoch refreshes the drift reference. ``last_rate`` and
    ``last_gate`` hold the latest SS_rate and z. ``pick`` chooses a random layer from a list.
    """

    def __init__(
        self,
        target: float = 0.2,
        weight: float = 0.1,
        drift_limit: float = 0.05,
        reference_every: int = 3,
        n_thresholds: int = 256,
        sharpness: float = 1.0,
        channel_axis: int = 1,
        gate: bool = True,
    ) -> None:
        super().__init__()
        self.target, self.weight, self.drift_limit = target, weight, drift_limit
        self.reference_every, self.n_thresholds, self.sharpness = reference_every, n_thresholds, sharpness
        self.channel_axis, self.gate = channel_axis, gate
        self.reference: float | None = None
        self.epoch = 0
        self._reference_epoch = 0
        self._epoch_rates: list[float] = []
        self.last_rate = float("nan")
        self.last_gate = 0.0

    def gate_value(self, rate: float) -> float:
        """z from the relative drift of ``rate`` against the reference (0 without a reference)."""
        if not self.gate:
            return 1.0
        if self.reference is None or not math.isfinite(rate) or self.reference == 0:
            return 0.0
        drift = min(abs(rate - self.reference) / abs(self.reference), self.drift_limit)
        return 1.0 - drift / self.drift_limit

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        rate = ss_rate_torch(node_features(activation, self.channel_axis), self.n_thresholds, self.sharpness)
        self.last_rate = float(rate.detach())
        if not math.isfinite(self.last_rate):
            self.last_gate = 0.0
            return activation.new_zeros(())
        self._epoch_rates.append(self.last_rate)
        self.last_gate = self.gate_value(self.last_rate)
        return self.last_gate * self.weight * 0.5 * (rate - self.target) ** 2

    def end_epoch(self) -> None:
        """Set the reference to this epoch's mean SS_rate: after the first epoch, then every
        ``reference_every`` epochs (as the authors' engine.py does)."""
        if self._epoch_rates and (self.reference is None or self.epoch - self._reference_epoch >= self.reference_every):
            self.reference = sum(self._epoch_rates) / len(self._epoch_rates)
            self._reference_epoch = self.epoch
        self._epoch_rates = []
        self.epoch += 1

    @staticmethod
    def pick(activations: Sequence[torch.Tensor], rng: random.Random | None = None) -> torch.Tensor:
        """One randomly chosen hooked layer per step, as in the paper."""
        return (rng or random).choice(list(activations))
