"""The store: content-addressed model files, atomic writes, runs surviving a reopen."""

from __future__ import annotations

import hashlib

import pytest

from deepscope.v1 import introspection_pb2 as pb
from deepscope_server.errors import InvalidInput, LimitExceeded, NotFound
from deepscope_server.store import Store


def test_model_is_content_addressed_and_survives_reopen(tmp_path):
    store = Store(tmp_path)
    data = b"abc" * 1000
    model_id, path, size = store.write_model("m.onnx", [data[:100], data[100:]], max_bytes=10_000)
    assert model_id == hashlib.sha256(data).hexdigest() and size == 3000 and path.read_bytes() == data
    store.add_model(model_id, "m.onnx", "onnx", size, path)
    store.close()
    again = Store(tmp_path)
    assert again.find_model("m.onnx").id == model_id
    assert again.find_model(model_id[:10]).path == path
    with pytest.raises(NotFound, match="did you mean: m.onnx"):
        again.find_model("m.onx")


def test_failed_writes_leave_nothing_behind(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(LimitExceeded, match="max_model_bytes exceeded: 20 bytes > limit 15 bytes"):
        store.write_model("big", [b"x" * 10, b"x" * 10], max_bytes=15)
    with pytest.raises(InvalidInput, match="declared 99 bytes, got 10"):
        store.write_model("short", [b"x" * 10], max_bytes=100, declared_bytes=99)
    with pytest.raises(InvalidInput, match="sha256"):
        store.write_model("corrupt", [b"x" * 10], max_bytes=100, declared_sha256="00" * 32)
    assert [p.name for p in store.models_dir.iterdir()] == []


def test_runs_and_results_persist_and_running_becomes_interrupted(tmp_path):
    store = Store(tmp_path)
    done = pb.RunInfo(config=pb.AnalyzeConfig(models=["m"]))
    store.create_run(done)
    store.add_result(done.id, 1, pb.MetricResult(metric="a.b", layer="fc1", status="ok",
                                                 items=[pb.ResultItem(key="x", scalar=2.0)]))
    done.status = pb.COMPLETED
    store.update_run(done)
    crashed = pb.RunInfo()
    store.create_run(crashed)
    store.close()

    reopened = Store(tmp_path)
    detail = reopened.get_run(done.id)
    assert detail.info.status == pb.COMPLETED
    assert detail.results[0].items[0].scalar == 2.0
    assert reopened.get_run(crashed.id).info.status == pb.INTERRUPTED
    assert {r.id for r in reopened.list_runs()} == {done.id, crashed.id}


def test_one_server_per_store(tmp_path):
    """A second server on the same store would mark the first one's running runs interrupted."""
    from deepscope_server.store import StoreInUse

    first = Store(tmp_path)
    running = pb.RunInfo()
    first.create_run(running)
    with pytest.raises(StoreInUse, match=f"store {tmp_path} is in use by another deepscope-server \\(pid "):
        Store(tmp_path)
    assert first.get_run(running.id).info.status == pb.RUNNING  # untouched by the refused second opener
    first.close()
    Store(tmp_path).close()  # free again once the first one is closed
