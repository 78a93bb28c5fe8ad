"""Target 6: server peak RSS of a streaming Analyze is independent of the sample count.

Model: the zoo MLP (.pt2). Data: the server's ``synthetic`` dataset with ``sample_limit``.
Metrics: every built-in metric that reads activations (needs outputs/inputs) and does not
re-run the model (basins.* draw their own fixed number of samples) — all designed to stream.
Each measurement gets a fresh server process; peak RSS = VmHWM from /proc/PID/status read after
the run. The 10x-smaller run and the large run use two servers started side by side (peak
memory does not depend on CPU contention). Target: RSS(100,000) <= 1.10 x RSS(10,000).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, median, set_threads  # noqa: E402

MB = 1e6


def _measure(servers, path: Path, metrics: list[str], limits: tuple[int, ...]) -> list[tuple[int, float, float, float]]:  # noqa: ANN001
    """(samples, idle RSS, peak RSS, seconds) per server, the analyses run concurrently in threads."""
    import threading

    out: list = [None] * len(limits)

    def one(k: int) -> None:
        srv = servers[k]
        client = srv.connect()
        model = client.upload_model(path)
        idle = srv.status("VmRSS")
        t0 = time.perf_counter()
        run = client.analyze(model, data="synthetic", metrics=metrics, limit=limits[k], batch_size=256)
        seconds = time.perf_counter() - t0
        info = getattr(run, "info", None) or getattr(run, "_info", None)
        if info is not None and info.num_samples and info.num_samples != limits[k]:
            raise RuntimeError(f"analysis saw {info.num_samples} samples, expected {limits[k]}")
        out[k] = (limits[k], idle, srv.status("VmHWM"), seconds)
        client.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(limits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(o is None for o in out):
        raise RuntimeError("an analysis failed (see the traceback above)")
    return out


def run(smoke: bool = False, servers=None) -> list[Table]:  # noqa: ANN001
    set_threads()
    from common import THREADS
    from deepscope_server import zoo
    from server import BenchServer

    small, large = (200, 2_000) if smoke else (10_000, 100_000)
    pairs = 1 if smoke else 3
    with tempfile.TemporaryDirectory(prefix="deepscope-bench-") as tmp:
        module, example = zoo.build("mlp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = zoo.export(module, example, tmp, formats=("pt2",))["pt2"]
        metrics: list[str] = []
        rows: list[list[tuple[int, float, float, float]]] = []
        for _ in range(pairs):
            if servers is None or rows:
                servers = [BenchServer(raw=False, threads=THREADS, wait=False) for _ in range(2)]
            try:
                for s in servers:
                    s.wait()
                if not metrics:
                    c = servers[0].connect()
                    metrics = sorted(m.name for m in c.metric_infos().metrics
                                     if {"outputs", "inputs"} & set(m.needs) and "model" not in m.needs
                                     and not m.name.startswith("example."))
                    c.close()
                rows.append(_measure(servers, path, metrics, (small, large)))
            finally:
                for s in servers:
                    s.stop()
    table = Table(f"6. Server peak RSS of Analyze over {large:,} vs {small:,} samples (fresh server each)",
                  ["samples", "idle RSS MB (median)", "peak RSS MB (median)", "analysis s (median)", "ratio",
                   "target", "met"])
    peak = {}
    for k, n in enumerate((small, large)):
        peak[n] = median([r[k][2] for r in rows])
        table.add(f"{n:,}", median([r[k][1] for r in rows]) / MB, peak[n] / MB, median([r[k][3] for r in rows]),
                  "1.00" if n == small else f"{peak[large] / peak[small]:.3f}", "" if n == small else "<= 1.10",
                  "" if n == small else table.check(peak[large] <= 1.10 * peak[small],
                                                    f"peak RSS ratio {peak[large] / peak[small]:.3f} > 1.10"))
    table.notes.append(f"{pairs} pair(s) of fresh servers (each pair = one {small:,} and one {large:,} run, side by "
                       "side); medians over pairs. Metrics: " + ", ".join(metrics))
    return [table]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    for t in run(ap.parse_args().smoke):
        t.print()
