"""S2-Con: forward = the numpy SS_rate, backward = autograd of a direct transcription of the authors'
straight-through linkage, the drift gate, and that optimising it moves SS_rate towards the target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepscope_metrics.fractal import ss_rate
from deepscope_metrics.fractal.s2con import S2ConLoss, node_features, ss_rate_torch

from .test_fractal_ss_rate import boundary_flip

torch.set_num_threads(1)


def transcription(x: torch.Tensor, S: int = 256) -> torch.Tensor:
    """The authors' compute_mse_sim_loss rate, rewritten with plain torch ops (S x P sigmoid).

    As in sfm_loss_d_v2.py: no clamping of the thresholds, the reference line from log(1 + l), and
    the hard count as sigmoid > 0.5; the count is kept in x's dtype (the code's ``.float()`` would
    round it to float32).
    """
    n, d = x.shape
    i1, i2 = torch.triu_indices(n, n, offset=1)
    dist = torch.norm(x[i1] - x[i2], dim=1) / math.sqrt(d)
    tz, tv = dist.min().item(), dist.max().item()
    s = torch.linspace(0, 1, S, dtype=x.dtype)
    l = (1 + tz) * torch.pow((1 + tv) / (1 + tz), s) - 1  # noqa: E741 - the authors' name, transcribed
    link = torch.sigmoid(l[:, None] - dist[None, :])
    hard = (link > 0.5).to(x.dtype).mean(dim=1)
    soft = (link - 0.5).mean(dim=1)
    p = hard + (soft - soft.detach()) * n
    N = n - (n - 1) * torch.log(1 + (n - 1) * p) / math.log(n)
    y = torch.log(N) / math.log(n)
    a, b = np.log(1 + tz), np.log(1 + tv)
    line = ((-torch.log(1 + l) + a) / (b - a) + 1) * 1
    return torch.sum(torch.abs(line - y)) * 2 / S


@pytest.mark.parametrize("D,B,seed", [(6, 3, 0), (20, 16, 1), (40, 64, 2)])
def test_forward_and_straight_through_gradient(D, B, seed):
    x0 = torch.from_numpy(np.random.default_rng(seed).normal(size=(D, B)))
    a = x0.clone().requires_grad_(True)
    b = x0.clone().requires_grad_(True)
    ours, ref = ss_rate_torch(a, chunk=7), transcription(b)
    value = float(ours.detach())
    # scipy's and torch's distances may differ by an ulp, which can move the largest pair across the
    # last threshold (theta_{S-1} = TV only up to rounding): at most one such flip per end of the grid
    assert value == pytest.approx(ss_rate(x0.numpy()).value, abs=2 * boundary_flip(D) + 1e-12)
    assert value == pytest.approx(float(ref.detach()), abs=1e-12)
    ((ours - 0.2) ** 2).backward()
    ((ref - 0.2) ** 2).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    assert a.grad.abs().sum() > 0


def test_gate_follows_engine_py():
    loss = S2ConLoss(target=0.2, weight=1.0, drift_limit=0.05)
    x = torch.randn(32, 20, dtype=torch.float64)  # [B, units]
    assert float(loss(x)) == 0.0 and loss.last_gate == 0.0  # no reference during the first epoch
    rate = loss.last_rate
    loss.end_epoch()
    assert loss.reference == pytest.approx(rate)
    assert loss.gate_value(rate) == 1.0
    assert loss.gate_value(rate * 1.025) == pytest.approx(0.5)  # linear fade
    assert loss.gate_value(rate * 0.95) == pytest.approx(0.0, abs=1e-12)
    assert loss.gate_value(rate * 1.2) == 0.0  # off beyond the 5 % limit
    out = loss(x)  # same batch: no drift, z = 1
    assert float(out) == pytest.approx(0.5 * (rate - 0.2) ** 2)
    # reference refreshed every 3 epochs (epochs 0, 3, 6, ...)
    refs = []
    for epoch in range(1, 7):
        loss(x * (1 + epoch))
        loss.end_epoch()
        refs.append(loss.reference)
    assert refs[0] == refs[1] == pytest.approx(rate) and refs[2] != pytest.approx(rate)
    assert refs[2] == refs[3] == refs[4] and refs[5] != refs[4]


def test_node_features_average_spatial_axes():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    f = node_features(a)
    assert f.shape == (3, 2)
    assert float(f[1, 0]) == pytest.approx(float(a[0, 1].mean()))
    tokens = torch.randn(4, 5, 6)
    torch.testing.assert_close(node_features(tokens, channel_axis=-1), tokens.mean(1).T)


def test_degenerate_gives_zero_loss_without_crash():
    loss = S2ConLoss(gate=False)
    assert float(loss(torch.ones(8, 5))) == 0.0 and math.isnan(loss.last_rate)  # identical nodes
    assert float(loss(torch.randn(8, 2))) == 0.0  # two nodes
    bad = torch.randn(8, 5)
    bad[0, 0] = float("nan")
    assert float(loss(bad)) == 0.0


def test_optimising_moves_rate_towards_target():
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(64, 8, dtype=torch.float64))
    loss = S2ConLoss(target=0.05, weight=1.0, gate=False)
    opt = torch.optim.SGD([x], lr=5.0)
    start = None
    for _ in range(30):
        out = loss(x.T)  # 64 nodes x 8 samples
        start = loss.last_rate if start is None else start
        opt.zero_grad()
        out.backward()
        opt.step()
    loss(x.T)
    assert abs(loss.last_rate - 0.05) < abs(start - 0.05) - 0.01, (start, loss.last_rate)
