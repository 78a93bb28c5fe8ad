"""Metric code does not outlive what it belongs to: a server killed with SIGKILL takes its helpers
with it (the multiprocessing forkserver, the resource tracker and metric workers busy in the middle
of a call all exit on their own), and under thread isolation a metric past its time limit stops."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil

import deepscope
from deepscope.v1 import introspection_pb2 as pb

from .conftest import start_server


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: whoever adopted it may not reap it)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _role(proc: psutil.Process, server_pid: int) -> str:
    """forkserver / resource_tracker (the server's children) or worker (forked by the forkserver)."""
    try:
        cmdline = " ".join(proc.cmdline())
        direct = proc.ppid() == server_pid
    except psutil.Error:
        return "exited"
    if direct and "forkserver" in cmdline:
        return "forkserver"
    if direct and "resource_tracker" in cmdline:
        return "resource_tracker"
    return "worker" if "forkserver" in cmdline else f"other: {cmdline}"


def test_sigkill_of_the_server_ends_forkserver_tracker_and_busy_workers(tmp_path, exported):
    server, address = start_server(tmp_path / "store", no_entry_points=True)
    descendants: list[psutil.Process] = []
    try:
        x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
        spinning = threading.Event()

        def on_event(event: pb.AnalyzeResponse) -> None:
            if event.HasField("progress") and "spinning" in event.progress.message:
                spinning.set()

        outcome: dict[str, BaseException] = {}

        def busy_run() -> None:
            try:
                with deepscope.connect(address, token=server.token, progress=False) as client:
                    model = client.upload_model(exported["mlp"]["onnx"])
                    # Two workers burning CPU in update() (one never looks at its context).
                    client.analyze(
                        model,
                        data=x,
                        batch_size=8,
                        metrics=["testing.spins", "testing.slow"],
                        params={"testing.spins": {"cooperative": False}, "testing.slow": {"seconds": 60.0}},
                        on_event=on_event,
                        timeout=120,
                    )
            except BaseException as exc:  # the server dies under it
                outcome["error"] = exc

        thread = threading.Thread(target=busy_run)
        thread.start()
        assert spinning.wait(90), server.log()
        pid = server.process.pid
        descendants = psutil.Process(pid).children(recursive=True)
        roles = sorted(_role(p, pid) for p in descendants)
        assert roles.count("forkserver") == 1 and roles.count("resource_tracker") == 1, roles
        assert roles.count("worker") >= 2, roles  # testing.spins and testing.slow, both mid-update()

        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        thread.join(30)
        assert isinstance(outcome.get("error"), deepscope.DeepscopeError)

        deadline = time.monotonic() + 15
        while not all(_gone(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = {p.pid: " ".join(p.cmdline())[:80] for p in descendants if not _gone(p)}
        assert not survivors, f"still running after the server died: {survivors}"
    finally:
        for proc in descendants:  # whatever the outcome, leave nothing behind
            try:
                proc.kill()
            except psutil.Error:
                pass
        server.stop()


def _read_when_written(path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


def test_thread_isolation_stops_a_metric_past_its_time_limit(tmp_path, exported):
    server, address = start_server(tmp_path / "store", no_entry_points=True, metric_isolation="thread")
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            model = client.upload_model(exported["mlp"]["onnx"])
            x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
            # A loop that calls ctx.check(), and one that never looks at its context.
            for cooperative in (True, False):
                marker = tmp_path / f"spins-ended-{cooperative}"
                run = client.analyze(
                    model,
                    data=x,
                    batch_size=8,
                    layers=["fc1"],
                    metric_timeout=2,
                    metrics=["testing.spins", "testing.slow"],
                    params={
                        "testing.spins": {"cooperative": cooperative, "marker": str(marker)},
                        "testing.slow": {"seconds": 0.0},
                    },
                )
                assert run.status == "completed"
                failures = {metric: error for (metric, _, _), error in run.failures.items()}
                assert failures["testing.spins"].startswith("update(batch 0) exceeded the metric time limit of 2 s")
                assert "testing.slow" not in failures and run.result("testing.slow", "")["done"]
                # The busy loop itself ended, stopped by the time limit: its thread no longer burns CPU.
                assert _read_when_written(marker) == "MetricTimeout", (cooperative, server.log())
            assert client.health() == "SERVING"
    finally:
        server.stop()
