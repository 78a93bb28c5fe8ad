"""Target 6: peak memory of a streaming Analyze (server + metric workers) is independent of the sample count.

Model: the zoo MLP (.pt2). Data: the server's ``synthetic`` dataset with ``sample_limit``.
Metrics: every built-in metric that reads activations (needs outputs/inputs) and does not
re-run the model (basins.* draw their own fixed number of samples) — all designed to stream.
Metrics run in worker processes (one per metric instance, forked from the server's forkserver;
``deepscope_server.isolation``), so the server's own VmHWM misses their memory. A thread
therefore polls the process tree (server + all descendants, psutil) every 50 ms during the
Analyze and keeps the peak of the summed RSS (the target's figure), the peak of the summed PSS
(every ~1 s: shared pages split between the processes sharing them, i.e. not counting the
forkserver's pre-imported modules once per worker), the largest single worker's VmHWM, and the server's own
VmHWM as before. Each measurement gets a fresh server process; the 10x-smaller run and the large
run use two servers started side by side (peak memory does not depend on CPU contention).
Target: summed peak RSS(100,000) <= 1.10 x summed peak RSS(10,000).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Poller, Table, median, script_main, set_threads

MB = 1e6


def _proc_kb(pid: int, path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/<path> given in kB, as bytes; empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


@dataclass
class TreeMemory:
    """Peaks seen by a ``TreeSampler`` (bytes)."""

    peak_rss: int = 0  # max over polls of the summed VmRSS of server + descendants
    peak_pss: int = 0  # max over the polls that read it (every ``pss_every``-th) of the summed Pss
    worker_hwm: int = 0  # largest VmHWM of a metric worker (a descendant that is not the server's own child)
    processes: int = 0  # most processes in the tree at one poll
    workers_seen: set[int] = field(default_factory=set)
    polls: int = 0


class TreeSampler(Poller):
    """Poll the summed RSS/PSS of a process and all its descendants in a thread (``with`` block).

    Why polling: worker processes exit at the end of the run, and no kernel counter gives the
    peak of a sum over processes. Peaks shorter than the interval can be missed, so the summed
    figure is a lower bound (PSS, read less often, more so); per-process VmHWM is exact up to the
    last poll before a worker exits.
    """

    def __init__(self, pid: int, interval: float = 0.05, pss_every: int = 20) -> None:
        import psutil

        super().__init__(interval, name=f"rss-sampler-{pid}")
        self._root = psutil.Process(pid)
        self.pid = pid
        self.pss_every = pss_every  # smaps_rollup costs ~9 ms per torch-sized process: PSS only every Nth poll
        self.memory = TreeMemory()

    def sample(self, pss: bool | None = None) -> tuple[int, int]:
        """One poll: (summed RSS, summed PSS or 0 when not read) of the tree now; updates the peaks."""
        import psutil

        read_pss = self.memory.polls % self.pss_every == 0 if pss is None else pss

        try:
            children = self._root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0, 0
        m = self.memory
        rss = total_pss = 0
        for proc in [self._root, *children]:
            status = _proc_kb(proc.pid, "status", ("VmRSS", "VmHWM"))
            if not status:
                continue  # exited between listing and reading
            rss += status.get("VmRSS", 0)
            if read_pss:
                total_pss += _proc_kb(proc.pid, "smaps_rollup", ("Pss",)).get("Pss", 0)
            try:
                is_worker = proc.pid != self.pid and proc.ppid() != self.pid  # forkserver's children
            except psutil.NoSuchProcess:
                continue
            if is_worker:
                m.workers_seen.add(proc.pid)
                m.worker_hwm = max(m.worker_hwm, status.get("VmHWM", 0))
        m.peak_rss, m.peak_pss = max(m.peak_rss, rss), max(m.peak_pss, total_pss)
        m.processes = max(m.processes, 1 + len(children))
        m.polls += 1
        return rss, total_pss

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.sample(pss=True)  # the last figures, PSS included


@dataclass
class Measurement:
    samples: int
    idle_rss: int  # summed RSS of the tree before the Analyze
    idle_pss: int
    peak_rss: int  # summed, peak during the Analyze (the target's figure)
    peak_pss: int
    server_hwm: int  # the server process alone (VmHWM, as before worker isolation)
    worker_hwm: int
    workers: int
    seconds: float


def _measure(servers, path: Path, metrics: list[str], limits: tuple[int, ...]) -> list[Measurement]:
    """One Measurement per server, the analyses run concurrently in threads."""
    out: list = [None] * len(limits)

    def one(k: int) -> None:
        srv = servers[k]
        client = srv.connect()
        model = client.upload_model(path)
        sampler = TreeSampler(srv.pid)
        idle_rss, idle_pss = sampler.sample(pss=True)
        sampler.memory = TreeMemory()  # the idle poll does not count towards the peaks
        t0 = time.perf_counter()
        with sampler:
            run = client.analyze(model, data="synthetic", metrics=metrics, limit=limits[k], batch_size=256)
        seconds = time.perf_counter() - t0
        info = getattr(run, "info", None) or getattr(run, "_info", None)
        if info is not None and info.num_samples and info.num_samples != limits[k]:
            raise RuntimeError(f"analysis saw {info.num_samples} samples, expected {limits[k]}")
        m = sampler.memory
        if not m.workers_seen:
            raise RuntimeError("no metric worker process seen: is --metric-isolation still 'process'?")
        out[k] = Measurement(
            limits[k],
            idle_rss,
            idle_pss,
            m.peak_rss,
            m.peak_pss,
            srv.status("VmHWM"),
            m.worker_hwm,
            len(m.workers_seen),
            seconds,
        )
        client.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(limits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(o is None for o in out):
        raise RuntimeError("an analysis failed (see the traceback above)")
    return out


def run(smoke: bool = False, servers=None) -> list[Table]:
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
        rows: list[list[Measurement]] = []
        for _ in range(pairs):
            if servers is None or rows:
                servers = [BenchServer(raw=False, threads=THREADS, wait=False) for _ in range(2)]
            try:
                for s in servers:
                    s.wait()
                if not metrics:
                    c = servers[0].connect()
                    metrics = sorted(
                        m.name
                        for m in c.metric_infos().metrics
                        if {"outputs", "inputs"} & set(m.needs)
                        and "model" not in m.needs
                        and not m.name.startswith("example.")
                    )
                    c.close()
                rows.append(_measure(servers, path, metrics, (small, large)))
            finally:
                for s in servers:
                    s.stop()
    table = Table(
        f"6. Server peak RSS of Analyze over {large:,} vs {small:,} samples, server + metric workers "
        "(fresh server each)",
        [
            "samples",
            "idle RSS / PSS MB, tree",
            "peak RSS MB, tree (sum)",
            "peak PSS MB, tree (sum)",
            "server VmHWM MB",
            "largest worker VmHWM MB",
            "workers",
            "analysis s",
            "ratio (sum RSS)",
            "target",
            "met",
        ],
    )

    def med(k: int, attr: str) -> float:
        return median([getattr(r[k], attr) for r in rows])

    peak = {n: med(k, "peak_rss") for k, n in enumerate((small, large))}
    ratio = peak[large] / peak[small]
    for k, n in enumerate((small, large)):
        last = n == large
        idle = f"{med(k, 'idle_rss') / MB:.0f} / {med(k, 'idle_pss') / MB:.0f}"
        table.add(
            f"{n:,}",
            idle,
            peak[n] / MB,
            med(k, "peak_pss") / MB,
            med(k, "server_hwm") / MB,
            med(k, "worker_hwm") / MB,
            f"{med(k, 'workers'):.0f}",
            med(k, "seconds"),
            f"{ratio:.3f}" if last else "1.00",
            "<= 1.10" if last else "",
            table.check(ratio <= 1.10, f"summed peak RSS ratio {ratio:.3f} > 1.10") if last else "",
        )
    if len(rows) > 1:
        table.notes.append(
            "ratio of summed peak RSS per pair: "
            + ", ".join(f"{r[1].peak_rss / r[0].peak_rss:.3f}" for r in rows)
            + "; server VmHWM ratio (old figure): "
            + f"{med(1, 'server_hwm') / med(0, 'server_hwm'):.3f}"
        )
    table.notes.append(
        f"{pairs} pair(s) of fresh servers (each pair = one {small:,} and one {large:,} run, side by "
        "side); medians over pairs. Tree = server + descendants (forkserver, resource tracker, one "
        "worker per metric), RSS polled every 50 ms, PSS every ~1 s (reading it costs ~9 ms per "
        "process); summed RSS counts pages shared with the forkserver once per worker, PSS splits "
        "them. Metrics: " + ", ".join(metrics)
    )
    return [table]


if __name__ == "__main__":
    script_main(run)
