"""Metric coverage: every built-in metric on every conformance architecture, through the server's run path.

The model file is uploaded into a real store (``ModelManager.upload``), the run is planned by
``plan_run`` (``--metrics all``: metrics that apply to no layer come back as skipped with their
reason) and executed by ``RunExecutor`` with the data streamed as a client would, so the results
are exactly what a user gets over gRPC, minus the transport. Parameters are the cheap end of
each metric's range: coverage asks "does it give a result", the unit tests check the numbers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepscope.v1 import introspection_pb2 as pb
from deepscope_server import convert
from deepscope_server.analysis import RunExecutor, plan_run
from deepscope_server.config import Limits
from deepscope_server.models import ModelManager
from deepscope_server.plugins import Registry, load_registry
from deepscope_server.store import Store

from . import conformance as conf

BUILTIN = "deepscope-metrics"  #: the distribution whose metrics are the built-in ones
EXPORT = "pt2_dynamic"  #: one export per architecture: cnt.* cross-format agreement is tested separately
SAMPLES = 24
#: Cheap settings: few samples, draws, steps and restarts, coarse grids.
PARAMS: dict[str, dict[str, object]] = {
    "basins.sample": {"samples": 4, "draws": 4, "steps": 3, "curve_points": 2},
    "basins.weight": {"samples": 4, "draws": 2, "steps": 2, "curve_points": 2},
    "cnt.divergence": {"grid_points": 64},
    "cnt.link_weights": {"grid_points": 64},
    "cnt.neuron_strength": {"grid_points": 64},
    "cnt.neuron_activation": {"grid_points": 64},
    "complexity.piecewise": {"k_max": 2, "min_cluster_size": 4, "pca_dim": 4, "max_width": 64},
    "complexity.linear_fvu": {"pca_dim": 4, "max_width": 64},
    "fractal.box_dimension": {"restarts": 1, "n_sizes": 4},
    "fractal.correlation_dimension": {"reduction": "pca"},
    "fractal.correlation_dimension_gp": {"n_radii": 4},
    "fractal.spectrum_exponent": {"min_values": 5},
    "fractal.ss_rate": {"n_thresholds": 16},
}
#: (architecture, metric) -> why a failure there is known and left to the metric's owner.
EXPECTED_FAILURES: dict[tuple[str, str], str] = {}


@dataclass
class Coverage:
    """The results of one ``--metrics all`` run on one architecture."""

    arch: str
    results: list[pb.MetricResult] = field(default_factory=list)
    error: str = ""

    def by_metric(self) -> dict[str, list[pb.MetricResult]]:
        out: dict[str, list[pb.MetricResult]] = {}
        for r in self.results:
            out.setdefault(r.metric, []).append(r)
        return out


def builtin_metrics(registry: Registry) -> list[str]:
    return sorted(n for n, e in registry.metrics.items() if e.plugin == BUILTIN)


def _request(name: str) -> pb.MetricRequest:
    req = pb.MetricRequest(name=name)
    for key, value in PARAMS.get(name, {}).items():
        req.params[key].CopyFrom(convert.value_proto(value))
    return req


def run(arch: str, path: Path, store_dir: Path, registry: Registry) -> Coverage:
    """Upload ``arch``'s export at ``path`` and run every built-in metric on a few samples."""
    model, _ = conf.build(arch)
    x = torch.randn(SAMPLES, *conf.ARCHS[arch].input_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        labels = model(x).argmax(dim=1).numpy().astype(np.int64)
    limits = Limits()
    store = Store(store_dir)
    try:
        models = ModelManager(store, limits=limits, isolation="thread")
        loaded = models.upload(path.name, [path.read_bytes()], limits.max_model_bytes, None)
        config = pb.AnalyzeConfig(
            models=[loaded.stored.id],
            metrics=[_request(n) for n in builtin_metrics(registry)],
            batch_size=8,
            seed=0,
            expected_samples=SAMPLES,
        )
        plan = plan_run(config, registry, models, limits)
        name = loaded.graph.inputs[0].name
        xs = x.numpy()
        batches = iter([({name: xs[i : i + 8]}, labels[i : i + 8]) for i in range(0, SAMPLES, 8)])
        events: list[pb.AnalyzeEvent] = []
        executor = RunExecutor(
            plan, store, events.append, threading.Event(), limits.max_run_seconds, batches, isolation="thread"
        )
        executor.create()
        executor.execute()
        return Coverage(arch, [e.result for e in events if e.HasField("result")])
    except Exception as exc:  # reported per architecture, asserted in the tests
        return Coverage(arch, error=f"{type(exc).__name__}: {exc}")
    finally:
        store.close()


def run_all(directory: Path) -> list[Coverage]:
    """Every architecture; ``directory`` is the one ``conformance.run_all`` exported into (its EXPORT is reused)."""
    registry = load_registry()
    return [
        run(arch, conf.export_path(directory, arch, EXPORT), directory / arch / "store", registry)
        for arch in conf.ARCHS
    ]


def status(results: list[pb.MetricResult]) -> str:
    """One metric's outcome on an architecture: ok (n layers), skipped, or n failed."""
    failed = sum(r.status == "failed" for r in results)
    ok = sum(r.status == "ok" for r in results)
    if not results:
        return "missing"
    if failed:
        return f"{failed} failed"
    if not ok:
        return "skipped"
    return "ok"


def document(results: list[conf.Result], coverages: list[Coverage]) -> str:
    """``docs/models.md``: the compatibility matrix, then which metric gives a result on which architecture."""
    names = sorted({m for c in coverages for m in c.by_metric()})
    lines = [
        conf.matrix_markdown(results).rstrip("\n"),
        "",
        "## Metric coverage",
        "",
        f"Every built-in metric run with `--metrics all` on each architecture (`{EXPORT}` export, {SAMPLES} samples,",
        "cheap parameters) through the server's run path: **ok** = a result for every layer it applies to,",
        "**skipped** = it applies to no layer of the model (the reason below), **failed** = a bug.",
        "Recurrent layers (LSTM, GRU) and attention are measured by the weight metrics (`cnt.*` split them into",
        "gate / projection blocks: `ih.i`, `hh.f`, ..., `q`, `k`, `v`, `out`; `basins.weight` perturbs their",
        "matrices); activation metrics (`modes.*`) need activation layers, which a bare LSTM/GRU model lacks.",
        "",
        "| metric | " + " | ".join(c.arch for c in coverages) + " |",
        "| --- | " + " | ".join("---" for _ in coverages) + " |",
    ]
    for name in names:
        cells = [status(c.by_metric().get(name, [])) if not c.error else "run failed" for c in coverages]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    reasons = sorted({(r.metric, r.error) for c in coverages for r in c.results if r.status == "skipped"})
    if reasons:
        lines += ["", "Skipped, and why:", ""]
        lines += [f"- `{metric}`: {error}" for metric, error in reasons]
    if EXPECTED_FAILURES:
        lines += ["", "Known failures:", ""]
        lines += [f"- `{metric}` on {arch}: {why}" for (arch, metric), why in sorted(EXPECTED_FAILURES.items())]
    return "\n".join(lines) + "\n"
