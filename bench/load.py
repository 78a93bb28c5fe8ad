"""Load test: N concurrent clients mixing uploads, captures and analyses against one server.

    .venv/bin/python bench/load.py --seconds 60 --clients 16           # starts its own server
    .venv/bin/python bench/load.py --server HOST:PORT --token T ...    # or drives a running one

Each client loops for ``--seconds``: upload (a zoo model, or a unique variant of it that is deleted
again), capture (MLP / CNN, ONNX / .pt2, a few layers), analyze (digits, built-in metrics on a
sample limit). Reports errors (must be zero), p50/p99 latency per RPC, and the server's memory
(PSS of the server process plus its metric workers) at baseline, peak and after the load.
Figures are recorded in bench/LOAD.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

import deepscope

ANALYSES = [  # (metrics, layers): a mix of weight-only and activation metrics from the built-ins
    (["cnt.*"], ["fc*"]),
    (["complexity.*"], ["fc1"]),
    (["modes.*"], []),
    (["fractal.*"], ["fc1"]),
    (["example.activation_moments", "example.weight_spectrum"], []),
]


def export_models(directory: Path) -> dict[str, dict[str, Path]]:
    """The zoo MLP and CNN as ONNX and .pt2 files."""
    import torch

    from deepscope_server import zoo

    torch.set_num_threads(1)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("mlp", "cnn"):
            module, example = zoo.build(name)
            out[name] = zoo.export(module, example, directory / name)
    return out


def unique_variant(onnx_bytes: bytes, tag: str) -> bytes:
    """The same ONNX model with a different doc string: new bytes, a new content address."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    model.doc_string = f"load-test variant {tag}"
    return model.SerializeToString()


