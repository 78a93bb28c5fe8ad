"""Targets 11 and 12 (issue 15): whole analyses at real-model scale, as a user runs them.

11. ``deepscope analyze resnet18.pt2 --data x.npz --metrics all`` on a ResNet-18 (torchvision's
   layout, written here: torchvision does not import in this environment) at 3x112x112 with 256
   samples: wall and server time <= 10 min, every result ``ok`` or ``skipped`` with a reason
   (none failed or killed), JSON <= 10 MB, peak summed RSS of the CLI's process tree (CLI +
   embedded server + model sandbox + metric workers, polled every 50 ms) stated.
12. The bundled MLP demo run (``examples/demo.py``'s analyze command on the epoch-3 MLP) <= 15 s
   of server time (``RunInfo.seconds``).

One run each, not interleaved medians: a ResNet-18 analysis takes minutes, and the target is an
absolute budget on this machine, not a ratio. The load average at the start and end is printed
with the table so a reader can judge the figure. ``--smoke`` shrinks the ResNet (width 8, 32x32,
16 samples) and is not a measurement.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "models"))

from bench_streaming_rss import TreeSampler  # noqa: E402
from common import Table, script_main, set_threads  # noqa: E402

MB = 1e6


def resnet18(width: int = 64, n_classes: int = 1000):  # torch.nn.Module
    """torchvision's ResNet-18: 7x7/2 stem, max-pool, 4 stages of 2 BasicBlocks (1x1 downsample), fc."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = (
                nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                if stride != 1 or c_in != c_out
                else None
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            chans = [w, 2 * w, 4 * w, 8 * w]
            stages, c_in = [], w
            for i, c in enumerate(chans):
                stages.append(nn.Sequential(Block(c_in, c, 1 if i == 0 else 2), Block(c, c, 1)))
                c_in = c
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8 * w, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    return ResNet18().eval()


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _analyze(model: Path, data: str, out: Path, extra: list[str]) -> dict:
    """Run the CLI (embedded server) under a process-tree memory sampler; figures of the run."""
    cmd = [
        sys.executable,
        "-m",
        "deepscope.cli",
        "analyze",
        str(model),
        "--data",
        data,
        "--metrics",
        "all",
        "--json",
        str(out / "run.json"),
        "--store",
        str(out / "store"),
        "--quiet",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeSampler(proc.pid) as sampler:
        text, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if not (out / "run.json").exists():
        raise RuntimeError(f"analyze exited {proc.returncode} without a JSON:\n{text[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    statuses = collections.Counter(r["status"] for r in run["results"])
    bad = [
        f"{r['metric']} {r['layer'] or '(model)'}: {r['error'][:100]}"
        for r in run["results"]
        if r["status"] not in ("ok", "skipped") or (r["status"] == "skipped" and not r["error"])
    ]
    sidecar = out / "run.npz"
    return {
        "slowest": _slowest(out / "store" / "deepscope.db"),
        "exit": proc.returncode,
        "wall": wall,
        "server": run["seconds"],
        "statuses": statuses,
        "bad": bad,
        "json_mb": (out / "run.json").stat().st_size / MB,
        "npz_mb": sidecar.stat().st_size / MB if sidecar.exists() else 0.0,
        "peak_rss_mb": sampler.memory.peak_rss / MB,
        "results": len(run["results"]),
    }


def _slowest(db: Path, top: int = 6) -> str:
    """The metrics with the longest stage time (``MetricResult.seconds``; finishes overlap in workers)."""
    import sqlite3

    from deepscope import times
    from deepscope.v1 import introspection_pb2 as pb

    seconds: dict[str, float] = {}
    with sqlite3.connect(db) as con:
        for (payload,) in con.execute("SELECT payload FROM results"):
            r = pb.MetricResult.FromString(payload)
            seconds[r.metric] = max(seconds.get(r.metric, 0.0), times.seconds(r.duration))
    return ", ".join(f"{m} {s:.0f} s" for m, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:top])


def _resnet_case(tmp: Path, smoke: bool) -> tuple[str, dict]:
    import torch

    from deepscope_server import zoo

    width, size, n = (8, 32, 16) if smoke else (64, 112, 256)
    model = resnet18(width)
    path = zoo.export(model, torch.randn(2, 3, size, size), tmp / "resnet", formats=("pt2",), stem="resnet18")["pt2"]
    rng = np.random.default_rng(0)
    np.savez(tmp / "data.npz", x=rng.standard_normal((n, 3, size, size)).astype(np.float32), y=rng.integers(0, 1000, n))
    out = tmp / "resnet_run"
    out.mkdir()
    return f"ResNet-18 (width {width}), 3x{size}x{size}, {n} samples, --metrics all", _analyze(
        path, str(tmp / "data.npz"), out, ["--limit", str(n), "--batch-size", "32" if not smoke else "8"]
    )


def _mlp_case(tmp: Path, smoke: bool) -> tuple[str, dict]:
    sys.path.insert(0, str(ROOT / "examples"))
    import demo  # the README demo's own training and analyze arguments

    paths = demo.train_with_checkpoints("mlp", [3], tmp / "mlp", "onnx")
    out = tmp / "mlp_run"
    out.mkdir()
    case = "bundled MLP demo (epoch 3, digits, 300 samples)"
    return case, _analyze(paths[0], "digits", out, demo.analyze_args(smoke))


def run(smoke: bool = False) -> list[Table]:
    set_threads()
    table = Table(
        "11-12. Whole analyses at scale (issue 15)",
        ["case", "server s", "wall s", "results (ok/skipped/failed)", "JSON MB (+npz)", "peak RSS MB", "target", "met"],
    )
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        tmp = Path(d)
        for case, budget, fn in (("resnet", 600.0, _resnet_case), ("mlp", 15.0, _mlp_case)):
            name, r = fn(tmp, smoke)
            s = r["statuses"]
            ok = r["exit"] == 0 and not r["bad"] and r["server"] <= budget and (case == "mlp" or r["wall"] <= budget)
            if case == "resnet":
                ok = ok and r["json_mb"] <= 10.0
                target = "<= 600 s, all ok/skipped, JSON <= 10 MB"
            else:
                target = "<= 15 s server"
            table.add(
                name,
                f"{r['server']:.1f}",
                f"{r['wall']:.1f}",
                f"{r['results']} ({s.get('ok', 0)}/{s.get('skipped', 0)}/{s.get('failed', 0)})",
                f"{r['json_mb']:.2f} (+{r['npz_mb']:.1f})",
                f"{r['peak_rss_mb']:.0f}",
                target,
                table.check(ok, name),
            )
            table.notes += [f"{case}: {b}" for b in r["bad"][:10]]
            table.notes.append(f"{case}: slowest stages: {r['slowest']}")
    table.notes.append(
        f"load average (1/5/15 min) before: {load_before}; after: {_load()}; "
        f"torch/ORT threads {os.environ.get('DEEPSCOPE_ORT_THREADS')}"
    )
    return [table]


if __name__ == "__main__":
    script_main(run)
