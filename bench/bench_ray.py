"""Target 13 (issue 20): the same 8-checkpoint x fast-metrics analysis on the local executor and on
``--executor ray`` with 1 and 2 Ray worker processes (one 1-CPU Ray node each) on this machine.

Reported per case: wall time of ``client.analyze`` (the second of two runs: the first starts Ray's
worker processes and their imports, which a long-lived server pays once), and the peak summed RSS
of every process the case uses (this script's children: the server, its model and metric workers,
and for Ray the cluster's GCS, raylets and workers), polled every 50 ms. The target is a check
that the Ray path returns the local path's results (same keys, same values to 1e-6), not a speed:
on a 2-core box shared with the server, 2 workers cannot beat the local executor by much, and the
scaling expected on a real cluster is worked out in docs/scale.md. ``--smoke``: 2 checkpoints, one
metric, 1 worker; its figures mean nothing (not part of ``run_all.py --smoke``: see NOT_IN_SMOKE).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_streaming_rss import TreeSampler  # noqa: E402
from common import Table, script_main, set_threads  # noqa: E402

from server import BenchServer  # noqa: E402

#: Fast metrics: every built-in metric family whose cost is a pass over the activations or weights
#: (box counting, correlation sums, basins and piecewise fits are minutes-scale and excluded).
FAST = [
    "dimension.*",
    "modes.*",
    "cnt.node_strength",
    "cnt.link_weights",
    "cnt.neuron_activation",
    "complexity.linear_fvu",
    "complexity.pattern_entropy",
    "fractal.spectrum_exponent",
]
MB = 1 << 20


def _checkpoints(out: Path, n: int) -> list[Path]:
    from deepscope_server import zoo

    paths = []
    for seed in range(n):
        model, example = zoo.build("mlp", seed=seed)
        paths.append(zoo.export(model, example, out / f"ckpt{seed}", formats=("onnx",))["onnx"])
    return paths


def _measure(flags: tuple[str, ...], paths: list[Path], metrics: list[str], limit: int) -> tuple[float, int, object]:
    """(seconds of the timed run, peak summed RSS, the run) for a server started with ``flags``."""
    with BenchServer(raw=False, threads=1, flags=flags) as server, server.connect() as client:
        models = [client.upload_model(p, name=f"ckpt{i}.onnx") for i, p in enumerate(paths)]
        client.analyze(models, data="digits", limit=limit, metrics=metrics)  # warm-up (Ray: starts workers)
        with TreeSampler(os.getpid()) as sampler:
            t0 = time.perf_counter()
            run = client.analyze(models, data="digits", limit=limit, metrics=metrics)
            seconds = time.perf_counter() - t0
        return seconds, sampler.memory.peak_rss, run


def _values(run) -> dict:  # deepscope.Run
    out = {}
    for r in run.results:
        for item in r.items:
            if item.WhichOneof("value") == "scalar":
                out[(r.metric, r.layer, r.checkpoint, item.key)] = item.scalar
    return out


def _same(a, b) -> bool:
    va, vb = _values(a), _values(b)
    return va.keys() == vb.keys() and all(np.isclose(va[k], vb[k], rtol=1e-6, atol=1e-9, equal_nan=True) for k in va)


def run(smoke: bool = False) -> list[Table]:
    set_threads(1)
    from ray.cluster_utils import Cluster

    n, metrics, limit = (2, ["dimension.effective"], 64) if smoke else (8, FAST, 512)
    workers = (1,) if smoke else (1, 2)
    table = Table(
        f"13. Ray executor: {n} checkpoints x {len(metrics)} metric patterns, {limit} samples",
        ["executor", "Ray worker processes", "wall s", "peak RSS MB", "speed-up vs local", "same results as local"],
    )
    with tempfile.TemporaryDirectory(prefix="deepscope-bench-ray-") as tmp:
        paths = _checkpoints(Path(tmp), n)
        base_s, base_rss, base_run = _measure((), paths, metrics, limit)
        table.add("local", 0, base_s, base_rss / MB, 1.0, "-")
        store = 80 * MB
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
        try:
            for count in workers:
                while len(cluster.list_all_nodes()) < count:
                    cluster.add_node(num_cpus=1, object_store_memory=store)
                cluster.wait_for_nodes()
                seconds, rss, ray_run = _measure(
                    ("--executor", "ray", "--ray-address", cluster.address), paths, metrics, limit
                )
                same = table.check(
                    _same(base_run, ray_run) and ray_run.status == "completed",
                    f"Ray ({count} workers) results differ from the local executor's",
                )
                table.add("ray", count, seconds, rss / MB, base_s / seconds, same)
        finally:
            cluster.shutdown()
    table.notes += [
        "wall: the second of two identical runs (the first starts Ray's workers); one run each, not medians",
        "peak RSS: summed over this script's child processes (server, workers, Ray's GCS/raylets/workers)",
        "each Ray node is a 1-CPU node on this machine; the server shares the same 2 cores",
    ]
    return [table]


if __name__ == "__main__":
    script_main(run)
