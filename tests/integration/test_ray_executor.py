"""``--executor ray`` on a real two-node Ray cluster on this machine (head + one worker node, 1 CPU each).

One cluster for the module (starting Ray takes seconds), started by a process of its own
(``ray_cluster.py`` says why); the node-loss test runs last because it removes the worker node. Results are compared with the local executor's on the same models.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import deepscope
from deepscope.results import Curve, GraphData

from .conftest import _child_env, start_server
from .helpers import analyze_slow, settled

ray = pytest.importorskip("ray", reason="the Ray executor needs deepscope-server[ray]")

METRICS = ["example.activation_moments", "example.weight_spectrum", "dimension.effective"]
CLUSTER_SCRIPT = Path(__file__).with_name("ray_cluster.py")
CLUSTER_START_SECONDS = 120.0  # up in ~5 s here; two tries stay inside pytest-timeout's 300 s
# At most one more try if the cluster did not start: a third-party daemon's start-up is outside the tests.
CLUSTER_STARTS = 2


class RayCluster:
    """The two-node cluster of ``ray_cluster.py``, run in a process of its own (see its docstring)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CLUSTER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its Ray daemons share its process group, so one signal ends them all
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        first = self._line(CLUSTER_START_SECONDS)
        if not first:  # no line in time, or the process ended (its traceback is on the test's stderr)
            self.stop(within=0)
            raise RuntimeError(
                f"the Ray test cluster did not start in {CLUSTER_START_SECONDS:.0f} s "
                f"(its process: exit code {self.process.returncode})"
            )
        started = json.loads(first)
        self.address: str = started["address"]
        self.worker_id: str = started["worker"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("")  # end of output

    def _line(self, within: float) -> str | None:
        try:
            return self.lines.get(timeout=within)
        except queue.Empty:
            return None

    def remove_worker(self) -> None:
        """Kills the worker node's processes (Ray's ``Cluster.remove_node``, not graceful); returns at once."""
        assert self.process.stdin is not None
        self.process.stdin.write("remove-worker\n")
        self.process.stdin.flush()

    def stop(self, within: float = 60) -> None:
        """Shuts the cluster down, given ``within`` seconds to do it cleanly."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=within)
        except (OSError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of Ray is left
        self.process.wait()
        self.reader.join(timeout=10)  # at the end of the output
        if self.process.stdout is not None and not self.reader.is_alive():
            self.process.stdout.close()


def _start_cluster() -> RayCluster:
    for attempt in range(1, CLUSTER_STARTS + 1):
        try:
            return RayCluster()
        except RuntimeError as exc:
            if attempt == CLUSTER_STARTS:
                raise
            warnings.warn(f"Ray test cluster, start {attempt}: {exc}; starting it again", stacklevel=2)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    _child_env()  # the nodes' workers import the test plugins too
    cluster = _start_cluster()
    ray.init(address=cluster.address, log_to_driver=False)  # to look at the cluster from the test
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="module")
def ray_client(cluster, tmp_path_factory) -> Iterator[deepscope.Client]:
    # The defaults users run: models load in the sandbox, metrics run in worker processes in each task.
    server, address = start_server(tmp_path_factory.mktemp("ray-store"), executor="ray", ray_address=cluster.address)
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list:
    from deepscope_server import zoo

    out = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in range(4):
        model, example = zoo.build("mlp", seed=seed)
        paths.append(zoo.export(model, example, out / f"ckpt{seed}", formats=("onnx",))["onnx"])
    return paths


def _upload(client: deepscope.Client, paths: list) -> list:
    return [client.upload_model(p, name=f"ckpt{i}.onnx") for i, p in enumerate(paths)]


def _on_both(
    ray_client: deepscope.Client, client: deepscope.Client, paths: list, events: list, **analyze: object
) -> tuple[deepscope.Run, deepscope.Run]:
    """The same Analyze of ``paths`` on digits through the Ray executor (its events into ``events``) and
    the local one: (remote, local)."""
    remote = ray_client.analyze(_upload(ray_client, paths), data="digits", on_event=events.append, **analyze)
    return remote, client.analyze(_upload(client, paths), data="digits", **analyze)


def _same(a: object, b: object, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, Curve):
        _same(a.x, b.x, where + ".x")
        _same(a.y, b.y, where + ".y")
    elif isinstance(a, GraphData):
        _same(a.weights, b.weights, where + ".weights")
    elif isinstance(a, (np.ndarray, float)) and np.asarray(a).dtype.kind == "f":
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=where)
    elif hasattr(a, "columns"):
        _same(dict(a.columns), dict(b.columns), where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


def _assert_same_runs(local: deepscope.Run, remote: deepscope.Run) -> None:
    keys = sorted((r.metric, r.layer, r.checkpoint, r.status) for r in local.results)
    assert sorted((r.metric, r.layer, r.checkpoint, r.status) for r in remote.results) == keys
    assert remote.info.num_samples == local.info.num_samples
    for metric, layer, checkpoint, status in keys:
        if status == "ok":
            _same(
                local.result(metric, layer, checkpoint),
                remote.result(metric, layer, checkpoint),
                f"{metric}/{layer}/{checkpoint}",
            )


def _nodes(events: list) -> set[str]:
    """Node ids the server named in its per-checkpoint "loading" events."""
    ids = {node["NodeID"][:8] for node in ray.nodes()}
    return {
        i
        for e in events
        if e.WhichOneof("event") == "progress" and e.progress.stage == "loading"
        for i in ids
        if i in e.progress.message
    }


def test_four_checkpoints_match_the_local_executor_and_use_both_nodes(ray_client, client, checkpoints):
    events: list = []
    remote, local = _on_both(ray_client, client, checkpoints, events, limit=96, batch_size=32, metrics=METRICS)
    assert remote.status == "completed" and local.status == "completed"
    assert not remote.failures and {r.checkpoint for r in remote.results} == {0, 1, 2, 3}
    _assert_same_runs(local, remote)
    assert len(_nodes(events)) == 2, "every checkpoint ran on one node"
    # The SDK's tracker reads the relayed events as it reads the local executor's.
    assert remote.events[-1].stage == "done" and remote.events[-1].message == "completed"


def test_one_checkpoint_splits_its_data_for_mergeable_metrics(ray_client, client, checkpoints):
    """2 CPUs, 1 checkpoint: dimension.effective runs on two data shards and is merged; the covariance
    merge is exact, so the spectrum equals one pass over all the data."""
    events: list = []
    metrics = ["dimension.effective", "example.activation_moments"]
    remote, local = _on_both(ray_client, client, checkpoints[:1], events, limit=128, batch_size=16, metrics=metrics)
    assert any("data shard 1" in e.progress.message for e in events if e.WhichOneof("event") == "progress")
    assert remote.status == "completed" and not remote.failures
    _assert_same_runs(local, remote)


def _ray_cpus_free(total: float, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= total:
            return True
        time.sleep(0.2)
    return False


def test_cancelling_mid_run_leaves_no_ray_task(ray_client, checkpoints):
    models = _upload(ray_client, checkpoints[:2])
    total = ray.cluster_resources()["CPU"]
    with pytest.raises(deepscope.DeadlineExceeded):
        analyze_slow(ray_client, models, 0.5, data="digits", split="all", batch_size=16, timeout=4.0)
    assert _ray_cpus_free(total), f"Ray tasks still hold CPUs: {ray.available_resources()}"
    assert settled(lambda: ray_client.runs(1)[0]).status == "cancelled"


def test_a_tasks_forkserver_preloads_the_ray_worker_script(cluster):
    """multiprocessing re-runs a script ``__main__`` in every metric process; the Ray worker's script
    imports Ray (0.6-0.9 s a process), so the forkserver must preload it under a name its own
    sys.path resolves (it lacks the script's directory, as this process does)."""
    from deepscope_server.isolation import main_module

    names = ray.get(ray.remote(main_module).remote())
    assert len(names) == 1
    spec = importlib.util.find_spec(names[0])
    assert spec is not None and Path(spec.origin).name == "default_worker.py", names


def test_losing_a_worker_node_fails_only_its_checkpoint(cluster, ray_client, checkpoints):
    """Runs last: it removes the worker node."""
    worker_id = cluster.worker_id[:8]
    events: list = []
    killed = threading.Event()

    def on_event(event) -> None:  # kill the node once both checkpoints are running
        events.append(event)
        loading = [e for e in events if e.WhichOneof("event") == "progress" and e.progress.stage == "loading"]
        forward = [e for e in events if e.WhichOneof("event") == "progress" and e.progress.stage == "forward"]
        if len(loading) == 2 and forward and not killed.is_set():
            killed.set()
            cluster.remove_worker()

    run = ray_client.analyze(
        _upload(ray_client, checkpoints[:2]),
        data="digits",
        limit=96,
        batch_size=16,
        metrics=["testing.slow", "example.weight_spectrum"],
        params={"testing.slow": {"seconds": 0.4}},
        on_event=on_event,
    )
    assert killed.is_set()
    on_worker = {
        int(e.progress.message.split()[1])
        for e in events
        if e.WhichOneof("event") == "progress" and e.progress.stage == "loading" and worker_id in e.progress.message
    }
    assert len(on_worker) == 1
    lost = on_worker.pop()
    assert run.status == "completed"
    failed = {(r.metric, r.checkpoint) for r in run.results if r.status == "failed"}
    assert failed == {("testing.slow", lost), ("example.weight_spectrum", lost)}
    assert all(f"checkpoint {lost} on node" in r.error for r in run.results if r.status == "failed")
    assert all(r.status == "ok" for r in run.results if r.checkpoint != lost)
