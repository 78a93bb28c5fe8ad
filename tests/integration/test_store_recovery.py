"""A store damaged on disk, cut off by kill -9 or out of space: what a real server process does.

A damaged database stops the server with one line naming the file and the repair commands;
``--check-store`` / ``--rebuild-catalogue`` bring the models back from their content-addressed
files; a bad run row is skipped; a model whose load was cut off is removed at the next start; a
full disk fails uploads and runs with RESOURCE_EXHAUSTED and the run ends failed, not running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import deepscope
from deepscope.v1 import introspection_pb2 as pb

from .conftest import start_server

X = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
SLOW = {"metrics": ["testing.slow"], "params": {"testing.slow": {"seconds": 0.0}}}


def _start(store: Path, servers: list):
    server, address = start_server(store, no_entry_points=True, metric_isolation="thread")
    servers.append(server)
    return server, deepscope.connect(address, token=server.token, progress=False)


@pytest.fixture(scope="module")
def populated(tmp_path_factory, exported) -> dict:
    """A store a real server filled: the MLP (ONNX) and the CNN (.pt2) uploaded, two completed runs."""
    store = tmp_path_factory.mktemp("populated") / "store"
    server, address = start_server(store, no_entry_points=True, metric_isolation="thread")
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            mlp = client.upload_model(exported["mlp"]["onnx"])
            cnn = client.upload_model(exported["cnn"]["pt2"])
            runs = [client.analyze(mlp, data=X, batch_size=4, **SLOW).id for _ in range(2)]
    finally:
        server.stop()
    return {"store": store, "models": {mlp.id: "mlp", cnn.id: "cnn"}, "runs": runs}


def _copy(populated: dict, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(populated["store"], store, ignore=shutil.ignore_patterns("server.lock"))
    return store


def _server_command(store: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deepscope_server", "--store", str(store), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_damaged_database_stops_the_server_with_one_line(populated, tmp_path):
    """(A truncated database gives the same line: tests/unit/test_store.py.)"""
    store = _copy(populated, tmp_path)
    db = store / "deepscope.db"
    db.write_bytes(b"garbage " * 1024)
    done = _server_command(store, "--host", "127.0.0.1", "--port", "0", "--no-entry-points")
    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    assert lines[0].startswith(f"store database {db} is not a valid SQLite file (")
    assert lines[0].endswith(
        f"move it aside or run deepscope-server --store {store} --check-store / --rebuild-catalogue"
    )


def test_rebuild_brings_back_models_whose_catalogue_was_deleted(populated, tmp_path, exported, torch_models, servers):
    store = _copy(populated, tmp_path)
    for leftover in store.glob("deepscope.db*"):
        leftover.unlink()

    check = _server_command(store, "--check-store")
    assert check.returncode == 1, check.stdout + check.stderr
    for model_id in populated["models"]:
        assert f"model file {store / 'models' / model_id / 'model'} is not in the catalogue" in check.stdout

    rebuild = _server_command(store, "--rebuild-catalogue")
    assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    assert {m.group(1): m.group(2) for m in re.finditer(r"^model (\w{64}) (\w+) ", rebuild.stdout, re.M)} == {
        next(i for i, n in populated["models"].items() if n == "mlp"): "onnx",
        next(i for i, n in populated["models"].items() if n == "cnn"): "pt2",
    }

    server, client = _start(store, servers)
    with client:
        assert {m.id for m in client.models()} == set(populated["models"])
        for model_id, zoo_name in populated["models"].items():
            module, example = torch_models[zoo_name]
            acts = client.capture(model_id, example.numpy())
            expected = module(example).detach().numpy()
            np.testing.assert_allclose(next(iter(acts.model_outputs.values())), expected, rtol=1e-4, atol=1e-5)


def test_a_restart_removes_a_model_cut_off_while_loading_and_skips_a_bad_run_row(
    populated, tmp_path, exported, servers
):
    store = _copy(populated, tmp_path)
    server, client = _start(store, servers)
    known = set(populated["models"])
    outcome: dict[str, BaseException] = {}

    def upload() -> None:
        try:
            client.upload_model(exported["transformer"]["pt2"])
        except BaseException as exc:  # the server dies under it
            outcome["error"] = exc

    def new_folders() -> list[Path]:
        """New model folders whose model file is in place: the server is loading it (the folder
        alone exists a moment earlier, before the file is renamed into it)."""
        return [
            p
            for p in (store / "models").iterdir()
            if re.fullmatch(r"[0-9a-f]{64}", p.name) and p.name not in known and (p / "model").exists()
        ]

    thread = threading.Thread(target=upload)
    thread.start()
    deadline = time.monotonic() + 60
    while not new_folders() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.002)
    cut = new_folders()
    assert cut, "the upload's model folder should exist while the server loads it"
    os.kill(server.process.pid, signal.SIGKILL)  # kill -9 while the model loads
    server.process.wait(10)
    server.process = None
    thread.join(30)
    client.close()
    assert isinstance(outcome.get("error"), deepscope.DeepscopeError)
    assert (cut[0] / "model").exists()

    bad, good = populated["runs"]
    with contextlib.closing(sqlite3.connect(store / "deepscope.db")) as db, db:
        db.execute("UPDATE runs SET info=? WHERE id=?", (b"\xff\xff\xff", bad))

    server, client = _start(store, servers)
    with client:
        assert not cut[0].exists()
        assert sorted(p.name for p in (store / "models").iterdir()) == sorted(known)
        assert f"removed {cut[0]}: a model whose upload was cut off by a crash while it loaded" in server.log()
        assert [r.id for r in client.runs()] == [good]
        assert f"skipping run {bad} in {store / 'deepscope.db'}: unreadable" in server.log()
        assert client.get_run(good).status == "completed"
        assert client.health() == "SERVING"


@pytest.fixture()
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs) for the store: writes past it fail with ENOSPC."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` (the test's own file, as any other process could)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while fh.write(b"\0" * 4096):
            pass
    return filler


def test_a_full_disk_fails_uploads_and_runs_with_resource_exhausted(small_disk, exported, servers):
    store = small_disk / "store"
    server, client = _start(store, servers)
    with client:
        model = client.upload_model(exported["mlp"]["onnx"])
        filler = _fill(small_disk)
        with pytest.raises(
            deepscope.ResourceExhausted,
            match=rf"the server's disk is full \(store {store}\): saving "
            r"the upload of '.*' failed: No space left on device",
        ):
            client.upload_model(exported["cnn"]["onnx"])
        filler.unlink()

        # The disk fills up while a run is under way (its results cannot be stored).
        started = threading.Event()
        run_ids: list[str] = []

        def on_event(event: pb.AnalyzeResponse) -> None:
            if event.HasField("started"):
                run_ids.append(event.started.id)
                started.set()

        def batches():
            yield X[:4]
            assert started.wait(60)
            _fill(small_disk)
            yield X[4:]

        with pytest.raises(
            deepscope.ResourceExhausted,
            match=r"the server's disk is full .*: storing a result of "
            r"run \w+ failed: database or disk is full",
        ):
            client.analyze(model, data=batches(), on_event=on_event, **SLOW)
        # Failed at once, from the server's memory while the disk is still full...
        run = client.get_run(run_ids[0])
        assert run.status == "failed" and "the server's disk is full" in run.info.error
        assert run.info.num_results == 0 and not run.results
        assert [r.status for r in client.runs()] == ["failed"]
        assert client.health() == "SERVING"
        (small_disk / "filler").unlink()
        assert client.get_run(run_ids[0]).status == "failed"
    server.stop()
    # ...and recorded as failed (not left running, not "interrupted") once the disk had room.
    with contextlib.closing(sqlite3.connect(store / "deepscope.db")) as db:
        status, blob = db.execute("SELECT status, info FROM runs WHERE id=?", (run_ids[0],)).fetchone()
    assert status == pb.RUN_STATUS_FAILED and "disk is full" in pb.RunInfo.FromString(blob).error
