"""Target 7: 8 clients capturing at once against one server: aggregate throughput, p50/p99, no errors.

Model: the benchmark MLP (784-512-512-512-10, .pt2), batch 64, every Linear output captured
(~0.4 MB per response). Each client is a thread in this process with its own channel (its own
``deepscope.connect``) sending requests back to back. Baseline in the same run: one client
alone sending the same total number of requests. Reported: aggregate requests/s and MB/s,
latency percentiles, the ratio to the single client, and the error count (target: 0 errors).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, median, script_main, set_threads

MB = 1e6


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _round(srv, model_id: str, x, n_clients: int, per_client: int) -> tuple[float, list[float], int, int]:
    """(wall seconds, latencies, errors, bytes) for n_clients threads each sending per_client captures."""
    clients = [srv.connect() for _ in range(n_clients)]
    lat: list[float] = []
    errors: list[str] = []
    nbytes = [0]
    lock = threading.Lock()
    start = threading.Barrier(n_clients + 1)

    def work(c) -> None:
        model = c.model(model_id)
        start.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                acts = c.capture(model, x, layers=["kind:linear"])
                size = sum(a.nbytes for a in acts.values())
            except Exception as exc:  # counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                nbytes[0] += size

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        print(f"concurrency errors ({len(errors)}), first: {errors[0]}", file=sys.stderr)
    return wall, lat, len(errors), nbytes[0]


def run(smoke: bool = False, server=None) -> list[Table]:
    set_threads()
    import models
    from common import THREADS

    from server import BenchServer

    n_clients = 8
    per_client = 2 if smoke else 10
    rounds = 1 if smoke else 5
    with tempfile.TemporaryDirectory(prefix="deepscope-bench-") as tmp:
        _, x_t, paths = models.export("mlp", 64, Path(tmp), formats=("pt2",))
        x = x_t.numpy()
        srv = server or BenchServer(raw=True, threads=THREADS)
        try:
            setup = srv.connect()
            model_id = setup.upload_model(paths["pt2"]).id
            setup.capture(model_id, x, layers=["kind:linear"])  # warm-up: load + compile the capture graph
            setup.close()
            single, multi = [], []
            for _ in range(rounds):  # interleaved: one client alone, then 8 at once
                single.append(_round(srv, model_id, x, 1, n_clients * per_client))
                multi.append(_round(srv, model_id, x, n_clients, per_client))
        finally:
            if server is None:
                srv.stop()
    table = Table(
        f"7. Concurrency: {n_clients} clients capturing at once (MLP batch 64, all Linear outputs)",
        [
            "clients",
            "requests",
            "req/s (median)",
            "MB/s (median)",
            "p50 ms",
            "p99 ms",
            "errors",
            "throughput vs 1 client",
            "target",
            "met",
        ],
    )
    rate = {}
    for label, res, k in (("1", single, 1), (str(n_clients), multi, n_clients)):
        reqs = k * per_client if k > 1 else n_clients * per_client
        rate[k] = median([reqs / w for w, _, _, _ in res])
        mbs = median([b / w / MB for w, _, _, b in res])
        lats = [v for _, lat, _, _ in res for v in lat]
        errs = sum(e for _, _, e, _ in res)
        if k == 1:
            table.add(label, reqs, rate[k], mbs, _pct(lats, 50) * 1e3, _pct(lats, 99) * 1e3, errs, "1.00", "", "")
        else:
            table.add(
                label,
                reqs,
                rate[k],
                mbs,
                _pct(lats, 50) * 1e3,
                _pct(lats, 99) * 1e3,
                errs,
                f"{rate[k] / rate[1]:.2f}",
                "0 errors",
                table.check(errs == 0, f"{errs} errors with {k} clients"),
            )
    table.notes.append(
        f"{rounds} round(s), each: 1 client x {n_clients * per_client} requests, then {n_clients} clients "
        f"x {per_client} requests; req/s = median over rounds; percentiles over all requests; "
        f"server torch at {THREADS} thread(s), 2 shared cores"
    )
    return [table]


if __name__ == "__main__":
    script_main(run)
