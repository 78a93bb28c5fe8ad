"""The README demo: train a small MLP and CNN on scikit-learn's digits, save checkpoints as ONNX and
.pt2, then run ``deepscope analyze`` on each series with every built-in metric (embedded server),
printing per-layer tables and writing HTML reports to demo-out/.

    make demo            # or: .venv/bin/python examples/demo.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from deepscope_server import zoo


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def train_with_checkpoints(name: str, epochs: list[int], out: Path, fmt: str) -> list[Path]:
    """Train a zoo model; export a checkpoint after each epoch in ``epochs``."""
    model, _ = zoo.build(name, seed=0)
    x_tr, y_tr, x_te, y_te = digits()
    if name == "cnn":
        x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    paths = []
    for epoch in range(1, max(epochs) + 1):
        model.train()
        for idx in torch.randperm(len(x_tr), generator=generator).split(64):
            optimiser.zero_grad()
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            optimiser.step()
        if epoch in epochs:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x_te).argmax(1) == y_te).float().mean().item()
            print(f"  {name} epoch {epoch:2d}: test accuracy {accuracy:.3f}")
            paths.append(
                zoo.export(
                    model, x_te[:4], out / name / f"epoch{epoch:02d}", formats=(fmt,), stem=f"{name}_epoch{epoch:02d}"
                )[fmt]
            )
    return paths


def analyze(paths: list[Path], report: Path, extra: list[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "deepscope.cli",
        "analyze",
        *map(str, paths),
        "--data",
        "digits",
        "--metrics",
        "all",
        "--report",
        str(report),
        "--json",
        str(report.with_suffix(".json")),
        "--store",
        str(report.parent / "store"),
        *extra,
    ]
    print(
        "\n$ deepscope analyze "
        + " ".join(str(p.relative_to(report.parent.parent)) if p.is_absolute() else str(p) for p in paths)
        + " --data digits --metrics all --report ..."
    )
    return subprocess.call(command)


def analyze_args(quick: bool) -> list[str]:
    """The demo's ``deepscope analyze`` options besides models, data and outputs (bench/bench_analyze_scale.py
    times the same): basins re-run the model many times per sample, so a smaller sample keeps the demo
    to a few minutes."""
    basins = ["basins.sample.samples=32", "basins.sample.draws=16", "basins.weight.samples=32", "basins.weight.draws=8"]
    return ["--limit", "128" if quick else "300", *(arg for param in basins for arg in ("--param", param))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--quick", action="store_true", help="fewer samples (for a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print("training on scikit-learn digits (1,347 train / 450 test images)")
    mlp = train_with_checkpoints("mlp", [1, 3, 10], out, "onnx")
    cnn = train_with_checkpoints("cnn", [1, 3, 10], out, "pt2")
    extra = analyze_args(args.quick)
    status = analyze(mlp, out / "mlp_report.html", extra) or analyze(cnn, out / "cnn_report.html", extra)
    print(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s; reports: {out}/mlp_report.html, {out}/cnn_report.html"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
