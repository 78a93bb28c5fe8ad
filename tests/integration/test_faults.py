"""Faults: metrics that crash or leak fail only their own results (process isolation), and a server
killed with SIGKILL during an Analyze or an upload restarts with completed runs and stored models
intact, the cut-off run reported as interrupted and no half-written model visible."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import grpc
import numpy as np

import deepscope
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import introspection_pb2_grpc as pb_grpc

from .conftest import start_server
from .helpers import analyze_slow, fail_alone


def test_crashing_and_leaking_metrics_fail_alone(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    failures = fail_alone(client, model, ["testing.aborts", "testing.segfaults", "testing.leaks"], batch_size=10)
    assert "died from signal SIGABRT" in failures["testing.aborts"]
    assert "died from signal SIGSEGV" in failures["testing.segfaults"]
    # 1 GiB kept per batch: the worker's address-space limit (default 8 GiB) stops it.
    assert "MemoryError" in failures["testing.leaks"] and "memory limit is 8,192 MiB" in failures["testing.leaks"]
    # The server process itself did not grow by the leak (it happened in a worker).
    again = client.analyze(model, data="digits", limit=20, layers=["fc1"], metrics=["example.activation_moments"])
    assert again.status == "completed"


def _kill(server) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    server.process = None


def _start(store, servers):
    server, address = start_server(store, no_entry_points=True)
    servers.append(server)
    return server, address


def test_sigkill_during_analyze_and_during_upload(tmp_path, exported, servers):
    store = tmp_path / "store"
    x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)

    # 1. A completed run and a stored model, then SIGKILL in the middle of a slow run.
    server, address = _start(store, servers)
    with deepscope.connect(address, token=server.token, progress=False) as client:
        model = client.upload_model(exported["mlp"]["onnx"])
        done = analyze_slow(client, model, 0.0, data=x, batch_size=8)
        assert done.status == "completed"
        started = threading.Event()
        run_ids: list[str] = []

        def on_event(event: pb.AnalyzeResponse) -> None:
            if event.HasField("started"):
                run_ids.append(event.started.id)
            if event.HasField("progress") and event.progress.stage == "forward" and event.progress.done > 0:
                started.set()

        outcome: dict[str, BaseException] = {}

        def slow() -> None:
            try:
                analyze_slow(client, model, 1.0, data=x, batch_size=4, on_event=on_event)
            except BaseException as exc:  # the server dies under it
                outcome["error"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        assert started.wait(60), server.log()
        _kill(server)
        thread.join(30)
        assert isinstance(outcome.get("error"), deepscope.DeepscopeError)

    server, address = _start(store, servers)
    with deepscope.connect(address, token=server.token, progress=False) as client:
        cut = client.get_run(run_ids[0])
        assert cut.status == "interrupted" and "stopped before the run finished" in cut.info.error
        kept = client.get_run(done.id)
        assert kept.status == "completed" and len(kept.results) == len(done.results)
        assert kept.result("testing.slow", "") == done.result("testing.slow", "")
        assert [m.id for m in client.models()] == [model.id]
        assert client.capture(model.id, x[:2], layers=["fc1"])["fc1"].shape == (2, 32)

        # 2. SIGKILL while an upload is half-way through its chunks.
        data = exported["cnn"]["onnx"].read_bytes()
        half_sent = threading.Event()
        release = threading.Event()

        def chunks():
            yield pb.UploadModelRequest(header=pb.UploadHeader(name="half.onnx", total_bytes=len(data)))
            yield pb.UploadModelRequest(chunk=data[: len(data) // 2])
            half_sent.set()
            release.wait(30)

        def upload() -> None:
            with grpc.insecure_channel(address) as channel:
                try:
                    pb_grpc.IntrospectionServiceStub(channel).UploadModel(
                        chunks(), metadata=[("authorization", f"Bearer {server.token}")], timeout=60
                    )
                except grpc.RpcError:
                    pass

        thread = threading.Thread(target=upload)
        thread.start()
        assert half_sent.wait(30)
        deadline = time.monotonic() + 20
        while not list((store / "models").glob(".upload-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((store / "models").glob(".upload-*")), "the upload's temp file should exist mid-stream"
        _kill(server)
        release.set()
        thread.join(30)

    server, address = _start(store, servers)
    with deepscope.connect(address, token=server.token, progress=False) as client:
        assert [m.id for m in client.models()] == [model.id]
        assert not list((store / "models").glob(".upload-*"))  # the leftover was removed on start
        assert sorted(p.name for p in (store / "models").iterdir()) == [model.id]
        assert client.get_run(done.id).status == "completed"
        assert client.get_run(run_ids[0]).status == "interrupted"
        assert client.health() == "SERVING"
    with sqlite3.connect(store / "deepscope.db") as db:  # the catalogue is a write-ahead-logged SQLite file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
