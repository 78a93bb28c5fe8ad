"""Shared benchmark plumbing: thread settings, interleaved timing with medians, tables, machine info.

Why interleaved: the machine is shared (2 cores, other people's tests running), so load drifts
over seconds. Timing baseline and candidate alternately (A B A B ...) exposes both to the same
drift, and medians ignore the occasional stall. Every ratio is candidate / baseline measured in
the same process and the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

#: Threads for torch and onnxruntime (explicit: default thread pools collapse under contention).
THREADS = int(os.environ.get("DEEPSCOPE_BENCH_THREADS", "1"))


def set_threads(n: int = THREADS) -> None:
    """Pin torch's and onnxruntime's (through the backend's env var) intra-op threads, and give this
    process the glibc settings deepscope's server processes run with (``deepscope_server.heap``).

    Why the latter: with glibc's defaults a forward pass's large tensors are mmapped and unmapped
    on every call or not, depending on what ran before in the process, so the same bare forward
    took 43-94 ms on the CNN b64 here. In-process baselines and peers now run with the allocator
    the model workers have, so a ratio measures crossing the process boundary, not allocator luck
    (and never flatters deepscope with a slowed-down baseline)."""
    from deepscope_server import heap

    heap.keep_freed_memory()
    os.environ["DEEPSCOPE_ORT_THREADS"] = str(n)  # read by bench server processes (--ort-threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function: ``repeats`` rounds after ``warmup`` rounds, each round
    running every function once in a shuffled order (seeded), so no contender always follows
    another (caches, allocator state, a neighbour's burst of load)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = random.Random(0)
    for _ in range(repeats):
        items = list(fns.items())
        order.shuffle(items)
        for name, fn in items:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def quartiles(xs: Sequence[float]) -> tuple[float, float]:
    """First and third quartile (the interquartile range is the spread the tables state)."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[2]


def spread(xs: Sequence[float], scale: Callable[[float], float] = lambda v: v, fmt: str = ".3g") -> str:
    """``[q1-q3]`` of ``xs`` (after ``scale``)."""
    q1, q3 = quartiles(xs)
    return f"[{scale(q1):{fmt}}-{scale(q3):{fmt}}]"


def ratio_cell(candidate: Sequence[float], baseline: Sequence[float]) -> tuple[float, str]:
    """Median of the per-round ratios candidate/baseline, and the cell ``1.23x [1.20-1.27]``."""
    ratios = [c / b for c, b in zip(candidate, baseline)]
    mid = median(ratios)
    return mid, f"{mid:.2f}x {spread(ratios, fmt='.2f')}"


@dataclass
class Table:
    """A printed result table: one row per measured case, plus whether each target was met."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def check(self, ok: bool, what: str) -> str:
        """Record a target result; returns the cell text ('yes' / 'NO')."""
        if not ok:
            self.failures.append(what)
        return "yes" if ok else "NO"

    def render(self) -> str:
        cells = [[_fmt(c) for c in row] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(self.columns)]
        line = "| " + " | ".join(h.ljust(w) for h, w in zip(self.columns, widths)) + " |"
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = [
            "| " + " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)) + " |"
            for r in cells
        ]
        out = [f"### {self.title}", "", line, sep, *body]
        if self.notes:
            out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out)

    def print(self) -> None:
        print(self.render(), flush=True)
        print(flush=True)


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("x×%").replace(",", ""))
        return True
    except ValueError:
        return False


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def ms(seconds: float) -> float:
    return seconds * 1e3


def machine() -> str:
    """One line describing the machine and library versions."""
    import numpy
    import torch

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort = "-"
    try:
        import grpc

        grpc_v = grpc.__version__
    except ImportError:  # pragma: no cover
        grpc_v = "-"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "-"
    return (
        f"{cpu}; {os.cpu_count()} cores (load {load}); Python {sys.version.split()[0]}; torch {torch.__version__}; "
        f"onnxruntime {ort}; grpcio {grpc_v}; numpy {numpy.__version__}; threads={THREADS}"
    )


class Poller:
    """Calls ``sample()`` every ``interval`` seconds in a daemon thread for the length of a ``with`` block.

    For peaks no kernel counter keeps (the summed RSS of a process tree, a server's RSS during a
    flood); a peak shorter than the interval can be missed.
    """

    def __init__(self, interval: float, name: str = "poller") -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def sample(self) -> object:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited meanwhile
            pass
    return total


def cpu_per_call(server_pid: int, fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """CPU seconds per call of ``fn``: (this process, the server process tree). What a call costs
    the machine; unlike wall time, barely moved by other people's load on a shared machine."""
    client0, server0 = time.process_time(), cpu_seconds(server_pid)
    for _ in range(calls):
        fn()
    return (time.process_time() - client0) / calls, (cpu_seconds(server_pid) - server0) / calls


def memcpy_rate(nbytes: int = 64 << 20, repeats: int = 5) -> float:
    """Bytes per second of a large numpy copy (the ceiling for any transfer that copies once)."""
    import numpy as np

    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return nbytes / median(times)


def script_main(run: Callable[[bool], list[Table]]) -> None:
    """Command line of one bench script: ``python bench/bench_x.py [--smoke]`` prints its tables."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    for table in run(ap.parse_args().smoke):
        table.print()
