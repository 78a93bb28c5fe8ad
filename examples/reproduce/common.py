"""Shared pipeline of the paper reproductions: train a population of digits MLPs, save checkpoints,
measure them through deepscope's SDK (an embedded server), and write a markdown table and a figure.

Why one module: the four scripts differ only in which checkpoints they need and which metrics they
read; training, exporting, talking to the server and writing outputs must not drift apart.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import deepscope

ROOT = Path(__file__).resolve().parents[2]
#: Where ``make reproduce`` puts figures, tables and the per-paper summaries.
DEFAULT_OUT = ROOT / "docs" / "reproductions"


# ----------------------------------------------------------------------------- data and models


@dataclass(frozen=True)
class Digits:
    """scikit-learn's digits scaled to [0, 1], split 75/25 stratified (the same split as the server's)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits() -> Digits:
    data = load_digits()  # ships with scikit-learn: no download
    x = (data.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    return Digits(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te))


class MLP(nn.Module):
    """64 -> hidden... -> 10 with ReLU; modules are named ``fc1, act1, fc2, act2, ..., out`` so layer
    names read the same in the ONNX and .pt2 layer tables."""

    def __init__(self, hidden: Sequence[int]) -> None:
        super().__init__()
        dims = [64, *hidden]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]), start=1):
            self.add_module(f"fc{i}", nn.Linear(a, b))
            self.add_module(f"act{i}", nn.ReLU())
        self.out = nn.Linear(dims[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- training and checkpoints


@dataclass(frozen=True)
class TrainSpec:
    """One population member: architecture, seed and optimiser; checkpoints after the listed epochs
    (epoch 0 = the untrained initialisation)."""

    seed: int
    hidden: tuple[int, ...] = (64, 64, 64)
    epochs: tuple[int, ...] = (0, 20)
    lr: float = 1e-3
    optimiser: str = "adam"  # "adam" or "sgd"
    batch_size: int = 64
    tag: str = ""


@dataclass
class Checkpoint:
    seed: int
    epoch: int
    path: Path
    train_accuracy: float
    test_accuracy: float
    tag: str = ""
    hidden: tuple[int, ...] = field(default_factory=tuple)


def export(model: nn.Module, path: Path, example: torch.Tensor) -> Path:
    """Save as the exporters write by default: ``.onnx`` through ``torch.onnx.export`` (external
    weights file and all) or ``.pt2`` through ``torch.export``; the batch dimension is dynamic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    if path.suffix == ".onnx":
        torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: batch},), verbose=False)
    elif path.suffix == ".pt2":
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(path))
    else:
        raise ValueError(f"unknown checkpoint format '{path.suffix}'; use .onnx or .pt2")
    return path


def train(spec: TrainSpec, data: Digits, out: Path, fmt: str = "onnx") -> list[Checkpoint]:
    """Train one MLP with cross-entropy; export a checkpoint after every epoch in ``spec.epochs``."""
    torch.manual_seed(spec.seed)
    model = MLP(spec.hidden)
    if spec.optimiser == "adam":
        optimiser: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    else:
        optimiser = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(spec.seed)
    checkpoints = []
    for epoch in range(max(spec.epochs) + 1):
        if epoch > 0:
            model.train()
            for idx in torch.randperm(len(data.x_train), generator=generator).split(spec.batch_size):
                optimiser.zero_grad()
                loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
                optimiser.step()
        if epoch in spec.epochs:
            name = f"{spec.tag or 'mlp'}_s{spec.seed}_e{epoch:03d}.{fmt}"
            path = export(model, out / name, data.x_test[:4])
            checkpoints.append(
                Checkpoint(
                    spec.seed,
                    epoch,
                    path,
                    accuracy(model, data.x_train, data.y_train),
                    accuracy(model, data.x_test, data.y_test),
                    spec.tag,
                    spec.hidden,
                )
            )
    return checkpoints


def train_population(specs: Iterable[TrainSpec], data: Digits, out: Path, fmt: str = "onnx") -> list[Checkpoint]:
    torch.set_num_threads(1)  # two shared cores: one thread trains these small nets as fast
    checkpoints: list[Checkpoint] = []
    timer = Timer()
    for spec in specs:
        checkpoints += train(spec, data, out, fmt)
        last = checkpoints[-1]
        print(
            f"  trained {spec.tag or 'mlp'} seed {spec.seed}: epochs {list(spec.epochs)}, "
            f"final test accuracy {last.test_accuracy:.3f} ({timer.seconds():.0f} s)",
            flush=True,
        )
    return checkpoints


# ----------------------------------------------------------------------------- measuring through the SDK


def pick_key(run: deepscope.Run, metric: str, preferred: Sequence[str]) -> str:
    """The first of ``preferred`` that the results carry, else the metric's declared headline key.

    Metric result keys change between versions; discovering the headline from the server keeps a
    reproduction running (it prints which key it used so a reader can tell).
    """
    keys = {
        item.key
        for r in run.results
        if r.metric == metric and r.status == "ok"
        for item in r.items
        if item.WhichOneof("value") == "scalar"
    }
    for key in preferred:
        if key in keys:
            return key
    fallback = run.headline_keys(metric, limit=1)
    if not fallback:
        raise KeyError(f"{metric}: none of {list(preferred)} in the results and no headline key; keys: {sorted(keys)}")
    print(f"  note: {metric} has none of {list(preferred)}; using its headline key '{fallback[0]}'")
    return fallback[0]


def measure(
    checkpoints: Sequence[Checkpoint],
    data: Digits,
    metrics: Sequence[str],
    layers: Sequence[str] = (),
    params: dict[str, dict[str, Any]] | None = None,
    store: Path | None = None,
    client: deepscope.Client | None = None,
    samples: str = "test",
) -> tuple[deepscope.Run, pd.DataFrame]:
    """Upload the checkpoints, analyse them as one series on the held-out digits (``samples="all"``:
    all 1,797, for metrics that fit models to the representations and need the rows), and return the
    run with a tidy frame of scalar results joined to the checkpoints' seed, epoch and accuracy."""
    own = client is None
    timer = Timer()
    client = client or deepscope.Client.embedded(store=store, progress=False)
    try:
        print(f"  server ready ({timer.seconds():.0f} s); uploading {len(checkpoints)} checkpoints", flush=True)
        models = [client.upload_model(c.path) for c in checkpoints]
        x, y = data.x_test.numpy(), data.y_test.numpy()
        if samples == "all":
            x, y = np.concatenate([data.x_train.numpy(), x]), np.concatenate([data.y_train.numpy(), y])
        print(f"  analysing ({timer.seconds():.0f} s): {', '.join(metrics)}", flush=True)
        run = client.analyze(
            models, data=(x, y), metrics=list(metrics), layers=list(layers), params=params or {}, batch_size=len(x)
        )
        print(f"  analysed ({timer.seconds():.0f} s)", flush=True)
    finally:
        if own:
            client.close()
    if run.status != "completed" or run.failures:
        raise RuntimeError(f"run {run.id} {run.status}; failures: {run.failures}")
    not_ok = [(r.metric, r.layer, r.checkpoint, r.status, r.error) for r in run.results if r.status != "ok"]
    for metric, layer, checkpoint, status, error in not_ok:
        print(f"  note: {metric} on '{layer}' (checkpoint {checkpoint}) {status}: {error}")
    frame = run.to_pandas(scalars_only=True)
    frame = frame[frame["kind"] == "scalar"].copy()
    frame["value"] = frame["value"].astype(float)
    meta = pd.DataFrame(
        [
            {
                "checkpoint": i,
                "seed": c.seed,
                "epoch": c.epoch,
                "tag": c.tag,
                "test_accuracy": c.test_accuracy,
                "train_accuracy": c.train_accuracy,
            }
            for i, c in enumerate(checkpoints)
        ]
    )
    return run, frame.merge(meta, on="checkpoint")


def select(frame: pd.DataFrame, metric: str, key: str) -> pd.DataFrame:
    """Rows of one metric's scalar ``key`` (per layer and checkpoint)."""
    rows = frame[(frame["metric"] == metric) & (frame["key"] == key)]
    if rows.empty:
        raise KeyError(f"no '{key}' values for {metric}")
    return rows


def layer_order(layers: Iterable[str]) -> list[str]:
    """fc1, act1, fc2, ... in network order (digits in names compared as numbers)."""

    def rank(name: str) -> tuple[int, str]:
        digits_in = "".join(ch for ch in name if ch.isdigit())
        return (int(digits_in) if digits_in else 10**6, name)

    return sorted(set(layers), key=rank)


# ----------------------------------------------------------------------------- outputs


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}" if 0 < abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which we do not depend on)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def mean_sd(values: pd.Series) -> str:
    values = values.astype(float)
    if len(values) == 1:
        return fmt(float(values.iloc[0]))
    return f"{fmt(float(values.mean()))} ± {float(values.std(ddof=1)):.3f}"


def epoch_series_setup(specs: Sequence[TrainSpec], measured: str) -> str:
    """The setup paragraph of a reproduction over training time: the population, its checkpoints and
    ``measured`` (what the server computed, on which digits)."""
    optimiser = {"adam": "Adam", "sgd": "SGD with momentum"}[specs[0].optimiser]
    return (
        f"{len(specs)} seeds of a {'-'.join(map(str, specs[0].hidden))} ReLU MLP, checkpoints after epochs "
        f"{', '.join(map(str, specs[0].epochs))} ({optimiser}), exported with `torch.export`; {measured}"
    )


def plot_over_epochs(ax: Any, frame: pd.DataFrame, layers: Sequence[str]) -> None:
    """Each layer's mean ± sd over seeds of ``frame``'s values against epoch, on a log axis (epoch 0 drawn at 0.5)."""
    for layer in layers:
        per_layer = frame[frame["layer"] == layer].groupby("epoch")["value"]
        epochs = np.maximum(per_layer.mean().index.to_numpy(dtype=float), 0.5)
        yerr = per_layer.std(ddof=1).fillna(0)
        ax.errorbar(epochs, per_layer.mean(), yerr=yerr, marker="o", ms=3, capsize=2, label=layer)
    ax.set_xscale("log")
    ax.set_xlabel("epoch (0 at 0.5)")


@dataclass
class Outcome:
    """One checked claim: what the paper says, what we measured, and whether it held here."""

    claim: str
    measured: str
    held: bool | None  # None: not testable in this setting


@dataclass
class Report:
    """Everything a reproduction writes: docs/reproductions/<name>.{md,png,json}."""

    name: str
    title: str
    paper: str
    setup: str
    table: str
    outcomes: list[Outcome]
    keys_read: dict[str, str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self, figure: str) -> str:
        verdict = {True: "held", False: "did not hold", None: "not testable here"}
        lines = [
            f"## {self.title}",
            "",
            f"*{self.paper}*",
            "",
            self.setup,
            "",
            f"![{self.title}]({figure})",
            "",
            self.table,
            "",
            "| claim | measured | verdict |",
            "|---|---|---|",
        ]
        lines += [f"| {o.claim} | {o.measured} | **{verdict[o.held]}** |" for o in self.outcomes]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        keys = ", ".join(f"`{m}` → `{k}`" for m, k in self.keys_read.items())
        lines += [
            "",
            f"Metric keys read: {keys}. Script: `examples/reproduce/{self.name}.py`, "
            f"{self.seconds:.0f} s on this machine.",
        ]
        return "\n".join(lines) + "\n"


def write_outputs(report: Report, figure: Any, out: Path) -> Path:
    """Save the figure (PNG), the section markdown and a JSON copy; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{report.name}.png"
    figure.savefig(png, dpi=110, bbox_inches="tight")
    md = out / f"{report.name}.md"
    md.write_text(report.markdown(f"reproductions/{png.name}"))
    (out / f"{report.name}.json").write_text(json.dumps(asdict(report), indent=1, default=str))
    print(f"  wrote {md} and {png}")
    return md


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def main(name: str, reproduce: Any) -> None:
    """Command line shared by the scripts: ``--out DIR`` (default docs/reproductions), ``--quick``
    (a tiny population and 1-2 epochs, for the smoke test), ``--work DIR`` (checkpoints and the
    server's store; a temporary directory by default)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=f"deepscope reproduction: {name}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="tiny population, 1-2 epochs (smoke test)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix=f"deepscope-{name}-") as tmp:
        work = args.work or Path(tmp)
        report, figure = reproduce(work, args.quick)
        report.seconds = timer.seconds()
        write_outputs(report, figure, args.out)
    print(f"{name}: done in {report.seconds:.0f} s")