def _pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages (the forkserver's preloaded modules) counted once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> int:
    """PSS in bytes of a process and all its descendants (server + forkserver + metric workers)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _pss(p)
        stack.extend(children.get(p, []))
    return total


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def time(self, kind: str, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # every error is counted and reported
            with self.lock:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return
        with self.lock:
            self.latency[kind].append(time.perf_counter() - start)


def client_loop(
    address: str, token: str | None, files: dict[str, dict[str, Path]], stop_at: float, rec: Recorder, seed: int
) -> None:
    try:
        _client_loop(address, token, files, stop_at, rec, seed)
    except Exception as exc:  # e.g. the setup uploads: counted like any error
        with rec.lock:
            rec.errors.append(f"client {seed} setup: {type(exc).__name__}: {exc}")


def _client_loop(
    address: str, token: str | None, files: dict[str, dict[str, Path]], stop_at: float, rec: Recorder, seed: int
) -> None:
    rng = random.Random(seed)
    data = np.random.default_rng(seed)
    with deepscope.connect(address, token=token, progress=False) as client:
        ids = {(m, f): client.upload_model(files[m][f]).id for m in files for f in ("onnx", "pt2")}
        onnx_bytes = files["mlp"]["onnx"].read_bytes()
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            op = rng.choices(["upload", "capture", "analyze"], weights=[2, 5, 2])[0]
            if op == "upload":
                if rng.random() < 0.5:
                    rec.time("UploadModel", lambda: client.upload_model(files["cnn"]["pt2"]))
                else:
                    variant = unique_variant(onnx_bytes, f"{seed}-{n}")

                    def upload_and_delete() -> None:
                        model = client.upload_model(variant, name=f"variant-{seed}-{n}.onnx")
                        client.delete_model(model)

                    rec.time("UploadModel+DeleteModel", upload_and_delete)
            elif op == "capture":
                name, fmt = rng.choice(list(ids))
                shape = (rng.randint(1, 128), 64) if name == "mlp" else (rng.randint(1, 64), 1, 8, 8)
                x = data.standard_normal(shape).astype(np.float32)
                layers = ["fc1", "fc2"] if name == "mlp" else ["conv1", "layer1.*", "fc"]
                rec.time("Capture", lambda: client.capture(ids[(name, fmt)], x, layers=layers))
            else:
                metrics, layers = rng.choice(ANALYSES)
                fmt = rng.choice(["onnx", "pt2"])

                def analyze() -> None:
                    run = client.analyze(
                        ids[("mlp", fmt)], data="digits", metrics=metrics, layers=layers, limit=200, batch_size=50
                    )
                    if run.status != "completed" or run.failures:
                        raise RuntimeError(f"run {run.id} {run.status}, failures: {list(run.failures)[:3]}")

                rec.time("Analyze", analyze)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_load(
    address: str,
    token: str | None,
    files: dict[str, dict[str, Path]],
    seconds: float,
    clients: int,
    server_pid: int | None = None,
) -> dict:
    """Drive the server; returns {errors, latency table rows, memory figures}."""
    rec = Recorder()
    memory = {"baseline": 0, "peak": 0, "after": 0}
    if server_pid:
        # Warm-up: one of each operation, so the baseline includes loaded models and the forkserver.
        client_loop(address, token, files, time.monotonic() + 3, Recorder(), seed=10_000)
        time.sleep(1)
        memory["baseline"] = tree_memory(server_pid)
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=client_loop, args=(address, token, files, stop_at, rec, i)) for i in range(clients)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if server_pid:
            memory["peak"] = max(memory["peak"], tree_memory(server_pid))
        time.sleep(0.5)
    for t in threads:
        t.join()
    if server_pid:
        time.sleep(5)
        memory["after"] = tree_memory(server_pid)
    rows = []
    for kind, values in sorted(rec.latency.items()):
        rows.append(
            {
                "rpc": kind,
                "calls": len(values),
                "p50_ms": 1000 * statistics.median(values),
                "p99_ms": 1000 * percentile(values, 0.99),
                "max_ms": 1000 * max(values),
            }
        )
    return {"errors": rec.errors, "rows": rows, "memory": memory, "seconds": seconds, "clients": clients}


def isolation_overhead(files: dict[str, dict[str, Path]], store: Path, repeats: int = 5) -> dict[str, list[float]]:
    """Wall time of one Analyze (MLP, ONNX, digits test split, every built-in metric), per isolation mode."""
    from deepscope.embedded import EmbeddedServer

    times: dict[str, list[float]] = {}
    for mode in ("thread", "process"):
        server = EmbeddedServer(store=store / mode, metric_isolation=mode)
        address = server.start()
        try:
            with deepscope.connect(address, token=server.token, progress=False) as client:
                model = client.upload_model(files["mlp"]["onnx"])
                names = [m for m in client.metrics()["name"] if not m.startswith(("testing.", "example."))]
                client.analyze(model, data="digits", metrics=names, limit=100)  # warm-up (forkserver, caches)
                times[mode] = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run = client.analyze(model, data="digits", metrics=names)
                    times[mode].append(time.perf_counter() - start)
                    assert run.status == "completed", run.status
                times[mode + " metrics"] = [float(len(names))]
                times[mode + " failures"] = [float(len(run.failures))]
        finally:
            server.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--token", default=os.environ.get("DEEPSCOPE_TOKEN"))
    parser.add_argument("--metric-isolation", default="process", choices=["process", "thread"])
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="instead of the load: time an Analyze (digits, all built-in metrics) per isolation mode",
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="deepscope-load-"))
    try:
        return _main(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(args: argparse.Namespace, tmp: Path) -> int:
    files = export_models(tmp / "models")
    if args.overhead:
        times = isolation_overhead(files, tmp / "stores")
        for mode, values in times.items():
            print(f"{mode:<18}", " ".join(f"{v:.2f}" for v in values))
        ratio = statistics.median(times["process"]) / statistics.median(times["thread"])
        print(f"process / thread (median): {ratio:.2f}x")
        return 0
    server = None
    if args.server:
        address, token, pid = args.server, args.token, None
    else:
        from deepscope.embedded import EmbeddedServer

        server = EmbeddedServer(
            store=tmp / "store", max_concurrent_runs=args.clients, metric_isolation=args.metric_isolation
        )
        address, token = server.start(), server.token
        pid = server.process.pid
    try:
        result = run_load(address, token, files, args.seconds, args.clients, pid)
    finally:
        if server:
            server.stop()
    print(
        f"{args.clients} clients, {args.seconds:g} s, metric isolation {args.metric_isolation}: "
        f"{sum(r['calls'] for r in result['rows'])} calls, {len(result['errors'])} errors"
    )
    print(f"{'rpc':<26}{'calls':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for r in result["rows"]:
        print(f"{r['rpc']:<26}{r['calls']:>7}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}{r['max_ms']:>10.1f}")
    mem = result["memory"]
    if mem["baseline"]:
        mib = 1 << 20
        print(
            f"server PSS (incl. metric workers): baseline {mem['baseline'] / mib:.0f} MiB, peak {mem['peak'] / mib:.0f} MiB, "
            f"after {mem['after'] / mib:.0f} MiB"
        )
    for error in result["errors"][:10]:
        print("ERROR", error)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
