"""Train a small MLP on scikit-learn's digits with and without the S2-Con self-similarity loss.

Runs offline on CPU in well under 30 s and prints, for both runs, the test accuracy and the
SS_rate of each hidden layer on the test set (mean over batches of 64 samples).

    python examples/s2con_digits.py [--epochs 30] [--target 0.2] [--weight 0.1] [--seed 0]

S2-Con as in Ding et al. 2025: each step one hidden layer is picked at random and
``z * weight * 0.5 * (SS_rate - target)^2`` is added to the cross-entropy; the gate z is 0 in the
first epoch and fades the penalty when SS_rate drifts more than 5 % from the epoch reference.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from deepscope_metrics.fractal import ss_rate_batches
from deepscope_metrics.fractal.s2con import S2ConLoss


class MLP(nn.Module):
    def __init__(self, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        dims = [64] + [width] * depth
        self.hidden = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.hidden:
            x = block(x)
            feats.append(x)
        return self.head(x), feats


def train(data, use_s2con: bool, args) -> tuple[float, list[float], float]:
    x_tr, x_te, y_tr, y_te = data
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    s2con = S2ConLoss(target=args.target, weight=args.weight)
    gates = []
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr))
        for lo in range(0, len(x_tr) - 63, 64):  # drop_last, as the authors' loader does
            idx = perm[lo : lo + 64]
            logits, feats = model(x_tr[idx])
            loss = nn.functional.cross_entropy(logits, y_tr[idx])
            if use_s2con:
                loss = loss + s2con(S2ConLoss.pick(feats, rng))
                gates.append(s2con.last_gate)
            opt.zero_grad()
            loss.backward()
            opt.step()
        s2con.end_epoch()
    model.eval()
    with torch.no_grad():
        logits, feats = model(x_te)
    acc = float((logits.argmax(1) == y_te).float().mean())
    rates = [float(np.nanmean([r.value for r in ss_rate_batches(f.numpy(), 64)])) for f in feats]
    return acc, rates, float(np.mean(gates)) if gates else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.2, help="gamma, the target SS_rate")
    ap.add_argument("--weight", type=float, default=0.1, help="alpha, the loss weight")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    data = (
        torch.tensor(x_tr, dtype=torch.float32),
        torch.tensor(x_te, dtype=torch.float32),
        torch.tensor(y_tr),
        torch.tensor(y_te),
    )
    print(f"digits: {len(x_tr)} train / {len(x_te)} test; MLP 64-64-64-64-10; {args.epochs} epochs; seed {args.seed}")
    for use in (False, True):
        t = time.perf_counter()
        acc, rates, gate = train(data, use, args)
        label = f"S2-Con (gamma={args.target}, alpha={args.weight})" if use else "baseline"
        extra = f", mean gate z {gate:.2f}" if use else ""
        print(
            f"{label:32s} test acc {acc:.4f}  SS_rate per hidden layer "
            f"{', '.join(f'{r:.3f}' for r in rates)}  ({time.perf_counter() - t:.1f} s{extra})"
        )


if __name__ == "__main__":
    main()
